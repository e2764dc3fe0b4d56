"""One exact block-sparse kernel for MoGA's router-dependent keys (torch FlexAttention, Triton).

Every video query attends, in a single softmax and each key once, to

- ``union`` mode: its group's keys ∪ its window keys (with the neighbour-shot frames) ∪ its frame's keys ∪ the global
  tokens it may see — the whole of union attention, no inclusion–exclusion pieces, no float32 merge buffers;
- ``group`` mode: its group's keys ∪ the global tokens (the group branch of ``mean`` mode).

How. Each sample's video tokens are sorted by (group, temporal group, spatial window, frame, position). In that
order a query block's keys are its group's contiguous range (mostly *full* 128×128 blocks, which the kernel runs
without any mask) plus short runs of its window and frame inside the other groups (*partial* blocks, made exact by
a ``mask_mod`` on per-token ids). The global tokens follow the video tokens in the key sequence.

Block lists are built on the device from small per-block indicator matrices (which groups, frames, window cells a
block holds) multiplied together: ``nQ × nK`` work per sample, never N². The lists, the ids and the mask stay on the
device; shapes depend only on the sequence length, so the compiled kernel is reused from call to call and block to
block (one compilation per sequence length and batch size).

Global *queries* are not handled here: they attend to every key, and `moga_attention` runs them densely.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from .config import MogaConfig, VideoLayout
from .plan import local_plan, temporal_groups

BLOCK = 128  # FlexAttention's sparse block (queries and keys)
MODES = ("union", "group")


# ---------------------------------------------------------------------------------------------------------------
# availability and the compiled kernel


@lru_cache(maxsize=None)
def _flex_module():
    try:
        from torch.nn.attention import flex_attention as fa
    except Exception:  # torch without FlexAttention
        return None
    return fa


_COMPILED = None
# Tuning of the Triton kernel (FlexAttention's kernel_options); None = by GPU generation (`kernel_options_for`).
KERNEL_OPTIONS: dict | None = None


def kernel_options_for(device: torch.device) -> dict:
    """Hopper (sm_90): the TMA loads (H200, torch 2.11: 117.5 ms vs 128.5 ms for the default configuration on a
    187,200-token union plan, bench/union_kernel.py --sweep-kernel-options); other GPUs, where nobody has measured
    it here: FlexAttention's defaults."""
    if KERNEL_OPTIONS is not None:
        return dict(KERNEL_OPTIONS)
    major, _ = torch.cuda.get_device_capability(device)
    return {"USE_TMA": True} if major == 9 else {}
# One compiled kernel per (sequence length, batch, mode, dtype, head shape): a long ComfyUI session meets many
# lengths. Past dynamo's default limit of 8 the kernel would silently fall back to the eager path, which builds the
# N² score matrix (out of memory at video lengths); the limit is raised for these calls only.
RECOMPILE_LIMIT = 256


def _compiled_flex():
    """``torch.compile(flex_attention, dynamic=False)``, built once: without compilation FlexAttention falls back to
    a dense math path that materialises the N² scores."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(_flex_module().flex_attention, dynamic=False)
    return _COMPILED


def run_flex(q, k, v, block_mask, scale, kernel_options=None):
    """The compiled kernel on (B, H, L, D) tensors, with this module's recompile limit and kernel options."""
    import torch._dynamo

    opts = kernel_options_for(q.device) if kernel_options is None else dict(kernel_options)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT,
                                    accumulated_recompile_limit=max(RECOMPILE_LIMIT,
                                                                    torch._dynamo.config.accumulated_recompile_limit)):
        return _compiled_flex()(q, k, v, block_mask=block_mask, scale=scale, kernel_options=opts or None)


# ---------------------------------------------------------------------------------------------------------------
# static per-layout ids


@dataclass(frozen=True)
class LocalIds:
    """Per video token of one sample (token order), on the device.

    ``cell`` (Nv,) int64: (temporal group · S + spatial window) · T + frame, the static part of the sort key;
    ``frame``, ``window`` (Nv,) int32; ``lo``/``hi`` (Nv,) int32: the token's window keys are the frames
    ``[lo, hi)`` of its spatial window (its temporal group plus the adjacent shots' neighbour frames, which are
    contiguous with it); ``window_cells`` (n_tg·S, T·S) float: 1 where a query cell (temporal group, window) may see a
    key cell (frame, window) through the window branch.
    """

    num_frames: int
    num_windows: int
    num_tgroups: int
    cell: torch.Tensor
    frame: torch.Tensor
    window: torch.Tensor
    tgroup: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    window_cells: torch.Tensor
    frame_lo: torch.Tensor  # (T,) int64: lo of each frame's temporal group
    frame_hi: torch.Tensor


