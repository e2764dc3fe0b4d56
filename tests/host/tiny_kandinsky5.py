"""Tiny Kandinsky 5 models (video, and Kandinsky 5 Image), built from ComfyUI's real class, loaded by its real loader.

As in `tiny_models`: the real ``comfy.ldm.kandinsky5.model.Kandinsky5`` with a tiny config and seeded random weights,
whose state dict (the real key layout) goes through ``comfy.sd.load_diffusion_model_state_dict``, so the detection
(``model_detection``'s "Kandinsky 5" branch), ``model_base.Kandinsky5``, the latent format (HunyuanVideo's: 16
channels, 4 pixel frames per latent frame) and the model sampling are ComfyUI's own.

What detection reads from the weights, and what it does not:
- ``model_dim``, ``time_dim``, ``ff_dim``, ``visual_embed_dim`` and the block counts come from tensor shapes;
- ``in_text_dim`` (3584, Qwen2.5-VL) and ``in_text_dim2`` (768, CLIP-L pooled) are not read: the model is built with
  the defaults, so the tiny model uses them too;
- ``axes_dims`` (head_dim = their sum) is hard-coded by ``model_dim``: (32, 48, 48) for 4096 (Pro video) and 2560
  (Lite image, also rope_scale_factor (1, 1, 1)), (16, 24, 24) for 1792 (Lite video), and the class default
  (16, 24, 24) for any other width. So a tiny width always gives head_dim 64, and the only head_dim-128 model
  detection can produce is one of width 2560 or 4096: `HEAD128` is width 2560 with everything else tiny (20 heads of
  128; a video model, since ``visual_embed_dim`` 132 is not Kandinsky 5 Image's 64).

The video model's input is ``cat(noise, image latent, mask)`` (``model_base.Kandinsky5.concat_cond``): 16 + 16 + 1 =
33 channels, so ``visual_embed_dim`` = 33 · (1·2·2) = 132, while the sampled latent has 16 channels.
"""

from __future__ import annotations

import torch

from tiny_models import _randomize, load

VIDEO_EMBED_DIM = 33 * 4  # (noise 16 + image latent 16 + mask 1) channels × patch volume (1, 2, 2)
IMAGE_EMBED_DIM = 16 * 4  # Kandinsky 5 Image: the latent alone (model_base.Kandinsky5Image has no concat_cond)
TEXT_DIM, POOLED_DIM = 3584, 768  # Qwen2.5-VL hidden states, CLIP-L pooled output: the class defaults

# model_dim 256 = 4 heads of 64 (the default axes_dims (16, 24, 24)), as Lite's head_dim
LITE = dict(model_dim=256, ff_dim=512, time_dim=64, num_text_blocks=1, num_visual_blocks=2)
# the smallest width detection gives head_dim 128 (axes_dims (32, 48, 48)): 20 heads of 128, as Pro's head_dim
HEAD128 = dict(model_dim=2560, ff_dim=256, time_dim=64, num_text_blocks=1, num_visual_blocks=2)
# Kandinsky 5 Image (Lite image: width 2560, 16 latent channels × patch volume 4 = visual_embed_dim 64, Flux latents):
# detection picks supported_models.Kandinsky5Image by exactly these two numbers; its latents are 4-D (B, 16, H, W)
IMAGE = dict(model_dim=2560, ff_dim=256, time_dim=64, num_text_blocks=1, num_visual_blocks=2,
             visual_embed_dim=IMAGE_EMBED_DIM)


def kandinsky5_state_dict(model_dim=256, ff_dim=512, time_dim=64, num_text_blocks=1, num_visual_blocks=2,
                          visual_embed_dim=VIDEO_EMBED_DIM, seed=0) -> dict:
    """Seeded weights of a real Kandinsky5 module. The weight scale shrinks with the width (0.05 at 256) so the
    wide head_dim-128 model keeps activations of the same size as the narrow one."""
    import comfy.ldm.kandinsky5.model as k5
    import comfy.ops

    # the same axes_dims detection will choose for this width (see the module doc): the keys are the same either way
    axes_dims = (32, 48, 48) if model_dim in (4096, 2560) else (16, 24, 24)
    model = k5.Kandinsky5(in_visual_dim=16, out_visual_dim=16, in_text_dim=TEXT_DIM, in_text_dim2=POOLED_DIM,
                          time_dim=time_dim, model_dim=model_dim, ff_dim=ff_dim, visual_embed_dim=visual_embed_dim,
                          patch_size=(1, 2, 2), num_text_blocks=num_text_blocks, num_visual_blocks=num_visual_blocks,
                          axes_dims=axes_dims, operations=comfy.ops.disable_weight_init)
    return _randomize(model, seed, std=0.05 * (256 / model_dim) ** 0.5)


def kandinsky5_model(config: dict = LITE, seed: int = 0, dtype=torch.float32):
    """A ModelPatcher of a tiny Kandinsky 5 model (detected and built by ComfyUI): video for `LITE`/`HEAD128`,
    image for `IMAGE`."""
    return load(kandinsky5_state_dict(seed=seed, **config), dtype=dtype)


def kandinsky5_conditioning(tokens=12, seed=1, batch=1, **extra):
    """What Kandinsky 5's text encoder gives (comfy.text_encoders.kandinsky5): the Qwen2.5-VL hidden states
    (B, L, 3584) and, as ``pooled_output``, the CLIP-L pooled vector (B, 768) that ``model_base.Kandinsky5.encode_adm``
    returns as the model's ``y``. (It also returns an ``attention_mask`` for padded prompts; the model ignores it.)"""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, TEXT_DIM, generator=gen),
             dict({"pooled_output": torch.randn(batch, POOLED_DIM, generator=gen)}, **extra)]]


def video_latent(frames=5, height=16, width=16, batch=1):
    """An empty Kandinsky 5 video latent (B, 16, T, H, W), as ``Kandinsky5ImageToVideo``/EmptyHunyuanLatentVideo."""
    return {"samples": torch.zeros(batch, 16, frames, height, width)}


def image_latent(height=16, width=16, batch=1):
    """A 4-D latent (B, 16, H, W): an image. The sampler keeps it 4-D for Kandinsky 5 Image (Flux latents); for the
    video model (3-D HunyuanVideo latents) ``comfy.sample.fix_empty_latent_channels`` makes it one frame
    (B, 16, 1, H, W)."""
    return {"samples": torch.zeros(batch, 16, height, width)}
