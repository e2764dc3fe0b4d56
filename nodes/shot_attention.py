"""Per-shot captions inside the model: each shot's video tokens attend only to the global caption and their own.

The multi-shot conditioning carries a `ShotPlan` and this module's DIFFUSION_MODEL wrapper through a ComfyUI
``TransformerOptionsHook`` (HookedOnly), so only the conds that hold the captions get it, with any model and any
sampler. Per forward, the wrapper puts `shot_override` on top of whatever attention override the call carries.
The override takes the caption calls (Wan's text cross-attention; HunyuanVideo's joint attention when MoGA is not
taking that block) and runs them as one dense call per shot on the keys that shot may see, through the previous
override or the default backend. Everything else passes down untouched. MoGA itself applies the same rule in the
joint calls it takes (see `MogaPatch.attend`).
"""

from __future__ import annotations

import logging

import torch

import comfy.hooks
import comfy.patcher_extension

from . import wiring
from .adapters import adapter_for_module
from .shots import ShotPlan, frame_shots

log = logging.getLogger("moga")


def shot_hook_group(plan: ShotPlan):
    """A HookGroup carrying the plan and the per-forward wrapper, for the conds that hold the captions."""
    hook = comfy.hooks.TransformerOptionsHook(
        transformers_dict={
            wiring.COND_SHOT_PLAN: plan,
            "wrappers": {comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL: {wiring.SHOT_HOOK_KEY: [shot_wrapper]}},
        },
        hook_scope=comfy.hooks.EnumHookScope.HookedOnly,
    )
    group = comfy.hooks.HookGroup()
    group.add(hook)
    return group


def shot_wrapper(executor, *args, **kwargs):
    to = wiring.call_options(args, kwargs)
    plan = wiring.shot_plan_of(to)
    adapter = adapter_for_module(executor.class_obj)
    if plan is None or adapter is None or plan.shot_tokens is None:
        return executor(*args, **kwargs)
    facts = adapter.forward_info(args, kwargs)
    state = _ShotCall(plan, adapter, facts)
    to[wiring.ATTENTION_OVERRIDE] = _make_shot_override(state, to.get(wiring.ATTENTION_OVERRIDE))
    return executor(*args, **kwargs)


class _ShotCall:
    def __init__(self, plan: ShotPlan, adapter, facts: dict):
        self.plan, self.adapter, self.facts = plan, adapter, facts
        self._key_sets: dict = {}

    def layout(self, to: dict, q_tokens: int, k_tokens: int, joint: bool):
        grid = wiring.video_grid(self.adapter, self.facts, to)
        if grid is None:
            return None
        nv = grid[0] * grid[1] * grid[2]
        found = self.adapter.text_layout(q_tokens, k_tokens, joint, nv, self.plan.text_tokens, self.facts)
        if found is None:
            return None
        shots = frame_shots(self.plan, grid[0], wiring.window_frames(to, grid[0]))
        return found, grid, shots

    def caption_keys(self, shot: int, device) -> torch.Tensor:
        key = (shot, str(device))
        keys = self._key_sets.get(key)
        if keys is None:
            keys = torch.cat([torch.arange(a, b, device=device) for a, b in self.plan.caption_ranges(shot)])
            self._key_sets[key] = keys
        return keys


def _shot_rows(shots: list[int], tokens_per_frame: int, video_start: int, device):
    """{shot: row indices of its video tokens} for the frames of this forward."""
    by_shot: dict[int, list[int]] = {}
    for t, s in enumerate(shots):
        by_shot.setdefault(s, []).append(t)
    out = {}
    for s, frames in by_shot.items():
        f = torch.tensor(frames, device=device)
        out[s] = (video_start + f[:, None] * tokens_per_frame + torch.arange(tokens_per_frame, device=device)).flatten()
    return out