_IDS_CACHE: dict = {}


def local_ids(layout: VideoLayout, cfg: MogaConfig, device: torch.device) -> LocalIds:
    key = (layout.grid, layout.shots, cfg.window, cfg.temporal_group, cfg.neighbor_frames, str(device))
    ids = _IDS_CACHE.get(key)
    if ids is None:
        if len(_IDS_CACHE) >= 16:
            _IDS_CACHE.pop(next(iter(_IDS_CACHE)))
        ids = _IDS_CACHE[key] = _build_local_ids(layout, cfg, device)
    return ids


def _build_local_ids(layout: VideoLayout, cfg: MogaConfig, device) -> LocalIds:
    plan = local_plan(layout, cfg)
    t_len, s_count = plan.num_frames, plan.num_windows
    tgs = temporal_groups(layout, cfg.temporal_group, cfg.neighbor_frames)
    tg_of_frame = torch.empty(t_len, dtype=torch.int64)
    lo_of_tg, hi_of_tg = [], []
    for i, g in enumerate(tgs):
        tg_of_frame[g.frames[0]:g.frames[1]] = i
        frames = list(range(*g.frames)) + list(g.neighbors)
        lo, hi = min(frames), max(frames) + 1
        if hi - lo != len(set(frames)):  # the definition in `plan` guarantees this; the mask relies on it
            raise AssertionError(f"window key frames of temporal group {g} are not contiguous")
        lo_of_tg.append(lo)
        hi_of_tg.append(hi)
    frame = torch.from_numpy(plan.frame_of)
    window = torch.from_numpy(plan.window_of)
    tgroup = tg_of_frame[frame]
    lo_t, hi_t = torch.tensor(lo_of_tg), torch.tensor(hi_of_tg)
    cell = (tgroup * s_count + window) * t_len + frame
    n_tg = len(tgs)
    window_cells = torch.zeros(n_tg, s_count, t_len, s_count)
    for i in range(n_tg):
        for s in range(s_count):
            window_cells[i, s, lo_of_tg[i]:hi_of_tg[i], s] = 1.0
    i32 = lambda t: t.to(device=device, dtype=torch.int32)
    return LocalIds(t_len, s_count, n_tg, cell.to(device), i32(frame), i32(window), i32(tgroup),
                    i32(lo_t[tgroup]), i32(hi_t[tgroup]),
                    window_cells.reshape(n_tg * s_count, t_len * s_count).to(device),
                    lo_t[tg_of_frame].to(device), hi_t[tg_of_frame].to(device))


# ---------------------------------------------------------------------------------------------------------------
# the block plan


@dataclass
class BlockPlan:
    """What one FlexAttention call needs, for ``B`` samples.

    ``q_order`` (B, Nv) int64: the video positions of the queries in sorted order; ``q_pos`` (B, Nv): the same as
    token positions within a sample (prefix + video position); ``kv_pos`` (B, Nv + Ng): the sorted video keys, then
    the global tokens; ``block_mask``: FlexAttention's BlockMask; ``partial_blocks`` / ``full_blocks`` (B,) int64 on the
    device: block pairs computed with and without the mask; ``seq_lengths`` (Nv, Nv + Ng).
    """

    q_order: torch.Tensor
    q_pos: torch.Tensor
    kv_pos: torch.Tensor
    block_mask: object
    partial_blocks: torch.Tensor
    full_blocks: torch.Tensor
    seq_lengths: tuple[int, int]
    mask_mod: object
    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor

    def block_pairs(self) -> torch.Tensor:
        """(B,) block pairs the kernel computes (partial + full), on the device."""
        return self.partial_blocks + self.full_blocks


