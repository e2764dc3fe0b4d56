"""Tiny models of every supported family, built from ComfyUI's real classes and loaded through its real loader.

Each builder instantiates the family's real ComfyUI module with a tiny config, fills it with seeded random weights
and hands the resulting state dict (the real key layout) to ``comfy.sd.load_diffusion_model_state_dict``, so model
detection, the model_base class, latent formats and model_sampling are ComfyUI's own. Conditioning is built as the
real text/vision encoders would output it (shapes and dict keys), since those encoders are multi-GB downloads.
"""

from __future__ import annotations

import torch


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.05) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, tensor in module.state_dict().items():
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm_q.weight",
                          "norm_k.weight", "query_norm.weight", "key_norm.weight", "norm_k_img.weight")):
            value = 1.0 + 0.1 * torch.randn(tensor.shape, generator=gen)
        else:
            value = std * torch.randn(tensor.shape, generator=gen)
        sd[name] = value.to(torch.float32)
    return sd


def wan_state_dict(dim=256, layers=2, ffn=512, in_dim=16, out_dim=16, model_type="t2v", seed=0, vace_layers=None,
                   in_dim_ref_conv=None) -> dict:
    import comfy.ldm.wan.model as wan
    import comfy.ops

    kwargs = dict(model_type=model_type, patch_size=(1, 2, 2), text_len=512, in_dim=in_dim, dim=dim, ffn_dim=ffn,
                  freq_dim=256, text_dim=4096, out_dim=out_dim, num_heads=dim // 128, num_layers=layers,
                  window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                  operations=comfy.ops.disable_weight_init)
    if in_dim_ref_conv is not None:
        kwargs["in_dim_ref_conv"] = in_dim_ref_conv
    if model_type.startswith("camera"):
        model = wan.CameraWanModel(**kwargs)
        return _randomize(model, seed)
    if vace_layers is not None:
        kwargs["model_type"] = "vace"
        model = wan.VaceWanModel(vace_layers=vace_layers, vace_in_dim=96, **kwargs)
    else:
        model = wan.WanModel(**kwargs)
    return _randomize(model, seed)


def wan_animate_state_dict(dim=256, layers=5, ffn=512, seed=0) -> dict:
    """Wan 2.2 Animate: i2v layout (36 input channels, CLIP-vision tokens) plus the pose embedding, the face motion
    encoder and one face adapter block per five blocks (ComfyUI detects the model by the first of those)."""
    import comfy.ldm.wan.model_animate as animate
    import comfy.ops

    model = animate.AnimateWanModel(patch_size=(1, 2, 2), text_len=512, in_dim=36, dim=dim, ffn_dim=ffn, freq_dim=256,
                                    text_dim=4096, out_dim=16, num_heads=dim // 128, num_layers=layers,
                                    operations=comfy.ops.disable_weight_init)
    return _randomize(model, seed)


def wan_s2v_state_dict(dim=256, layers=2, ffn=512, seed=0) -> dict:
    """Wan 2.2 S2V: t2v blocks plus the causal audio encoder, the audio injectors and FramePack's motion packer."""
    import comfy.ldm.wan.model as wan
    import comfy.ops

    model = wan.WanModel_S2V(patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=dim, ffn_dim=ffn, freq_dim=256,
                             text_dim=4096, out_dim=16, num_heads=dim // 128, num_layers=layers,
                             audio_inject_layers=[0], operations=comfy.ops.disable_weight_init)
    return _randomize(model, seed)


def hunyuan_state_dict(hidden=256, double=2, single=2, in_channels=16, context_dim=64, seed=0, v15=False) -> dict:
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops

    params = dict(in_channels=in_channels, out_channels=in_channels if not v15 else 32, vec_in_dim=None if v15 else 768,
                  context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=hidden // 128,
                  depth=double, depth_single_blocks=single, axes_dim=[16, 56, 56], theta=256, patch_size=[1, 2, 2],
                  qkv_bias=True, guidance_embed=False, byt5=False, meanflow=False, use_cond_type_embedding=False,
                  vision_in_dim=None, meanflow_sum=False)
    if v15:
        params.update(use_cond_type_embedding=True, vision_in_dim=1152, meanflow=False, meanflow_sum=True, byt5=False)
    model = hv.HunyuanVideo(image_model="hunyuan_video", operations=comfy.ops.disable_weight_init, **params)
    return _randomize(model, seed)


def load(sd: dict, dtype=torch.float32):
    import comfy.sd

    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})
    assert model is not None, "ComfyUI did not detect the tiny model"
    return model


def wan_conditioning(tokens=12, seed=1, batch=1, **extra):
    """What a UMT5 text encoder gives Wan: (B, L, 4096) per prompt."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, 4096, generator=gen), dict(extra)]]


def hunyuan_conditioning(tokens=10, context_dim=64, seed=1, pad=3):
    """What HunyuanVideo's LLaVA encoder gives: (B, L, C), the CLIP-L pooled vector and a text attention mask."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(1, tokens, dtype=torch.long)  # integer, as the tokenizer's mask (ComfyUI makes it additive)
    if pad:
        mask[:, -pad:] = 0  # padded text tokens, which the model masks out of attention
    return [[torch.randn(1, tokens, context_dim, generator=gen),
             {"pooled_output": torch.randn(1, 768, generator=gen), "attention_mask": mask}]]


def video_latent(channels=16, frames=5, height=16, width=16, batch=1):
    return {"samples": torch.zeros(batch, channels, frames, height, width)}
