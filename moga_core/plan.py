"""Which tokens attend to which: the static local structure of a layout and the router-dependent packings.

Everything here is index arithmetic over the *video* tokens ``v = t·H·W + h·W + w`` of one sample; `expand`
lifts a per-sample index list to a batch, where the flat row of video token ``v`` of sample ``b`` in a
``(B·N, H, D)`` tensor is ``b·N + prefix + v``.

Definitions (shared by the fast path and `reference_attention`, and tested on hand-made layouts):

- spatial window of a token: rows split as ``floor(i·H/nh)``, columns as ``floor(j·W/nw)``; ``s = i·nw + j``;
- temporal groups: each shot ``[a, b)`` is cut into chunks of ``temporal_group`` latent frames starting at ``a``
  (the last chunk may be shorter), so no temporal group crosses a cut;
- window block = (temporal group, spatial window); its queries are its own tokens; its keys add, in the same
  spatial window, the last ``neighbor_frames`` frames of the previous shot (to the shot's first temporal group)
  and the first ``neighbor_frames`` frames of the next shot (to the shot's last temporal group);
- frame branch: the tokens of the query's latent frame.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .backends import SegmentedProblem, make_problem
from .config import MogaConfig, VideoLayout


@dataclass(frozen=True)
class TemporalGroup:
    frames: tuple[int, int]  # [start, end) latent frames, inside one shot
    neighbors: tuple[int, ...]  # extra key frames from adjacent shots


def temporal_groups(layout: VideoLayout, temporal_group: int, neighbor_frames: int) -> list[TemporalGroup]:
    ranges = layout.shot_ranges()
    out: list[TemporalGroup] = []
    for shot_index, (a, b) in enumerate(ranges):
        starts = list(range(a, b, temporal_group))
        for j, start in enumerate(starts):
            end = min(start + temporal_group, b)
            neighbors: list[int] = []
            if neighbor_frames > 0 and j == 0 and shot_index > 0:
                pa, pb = ranges[shot_index - 1]
                neighbors += list(range(max(pa, pb - neighbor_frames), pb))
            if neighbor_frames > 0 and j == len(starts) - 1 and shot_index < len(ranges) - 1:
                na, nb = ranges[shot_index + 1]
                neighbors += list(range(na, min(nb, na + neighbor_frames)))
            out.append(TemporalGroup((start, end), tuple(neighbors)))
    return out


def window_of_rows_cols(h: int, w: int, window: tuple[int, int]) -> np.ndarray:
    """(H, W) int array: the spatial window index of each patch position."""
    nh, nw = window
    row = (np.arange(nh + 1) * h) // nh
    col = (np.arange(nw + 1) * w) // nw
    wr = np.searchsorted(row, np.arange(h), side="right") - 1
    wc = np.searchsorted(col, np.arange(w), side="right") - 1
    return wr[:, None] * nw + wc[None, :]


@dataclass
class LocalPlan:
    """Static local structure of one sample (numpy int64, relative video indices)."""

    num_frames: int
    num_windows: int  # S (1 when the window branch is off)
    num_blocks: int
    frame_of: np.ndarray  # (Nv,)
    window_of: np.ndarray  # (Nv,)
    block_of: np.ndarray  # (Nv,)
    # window problem: queries sorted by block, keys = block tokens + neighbour-frame tokens
    w_q_order: np.ndarray
    w_q_counts: np.ndarray
    w_k_index: np.ndarray
    w_k_counts: np.ndarray
    w_k_block: np.ndarray
    # (frame, window) cells
    ts_order: np.ndarray
    ts_counts: np.ndarray


def build_local_plan(layout: VideoLayout, cfg: MogaConfig) -> LocalPlan:
    t_len, h, w = layout.grid
    hw = h * w
    nv = layout.num_video_tokens
    window = cfg.window if cfg.window is not None else (1, 1)
    s_count = window[0] * window[1]
    win_hw = window_of_rows_cols(h, w, window).reshape(-1)  # (HW,)
    frame_of = np.repeat(np.arange(t_len), hw)
    window_of = np.tile(win_hw, t_len)

    groups = temporal_groups(layout, cfg.temporal_group, cfg.neighbor_frames)
    tg_of_frame = np.empty(t_len, dtype=np.int64)
    for i, g in enumerate(groups):
        tg_of_frame[g.frames[0]:g.frames[1]] = i
    block_of = tg_of_frame[frame_of] * s_count + window_of

    ts_key = frame_of * s_count + window_of
    ts_order = np.argsort(ts_key, kind="stable")
    ts_counts = np.bincount(ts_key, minlength=t_len * s_count)
    ts_offsets = np.concatenate([[0], np.cumsum(ts_counts)])

    def cell(t: int, s: int) -> np.ndarray:
        c = t * s_count + s
        return ts_order[ts_offsets[c]:ts_offsets[c + 1]]

    w_q_order = np.argsort(block_of, kind="stable")
    w_q_counts = np.bincount(block_of, minlength=len(groups) * s_count)
    k_parts, k_counts, k_blocks = [], [], []
    for i, g in enumerate(groups):
        for s in range(s_count):
            frames = list(range(g.frames[0], g.frames[1])) + list(g.neighbors)
            part = np.concatenate([cell(t, s) for t in frames])
            k_parts.append(part)
            k_counts.append(len(part))
            k_blocks.append(np.full(len(part), i * s_count + s, dtype=np.int64))
    w_k_index = np.concatenate(k_parts) if k_parts else np.zeros(0, dtype=np.int64)
    w_k_block = np.concatenate(k_blocks) if k_blocks else np.zeros(0, dtype=np.int64)
    assert w_q_counts.sum() == nv
    return LocalPlan(t_len, s_count, len(groups) * s_count, frame_of, window_of, block_of, w_q_order, w_q_counts,
                     w_k_index, np.asarray(k_counts, dtype=np.int64), w_k_block, ts_order, ts_counts)


_PLAN_CACHE: OrderedDict = OrderedDict()
_PLAN_CACHE_SIZE = 16


def local_plan(layout: VideoLayout, cfg: MogaConfig) -> LocalPlan:
    key = (layout.grid, layout.shots, cfg.window, cfg.temporal_group, cfg.neighbor_frames)
    plan = _PLAN_CACHE.get(key)
    if plan is None:
        plan = build_local_plan(layout, cfg)
        _PLAN_CACHE[key] = plan
        while len(_PLAN_CACHE) > _PLAN_CACHE_SIZE:
            _PLAN_CACHE.popitem(last=False)
    else:
        _PLAN_CACHE.move_to_end(key)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# lifting to a batch and to the device


@dataclass
class Term:
    """One segmented problem plus where its query rows go in the (B·Nv, H, D) video output."""

    problem: SegmentedProblem
    out_index: torch.Tensor | None  # (Lq,) video-flat rows; None = identity (already in token order)
    sign: float = 1.0
    _inverse: torch.Tensor | None = None

    def inverse(self) -> torch.Tensor:
        """The permutation back to token order (computed once; static terms are reused across calls)."""
        if self._inverse is None:
            inv = torch.empty_like(self.out_index)
            inv[self.out_index] = torch.arange(self.out_index.numel(), device=inv.device, dtype=inv.dtype)
            self._inverse = inv
        return self._inverse


def _batch_rows(rel: np.ndarray, batch: int, stride: int, offset: int) -> np.ndarray:
    return (np.arange(batch, dtype=np.int64)[:, None] * stride + offset + rel[None, :]).reshape(-1)


_DEVICE_CACHE: OrderedDict = OrderedDict()


def _cached(key, build):
    value = _DEVICE_CACHE.get(key)
    if value is None:
        value = build()
        _DEVICE_CACHE[key] = value
        while len(_DEVICE_CACHE) > 64:
            _DEVICE_CACHE.popitem(last=False)
    else:
        _DEVICE_CACHE.move_to_end(key)
    return value


def static_terms(layout: VideoLayout, cfg: MogaConfig, batch: int, device: torch.device) -> dict[str, Term]:
    """The router-independent problems: ``window``, ``frame`` and (for union) ``window&frame``."""
    key = ("static", layout, cfg.window, cfg.temporal_group, cfg.neighbor_frames, cfg.frame_branch,
           cfg.combine, batch, str(device))
    return _cached(key, lambda: _build_static_terms(layout, cfg, batch, device))


def _build_static_terms(layout, cfg, batch, device) -> dict[str, Term]:
    plan = local_plan(layout, cfg)
    n, nv, p = layout.num_tokens, layout.num_video_tokens, layout.prefix
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)
    terms: dict[str, Term] = {}
    if cfg.window is not None:
        q_full = _batch_rows(plan.w_q_order, batch, n, p)
        q_vid = _batch_rows(plan.w_q_order, batch, nv, 0)
        k_full = _batch_rows(plan.w_k_index, batch, n, p)
        prob = make_problem(as_t(q_full), as_t(k_full), np.tile(plan.w_q_counts, batch),
                            np.tile(plan.w_k_counts, batch), device, stable=True)
        terms["window"] = Term(prob, as_t(q_vid))
    if cfg.frame_branch:
        hw = layout.tokens_per_frame
        counts = [hw] * (plan.num_frames * batch)
        if layout.num_global_tokens == 0:
            prob = make_problem(None, None, counts, None, device, stable=True)  # identity: frames are contiguous
            terms["frame"] = Term(prob, None)
        else:
            rel = np.arange(nv, dtype=np.int64)
            prob = make_problem(as_t(_batch_rows(rel, batch, n, p)), None, counts, None, device, stable=True)
            terms["frame"] = Term(prob, as_t(_batch_rows(rel, batch, nv, 0)))
    if cfg.combine == "union" and cfg.window is not None and cfg.frame_branch:
        q_full = _batch_rows(plan.ts_order, batch, n, p)
        prob = make_problem(as_t(q_full), None, np.tile(plan.ts_counts, batch), None, device, stable=True)
        terms["window&frame"] = Term(prob, as_t(_batch_rows(plan.ts_order, batch, nv, 0)), sign=-1.0)
    return terms


def _static_tensor(layout, cfg, name: str, device) -> torch.Tensor:
    def build():
        plan = local_plan(layout, cfg)
        return torch.from_numpy(np.ascontiguousarray(getattr(plan, name))).to(device)

    return _cached(("tensor", layout, cfg.window, cfg.temporal_group, cfg.neighbor_frames, name, str(device)), build)


def group_terms(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor, want: tuple[str, ...]) -> dict[str, Term]:
    """Router-dependent problems for ``groups`` (B, Nv) int64 on the device.

    ``want`` may hold ``group`` (+), ``group&window`` (−), ``group&frame`` (−), ``group&window&frame`` (+).
    All their segment sizes come to the host in one transfer (one device sync per call).
    """
    batch, nv = groups.shape
    m = cfg.num_groups
    device = groups.device
    n, p = layout.num_tokens, layout.prefix
    b_ids = torch.arange(batch, device=device, dtype=torch.int64)[:, None]
    sorts: dict[str, tuple] = {}

    def vid_to_full(idx_vid: torch.Tensor) -> torch.Tensor:
        if n == nv:
            return idx_vid
        return idx_vid + p + (idx_vid // nv) * (n - nv)

    if "group" in want:
        key = (b_ids * m + groups).reshape(-1)
        sorts["group"] = (key, batch * m)
    if "group&frame" in want:
        frame_of = _static_tensor(layout, cfg, "frame_of", device)
        t_len = layout.grid[0]
        key = ((b_ids * t_len + frame_of[None, :]) * m + groups).reshape(-1)
        sorts["group&frame"] = (key, batch * t_len * m)
    if "group&window&frame" in want:
        plan = local_plan(layout, cfg)
        frame_of = _static_tensor(layout, cfg, "frame_of", device)
        window_of = _static_tensor(layout, cfg, "window_of", device)
        cells = plan.num_frames * plan.num_windows
        key = ((b_ids * cells + frame_of[None, :] * plan.num_windows + window_of[None, :]) * m + groups).reshape(-1)
        sorts["group&window&frame"] = (key, batch * cells * m)
    if "group&window" in want:
        plan = local_plan(layout, cfg)
        block_of = _static_tensor(layout, cfg, "block_of", device)
        w_k_index = _static_tensor(layout, cfg, "w_k_index", device)
        w_k_block = _static_tensor(layout, cfg, "w_k_block", device)
        key = ((b_ids * plan.num_blocks + block_of[None, :]) * m + groups).reshape(-1)
        sorts["group&window"] = (key, batch * plan.num_blocks * m)
        k_key = ((b_ids * plan.num_blocks + w_k_block[None, :]) * m + groups[:, w_k_index]).reshape(-1)
        k_rows = (b_ids * nv + w_k_index[None, :]).reshape(-1)  # video-flat rows of the extended keys
        sorts["group&window:k"] = (k_key, batch * plan.num_blocks * m)

    orders, counts = {}, []
    for name, (key, bins) in sorts.items():
        orders[name] = torch.argsort(key, stable=True)
        counts.append(torch.bincount(key, minlength=bins))
    counts.append(((groups < 0) | (groups >= m)).sum().reshape(1))  # out-of-range ids, read with the sizes
    sizes = [c.numel() for c in counts[:-1]]
    host = torch.cat(counts).cpu().numpy()  # the one sync
    if host[-1]:
        bad = groups[(groups < 0) | (groups >= m)]
        raise ValueError(
            f"groups must be ids in [0, {m}) for num_groups = {m}; got {int(host[-1])} ids outside, e.g. "
            f"{bad[:5].tolist()}"
        )
    host_counts, pos = {}, 0
    for name, size in zip(sorts, sizes):
        host_counts[name] = host[pos:pos + size]
        pos += size

    terms: dict[str, Term] = {}
    signs = {"group": 1.0, "group&window": -1.0, "group&frame": -1.0, "group&window&frame": 1.0}
    for name in ("group", "group&frame", "group&window&frame", "group&window"):
        if name not in sorts:
            continue
        order = orders[name]
        if name == "group&window":
            k_vid = k_rows[orders["group&window:k"]]
            prob = make_problem(vid_to_full(order), vid_to_full(k_vid), host_counts[name],
                                host_counts["group&window:k"], device)
        else:
            prob = make_problem(vid_to_full(order), None, host_counts[name], None, device)
        terms[name] = Term(prob, order, signs[name])
    return terms
