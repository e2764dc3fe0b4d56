"""What the patcher needs to know about a model family, in one place per family.

An adapter answers four questions for its family:
- which blocks exist (``blocks()``: ``(block_type, block_index)`` keys of ComfyUI's ``patches_replace["dit"]``,
  in model order; the router file indexes them 0..num_blocks-1 in that order);
- where the video tokens sit in a block's self-attention sequence (``video_span``: tokens before/after them);
- what the router reads (``router_input``: the block's self-attention input, video tokens only, (B, Nv, C));
- the latent frame grid of a forward (``grid``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnsupportedModelError(ValueError):
    """The MODEL is not a family this pack can patch (the message names the supported ones)."""


@dataclass(frozen=True)
class BlockKey:
    block_type: str  # "double" or "single" (ComfyUI's names)
    block_index: int  # index within its type, as ComfyUI numbers it
    index: int  # position in the router file (model order)


class ModelAdapter:
    family: str = ""
    display_name: str = ""

    def __init__(self, diffusion_model: torch.nn.Module):
        self.diffusion_model = diffusion_model

    # ---- structure
    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def blocks(self) -> list[BlockKey]:
        raise NotImplementedError

    @property
    def num_blocks(self) -> int:
        return len(self.blocks())

    # ---- per forward
    def grid(self, x_shape, transformer_options: dict) -> tuple[int, int, int]:
        """(T', H', W') patch grid of the video tokens for latent shape ``x_shape`` (B, C, T, H, W)."""
        raise NotImplementedError

    def router_input(self, key: BlockKey, args: dict, span: tuple[int, int]) -> torch.Tensor:
        """The router's input for this block call: (B, Nv, C), video tokens only, in the model's dtype."""
        raise NotImplementedError

    def block_tokens(self, args: dict) -> torch.Tensor:
        """The token stream (B, n, C) a block call gets (its batch, length and device; Wan's and HunyuanVideo's
        block-replace args both carry it as ``img``)."""
        return args["img"]

    def video_span(self, key: BlockKey, args: dict, num_video_tokens: int, forward_info: dict) -> tuple[int, int] | None:
        """(prefix, suffix): tokens before and after the video tokens in this block's self-attention sequence.

        ``None`` when the sequence cannot be explained (the patcher then leaves the block dense).
        """
        raise NotImplementedError

    def text_layout(self, q_tokens: int, k_tokens: int, joint: bool, num_video: int, text_tokens: int,
                    facts: dict) -> tuple[str, int, int] | None:
        """Where a shot plan's caption tokens and the video tokens sit in one attention call.

        ``("cross", video_start, 0)``: queries are the model's tokens, keys exactly the captions (Wan).
        ``("joint", text_start, video_start)``: one sequence with the captions and the video (HunyuanVideo).
        ``("text", 0, 0)``: attention among the caption tokens only (HunyuanVideo's token refiner).
        ``None``: this call has nothing to do with the captions.
        """
        return None

    def shot_object_patches(self) -> dict:
        """{path: replacement} object patches a clone needs for per-shot captions beyond attention (may be empty)."""
        return {}

    def ffn_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """(path under the BaseModel, module) of the token-wise feed-forward networks worth chunking."""
        return []

    def forward_info(self, args: tuple, kwargs: dict) -> dict:
        """Per-forward facts read from the DIFFUSION_MODEL call's arguments (latent shape, extra-token inputs)."""
        x = args[0]
        return {"x_shape": tuple(x.shape) if torch.is_tensor(x) else None}
