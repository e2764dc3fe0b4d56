"""Wan 2.1 / 2.2 (comfy.ldm.wan.model.WanModel and VaceWanModel).

Token layout of a block's self-attention: ``[reference-latent tokens (ref_conv models, prefix)] + video tokens
(t, h, w row-major over grid_sizes) + [context-latent tokens (newer ComfyUI, suffix)]``. Heads are merged in the
last dimension, (B, N, H·D). Cross-attention (text, CLIP image for i2v) is a separate call the patch never takes.
VACE's extra blocks run outside the block replace patch and so stay dense.

Router input: the block's self-attention input, ``norm1(x)·(1 + e1) + e0`` (Wan 2.2 TI2V-5B passes per-frame
modulation, (B, T', 6, C), which ``repeat_e`` expands to tokens exactly as the block does).
"""

from __future__ import annotations

import math

import torch

from .base import BlockKey, ModelAdapter


class WanAdapter(ModelAdapter):
    family = "wan"
    display_name = "Wan 2.1 / 2.2"

    @property
    def hidden_size(self) -> int:
        return int(self.diffusion_model.dim)

    def blocks(self) -> list[BlockKey]:
        return [BlockKey("double", i, i) for i in range(len(self.diffusion_model.blocks))]

    def attention_width(self, key):
        return int(self.diffusion_model.dim)  # heads are merged in the last dimension: H·D = dim

    def grid(self, x_shape, transformer_options):
        sizes = transformer_options.get("grid_sizes")
        if sizes is not None:  # set by WanModel.forward_orig (includes time_dim_concat frames)
            return tuple(int(s) for s in sizes)
        pt, ph, pw = self.diffusion_model.patch_size
        _, _, t, h, w = x_shape
        return (math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw))

    def forward_info(self, args, kwargs):
        info = super().forward_info(args, kwargs)
        info["has_reference"] = (kwargs.get("reference_latent") is not None
                                 and getattr(self.diffusion_model, "ref_conv", None) is not None)
        info["has_context_latents"] = bool(kwargs.get("context_latents"))
        return info

    def video_span(self, key, args, num_video_tokens, forward_info):
        extra = args["img"].shape[1] - num_video_tokens
        if extra == 0:
            return (0, 0)
        ref, ctx = forward_info.get("has_reference", False), forward_info.get("has_context_latents", False)
        if extra > 0 and ref and not ctx:
            return (extra, 0)
        if extra > 0 and ctx and not ref:
            return (0, extra)
        return None  # both kinds at once, or tokens we cannot place: stay dense

    def attention_module(self, block_type, block_index, self_attention):
        blocks = self.diffusion_model.blocks
        if block_type not in (None, "double") or not isinstance(block_index, int) or not 0 <= block_index < len(blocks):
            return None
        block = blocks[block_index]
        return block.self_attn if self_attention else block.cross_attn

    def ffn_paths(self):
        return [f"diffusion_model.blocks.{i}.ffn" for i in range(len(self.diffusion_model.blocks))]

    def text_layout(self, q_tokens, k_tokens, joint, num_video, text_tokens, facts):
        if joint or k_tokens != text_tokens or q_tokens < num_video:
            return None  # self-attention, or the i2v CLIP-image call (257 image tokens)
        extra = q_tokens - num_video
        video_start = extra if facts.get("has_reference") and not facts.get("has_context_latents") else 0
        return ("cross", video_start, 0)

    def router_input(self, key, args, span):
        from comfy.ldm.wan.model import repeat_e  # ComfyUI's own expansion of per-frame modulation
        import comfy.model_management

        block = self.diffusion_model.blocks[key.block_index]
        x, e = args["img"], args["vec"]
        modulation = comfy.model_management.cast_to(block.modulation, dtype=x.dtype, device=x.device)
        if e.ndim < 4:
            e0, e1 = (modulation + e).chunk(6, dim=1)[:2]
        else:
            e0, e1 = (modulation.unsqueeze(0) + e).unbind(2)[:2]
        x_mod = torch.addcmul(repeat_e(e0, x), block.norm1(x.contiguous()), 1 + repeat_e(e1, x))
        prefix, suffix = span
        return x_mod[:, prefix:x_mod.shape[1] - suffix]


class WanAnimateAdapter(WanAdapter):
    """Wan 2.2 Animate (comfy.ldm.wan.model_animate.AnimateWanModel).

    The pose latents are added to the video tokens and the face motion enters through the face adapter blocks after
    every fifth block (their attention is a per-frame cross-attention the patch never takes), so a block's
    self-attention sequence is Wan's: ``[reference-latent tokens (ref_conv)] + video tokens``. Its forward does not
    publish ``grid_sizes``: the grid comes from the latent (plus any ``time_dim_concat`` frames, which
    ``WanModel._forward`` appends along time before the blocks).
    """

    family = "wan"  # the same blocks and widths as Wan 2.1/2.2 14B: Wan router files fit
    display_name = "Wan 2.2 Animate"

    def forward_info(self, args, kwargs):
        info = super().forward_info(args, kwargs)
        extra = kwargs.get("time_dim_concat", args[4] if len(args) > 4 else None)
        if info["x_shape"] is not None and torch.is_tensor(extra) and extra.ndim == 5:
            pt = self.diffusion_model.patch_size[0]
            b, c, t, h, w = info["x_shape"]
            info["x_shape"] = (b, c, math.ceil(t / pt) * pt + math.ceil(extra.shape[2] / pt) * pt, h, w)
        return info


class WanS2VAdapter(WanAdapter):
    """Wan 2.2 S2V (comfy.ldm.wan.model.WanModel_S2V).

    A block's self-attention sequence is ``video tokens + [reference-image tokens] + [motion tokens]``: the reference
    latent and FramePack's packed motion frames are appended after the video, each with its own rope, so both are
    a global suffix every video token attends to (and that attends to everything). The audio enters through the
    audio injector between blocks, a cross-attention on the video tokens only.
    """

    family = "wan"
    display_name = "Wan 2.2 S2V"

    def forward_info(self, args, kwargs):
        info = super().forward_info(args, kwargs)
        info["has_reference"] = False  # S2V's reference is a suffix, not the ref_conv prefix of Wan Fun
        info["has_context_latents"] = False
        info["s2v_suffix"] = kwargs.get("reference_latent") is not None or kwargs.get("reference_motion") is not None
        return info

    def video_span(self, key, args, num_video_tokens, forward_info):
        extra = args["img"].shape[1] - num_video_tokens
        if extra == 0:
            return (0, 0)
        if extra > 0 and forward_info.get("s2v_suffix"):
            return (0, extra)
        return None
