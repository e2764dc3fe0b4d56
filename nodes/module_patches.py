"""Object patches that need their own module, and the diffusion model each thread is running.

ComfyUI applies a clone's object patches (``add_object_patch("diffusion_model.blocks.3.ffn.forward", fn)``) to
whichever model object that clone loads. That is not always the model the patch was made on: with dynamic VRAM (the
default on NVIDIA GPUs) a conditioning with hooks — every multi-shot prompt — makes `CFGGuider.inner_set_conds` run a
*non-dynamic delegate*, a freshly loaded copy of the model that carries the clone's patches
(``ModelPatcher.get_non_dynamic_delegate``). A replacement that closed over a module of the model it was made on would
then run that model's weights, which are not resident ("Expected all tensors to be on the same device").

So nothing here holds a module. A `ModuleForward` holds the module's *path*; when it is called it looks the module up
in the diffusion model this thread is running, which `running_model_wrapper` (a DIFFUSION_MODEL wrapper: its executor's
``class_obj`` is the diffusion model being run) records for the duration of each forward.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

import comfy.patcher_extension

RUNNING_KEY = "moga_running_model"  # key of the DIFFUSION_MODEL wrapper that records the running diffusion model
_DIFFUSION_PREFIX = "diffusion_model."

_local = threading.local()


def running_model_wrapper(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: the diffusion model being run (``executor.class_obj``) is this thread's running
    model until its forward returns (a stack, so nested forwards of another model restore the outer one)."""
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(executor.class_obj)
    try:
        return executor(*args, **kwargs)
    finally:
        stack.pop()


def running_diffusion_model() -> torch.nn.Module | None:
    """The diffusion model whose forward this thread is inside (innermost), or None outside any forward."""
    stack = _local.__dict__.get("stack")
    return stack[-1] if stack else None


def resolve(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The module at dotted ``path`` (relative to ``root``)."""
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part)
    return module


class ModuleForward:
    """The replacement of ``<path>.forward``: ``behaviour(module, *args, **kwargs)`` on the module found at ``path``
    in the diffusion model being run (``path`` is relative to the BaseModel, as object patches are:
    ``"diffusion_model.blocks.3.ffn"``). ``behaviour`` calls ``type(module).forward(module, ...)`` for the original."""

    def __init__(self, path: str, behaviour: Callable, what: str):
        if not path.startswith(_DIFFUSION_PREFIX):
            raise ValueError(f"expected a module path under 'diffusion_model.', got {path!r}")
        self.path = path
        self.inner_path = path[len(_DIFFUSION_PREFIX):]
        self.behaviour = behaviour
        self.what = what

    def __call__(self, *args, **kwargs):
        model = running_diffusion_model()
        if model is None:
            raise RuntimeError(
                f"MoGA: {self.path}.forward ({self.what}) was called outside a diffusion-model forward of the patched "
                "model, so the module it belongs to cannot be found; run the model through ComfyUI's sampler (its "
                "DIFFUSION_MODEL wrappers must run), or sample with an unpatched clone")
        return self.behaviour(resolve(model, self.inner_path), *args, **kwargs)

    def __deepcopy__(self, memo):  # ComfyUI versions that deep-copy options must not copy the behaviour's state
        return self

    def __repr__(self):
        return f"ModuleForward({self.path!r}, {self.what})"


def add_module_patch(model_patcher, path: str, behaviour: Callable, what: str) -> None:
    """Object-patch ``<path>.forward`` on ``model_patcher`` (a clone) with ``behaviour`` run on the module at ``path``
    of the model being run, and make sure the clone records its running model."""
    model_patcher.add_object_patch(f"{path}.forward", ModuleForward(path, behaviour, what))
    install_running_model(model_patcher)


def install_running_model(model_patcher) -> None:
    """Add `running_model_wrapper` to a clone once (re-adding replaces it)."""
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    model_patcher.remove_wrappers_with_key(kind, RUNNING_KEY)
    model_patcher.add_wrapper_with_key(kind, RUNNING_KEY, running_model_wrapper)