def _ordered(hit: torch.Tensor, num_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, nQ, nK) bool → (counts (B, 1, nQ) int32, indices (B, 1, nQ, nK) int32), the True columns first.

    A cumulative sum and one scatter (O(nQ·nK), no sort); entries past a row's count are left 0 (FlexAttention
    never reads them)."""
    counts = hit.sum(-1, dtype=torch.int32)
    target = torch.where(hit, hit.cumsum(-1, dtype=torch.int32) - 1, num_cols).long()
    cols = torch.arange(num_cols, dtype=torch.int32, device=hit.device).expand_as(target)
    out = torch.zeros(*hit.shape[:-1], num_cols + 1, dtype=torch.int32, device=hit.device)
    out.scatter_(-1, target, cols)  # misses land in the sink column num_cols
    return counts, out[..., :num_cols].contiguous()


def _indicator(block_of: torch.Tensor, value: torch.Tensor, valid: torch.Tensor, num_blocks: int, width: int,
               dtype) -> torch.Tensor:
    """(B, L) block index, (B, L) value in [0, width), (B, L) bool → (B, num_blocks, width) 0/1 membership."""
    b = block_of.shape[0]
    out = torch.zeros(b, num_blocks * width + 1, dtype=dtype, device=block_of.device)
    flat = torch.where(valid, block_of * width + value, num_blocks * width)  # invalid → sink
    out.scatter_(1, flat, 1.0)
    return out[:, :-1].view(b, num_blocks, width)


def _make_mask_mod(mode, cfg, num_groups, q_ids, k_ids, keep, q_second=None):
    """The exact per-token rule inside partial blocks (indices in sorted order).

    Ids are coded so that each test is one or two comparisons (the mask runs per score, beside the matrix
    products): keys that are not video tokens carry frame and window codes of -1, which no query range holds.
    q: group (-1 pad), frame, window range [lo, hi) over codes ``window·T + frame``; k: group (M global, -2 pad),
    frame, window code, global index. ``q_second``: the queries' second groups (-1 pad), or None."""
    qg, qf, qlo, qhi = q_ids
    kg, kf, kw, kgi = k_ids
    m = num_groups
    use_window = mode == "union" and cfg.window is not None
    use_frame = mode == "union" and cfg.frame_branch
    has_glob = kgi is not None

    def mask_mod(b, h, q_idx, kv_idx):
        gk = kg[b, kv_idx]
        hit = qg[b, q_idx] == gk  # pad queries (-1) and pad keys (-2) never match; global keys are M
        if q_second is not None:
            hit = hit | (q_second[b, q_idx] == gk)
        if use_frame:
            hit = hit | (qf[b, q_idx] == kf[b, kv_idx])
        if use_window:
            wk = kw[b, kv_idx]
            hit = hit | ((wk >= qlo[b, q_idx]) & (wk < qhi[b, q_idx]))
        if has_glob:
            glob = gk == m
            if keep is not None:
                glob = glob & keep[qf[b, q_idx], kgi[b, kv_idx]]
            hit = hit | glob
        return hit

    return mask_mod


