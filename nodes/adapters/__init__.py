"""Model-family adapters: `adapter_for(model_patcher)` finds the one that knows this MODEL."""

from __future__ import annotations

from .base import BlockKey, ModelAdapter, UnsupportedModelError


# (ComfyUI module, class names, adapter module, adapter class): one row per family. Exact classes only: a subclass
# that adds tokens or blocks of its own (HuMo, camera control, ...) needs its own layout knowledge, so it is refused
# rather than patched wrongly. A ComfyUI without a family's module (older versions) simply lacks that row.
_FAMILIES = (
    ("comfy.ldm.wan.model", ("WanModel", "VaceWanModel"), ".wan", "WanAdapter"),
    ("comfy.ldm.wan.model_animate", ("AnimateWanModel",), ".wan", "WanAnimateAdapter"),
    ("comfy.ldm.wan.model", ("WanModel_S2V",), ".wan", "WanS2VAdapter"),
    ("comfy.ldm.hunyuan_video.model", ("HunyuanVideo",), ".hunyuan", "HunyuanVideoAdapter"),
    ("comfy.ldm.kandinsky5.model", ("Kandinsky5",), ".kandinsky5", "Kandinsky5Adapter"),
    ("comfy.ldm.lightricks.av_model", ("LTXAVModel",), ".ltx", "LTXAVAdapter"),
)


def _supported():
    from importlib import import_module

    out = []
    for module_name, class_names, adapter_module, adapter_name in _FAMILIES:
        try:
            module = import_module(module_name)
        except ImportError:
            continue  # this ComfyUI has no such family
        adapter = getattr(import_module(adapter_module, __name__), adapter_name)
        classes = tuple(getattr(module, name) for name in class_names if hasattr(module, name))
        if classes:
            out.append((classes, adapter))
    return out


SUPPORTED_FAMILIES = ("Wan 2.1 (t2v, i2v, VACE, reference-latent), Wan 2.2 (A14B experts, TI2V-5B, Animate, S2V), "
                      "HunyuanVideo 1.0/1.5, Kandinsky 5 (video), LTX-2 (video stream; audio dense)")


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
