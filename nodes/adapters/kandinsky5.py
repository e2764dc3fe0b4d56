"""Kandinsky 5 video (comfy.ldm.kandinsky5.model.Kandinsky5: Lite 2B, model_dim 1792, head_dim 64; Pro 19B,
model_dim 4096, head_dim 128).

Structure of one forward (``Kandinsky5._forward`` / ``forward_orig``): the caption tokens (Qwen2.5-VL hidden states,
(B, L, 3584) -> (B, L, C)) first go through ``text_transformer_blocks``, a text encoder of self-attention blocks that
runs outside the block replace patch, so it always stays dense (the patcher never routes it). Then the video tokens go
through ``visual_transformer_blocks``, each under ``patches_replace["dit"][("double_block", i)]``, whose args dict
carries ``x`` (B, Nv, C), ``context`` (B, L, C: the encoded captions), ``time_embed`` (B, time_dim), ``freqs`` and
``transformer_options``. A visual block is self-attention over the video tokens only, then cross-attention (queries
the video tokens, keys exactly the caption tokens), then its feed-forward. Attention calls pass (B, H, N, D) with
``skip_reshape`` and get (B, N, H·D) back.

ComfyUI's ``block_wrap`` (the ``original_block`` handed to a block-replace patch) is broken twice over: it calls the
block with the args dict's keywords (``x=``, ``context=``), which ``TransformerDecoderBlock.forward`` does not take (it
names them ``visual_embed``, ``text_embed``), and it returns the block's tensor where ``forward_orig`` reads
``["x"]`` from what the patch returns. So a block-replace patch that calls the original block cannot work on a stock
Kandinsky 5 (ComfyUI 0.19.3 to 0.27.0). `module_patches` gives every patched clone a forward of those blocks that,
called block_wrap's way, takes those keywords and returns ``{"x": out}``, the block-replace contract; a positional call
(a block without a replace patch) runs the block unchanged.

Token layout of a visual block's self-attention: video tokens only, ``(t, h, w)`` row-major over the patch grid
(``VisualEmbeddings``: patch_size (1, 2, 2)); the latent is padded up to the patch size first (``pad_to_patch_size``),
so the grid is the ceiling of T/pt, H/ph, W/pw. A 4-D x (B, C, H, W) — Kandinsky 5 Image, whose latents are 2-D
(``model_base.Kandinsky5Image``, the same diffusion class) — has no video grid: ``forward_info`` keeps its 4-D shape,
so those forwards stay dense ("no video grid"). That costs little: with the frame branch on (the default) one frame's
keys are all in it, so MoGA could not beat dense there. (The video model never gets a 4-D x from the sampler:
``fix_empty_latent_channels`` makes an image latent one frame, (B, C, 1, H, W), a video of grid (1, H', W').)

Router input: the block's self-attention input exactly as ``TransformerDecoderBlock.forward`` computes it — the first
of the three chunks of ``visual_modulation(time_embed)`` split by ``get_shift_scale_gate`` into (shift, scale, gate),
then ``apply_scale_shift_norm(self_attention_norm, x, scale, shift)``.

Per-shot captions (`nodes.shot_attention`): the cross-attention is ``("cross", 0, 0)`` (each shot's frames read the
global caption and their own), and the text encoder's self-attention over the captions is ``("text", 0, 0)`` (each
caption is encoded among its own tokens, as if encoded alone: the rope is relative, so a caption's offset in the
concatenation does not change it). Not exact per shot: Kandinsky's pooled text vector ``y`` (the CLIP-L pooled output,
(B, 768)) enters ``time_embed``, which modulates every token of every block (visual and text) the same way, for the
whole clip; the multi-shot prompt passes the first caption's (the global prompt's, if one is given), so every shot is
modulated by that caption's CLIP vector rather than its own. A per-sample (B, C) modulation cannot differ per frame,
so this cannot be made per shot (HunyuanVideo 1.0's CLIP vector, ``vector_in``, is the same approximation). And when
the video has exactly as many tokens as the captions, a visual self-attention, a cross-attention and the text
encoder's attention all have the same shapes and cannot be told apart: then no call is restricted (every frame sees
every caption, the text encoder encodes them together; a warning says so) rather than one restricted wrongly.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math

import torch

from .base import BlockKey, ModelAdapter

log = logging.getLogger("moga")
_WARNED_AMBIGUOUS: set = set()  # (video tokens, caption tokens) already warned about (once per process)


class Kandinsky5Adapter(ModelAdapter):
    family = "kandinsky5"
    display_name = "Kandinsky 5"

    @property
    def hidden_size(self) -> int:
        return int(self.diffusion_model.model_dim)

    def blocks(self) -> list[BlockKey]:
        # the text encoder blocks are no patch target: only the visual blocks go through patches_replace["dit"]
        return [BlockKey("double", i, i) for i in range(len(self.diffusion_model.visual_transformer_blocks))]

    def grid(self, x_shape, transformer_options):
        """(T', H', W') patch grid of a (B, C, T, H, W) latent: ceil over the patch size (``pad_to_patch_size``)."""
        pt, ph, pw = self.diffusion_model.patch_size
        _, _, t, h, w = x_shape
        return (math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))

    def forward_info(self, args, kwargs):
        """``execute(x, timestep, context, y, time_dim_replace=..., transformer_options=...)``: x (B, C, T, H, W) for
        a video, (B, C, H, W) for an image (kept 4-D: no video grid). ``time_dim_replace`` overwrites the first latent
        frames in place (image-to-video) and adds no tokens."""
        return super().forward_info(args, kwargs)  # x is args[0]

    def block_tokens(self, args: dict) -> torch.Tensor:
        return args["x"]  # Kandinsky's block-replace args name the video stream "x", not "img"

    def video_span(self, key, args, num_video_tokens, forward_info):
        # the visual self-attention sequence is the video tokens and nothing else
        return (0, 0) if args["x"].shape[1] == num_video_tokens else None

    def attention_width(self, key: BlockKey) -> int:
        return int(self.diffusion_model.model_dim)  # H·D, with H = model_dim // head_dim, head_dim = sum(axes_dims)

    def attention_module(self, block_type, block_index, self_attention):
        # block_type/block_index are set only inside the visual-block loop; the text encoder runs before them
        blocks = self.diffusion_model.visual_transformer_blocks
        if block_type != "double" or not isinstance(block_index, int) or not 0 <= block_index < len(blocks):
            return None
        block = blocks[block_index]
        return block.self_attention if self_attention else block.cross_attention

    def module_patches(self):
        """{``diffusion_model.visual_transformer_blocks.{i}``: (forward, what)}: every visual block's forward made
        callable the way ComfyUI's ``block_wrap`` calls it (see the module doc), since the MoGA block patch must call
        the original block; the patcher installs it on every clone it patches."""
        return {f"diffusion_model.visual_transformer_blocks.{i}": (_block_forward_for_block_wrap,
                                                                   "Kandinsky 5 blocks callable from a block-replace "
                                                                   "patch")
                for i in range(len(self.diffusion_model.visual_transformer_blocks))}

    def ffn_paths(self):
        return [f"diffusion_model.visual_transformer_blocks.{i}.feed_forward"
                for i in range(len(self.diffusion_model.visual_transformer_blocks))]

    def text_layout(self, q_tokens, k_tokens, joint, num_video, text_tokens, facts):
        if num_video == text_tokens:
            # self-attention (Nv, Nv), cross-attention (Nv, L) and the text encoder (L, L) look alike: restrict none
            if (num_video, text_tokens) not in _WARNED_AMBIGUOUS:
                _WARNED_AMBIGUOUS.add((num_video, text_tokens))
                log.warning("MoGA: this Kandinsky 5 video has as many tokens (%d) as its captions, so the caption "
                            "calls cannot be told apart from the video self-attention; every frame sees every "
                            "caption (change the resolution or length by a little to get per-shot captions)",
                            num_video)
            return None
        if joint and q_tokens == k_tokens == text_tokens:
            return ("text", 0, 0)  # the text encoder blocks: each caption among its own tokens
        if q_tokens == num_video and k_tokens == text_tokens:
            return ("cross", 0, 0)  # queries: the video tokens; keys: exactly the captions
        return None

    def router_input(self, key, args, span):
        """(B, Nv, C): ``apply_scale_shift_norm(self_attention_norm, x, scale, shift)`` with the block's own
        self-attention shift and scale, in the dtype the block computes it in."""
        from comfy.ldm.kandinsky5.model import apply_scale_shift_norm, get_shift_scale_gate

        block = self.diffusion_model.visual_transformer_blocks[key.block_index]
        x = args["x"]  # (B, Nv, C)
        self_attn_params = torch.chunk(block.visual_modulation(args["time_embed"]), 3, dim=-1)[0]  # (B, 3C)
        shift, scale, _gate = get_shift_scale_gate(self_attn_params)  # each (B, 1, C)
        x_mod = apply_scale_shift_norm(block.self_attention_norm, x, scale, shift)
        prefix, suffix = span
        return x_mod[:, prefix:x_mod.shape[1] - suffix]


@functools.lru_cache(maxsize=None)
def _forward_parameters(block_class) -> frozenset:
    return frozenset(inspect.signature(block_class.forward).parameters)


def _block_forward_for_block_wrap(block, *args, **kwargs):
    """``TransformerDecoderBlock.forward``, also as ``block_wrap`` calls it: ``block(x=(B, Nv, C), context=(B, L, C),
    time_embed=, freqs=, transformer_options=)`` -> ``{"x": (B, Nv, C)}``, what ``forward_orig`` reads back from a
    block-replace patch. Any other call (positional, the blocks without a replace patch; or a ComfyUI whose forward
    takes ``x`` itself, where block_wrap may have been fixed) runs the block as it came."""
    if "x" in kwargs and "x" not in _forward_parameters(type(block)):
        kwargs["visual_embed"] = kwargs.pop("x")
        if "context" in kwargs:
            kwargs["text_embed"] = kwargs.pop("context")
        return {"x": type(block).forward(block, *args, **kwargs)}
    return type(block).forward(block, *args, **kwargs)