def build_block_plan(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor, mode: str = "union",
                     global_keep: torch.Tensor | None = None, need_grad: bool = False,
                     groups2: torch.Tensor | None = None) -> BlockPlan:
    """Block lists and ids for ``groups`` (B, Nv) int64 in [0, M) on the device (ids are not checked here).

    ``global_keep``: None (every video query sees every global token) or (T, Ng) bool per latent frame.
    ``need_grad``: also build the transposed (query-block) lists FlexAttention needs for a backward pass.
    ``groups2`` (B, Nv): each query's second group (second-group mode): its keys join the query's key set.

    Keys are sorted by (group, temporal group, window, frame); queries by (group, second group, temporal group,
    window, frame), so that a query block mostly shares both groups and the second group's key blocks can run
    unmasked too (without ``groups2`` both orders are the same).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b, nv = groups.shape
    device = groups.device
    m = cfg.num_groups
    ids = local_ids(layout, cfg, device)
    t_len, s_count = ids.num_frames, ids.num_windows
    ng, n, p = layout.num_global_tokens, layout.num_tokens, layout.prefix
    n_cells = ids.num_tgroups * s_count * t_len

    # sort: (group, temporal group, window, frame, position); the keys are unique, so the order is deterministic
    pos = torch.arange(nv, device=device)
    key = (groups.long() * n_cells + ids.cell[None, :]) * nv + pos[None, :]
    order = key.argsort(dim=1)  # (B, Nv): the keys' order
    q_order = order
    if groups2 is not None:
        q_key = ((groups.long() * m + groups2.long()) * n_cells + ids.cell[None, :]) * nv + pos[None, :]
        q_order = q_key.argsort(dim=1)
    g_sorted = groups.gather(1, order).to(torch.int32)
    gq_sorted = groups.gather(1, q_order).to(torch.int32)
    take = lambda t: t[order]  # static per-token ids in the keys' sorted order, (B, Nv)
    take_q = lambda t: t[q_order]  # in the queries' sorted order
    f_sorted, s_sorted = take(ids.frame), take(ids.window)
    fq_sorted, sq_sorted = take_q(ids.frame), take_q(ids.window)

    nq_blocks = math.ceil(nv / BLOCK)
    nk_blocks = math.ceil((nv + ng) / BLOCK)
    lq, lk = nq_blocks * BLOCK, nk_blocks * BLOCK

    def padded(t, length, fill):
        out = torch.full((b, length), fill, dtype=torch.int32, device=device)
        out[:, :t.shape[1]] = t
        return out

    w_code = s_sorted * t_len  # window codes: window·T + frame
    wq_code = sq_sorted * t_len
    qg = padded(gq_sorted, lq, -1)
    qg2 = padded(groups2.gather(1, q_order).to(torch.int32), lq, -1) if groups2 is not None else None
    qf = padded(fq_sorted, lq, 0)
    qlo = padded(wq_code + take_q(ids.lo), lq, 0)
    qhi = padded(wq_code + take_q(ids.hi), lq, 0)
    glob_g = torch.full((b, ng), m, dtype=torch.int32, device=device)
    glob_none = torch.full((b, ng), -1, dtype=torch.int32, device=device)
    kg = padded(torch.cat([g_sorted, glob_g], 1), lk, -2)
    kf = padded(torch.cat([f_sorted, glob_none], 1), lk, -1)
    kw = padded(torch.cat([w_code + f_sorted, glob_none], 1), lk, -1)
    kgi = None
    if ng:
        gi = torch.arange(ng, dtype=torch.int32, device=device).expand(b, ng)
        kgi = padded(torch.cat([torch.zeros_like(g_sorted), gi], 1), lk, 0)
    keep = None
    if global_keep is not None and not bool(global_keep.all()):
        keep = global_keep.to(device)

    # ---- block level: which (query block, key block) pairs hold any allowed pair, which hold only allowed pairs
    work = torch.float16 if device.type == "cuda" else torch.float32  # 0/1 products: sums > 0 stay > 0
    q_block = (torch.arange(lq, device=device) // BLOCK).expand(b, lq)
    k_block = (torch.arange(lk, device=device) // BLOCK).expand(b, lk)
    q_valid = qg >= 0
    k_video = (kg >= 0) & (kg < m)
    gq = _indicator(q_block, qg.long().clamp_min(0), q_valid, nq_blocks, m, work)  # (B, nQ, M)
    gk = _indicator(k_block, kg.long().clamp(0, m - 1), k_video, nk_blocks, m, work)  # (B, nK, M)
    hit = torch.bmm(gq, gk.transpose(1, 2)) > 0  # (B, nQ, nK)
    if qg2 is not None:
        gq2 = _indicator(q_block, qg2.long().clamp_min(0), q_valid, nq_blocks, m, work)
        hit |= torch.bmm(gq2, gk.transpose(1, 2)) > 0
    if mode == "union" and cfg.frame_branch:
        fq = _indicator(q_block, qf.long(), q_valid, nq_blocks, t_len, work)
        fk = _indicator(k_block, kf.long().clamp_min(0), k_video, nk_blocks, t_len, work)
        hit |= torch.bmm(fq, fk.transpose(1, 2)) > 0
    if mode == "union" and cfg.window is not None:
        q_cell = qg.new_zeros(b, lq, dtype=torch.int64)
        q_cell[:, :nv] = take_q(ids.tgroup).long() * s_count + sq_sorted.long()
        wq = _indicator(q_block, q_cell, q_valid, nq_blocks, ids.num_tgroups * s_count, work)
        k_cell = (kf.long() * s_count + kw.long().div(t_len, rounding_mode="floor")).clamp_min(0)
        wk = _indicator(k_block, k_cell, k_video, nk_blocks, t_len * s_count, work)
        reach = torch.bmm(wq, ids.window_cells.to(work).expand(b, -1, -1))  # (B, nQ, T·S): key cells in reach
        hit |= torch.bmm((reach > 0).to(work), wk.transpose(1, 2)) > 0
    if ng:
        k_glob = torch.zeros(nk_blocks, dtype=torch.bool, device=device)
        k_glob[nv // BLOCK:(nv + ng - 1) // BLOCK + 1] = True
        hit |= q_valid.view(b, nq_blocks, BLOCK).any(-1)[:, :, None] & k_glob[None, None, :]

    # full: every key of the block a video key of one group g, and every query of the block sees group g (its
    # group, or its second group): per query block and group, how many of its queries see that group
    cover = torch.zeros(b, nq_blocks * m + 1, dtype=torch.int32, device=device)
    sink = nq_blocks * m
    ones = torch.ones(b, lq, dtype=torch.int32, device=device)
    cover.scatter_add_(1, torch.where(q_valid, q_block * m + qg.long().clamp_min(0), sink), ones)
    if qg2 is not None:  # a second group equal to the first adds nothing (counted once)
        extra = q_valid & (qg2 != qg)
        cover.scatter_add_(1, torch.where(extra, q_block * m + qg2.long().clamp_min(0), sink), ones)
    all_see = cover[:, :-1].view(b, nq_blocks, m) == BLOCK  # (B, nQ, M): every query (none padded) sees g
    k_single = (gk.sum(-1) == 1) & k_video.view(b, nk_blocks, BLOCK).all(-1)
    k_grp = gk.argmax(-1)  # (B, nK), meaningful where k_single
    full = k_single[:, None, :] & all_see.gather(2, k_grp[:, None, :].expand(b, nq_blocks, nk_blocks))
    partial = hit & ~full

    partial = partial[:, None]  # (B, 1, nQ, nK): one list for all heads
    full = full[:, None]
    kv_num, kv_idx = _ordered(partial, nk_blocks)
    full_num, full_idx = _ordered(full, nk_blocks)
    mask_mod = _make_mask_mod(mode, cfg, m, (qg, qf, qlo, qhi), (kg, kf, kw, kgi), keep, qg2)
    fa = _flex_module()
    if fa is None:
        raise RuntimeError("this torch has no FlexAttention (torch.nn.attention.flex_attention); use another backend")
    kwargs = {}
    if "compute_q_blocks" in inspect.signature(fa.BlockMask.from_kv_blocks).parameters:
        kwargs["compute_q_blocks"] = need_grad
    block_mask = fa.BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK,
                                             mask_mod=mask_mod, seq_lengths=(nv, nv + ng), **kwargs)

    q_pos = p + q_order
    glob_pos = torch.cat([torch.arange(p, device=device), torch.arange(p + nv, n, device=device)])
    kv_pos = torch.cat([p + order, glob_pos[None, :].expand(b, ng)], 1)
    return BlockPlan(q_order, q_pos, kv_pos, block_mask, kv_num.sum((1, 2)).long(), full_num.sum((1, 2)).long(),
                     (nv, nv + ng), mask_mod, kv_num, kv_idx, full_num, full_idx)


# ---------------------------------------------------------------------------------------------------------------
# cost


# Time of one 128×128 block pair relative to dense attention's time per block pair (cuDNN on the same GPU). Measured
# on one H200 (torch 2.11, Triton 3.6, bf16, D = 128, TMA loads; bench/union_kernel.py, docs/PERFORMANCE.md): full
# blocks 1.25 (187,200 tokens) and 1.15 (580,320); partial blocks, whose mask is evaluated per score, 2.09 and 1.97.
# The layer goes dense when the estimate reaches 1.
FULL_BLOCK_COST = 1.25
PARTIAL_BLOCK_COST = 2.1


def relative_cost(partial_blocks: int, full_blocks: int, batch: int, q_len: int, kv_len: int) -> float:
    """Estimated time of the block kernel over dense attention's for the same (video) queries and keys."""
    dense_pairs = float(batch) * q_len * kv_len
    return (full_blocks * FULL_BLOCK_COST + partial_blocks * PARTIAL_BLOCK_COST) * BLOCK * BLOCK / dense_pairs


