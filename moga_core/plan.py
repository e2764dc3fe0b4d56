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
    """One segmented problem plus where its query rows go in the (B·Nv, H, D) video output.

    ``rows``: set when the term covers only some video queries (``out_index`` then lists those rows, and the others
    get no keys from it: output 0, log-sum-exp −inf); None when ``out_index`` is a permutation of all rows.
    """

    problem: SegmentedProblem
    out_index: torch.Tensor | None  # (Lq,) video-flat rows; None = identity (already in token order)
    sign: float = 1.0
    _inverse: torch.Tensor | None = None
    rows: int | None = None

    def inverse(self) -> torch.Tensor:
        """The permutation back to token order (computed once; static terms are reused across calls)."""
        if self.rows is not None:
            raise RuntimeError("internal: a term over some of the queries has no inverse permutation")
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


GROUP_TERM_SIGNS = {"group": 1.0, "group&window": -1.0, "group&frame": -1.0, "group&window&frame": 1.0}


def group_terms(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor, want: tuple[str, ...],
                groups2: torch.Tensor | None = None) -> dict[str, Term]:
    """Router-dependent problems for ``groups`` (B, Nv) int64 on the device.

    ``want`` may hold ``group`` (+), ``group&window`` (−), ``group&frame`` (−), ``group&window&frame`` (+), and
    the same names with ``group2`` for the second group (``groups2`` (B, Nv)): the queries of segment (sample, X,
    g) are those whose *second* group is g, its keys those whose group is g (X: nothing, the window block, the frame,
    the (frame, window) cell). A query whose second group is its first, or whose segment has no keys, is left out of
    a ``group2`` term (``Term.rows``): in union mode G1 and G2 are then disjoint, so the inclusion–exclusion of
    (G1 ∪ G2) with W and F is the G1 pieces plus the G2 pieces.
    All their segment sizes come to the host in one transfer (one device sync per call).
    """
    batch, nv = groups.shape
    m = cfg.num_groups
    device = groups.device
    n, p = layout.num_tokens, layout.prefix
    b_ids = torch.arange(batch, device=device, dtype=torch.int64)[:, None]
    if any(name.startswith("group2") for name in want) and groups2 is None:
        raise ValueError(f"group_terms: {want} asks for second-group terms but groups2 is None")

    def vid_to_full(idx_vid: torch.Tensor) -> torch.Tensor:
        if n == nv:
            return idx_vid
        return idx_vid + p + (idx_vid // nv) * (n - nv)

    # per kind X: the segment key of each token, (sample, X, group) → key; the key tokens' own keys for group&window
    kinds = {name.replace("group2", "group") for name in want}
    seg_keys: dict[str, tuple] = {}  # kind -> (key per video token as a function of its group ids, bins)
    if "group" in kinds:
        seg_keys["group"] = (lambda g: (b_ids * m + g).reshape(-1), batch * m)
    if "group&frame" in kinds:
        frame_of = _static_tensor(layout, cfg, "frame_of", device)
        t_len = layout.grid[0]
        seg_keys["group&frame"] = (lambda g: ((b_ids * t_len + frame_of[None, :]) * m + g).reshape(-1),
                                   batch * t_len * m)
    if "group&window&frame" in kinds:
        plan = local_plan(layout, cfg)
        frame_of = _static_tensor(layout, cfg, "frame_of", device)
        window_of = _static_tensor(layout, cfg, "window_of", device)
        cells = plan.num_frames * plan.num_windows
        seg_keys["group&window&frame"] = (
            lambda g: ((b_ids * cells + frame_of[None, :] * plan.num_windows + window_of[None, :]) * m + g).reshape(-1),
            batch * cells * m)
    k_window = None
    if "group&window" in kinds:
        plan = local_plan(layout, cfg)
        block_of = _static_tensor(layout, cfg, "block_of", device)
        w_k_index = _static_tensor(layout, cfg, "w_k_index", device)
        w_k_block = _static_tensor(layout, cfg, "w_k_block", device)
        bins = batch * plan.num_blocks * m
        seg_keys["group&window"] = (lambda g: ((b_ids * plan.num_blocks + block_of[None, :]) * m + g).reshape(-1),
                                    bins)
        k_key = ((b_ids * plan.num_blocks + w_k_block[None, :]) * m + groups[:, w_k_index]).reshape(-1)
        k_rows = (b_ids * nv + w_k_index[None, :]).reshape(-1)  # video-flat rows of the extended keys
        k_window = (k_key, k_rows)

    # each piece: (query keys, bins, key keys or None = the queries themselves, key rows)
    sorts: dict[str, tuple] = {}
    for name in want:
        kind = name.replace("group2", "group")
        key_of, bins = seg_keys[kind]
        own = key_of(groups)
        if kind == "group&window":
            k_key, k_rows = k_window
        else:
            k_key, k_rows = (own, None) if name != kind else (None, None)
        if name == kind:
            sorts[name] = (own, bins, k_key, k_rows)
            continue
        # second group: queries keyed by their second group; out (to the sink bin) where it adds nothing
        q_key = key_of(groups2)
        has_keys = torch.bincount(k_key, minlength=bins)[q_key.clamp(0, bins - 1)] > 0
        valid = (groups2 != groups).reshape(-1) & has_keys & (groups2 >= 0).reshape(-1) & (groups2 < m).reshape(-1)
        sorts[name] = (torch.where(valid, q_key, bins), bins, k_key, k_rows)

    orders, k_orders, counts = {}, {}, []
    for name, (q_key, bins, k_key, _) in sorts.items():
        orders[name] = torch.argsort(q_key, stable=True)
        counts.append(torch.bincount(q_key, minlength=bins + 1)[:bins + 1])  # the last bin: left-out queries
        if k_key is not None:
            k_orders[name] = torch.argsort(k_key, stable=True)
            counts.append(torch.bincount(k_key, minlength=bins))
    bad_ids = ((groups < 0) | (groups >= m)).sum().reshape(1)
    if groups2 is not None:
        bad_ids = bad_ids + ((groups2 < 0) | (groups2 >= m)).sum().reshape(1)
    counts.append(bad_ids)  # out-of-range ids, read with the sizes
    sizes = [c.numel() for c in counts[:-1]]
    host = torch.cat(counts).cpu().numpy()  # the one sync
    if host[-1]:
        bad = groups[(groups < 0) | (groups >= m)]
        if groups2 is not None:
            bad = torch.cat([bad, groups2[(groups2 < 0) | (groups2 >= m)]])
        raise ValueError(
            f"groups (and groups2) must be ids in [0, {m}) for num_groups = {m}; got {int(host[-1])} ids outside, "
            f"e.g. {bad[:5].tolist()}"
        )
    chunks = iter(np.split(host[:-1], np.cumsum(sizes)[:-1]) if sizes else [])

    terms: dict[str, Term] = {}
    for name, (q_key, bins, k_key, k_rows) in sorts.items():
        q_counts = next(chunks)
        k_counts = next(chunks) if k_key is not None else None
        order = orders[name]
        kind = name.replace("group2", "group")
        rows = None
        if name != kind:  # second group: only the queries it adds keys to (the sink bin sorts last)
            used = int(q_counts[:bins].sum())
            if used == 0:
                continue
            order = order[:used]
            rows = batch * nv
        k_index = None
        if k_key is not None:
            k_sorted = k_orders[name]
            k_index = vid_to_full(k_rows[k_sorted] if k_rows is not None else k_sorted)
        prob = make_problem(vid_to_full(order), k_index, q_counts[:bins], k_counts, device)
        terms[name] = Term(prob, order, GROUP_TERM_SIGNS[kind], rows=rows)
    return terms
