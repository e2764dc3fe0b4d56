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
    """Family knowledge over one diffusion model module.

    Its structure (blocks, sizes, paths) is the same for every copy of a model, but the modules are not: under dynamic
    VRAM the sampler may run a freshly loaded delegate of the model a patch was made on. Per-call work that touches
    modules (``router_input``) must use the adapter `bind`-ed to the model being run, never one kept from patch time.
    """

    family: str = ""
    display_name: str = ""

    def __init__(self, diffusion_model: torch.nn.Module):
        self.diffusion_model = diffusion_model

    def bind(self, diffusion_model: torch.nn.Module) -> "ModelAdapter":
        """This adapter over ``diffusion_model`` (the model a forward runs; ``self`` when it is the same object)."""
        if diffusion_model is self.diffusion_model or diffusion_model is None:
            return self
        if type(diffusion_model) is not type(self.diffusion_model):
            raise ValueError(f"MoGA: the patch was made on a {type(self.diffusion_model).__name__} but the sampler "
                             f"runs a {type(diffusion_model).__name__}")
        return type(self)(diffusion_model)

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

    def attention_width(self, key: BlockKey) -> int | None:
        """H·D of block ``key``'s video self-attention (a call of another width, e.g. an audio stream's
        self-attention in the same block, is not the one the routing is for); None: not checked."""
        return None

    def dense_reason(self, key: BlockKey, args: dict, forward_info: dict) -> str | None:
        """Why this block call's video self-attention must be left to ComfyUI (a reason the run summary counts), or
        None. Families whose blocks may skip or split their self-attention say so here (LTX-2)."""
        return None

    def scoped_self_attention(self, key: BlockKey) -> str | None:
        """Path (under the BaseModel, ``diffusion_model.…``) of the module whose forward makes block ``key``'s video
        self-attention call, when the routing must be taken inside that module only; None: the block's first
        attention call of the right shape and width takes it. A family whose self-attention may not run (so that a
        later call of the same shape would get the routing) names its module (LTX-2's ``attn1``)."""
        return None

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

    def attention_module(self, block_type: str | None, block_index: int | None, self_attention: bool):
        """The attention module an attention call of block (``block_type``, ``block_index``) comes from, or None
        when the family does not say (newer ComfyUI keeps a layer's chosen attention on it: `preferred_attention`)."""
        return None

    def preferred_attention(self, to: dict, self_attention: bool):
        """The attention function the checkpoint chose for the layer of this call (newer ComfyUI loads a per-layer
        ``comfy_attention`` config, e.g. INT8 attention), or None."""
        module = self.attention_module(to.get("block_type"), to.get("block_index"), self_attention)
        return getattr(getattr(module, "comfy_attention", None), "function", None)

    def shot_module_patches(self) -> dict:
        """{module path: (behaviour, what)}: ``forward`` patches a clone needs for per-shot captions beyond attention
        (may be empty), applied with `module_patches.add_module_patch` (``behaviour(module, *args, **kwargs)``)."""
        return {}

    def module_patches(self) -> dict:
        """{module path: (behaviour, what)}: ``forward`` patches every patched clone needs to run MoGA at all (e.g. a
        family whose block-replace contract ComfyUI itself breaks: Kandinsky 5), applied as `shot_module_patches`."""
        return {}

    def ffn_paths(self) -> list[str]:
        """Paths under the BaseModel (``diffusion_model.…``) of the token-wise feed-forward networks worth chunking."""
        return []

    def ffn_modules(self) -> list[tuple[str, torch.nn.Module]]:
        """(path, module) of `ffn_paths` in this adapter's model (structure only: sizes for memory estimates)."""
        out = []
        for path in self.ffn_paths():
            module = self.diffusion_model
            for part in path.split(".")[1:]:
                module = getattr(module, part)
            out.append((path, module))
        return out

    def forward_info(self, args: tuple, kwargs: dict) -> dict:
        """Per-forward facts read from the DIFFUSION_MODEL call's arguments (latent shape, extra-token inputs)."""
        x = args[0]
        return {"x_shape": tuple(x.shape) if torch.is_tensor(x) else None}