def _make_shot_override(state: _ShotCall, previous):
    def shot_override(func, q, k, v, heads=None, mask=None, attn_precision=None, skip_reshape=False,
                      skip_output_reshape=False, **kwargs):
        def down(q_, k_, v_, mask_):
            call = dict(kwargs, mask=mask_, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape)
            return wiring.pass_down(func, previous, state.adapter, q_, k_, v_, heads, call)

        to = kwargs.get("transformer_options") or {}
        if to.get(wiring.ROUTE) is not None or kwargs.get("enable_gqa"):
            return down(q, k, v, mask)  # MoGA takes this call and applies the plan itself
        token_dim = 2 if skip_reshape else 1
        joint = q.shape == k.shape
        found = state.layout(to, q.shape[token_dim], k.shape[token_dim], joint)
        if found is None:
            return down(q, k, v, mask)
        (kind, a, b), grid, shots = found
        out_dim = 2 if skip_output_reshape else 1
        if kind == "text":
            return _captions_apart(state, down, q, k, v, mask, token_dim, out_dim)
        if mask is not None and mask.dim() >= 2 and mask.shape[-2] > 1:
            return down(q, k, v, mask)  # a per-query mask we would have to cut by rows: leave the call alone
        hw = grid[1] * grid[2]
        if kind == "cross":
            return _cross(state, down, q, k, v, mask, token_dim, out_dim, a, hw, shots)
        return _joint(state, down, q, k, v, mask, token_dim, out_dim, a, b, hw, shots)

    shot_override._moga_shots = state
    shot_override._moga_previous = previous
    shot_override._moga_previous = previous
    return shot_override


def _select(t, dim, index):
    return t.index_select(dim, index).contiguous()


def _place(out, rows, part, out_dim):
    return out.index_copy_(out_dim, rows, part)


def _empty_like_rows(part, out_dim, n):
    # outputs are (B, L, H·D), or (B, H, L, D) when skip_output_reshape
    shape = list(part.shape)
    shape[out_dim] = n
    return part.new_empty(shape)


def _mask_keys(mask, keys):
    if mask is None:
        return None
    return mask.index_select(-1, keys) if mask.shape[-1] > 1 else mask


def _cross(state, down, q, k, v, mask, dim, out_dim, video_start, hw, shots):
    """Wan: text cross-attention, one call per shot over global + own caption keys."""
    n = q.shape[dim]
    rows_by_shot = _shot_rows(shots, hw, video_start, q.device)
    covered = torch.cat(list(rows_by_shot.values()))
    out = None
    for shot, rows in rows_by_shot.items():
        keys = state.caption_keys(shot, q.device)
        part = down(_select(q, dim, rows), _select(k, dim, keys), _select(v, dim, keys), _mask_keys(mask, keys))
        if out is None:
            out = _empty_like_rows(part, out_dim, n)
        _place(out, rows, part, out_dim)
    if covered.numel() < n:  # reference-latent / context tokens read every caption
        rest = torch.ones(n, dtype=torch.bool, device=q.device)
        rest[covered] = False
        rows = rest.nonzero().flatten()
        _place(out, rows, down(_select(q, dim, rows), k, v, mask), out_dim)
    return out


def _joint(state, down, q, k, v, mask, dim, out_dim, text_start, video_start, hw, shots):
    """HunyuanVideo: joint attention; video rows of a shot see global + own caption and every non-caption token."""
    n = q.shape[dim]
    text_tokens = state.plan.text_tokens
    rows_by_shot = _shot_rows(shots, hw, video_start, q.device)
    non_text = torch.cat([torch.arange(0, text_start, device=q.device),
                          torch.arange(text_start + text_tokens, n, device=q.device)])
    out = None
    covered = []
    for shot, rows in rows_by_shot.items():
        keys = torch.cat([text_start + state.caption_keys(shot, q.device), non_text]).sort().values
        part = down(_select(q, dim, rows), _select(k, dim, keys), _select(v, dim, keys), _mask_keys(mask, keys))
        if out is None:
            out = _empty_like_rows(part, out_dim, n)
        _place(out, rows, part, out_dim)
        covered.append(rows)
    rest = torch.ones(n, dtype=torch.bool, device=q.device)
    rest[torch.cat(covered)] = False
    rows = rest.nonzero().flatten()
    if rows.numel():  # caption and reference tokens attend to everything, as without shots
        _place(out, rows, down(_select(q, dim, rows), k, v, mask), out_dim)
    return out


def _captions_apart(state, down, q, k, v, mask, dim, out_dim):
    """Caption-only attention (a text refiner): block-diagonal, each caption among its own tokens."""
    out = None
    for a, b in state.plan.caption_ranges():
        rows = torch.arange(a, b, device=q.device)
        part_mask = None
        if mask is not None:
            part_mask = mask.index_select(-1, rows)
            if part_mask.dim() >= 2 and part_mask.shape[-2] > 1:
                part_mask = part_mask.index_select(-2, rows)
        part = down(_select(q, dim, rows), _select(k, dim, rows), _select(v, dim, rows), part_mask)
        if out is None:
            out = _empty_like_rows(part, out_dim, q.shape[dim])
        _place(out, rows, part, out_dim)
    return out

