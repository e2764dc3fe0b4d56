"""HunyuanVideo 1.0 and 1.5 (comfy.ldm.hunyuan_video.model.HunyuanVideo).

Joint text+video attention: double blocks attend over ``cat(txt, img)`` with separate projections, single blocks
over the concatenated stream; layout (B, H, N, D) with ``skip_reshape``. The text tokens (and the reference-latent
tokens HunyuanVideo prepends to ``img``) are the global prefix. The token refiner's text-only attention runs before
any block and is never taken. Router file order: double blocks 0..D-1, then single blocks as D + j.

Router input: the block's image-stream attention input, ``norm(img)·(1 + scale) + shift`` with the block's own
modulation (double: ``img_mod``/``img_norm1``; single: ``modulation``/``pre_norm`` on the video part).
"""

from __future__ import annotations

import torch

from ..wiring import shot_plan_of
from .base import BlockKey, ModelAdapter


class HunyuanVideoAdapter(ModelAdapter):
    family = "hunyuan_video"
    display_name = "HunyuanVideo 1.0 / 1.5"

    @property
    def hidden_size(self) -> int:
        return int(self.diffusion_model.hidden_size)

    def blocks(self) -> list[BlockKey]:
        dm = self.diffusion_model
        n_double = len(dm.double_blocks)
        keys = [BlockKey("double", i, i) for i in range(n_double)]
        keys += [BlockKey("single", j, n_double + j) for j in range(len(dm.single_blocks))]
        return keys

    def attention_width(self, key):
        return int(self.diffusion_model.hidden_size)  # H·D of the joint attention, double and single blocks alike

    def grid(self, x_shape, transformer_options):
        pt, ph, pw = self.diffusion_model.patch_size
        _, _, t, h, w = x_shape
        # the same rounding as HunyuanVideo.img_ids
        return ((t + pt // 2) // pt, (h + ph // 2) // ph, (w + pw // 2) // pw)

    def forward_info(self, args, kwargs):
        info = super().forward_info(args, kwargs)
        ref = kwargs.get("ref_latent", args[9] if len(args) > 9 else None)
        info["has_reference"] = ref is not None
        return info

    def video_span(self, key, args, num_video_tokens, forward_info):
        img = args["img"]
        if key.block_type == "double":
            txt = args["txt"].shape[1]
            extra_img = img.shape[1] - num_video_tokens  # reference-latent tokens prepended to img
            if extra_img < 0 or (extra_img > 0 and not forward_info.get("has_reference")):
                return None
            return (txt + extra_img, 0)
        txt = args["transformer_options"].get("img_slice", [None])[0]
        if txt is None:
            return None
        extra_img = img.shape[1] - txt - num_video_tokens
        if extra_img < 0 or (extra_img > 0 and not forward_info.get("has_reference")):
            return None
        return (txt + extra_img, 0)

    def shot_module_patches(self):
        """The token refiner pools all text tokens into its conditioning vector, so per-shot captions must be refined
        one caption at a time (as if each were encoded alone) for a shot's tokens to be independent of the others."""

        def refine_per_caption(refiner, x, timesteps, mask, transformer_options={}):
            original = type(refiner).forward
            plan = shot_plan_of(transformer_options)
            if plan is None or plan.shot_tokens is None or x.shape[1] != plan.text_tokens:
                return original(refiner, x, timesteps, mask, transformer_options=transformer_options)
            ranges = plan.caption_ranges()
            parts = [original(refiner, x[:, a:b], timesteps, None if mask is None else mask[:, a:b],
                              transformer_options=transformer_options) for a, b in ranges]
            return torch.cat(parts, dim=1)

        return {"diffusion_model.txt_in": (refine_per_caption, "per-caption token refiner")}

    def ffn_paths(self):
        # double blocks' image MLP; single blocks fuse their MLP into the attention projections
        return [f"diffusion_model.double_blocks.{i}.img_mlp" for i in range(len(self.diffusion_model.double_blocks))]

    def text_layout(self, q_tokens, k_tokens, joint, num_video, text_tokens, facts):
        if not joint or q_tokens != k_tokens:
            return None
        if q_tokens == text_tokens:
            return ("text", 0, 0)  # the token refiner: each caption is refined on its own, as if encoded alone
        prefix = q_tokens - num_video  # [text, (reference-latent tokens)] before the video
        if prefix == text_tokens or (prefix > text_tokens and facts.get("has_reference")):
            return ("joint", 0, prefix)
        return None  # extra text streams (byT5, vision tokens) we cannot place: captions stay global

    def router_input(self, key, args, span):
        from comfy.ldm.flux.layers import apply_mod

        dm = self.diffusion_model
        prefix, suffix = span
        if key.block_type == "double":
            block = dm.double_blocks[key.block_index]
            img = args["img"]
            mod, _ = block.img_mod(args["vec"])
            img_start = prefix - args["txt"].shape[1]  # skip reference tokens at the front of img
            normed = block.img_norm1(img)
            x_mod = apply_mod(normed, 1 + mod.scale, mod.shift, args.get("modulation_dims_img"))
            return x_mod[:, img_start:img.shape[1] - suffix]
        block = dm.single_blocks[key.block_index]
        x = args["img"]
        mod, _ = block.modulation(args["vec"])
        # the same computation as SingleStreamBlock (modulation_dims applied to the whole stream, as it does)
        x_mod = apply_mod(block.pre_norm(x), 1 + mod.scale, mod.shift, args.get("modulation_dims"))
        return x_mod[:, prefix:x_mod.shape[1] - suffix]