def key_set_pairs(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor,
                  global_keep: torch.Tensor | None = None, groups2: torch.Tensor | None = None) -> int:
    """Σ over video queries of their key-set sizes (all samples): |G ∪ W ∪ F ∪ Glob| in union mode,
    |G ∪ Glob| + |W ∪ Glob| + |F ∪ Glob| (the branches present) in mean mode. From per-(group, frame, window)
    token counts, O(Nv) — no pairs are enumerated. ``global_keep``: None, (Ng,) or (T, Ng) bool. ``groups2``
    (B, Nv), union mode: G is the query's group plus its second group."""
    return int(round(float(key_set_pairs_tensor(layout, cfg, groups, global_keep, groups2))))


def key_set_pairs_tensor(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor,
                         global_keep: torch.Tensor | None = None, groups2: torch.Tensor | None = None) -> torch.Tensor:
    """`key_set_pairs` as a 0-dim float64 tensor on ``groups``' device, with no read-back (a caller gathers it
    with its other statistics into one transfer)."""
    ids = local_ids(layout, cfg, groups.device)
    b, nv = groups.shape
    m, t_len, s_count = cfg.num_groups, ids.num_frames, ids.num_windows
    cells = m * t_len * s_count
    cell = (groups.long().clamp(0, m - 1) * t_len + ids.frame.long()[None]) * s_count + ids.window.long()[None]
    offset = torch.arange(b, device=groups.device)[:, None] * cells
    c = torch.bincount((cell + offset).reshape(-1), minlength=b * cells).view(b, m, t_len, s_count).double()
    n_g = c.sum((2, 3))[:, :, None, None]  # |G| for queries of group g
    cw = c.sum(1, keepdim=True)  # (B, 1, T, S): tokens of (frame, window), all groups
    lo, hi = ids.frame_lo, ids.frame_hi

    def window_sum(t):  # Σ over key frames [lo(f), hi(f)) of t (…, T, S), per query frame f
        cs = torch.cat([torch.zeros_like(t[:, :, :1]), t.cumsum(2)], 2)
        return cs[:, :, hi] - cs[:, :, lo]

    hw = float(layout.tokens_per_frame)
    n_glob = layout.num_global_tokens
    if global_keep is None:
        glob = torch.full((t_len,), float(n_glob), dtype=torch.float64, device=groups.device)
    else:
        keep = global_keep.to(groups.device)
        glob = (keep.expand(t_len, n_glob) if keep.dim() == 1 else keep).sum(1).double()
    glob = glob[None, None, :, None]  # per query frame
    use_w, use_f = cfg.window is not None, cfg.frame_branch
    if cfg.combine == "union":
        size = n_g + glob
        if use_w:
            size = size + window_sum(cw) - window_sum(c)
        if use_f:
            size = size + hw - c.sum(3, keepdim=True)
        if use_w and use_f:
            size = size - cw + c
        if groups2 is not None:
            # a second group g2 ≠ g adds |G2| − |G2 ∩ W| − |G2 ∩ F| + |G2 ∩ W ∩ F| keys (G2 is disjoint from G)
            extra = n_g.expand(b, m, t_len, s_count).clone()
            if use_w:
                extra = extra - window_sum(c)
            if use_f:
                extra = extra - c.sum(3, keepdim=True)
            if use_w and use_f:
                extra = extra + c
            g2 = groups2.long().clamp(0, m - 1)
            at = (g2 * t_len + ids.frame.long()[None]) * s_count + ids.window.long()[None]  # (B, Nv) into (M, T, S)
            per_query = extra.reshape(b, -1).gather(1, at)
            added = torch.where(groups2.long() != groups.long(), per_query, 0.0).sum()
    else:
        size = n_g + glob
        if use_w:
            size = size + window_sum(cw) + glob
        if use_f:
            size = size + hw + glob
    total = (c * size).sum()
    if cfg.combine == "union" and groups2 is not None:
        total = total + added
    return total


