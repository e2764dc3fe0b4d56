"""Model-family adapters: `adapter_for(model_patcher)` finds the one that knows this MODEL."""

from __future__ import annotations

from .base import BlockKey, ModelAdapter, UnsupportedModelError
from .hunyuan import HunyuanVideoAdapter
from .wan import WanAdapter


def _supported():
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ldm.wan.model as wan

    # exact classes: subclasses that add tokens or blocks of their own (S2V, HuMo, Animate, camera, ...) would need
    # their own layout knowledge, so they are refused rather than patched wrongly
    return [((wan.WanModel, wan.VaceWanModel), WanAdapter), ((hv.HunyuanVideo,), HunyuanVideoAdapter)]


SUPPORTED_FAMILIES = "Wan 2.1 (t2v, i2v, VACE, reference-latent), Wan 2.2 (A14B experts, TI2V-5B), HunyuanVideo 1.0/1.5"


def adapter_for(model_patcher) -> ModelAdapter:
    """The adapter of a ModelPatcher's diffusion model, or `UnsupportedModelError` naming what is supported."""
    diffusion_model = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if diffusion_model is None:
        raise UnsupportedModelError(f"expected a diffusion MODEL; got {type(model_patcher).__name__}")
    adapter = adapter_for_module(diffusion_model)
    if adapter is None:
        raise UnsupportedModelError(
            f"MoGA cannot patch {type(diffusion_model).__name__} "
            f"({type(model_patcher.model).__name__}); supported: {SUPPORTED_FAMILIES}"
        )
    return adapter


def adapter_for_module(diffusion_model) -> ModelAdapter | None:
    """The adapter of a diffusion model module, or None for a family the pack does not know."""
    for classes, adapter in _supported():
        if type(diffusion_model) in classes:
            return adapter(diffusion_model)
    return None


__all__ = ["BlockKey", "ModelAdapter", "UnsupportedModelError", "adapter_for", "adapter_for_module",
           "SUPPORTED_FAMILIES"]
