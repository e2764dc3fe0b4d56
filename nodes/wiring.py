"""How this pack talks to a running ComfyUI model: every key it reads or writes, and the helpers that read them.

ComfyUI hands a model's per-call state around in two dicts: ``model_options`` (lives on a ModelPatcher clone) and
``transformer_options`` (one per model call, built by the sampler from the clone's own plus each cond's hooks, and
passed to every block and attention call). Everything the pack puts there is named in this file:

=====================================  ================================================================================
key                                    what it holds
=====================================  ================================================================================
``model_options[PATCH_KEY]["patch"]``  the patch holder of a clone (`patcher.MogaPatch` or `calibrate.CapturePatch`)
``PATCH_KEY``                          also the key of the holder's wrappers and callbacks (so re-applying replaces)
``ATTENTION_OVERRIDE``                 ComfyUI's attention override; MoGA and the shot captions chain onto it
``FORWARD``                            per model call: {id(holder): the facts the holder's wrapper read}
``ROUTE``                              per block call: the routing the block's self-attention call consumes
``ROUTE_SCOPE``                        while a block's self-attention module runs (families that scope the routing)
``GROUP_MAP``                          a `patcher.GroupMapProbe` asking for one frame's routing (the web view)
``COND_SHOT_PLAN``                     on a cond (through its hook): the `ShotPlan` with that cond's caption ranges
``MODEL_SHOT_CUTS``                    on a clone: latent-frame shot starts for every cond (cuts, no captions)
=====================================  ================================================================================

The shot plan reaches the model by one path: `shot_plan_of` / `shot_cuts_of` below are its only readers.
"""

from __future__ import annotations

import torch

from .shots import ShotPlan

PATCH_KEY = "moga"
ATTENTION_OVERRIDE = "optimized_attention_override"  # ComfyUI's own key (comfy.ldm.modules.attention)
FORWARD = "moga_forward"
ROUTE = "moga_route"
ROUTE_SCOPE = "moga_route_scope"  # set while a block's self-attention module runs, for families that scope the routing
GROUP_MAP = "moga_group_map"
COND_SHOT_PLAN = "moga_shots"
MODEL_SHOT_CUTS = "moga_layout_shots"
SHOT_HOOK_KEY = "moga_shots"  # key of the per-cond DIFFUSION_MODEL wrapper that splits caption attention


def call_options(args: tuple, kwargs: dict) -> dict | None:
    """The ``transformer_options`` of a DIFFUSION_MODEL call: by name, else the last positional dict (Wan and
    HunyuanVideo pass it last; LTX passes ``keyframe_idxs`` after it)."""
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    for arg in reversed(args):
        if isinstance(arg, dict):
            return arg
    return None


def video_grid(adapter, facts: dict, to: dict) -> tuple[int, int, int] | None:
    """(T', H', W') token grid of this forward's video, or None when the input is not a 5-D video latent."""
    x_shape = facts.get("x_shape")
    if x_shape is None or len(x_shape) != 5:
        return None
    return tuple(adapter.grid(x_shape, to))


def shot_plan_of(to: dict) -> ShotPlan | None:
    """The shot plan a cond carries (with its caption token ranges), or None."""
    plan = to.get(COND_SHOT_PLAN) if isinstance(to, dict) else None
    return plan if isinstance(plan, ShotPlan) else None


def shot_cuts_of(to: dict) -> tuple[int, ...]:
    """Latent-frame shot starts of this call's video: the cond's own plan, else the clone's cuts, else one shot.

    Two keys because of how ComfyUI merges them: the clone's ``transformer_options`` are merged over each cond's hook
    values, so a clone-wide plan under the cond's key would hide the caption ranges of the cond that has them.
    """
    plan = shot_plan_of(to)
    if plan is not None:
        return tuple(plan.latent_starts)
    return tuple(to.get(MODEL_SHOT_CUTS) or (0,))


def set_shot_cuts(model_patcher, latent_starts) -> None:
    """Give every cond sampled with this clone the shot cuts ``latent_starts`` (first latent frame of each shot)."""
    model_patcher.model_options.setdefault("transformer_options", {})[MODEL_SHOT_CUTS] = tuple(
        int(s) for s in latent_starts)


def shot_frames_in_call(cuts: tuple[int, ...], num_frames: int, to: dict) -> tuple[int, ...]:
    """Shot starts as latent frames of this forward; under ComfyUI's context windows, of the window."""
    index_list = window_frames(to, num_frames)
    if index_list is not None:
        starts = {0}
        for j in range(1, len(index_list)):
            global_prev, global_here = index_list[j - 1], index_list[j]
            # a cut lies between two consecutive window frames when some shot starts after the first
            if any(global_prev < s <= global_here for s in cuts) or global_here < global_prev:
                starts.add(j)
        return tuple(sorted(starts))
    return tuple(s for s in cuts if 0 <= s < num_frames) or (0,)


def window_frames(to: dict, num_frames: int) -> list[int] | None:
    """The video's latent frames this forward sees under ComfyUI's context windows (None: the whole video)."""
    index_list = getattr(to.get("context_window"), "index_list", None)
    if index_list is not None and len(index_list) == num_frames:
        return list(index_list)
    return None


def patch_of(model_patcher):
    """The patch holder installed on this clone, or None."""
    return model_patcher.model_options.get(PATCH_KEY, {}).get("patch")


def set_patch(model_patcher, holder) -> None:
    model_patcher.model_options.setdefault(PATCH_KEY, {})["patch"] = holder


def sigma_of(to: dict) -> float | None:
    """This call's sigma (the first of the batch), or None outside a sampling run."""
    sigmas = to.get("sigmas")
    if sigmas is None:
        return None
    return float(sigmas.reshape(-1)[0]) if torch.is_tensor(sigmas) else float(sigmas)


def pass_down(func, previous, adapter, q, k, v, heads, kwargs: dict):
    """An attention call an override declines, sent where it would have gone without that override: the override
    installed before it; else the attention the checkpoint chose for this layer (newer ComfyUI: a layer's
    ``comfy_attention.function``, which ComfyUI itself skips whenever any override is installed); else ``func``, the
    backend ComfyUI picked. ``kwargs`` keeps ComfyUI's ``_inside_attn_wrapper`` so nothing re-enters an override."""
    if previous is not None:
        return previous(func, q, k, v, heads, **kwargs)
    if adapter is not None:
        to = kwargs.get("transformer_options")
        token_dim = 2 if kwargs.get("skip_reshape") else 1
        preferred = adapter.preferred_attention(to if isinstance(to, dict) else {},
                                                q.shape[token_dim] == k.shape[token_dim])
        if preferred is not None:
            return preferred(q, k, v, heads, **kwargs)
    return func(q, k, v, heads, **kwargs)


def describe_override(override) -> str | None:
    """A reader's name for an attention override another node installed (None: no override)."""
    while override is not None and (hasattr(override, "_moga_patch") or hasattr(override, "_moga_shots")):
        override = getattr(override, "_moga_previous", None)  # the pack's own layers are not "another node"
    if override is None:
        return None
    inner = getattr(override, "func", override)  # functools.partial
    module = getattr(inner, "__module__", "") or ""
    if module.endswith("nodes_sparse_attention") or hasattr(override, "_block_sparse_attention_patch"):
        return "ComfyUI's Model Sparse Attention (it decides which of them run sparse)"
    name = getattr(inner, "__qualname__", None) or type(inner).__name__
    return f"the attention override {module + '.' if module else ''}{name}"