# ---------------------------------------------------------------------------------------------------------------
# running it


# Largest gathered copy of q, k or v (bytes) the kernel call takes at once: heads run in chunks below it, so the
# sorted copies add a few hundred MB instead of 5× the size of q (at 580,320 tokens, B = 2, 12 heads of 128: 3.6 GB
# each for all heads at once).
HEAD_CHUNK_BYTES = 1 << 30


def heads_per_chunk(batch: int, kv_len: int, heads: int, head_dim: int, itemsize: int,
                    budget: int | None = None) -> int:
    """The largest divisor of ``heads`` whose sorted k/v copy stays within ``budget`` bytes (at least 1): equal
    chunks, so one compiled kernel serves them all."""
    budget = HEAD_CHUNK_BYTES if budget is None else budget
    per_head = batch * kv_len * head_dim * itemsize
    fits = max(1, budget // max(per_head, 1))
    return max(c for c in range(1, heads + 1) if heads % c == 0 and c <= fits)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float,
                    compiled: bool = True, chunk_bytes: int | None = None) -> torch.Tensor:
    """The video queries' attention under ``plan``: q, k, v (B, N, H, D) (any strides) → (B, Nv, H, D) in token
    order. Heads run in chunks (`heads_per_chunk`).

    ``compiled=False`` runs FlexAttention eagerly (a dense math path that evaluates the mask everywhere and ignores
    the block lists: for small CPU checks of the mask only).
    """
    b, n, h, d = q.shape
    nv, lk = plan.seq_lengths
    out = q.new_empty(b, nv, h, d)
    step = heads_per_chunk(b, lk, h, d, q.element_size(), chunk_bytes)
    # Row gathers per sample with index_select (whole rows of hc·D values): advanced indexing with a (B, 1) batch
    # index ran at ~0.7 TB/s on an H200 (6.6 ms of a 134 ms layer at 187,200 tokens for q, k, v and the output).
    def gather(t, pos, heads):  # (B, N, H, D) → (B, L, hc, D) rows pos (B, L), sorted order
        out_t = t.new_empty(b, pos.shape[1], heads.stop - heads.start, d)
        for i in range(b):
            torch.index_select(t[i, :, heads], 0, pos[i], out=out_t[i])
        return out_t

    for h0 in range(0, h, step):
        heads = slice(h0, h0 + step)
        qs, ks, vs = gather(q, plan.q_pos, heads), gather(k, plan.kv_pos, heads), gather(v, plan.kv_pos, heads)
        args = (qs.transpose(1, 2), ks.transpose(1, 2), vs.transpose(1, 2))
        if compiled:
            o = run_flex(*args, plan.block_mask, scale)
        else:
            o = _flex_module().flex_attention(*args, block_mask=plan.block_mask, scale=scale)
        del qs, ks, vs
        for i in range(b):  # back to token order: row j of the sorted output is video token q_order[i, j]
            out[i, :, heads].index_copy_(0, plan.q_order[i], o[i].transpose(0, 1))
        del o
    return out



def emulate_block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan,
                            scale: float) -> torch.Tensor:
    """What the kernel computes under ``plan``, in float64 with plain torch: per query block, the listed partial
    blocks under ``mask_mod`` and the listed full blocks unmasked. For tests of the block lists on small layouts.
    Returns (B, Nv, H, D) in token order, float64."""
    b, n, h, d = q.shape
    nv, lk_real = plan.seq_lengths
    batch = torch.arange(b, device=q.device)[:, None]
    qs, ks, vs = q.double()[batch, plan.q_pos], k.double()[batch, plan.kv_pos], v.double()[batch, plan.kv_pos]
    out = torch.zeros(b, nv, h, d, dtype=torch.float64, device=q.device)
    nq_blocks = plan.kv_num_blocks.shape[-1]
    for bi in range(b):
        for qb in range(nq_blocks):
            rows = torch.arange(qb * BLOCK, min((qb + 1) * BLOCK, nv), device=q.device)
            allowed = torch.zeros(len(rows), lk_real, dtype=torch.bool, device=q.device)
            for kind, num, idx in (("partial", plan.kv_num_blocks, plan.kv_indices),
                                   ("full", plan.full_kv_num_blocks, plan.full_kv_indices)):
                for j in idx[bi, 0, qb, :int(num[bi, 0, qb])].tolist():
                    cols = torch.arange(j * BLOCK, min((j + 1) * BLOCK, lk_real), device=q.device)
                    if kind == "full":
                        allowed[:, cols] = True
                    else:
                        bb = torch.full((len(rows), len(cols)), bi, device=q.device)
                        allowed[:, cols] = plan.mask_mod(bb, None, rows[:, None].expand(-1, len(cols)),
                                                         cols[None, :].expand(len(rows), -1))
            scores = torch.einsum("qhd,khd->hqk", qs[bi, rows], ks[bi]) * scale
            scores = scores.masked_fill(~allowed[None], float("-inf"))
            out[bi, rows] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), vs[bi])
    return torch.empty_like(out).index_put_((batch, plan.q_order), out)  # back to token order
