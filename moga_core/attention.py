"""`moga_attention` (the fast path) and `reference_attention` (the O(N²) masked definition it is tested against).

Key sets of a video query q (global queries always attend densely to every token):

- G(q): the video tokens routed to q's group (same sample);
- W(q): q's window block and its neighbour frames (see `plan`), if the window branch is on;
- F(q): the tokens of q's latent frame, if the frame branch is on;
- Glob: the prefix/suffix global tokens, in every key set.

``combine="mean"``: out = (p·A(G∪Glob) + A(W∪Glob) + A(F∪Glob)) / n_branches, A = softmax attention over a key set.
``combine="union"``: out = A(G ∪ W ∪ F ∪ Glob), each key once. The fast path gets it exactly from disjoint-free
pieces by inclusion–exclusion of the softmax normalisers (Z(A∪B) = Z(A) + Z(B) − Z(A∩B), likewise for the
numerators), every piece being a varlen problem: G, W, F, G∩W, G∩F, W∩F, G∩W∩F, Glob.
"""

from __future__ import annotations

import warnings

import torch
from torch.profiler import record_function

from .backends import default_scale, flex_available, lse_dtype, sdpa_with_lse, segmented_attention
from .blocksparse import BLOCK, block_attention, build_block_plan, key_set_pairs_tensor, relative_cost
from .config import MogaConfig, VideoLayout, check_config_for_layout
from .plan import Term, group_terms, static_terms, temporal_groups, window_of_rows_cols
from .router import RandomGroups


# ---------------------------------------------------------------------------------------------------------------
# validation


def _check_inputs(q, k, v, layout, cfg, groups, gate):
    if not isinstance(layout, VideoLayout):
        raise ValueError(f"layout must be a VideoLayout, got {type(layout).__name__}")
    if not isinstance(cfg, MogaConfig):
        raise ValueError(f"cfg must be a MogaConfig, got {type(cfg).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a tensor (B, N, H, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be (B, N, H, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must have the same shape (B, N, H, D); got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    b, n = q.shape[:2]
    if n != layout.num_tokens:
        raise ValueError(
            f"q has {n} tokens but the layout expects {layout.num_tokens} = prefix {layout.prefix} + "
            f"grid {layout.grid} ({layout.num_video_tokens}) + suffix {layout.suffix}"
        )
    check_config_for_layout(cfg, layout)
    nv = layout.num_video_tokens

    def video_part(t, name):
        if not torch.is_tensor(t):
            raise ValueError(f"{name} must be a tensor (B, Nv) or (B, N), got {type(t).__name__}")
        if t.dim() != 2 or t.shape[0] != b or t.shape[1] not in (nv, n):
            raise ValueError(
                f"{name} must be (B, Nv) = ({b}, {nv}) for the video tokens or (B, N) = ({b}, {n}); "
                f"got {tuple(t.shape)}"
            )
        if t.shape[1] == n and n != nv:
            t = t[:, layout.prefix:layout.prefix + nv]
        return t.to(q.device)

    if groups is None:
        if cfg.num_groups != 1:
            raise ValueError(f"groups (B, Nv) are required when num_groups = {cfg.num_groups} > 1")
        groups = torch.zeros(b, nv, dtype=torch.int64, device=q.device)
    else:
        groups = video_part(groups, "groups")
        if groups.is_floating_point() or groups.dtype == torch.bool:
            raise ValueError(f"groups must be an integer tensor of group ids, got dtype {groups.dtype}")
        groups = groups.long()
    if gate is not None:
        gate = video_part(gate, "gate")
        if not gate.is_floating_point():
            raise ValueError(f"gate must be floating point (the router's winning probability), got {gate.dtype}")
    return groups, gate


def _check_groups2(groups2, groups, layout, cfg):
    """-> (B, Nv) int64 second groups (``cfg.second_group``), or None; a ValueError when they come unasked or
    are missing."""
    if not cfg.second_group:
        if groups2 is not None:
            raise ValueError("groups2 was given but cfg.second_group is False; set MogaConfig(second_group=True) "
                             "to attend to the second group")
        return None
    if groups2 is None:
        raise ValueError("cfg.second_group is True: groups2 (B, Nv), each query's second group "
                         "(moga_core.router.second_choice), is required")
    b, nv, n = groups.shape[0], layout.num_video_tokens, layout.num_tokens
    if not torch.is_tensor(groups2) or groups2.dim() != 2 or groups2.shape[0] != b or groups2.shape[1] not in (nv, n):
        raise ValueError(f"groups2 must be (B, Nv) = ({b}, {nv}) or (B, N) = ({b}, {n}); got "
                         f"{tuple(getattr(groups2, 'shape', ())) or type(groups2).__name__}")
    if groups2.is_floating_point() or groups2.dtype == torch.bool:
        raise ValueError(f"groups2 must be an integer tensor of group ids, got dtype {groups2.dtype}")
    if groups2.shape[1] == n and n != nv:
        groups2 = groups2[:, layout.prefix:layout.prefix + nv]
    return groups2.to(groups.device).long()


def _check_global_keep(global_keep, layout, device):
    """-> None, or a (T, Ng) bool table: which global tokens each latent frame's video queries may attend to."""
    if global_keep is None:
        return None
    ng, t_len = layout.num_global_tokens, layout.grid[0]
    ok = torch.is_tensor(global_keep) and global_keep.dtype == torch.bool and \
        tuple(global_keep.shape) in ((ng,), (t_len, ng))
    if not ok:
        raise ValueError(f"global_keep must be a bool tensor of shape ({ng},) or ({t_len}, {ng}) (per latent frame) "
                         f"for the {ng} prefix + suffix tokens, got "
                         f"{getattr(global_keep, 'dtype', type(global_keep).__name__)} "
                         f"{tuple(getattr(global_keep, 'shape', ()))}")
    global_keep = global_keep.to(device)
    return global_keep.expand(t_len, ng) if global_keep.dim() == 1 else global_keep


def _global_term(q, k, v, layout, glob_idx, keep, scale):
    """Video queries against the global keys: (B·Nv, H, D) output and (B·Nv, H) lse (−inf where none may be seen)."""
    b, _, h, d = q.shape
    p, nv, hw = layout.prefix, layout.num_video_tokens, layout.tokens_per_frame
    qv = q[:, p:p + nv].transpose(1, 2)  # (B, H, Nv, D)
    if keep is None or bool(keep.all()):
        kg = k.index_select(1, glob_idx).transpose(1, 2)
        vg = v.index_select(1, glob_idx).transpose(1, 2)
        og, lg = sdpa_with_lse(qv, kg, vg, scale, True)
    else:
        og = q.new_zeros(b, h, nv, d)
        lg = torch.full((b, h, nv), float("-inf"), dtype=lse_dtype(q.dtype), device=q.device)
        patterns, frame_pattern = torch.unique(keep, dim=0, return_inverse=True)
        for i in range(patterns.shape[0]):
            if not bool(patterns[i].any()):
                continue  # these frames see no global token
            frames = (frame_pattern == i).nonzero().flatten()
            rows = (frames[:, None] * hw + torch.arange(hw, device=q.device)).flatten()
            key_idx = glob_idx[patterns[i]]
            kg = k.index_select(1, key_idx).transpose(1, 2)
            vg = v.index_select(1, key_idx).transpose(1, 2)
            o, l = sdpa_with_lse(qv.index_select(2, rows), kg, vg, scale, True)
            og = og.index_copy(2, rows, o)
            lg = lg.index_copy(2, rows, l.to(lg.dtype))
    return og.transpose(1, 2).reshape(b * nv, h, d), lg.transpose(1, 2).reshape(b * nv, h)


# ---------------------------------------------------------------------------------------------------------------
# the fast path


def _run_term(term: Term, qf, kf, vf, scale, need_lse, backend):
    """Attention of one term, returned in video-token order: (B·Nv, H, D), (B·Nv, H) or None."""
    prob = term.problem
    if prob.q_index is None:
        qp, kp, vp = qf, kf, vf
    else:
        qp = qf.index_select(0, prob.q_index)
        k_index = prob.q_index if prob.k_index is None else prob.k_index
        kp = kf.index_select(0, k_index)
        vp = vf.index_select(0, k_index)
    out, lse = segmented_attention(qp, kp, vp, prob, scale, need_lse, backend)
    if term.rows is not None:  # some queries only: the others see no key of this piece (weight 0 in the merge)
        full = out.new_zeros(term.rows, *out.shape[1:])
        full_lse = torch.full((term.rows, lse.shape[1]), float("-inf"), dtype=lse.dtype, device=lse.device)
        return full.index_copy(0, term.out_index, out), full_lse.index_copy(0, term.out_index, lse)
    if term.out_index is not None:
        inv = term.inverse()
        out = out.index_select(0, inv)
        lse = lse.index_select(0, inv) if lse is not None else None
    return out, lse


def _merge(parts):
    """Combine (sign, out (L, H, D), lse (L, H)) pieces over disjoint-or-included key sets into one softmax output.

    Positive pieces set the reference maximum; negative pieces (intersections) never exceed it. float32 throughout.
    """
    ref = None
    for sign, _, lse in parts:
        if sign > 0:
            ref = lse if ref is None else torch.maximum(ref, lse)
    num = None
    den = None
    for sign, out, lse in parts:
        w = torch.exp(lse - ref) * sign
        contrib = out.to(w.dtype) * w.unsqueeze(-1)
        num = contrib if num is None else num + contrib
        den = w if den is None else den + w
    return num / den.unsqueeze(-1)


_BLOCK_KERNEL_FAILURE: list[str] = []  # why the block kernel could not be built in this process (then: varlen)


def _block_kernel_failed(exc: Exception) -> None:
    """`auto` met a block kernel that does not build here (a Triton or compiler problem): say so once, and keep to
    the varlen paths for the rest of the process."""
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    _BLOCK_KERNEL_FAILURE.append(reason)
    warnings.warn(f"MoGA: the block-sparse FlexAttention kernel failed to build or run here ({reason}); using the "
                  "slower varlen attention paths from now on. backend='flex' shows the full error.", stacklevel=3)


def use_block_kernel(cfg: MogaConfig, q: torch.Tensor) -> bool:
    """Whether the router-dependent keys run on the one block-sparse kernel (`blocksparse`) for these inputs.

    ``backend="flex"`` asks for it (an error where it cannot run); ``auto`` takes it on CUDA with Triton for head
    dims FlexAttention compiles well (16…256, a power of two) and no autograd (distillation keeps the varlen paths,
    whose gradients are tested)."""
    if cfg.backend == "flex":
        if not flex_available(q.device):
            raise ValueError(f"backend 'flex' needs a CUDA device, torch's FlexAttention and Triton; got {q.device} "
                             f"with torch {torch.__version__}. Use backend='auto'.")
        return True
    if cfg.backend != "auto" or not flex_available(q.device) or _BLOCK_KERNEL_FAILURE:
        return False
    d = q.shape[-1]
    need_grad = torch.is_grad_enabled() and q.requires_grad
    return 16 <= d <= 256 and d & (d - 1) == 0 and not need_grad and q.dtype in (torch.float16, torch.bfloat16)


def _count_parts(layout, cfg, groups, global_keep, groups2) -> list[torch.Tensor]:
    """The statistics of a call as device tensors, to be read back in one transfer (see `_counted`): the key-set
    pairs (0-dim) and the (B, M) token counts per group of ids in [0, M)."""
    b, m = groups.shape[0], cfg.num_groups
    offset = torch.arange(b, device=groups.device)[:, None] * m
    sizes = torch.bincount((groups + offset).reshape(-1), minlength=b * m)
    return [key_set_pairs_tensor(layout, cfg, groups, global_keep, groups2), sizes]


def _counted(flat: torch.Tensor, batch: int, num_groups: int) -> tuple[int, torch.Tensor]:
    """`_count_parts` read back (one float64 CPU vector) → (key-set pairs, (B, M) int64 group sizes)."""
    return int(round(float(flat[0]))), flat[1:].long().view(batch, num_groups)


def _tensor_bytes(obj) -> int:
    """Device bytes held by the tensors of a plan (dataclass fields, dicts/lists of terms), each counted once."""
    seen: set[int] = set()
    total = 0

    def visit(x, depth=0):
        nonlocal total
        if depth > 4 or x is None:
            return
        if torch.is_tensor(x):
            if id(x) not in seen:
                seen.add(id(x))
                total += x.numel() * x.element_size()
            return
        if isinstance(x, dict):
            for value in x.values():
                visit(value, depth + 1)
        elif isinstance(x, (list, tuple)):
            for value in x:
                visit(value, depth + 1)
        elif hasattr(x, "__dataclass_fields__"):
            for name in x.__dataclass_fields__:
                visit(getattr(x, name, None), depth + 1)

    visit(obj)
    return total


class PlanCache:
    """The router-dependent structure of calls whose groups are the same on every call (content-free groups:
    `RandomGroups`), kept for reuse across the steps of one sampling run.

    `moga_attention` stores, per ``(plan_key, layout, cfg, batch, device, path)``: on the block kernel the block plan,
    the id check and the statistics it read back; on the varlen paths the group terms and the statistics. A hit
    skips building them and the call's one device-to-host read-back, so a cached call queues its GPU work without
    waiting for the GPU. The caller promises that equal ``plan_key`` values mean equal ``groups``, ``groups2`` and
    ``global_keep``.

    Entries are kept until ``max_bytes`` of device memory is held; later ones are not stored (a run visits its blocks
    in the same order at every step, so evicting the least recently used entry would evict each before its reuse).
    ``hits`` / ``misses`` / ``skipped`` (not stored: over budget) count lookups since the last `clear`.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0 (device bytes the cache may hold), got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: dict = {}
        self.bytes = 0
        self.hits = self.misses = self.skipped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key):
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key, entry: dict) -> bool:
        """Store ``entry`` unless that would pass ``max_bytes``; True when stored."""
        if key in self._entries:
            return True
        size = _tensor_bytes(entry)
        if self.bytes + size > self.max_bytes:
            self.skipped += 1
            return False
        self._entries[key] = entry
        self.bytes += size
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
        self.hits = self.misses = self.skipped = 0


# Why a union call ran densely under ``dense_fallback`` (``stats["dense_reason"]``; `moga_attention`).
DENSE_ONE_GROUP = "one group holds every token"  # union with one group is dense attention by definition
DENSE_AT_LENGTH = "estimated sparse cost not below dense at this length"  # equal groups would not pay off either
DENSE_UNEQUAL = "groups too unequal to pay off"  # equal groups would have paid off; these groups do not
DENSE_REASONS = (DENSE_ONE_GROUP, DENSE_AT_LENGTH, DENSE_UNEQUAL)

# the cost estimate of equal random groups per (layout, cfg, block kernel or not): content-free, so one per shape
_EQUAL_GROUPS_COST: dict = {}


def _group_pieces(cfg: MogaConfig, second: bool) -> tuple[str, ...]:
    """The varlen path's router-dependent pieces in union mode (inclusion–exclusion over group, window, frame)."""
    want = ["group"]
    if cfg.window is not None:
        want.append("group&window")
    if cfg.frame_branch:
        want.append("group&frame")
    if cfg.window is not None and cfg.frame_branch:
        want.append("group&window&frame")
    if second:
        want += [name.replace("group", "group2", 1) for name in want]
    return tuple(want)


def _varlen_relative_cost(pairs: int, batch: int, nv: int) -> float:
    # seven varlen pieces at FlashAttention-2 rates plus float32 merges: about twice dense's rate per score
    return 2.0 * pairs / float(batch * nv * nv)


def equal_groups_cost(layout: VideoLayout, cfg: MogaConfig, block_kernel: bool, device=None) -> float:
    """The dense-fallback estimate (union mode; 1 = dense attention's time) for exactly equal random groups
    (`RandomGroups`, seed 0; second groups one id further) at this layout: the cheapest groups the estimate knows,
    so where it is not below 1 no grouping pays off at this length. Cached per (layout, cfg, path)."""
    key = (layout, cfg, bool(block_kernel))
    cost = _EQUAL_GROUPS_COST.get(key)
    if cost is None:
        device = torch.device("cpu") if device is None else torch.device(device)
        nv, m = layout.num_video_tokens, cfg.num_groups
        groups = RandomGroups(m, seed=0).partition(nv, device)[None]
        groups2 = (groups + 1) % m if cfg.second_group else None
        if block_kernel:
            plan = build_block_plan(layout, cfg, groups, "union", None, groups2=groups2)
            counts = torch.stack([plan.partial_blocks.sum(), plan.full_blocks.sum()]).cpu().tolist()
            cost = relative_cost(int(counts[0]), int(counts[1]), 1, nv, nv + layout.num_global_tokens)
        else:
            terms = list(group_terms(layout, cfg, groups, _group_pieces(cfg, groups2 is not None), groups2).values())
            terms += list(static_terms(layout, cfg, 1, device).values())
            cost = _varlen_relative_cost(sum(t.problem.pair_count() for t in terms), 1, nv)
        if len(_EQUAL_GROUPS_COST) > 64:
            _EQUAL_GROUPS_COST.clear()
        _EQUAL_GROUPS_COST[key] = cost
    return cost


def dense_reason(layout: VideoLayout, cfg: MogaConfig, group_sizes: torch.Tensor, block_kernel: bool,
                 device=None) -> str:
    """Why a union call whose estimate was not below dense ran densely: one of `DENSE_REASONS`. ``group_sizes``
    (B, M): tokens per group. Every sample in one group: `DENSE_ONE_GROUP`; else equal groups of this layout would
    not pay off either (`equal_groups_cost` >= 1): `DENSE_AT_LENGTH`; else `DENSE_UNEQUAL`."""
    nv = layout.num_video_tokens
    if cfg.num_groups == 1 or bool((group_sizes.max(1).values >= nv).all()):
        return DENSE_ONE_GROUP
    if equal_groups_cost(layout, cfg, block_kernel, device) >= 1.0:
        return DENSE_AT_LENGTH
    return DENSE_UNEQUAL


def _dense_union(q, k, v, layout, glob_idx, global_keep, scale):
    """Union attention with every video key in the set (what union mode becomes with M = 1): (B·Nv, H, D)."""
    b, n, h, d = q.shape
    p, nv = layout.prefix, layout.num_video_tokens
    qv, kv, vv = (t[:, p:p + nv].transpose(1, 2) for t in (q, k, v))
    if layout.num_global_tokens == 0:
        out = torch.nn.functional.scaled_dot_product_attention(qv, kv, vv, scale=scale)
        return out.transpose(1, 2).reshape(b * nv, h, d)
    ov, lv = sdpa_with_lse(qv, kv, vv, scale, True)
    video = (1.0, ov.transpose(1, 2).reshape(b * nv, h, d), lv.transpose(1, 2).reshape(b * nv, h))
    return _merge([video, (1.0,) + _global_term(q, k, v, layout, glob_idx, global_keep, scale)])


def moga_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VideoLayout, cfg: MogaConfig,
                   groups: torch.Tensor | None = None, gate: torch.Tensor | None = None, *,
                   scale: float | None = None, global_keep: torch.Tensor | None = None,
                   stats: dict | None = None, dense_fallback: bool = False,
                   groups2: torch.Tensor | None = None, plan_cache: PlanCache | None = None,
                   plan_key=None) -> torch.Tensor:
    """MoGA attention. q, k, v: (B, N, H, D) with N = layout.num_tokens; groups (B, Nv) int; gate (B, Nv).
    ``groups2`` (B, Nv) int: each query's second group, required exactly when ``cfg.second_group`` (union mode):
    the query also attends to that group's keys (each key once; a second group equal to the first adds nothing).

    Returns (B, N, H, D) in q's dtype. ``gate=None`` in ``"mean"`` mode means an ungated group branch (p = 1).
    ``global_keep``: which global tokens video queries may attend to, (prefix + suffix,) bool for all of them (False =
    padding, e.g. HunyuanVideo's padded text) or (T, prefix + suffix) per latent frame (each shot's frames see the
    global caption and their own); global queries skip only keys that no frame may see.
    ``dense_fallback`` (union mode): when the estimated cost of the sparse layer is not below dense attention's
    (groups so unequal that one holds most tokens), compute the layer densely instead — union mode's own M = 1
    case, so the caption restriction of ``global_keep`` still holds. If ``stats`` is a dict it receives
    ``density`` (scores of the key sets / N²), ``work_density`` (scores actually computed / N²: whole 128×128
    blocks on the block kernel, every inclusion–exclusion piece on the varlen path), ``group_sizes``, ``backend``
    ("flex" on the block kernel), ``path`` ("sparse" or "dense"), on the block kernel ``relative_cost``
    (estimated time vs dense attention), and on the dense path ``dense_reason``: `DENSE_ONE_GROUP` (every token in
    one group), `DENSE_AT_LENGTH` (not even equal groups would beat dense at this length: short sequences) or
    `DENSE_UNEQUAL` (equal groups would; these are too unequal).
    ``plan_cache`` and ``plan_key`` (hashable): reuse the group-dependent plan of an earlier call with the same key,
    layout, config, batch and device (see `PlanCache`; the caller vouches that the key fixes ``groups``,
    ``groups2`` and ``global_keep``). Not used when autograd needs the call. ``stats["plan_cached"]`` says whether
    this call reused one.
    """
    groups, gate = _check_inputs(q, k, v, layout, cfg, groups, gate)
    groups2 = _check_groups2(groups2, groups, layout, cfg)
    global_keep = _check_global_keep(global_keep, layout, q.device)
    b, n, h, d = q.shape
    nv, p = layout.num_video_tokens, layout.prefix
    scale = default_scale(d) if scale is None else float(scale)
    union = cfg.combine == "union"
    has_glob = layout.num_global_tokens > 0
    acc = lse_dtype(q.dtype)  # combine precision
    block_kernel = use_block_kernel(cfg, q)
    seg_backend = "auto" if cfg.backend in ("flex", "varlen") else cfg.backend
    results = {}
    path = "sparse"
    gterms, sterms = {}, {}
    video = None
    glob_idx = (torch.cat([torch.arange(p, device=q.device), torch.arange(p + nv, n, device=q.device)])
                if has_glob else None)

    counted = None  # (key-set pairs, group sizes (B, M)) read back with the block counts
    need_grad = torch.is_grad_enabled() and q.requires_grad
    cache_key = None
    if plan_cache is not None and plan_key is not None and not need_grad:
        cache_key = (plan_key, layout, cfg, b, str(q.device), "flex" if block_kernel else "varlen")
    cached = plan_cache.get(cache_key) if cache_key is not None else None
    if block_kernel:
        # ids are checked at the read-back below, without a sync of their own; until then the plan is built from
        # clamped ids, so a bad id cannot index out of bounds on the device (a CUDA assert would end the process)
        if cached is not None:  # same groups as an earlier call: its plan, id check and statistics hold
            plan, checks, counted = cached["plan"], cached["checks"], cached["counted"]
        else:
            last = cfg.num_groups - 1
            safe, safe2 = groups.clamp(0, last), None if groups2 is None else groups2.clamp(0, last)
            with record_function("moga.block_plan"):
                plan = build_block_plan(layout, cfg, safe, "union" if union else "group", global_keep,
                                        need_grad=need_grad, groups2=safe2)
            # the one read-back of the call: id check, the cost estimate for the dense fallback, and the statistics
            # (each extra read-back would stall the host until the GPU drains, and leave the GPU idle after it)
            ids = groups if groups2 is None else torch.cat([groups, groups2], 1)
            outside = (ids < 0) | (ids >= cfg.num_groups)
            parts = [outside.sum(), plan.partial_blocks.sum(), plan.full_blocks.sum()]
            if stats is not None or cache_key is not None:
                parts += _count_parts(layout, cfg, safe, global_keep, safe2)
            with record_function("moga.readback"):
                flat = torch.cat([t.reshape(-1).double() for t in parts]).cpu()
            checks = [int(x) for x in flat[:3].tolist()]
            if len(parts) > 3:
                counted = _counted(flat[3:], b, cfg.num_groups)
            if checks[0]:
                raise ValueError(f"groups (and groups2) must be ids in [0, {cfg.num_groups}) for num_groups = "
                                 f"{cfg.num_groups}; got {checks[0]} ids outside, e.g. {ids[outside][:5].tolist()}")
            if cache_key is not None:
                plan_cache.put(cache_key, {"plan": plan, "checks": checks, "counted": counted})
        relative = relative_cost(checks[1], checks[2], b, nv, nv + layout.num_global_tokens)
        if union and dense_fallback and relative >= 1.0:
            path = "dense"
            video = _dense_union(q, k, v, layout, glob_idx, global_keep, scale)
        else:
            try:
                with record_function("moga.block_kernel"):
                    video = block_attention(q, k, v, plan, scale).reshape(b * nv, h, d)
            except Exception as exc:  # noqa: BLE001 — a broken Triton / compiler must not end the user's run
                if cfg.backend == "flex" or isinstance(exc, torch.OutOfMemoryError):
                    raise
                _block_kernel_failed(exc)
                block_kernel = False
        if video is not None and not union:
            results["group"] = (1.0, video, None)
    if video is None or not union:
        need_lse = union or has_glob
        if not block_kernel:
            if cached is not None and "gterms" in cached:
                gterms, counted = cached["gterms"], cached["counted"]
            else:
                # groups2 is union only (MogaConfig): the same pieces for the second group
                want = _group_pieces(cfg, groups2 is not None) if union else ("group",)
                gterms = group_terms(layout, cfg, groups, want, groups2)
                if cache_key is not None:
                    parts = _count_parts(layout, cfg, groups, global_keep, groups2)
                    counted = _counted(torch.cat([t.reshape(-1).double() for t in parts]).cpu(), b, cfg.num_groups)
                    plan_cache.put(cache_key, {"gterms": gterms, "counted": counted})
        sterms = static_terms(layout, cfg, b, q.device)
        if union and dense_fallback:
            pairs = sum(t.problem.pair_count() for t in list(gterms.values()) + list(sterms.values()))
            if _varlen_relative_cost(pairs, b, nv) >= 1.0:
                path = "dense"
        if path == "dense":
            video = _dense_union(q, k, v, layout, glob_idx, global_keep, scale)
        else:
            qf, kf, vf = (t.reshape(b * n, h, d) for t in (q, k, v))
            for name, term in list(gterms.items()) + list(sterms.items()):
                results[name] = (term.sign,) + _run_term(term, qf, kf, vf, scale, need_lse, seg_backend)
            if has_glob:
                results["global"] = (1.0,) + _global_term(q, k, v, layout, glob_idx, global_keep, scale)

            if union:
                video = _merge(list(results.values()))
            else:
                # without global tokens no log-sum-exp merge is needed and the mean runs in the input dtype
                work = acc if has_glob else q.dtype

                def branch(name):
                    sign, out, lse = results[name]
                    if has_glob and lse is not None:  # the block kernel's group branch already saw the globals
                        return _merge([(1.0, out, lse), results["global"]])
                    return out.to(work)

                video = branch("group")
                if gate is not None:
                    video = video * gate.reshape(b * nv, 1, 1).to(work)
                if cfg.window is not None:
                    video = video + branch("window")
                if cfg.frame_branch:
                    video = video + branch("frame")
                if cfg.num_branches > 1:
                    video = video / cfg.num_branches
    video = video.to(q.dtype).reshape(b, nv, h, d)

    if has_glob:
        qg = q.index_select(1, glob_idx).transpose(1, 2)
        key_mask = None
        if global_keep is not None:  # global queries skip only the keys no frame may see (padding)
            key_mask = torch.ones(n, dtype=torch.bool, device=q.device)
            key_mask[glob_idx] = global_keep.any(0)
            key_mask = key_mask.view(1, 1, 1, n)
        dense = torch.nn.functional.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2),
                                                                 attn_mask=key_mask, scale=scale).transpose(1, 2)
        out = torch.cat([dense[:, :p], video, dense[:, p:]], dim=1)
    else:
        out = video

    if stats is not None:
        ng = layout.num_global_tokens
        if counted is None:  # the varlen paths have checked the ids
            parts = _count_parts(layout, cfg, groups, global_keep, groups2)
            counted = _counted(torch.cat([t.reshape(-1).double() for t in parts]).cpu(), b, cfg.num_groups)
        video_pairs, sizes = counted
        stats["density"] = (video_pairs + b * ng * n) / float(b * n * n)
        stats["group_sizes"] = sizes
        stats["backend"] = "flex" if block_kernel else cfg.backend
        stats["path"] = path
        stats["plan_cached"] = cached is not None
        stats.pop("dense_reason", None)
        if path == "dense":
            stats["dense_reason"] = dense_reason(layout, cfg, sizes, block_kernel, q.device)
            work = b * n * n
        elif block_kernel:  # block granularity
            work = (checks[1] + checks[2]) * BLOCK * BLOCK + b * ng * n
            stats["relative_cost"] = relative
        else:  # every piece, the inclusion–exclusion intersections included
            work = sum(t.problem.pair_count() for t in list(gterms.values()) + list(sterms.values()))
            work += b * nv * ng + b * ng * n if has_glob else 0
        stats["work_density"] = work / float(b * n * n)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the definition


def window_key_mask(layout: VideoLayout, cfg: MogaConfig, queries: torch.Tensor) -> torch.Tensor:
    """Boolean (len(queries), Nv): the video keys of each query's window block (own temporal group and its
    neighbour frames, same spatial window). ``queries`` are video-token indices."""
    t_len, hh, ww = layout.grid
    device = queries.device
    frame_of = torch.arange(t_len, device=device).repeat_interleave(hh * ww)
    win = torch.as_tensor(window_of_rows_cols(hh, ww, cfg.window).reshape(-1), device=device).repeat(t_len)
    groups_t = temporal_groups(layout, cfg.temporal_group, cfg.neighbor_frames)
    allowed = torch.zeros(len(groups_t), t_len, dtype=torch.bool, device=device)
    tg_of_frame = torch.empty(t_len, dtype=torch.long, device=device)
    for i, g in enumerate(groups_t):
        allowed[i, g.frames[0]:g.frames[1]] = True
        allowed[i, list(g.neighbors)] = True
        tg_of_frame[g.frames[0]:g.frames[1]] = i
    same_window = win[queries][:, None] == win[None, :]
    return same_window & allowed[tg_of_frame[frame_of[queries]]][:, frame_of]


def branch_masks(layout: VideoLayout, cfg: MogaConfig, groups_row: torch.Tensor,
                 groups2_row: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Boolean (Nv, N) key masks of one sample's video queries: ``group``, ``window``, ``frame``, ``global``.

    ``groups2_row`` (Nv,): each query's second group; its keys join the ``group`` mask (second-group mode)."""
    t_len, hh, ww = layout.grid
    nv, n, p = layout.num_video_tokens, layout.num_tokens, layout.prefix
    device = groups_row.device
    frame_of = torch.arange(t_len, device=device).repeat_interleave(hh * ww)
    masks = {}
    vid = slice(p, p + nv)

    def full(video_mask):
        m = torch.zeros(nv, n, dtype=torch.bool, device=device)
        m[:, vid] = video_mask
        return m

    same = groups_row[:, None] == groups_row[None, :]
    if groups2_row is not None:
        same = same | (groups2_row[:, None] == groups_row[None, :])
    masks["group"] = full(same)
    if cfg.window is not None:
        masks["window"] = full(window_key_mask(layout, cfg, torch.arange(nv, device=device)))
    if cfg.frame_branch:
        masks["frame"] = full(frame_of[:, None] == frame_of[None, :])
    glob = torch.zeros(nv, n, dtype=torch.bool, device=device)
    glob[:, :p] = True
    glob[:, p + nv:] = True
    masks["global"] = glob
    return masks


def _masked_attention(q, k, v, mask, scale):
    """q (H, Lq, D), k/v (H, N, D), mask (Lq, N) -> (H, Lq, D); float64."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VideoLayout, cfg: MogaConfig,
                        groups: torch.Tensor | None = None, gate: torch.Tensor | None = None, *,
                        scale: float | None = None, global_keep: torch.Tensor | None = None,
                        groups2: torch.Tensor | None = None) -> torch.Tensor:
    """The O(N²) definition of MoGA attention (float64 inside), for tests. Same arguments as `moga_attention`.

    Second-group mode (``cfg.second_group``, ``groups2`` (B, Nv)): a video query's group keys are the keys of its
    group and of its second group."""
    groups, gate = _check_inputs(q, k, v, layout, cfg, groups, gate)
    groups2 = _check_groups2(groups2, groups, layout, cfg)
    global_keep = _check_global_keep(global_keep, layout, q.device)
    for name, ids in (("groups", groups), ("groups2", groups2)):
        bad = (ids < 0) | (ids >= cfg.num_groups) if ids is not None else None
        if bad is not None and bad.any():
            raise ValueError(f"{name} must be ids in [0, {cfg.num_groups}) for num_groups = {cfg.num_groups}; got "
                             f"{int(bad.sum())} ids outside, e.g. {ids[bad][:5].tolist()}")
    b, n, h, d = q.shape
    nv, p = layout.num_video_tokens, layout.prefix
    scale = default_scale(d) if scale is None else float(scale)
    out = torch.empty(b, n, h, d, dtype=torch.float64, device=q.device)
    glob_rows = list(range(p)) + list(range(p + nv, n))
    valid = torch.ones(n, dtype=torch.bool, device=q.device)  # keys global queries may see
    per_query = torch.ones(nv, n, dtype=torch.bool, device=q.device)  # keys each video query may see
    if global_keep is not None:
        valid[glob_rows] = global_keep.any(0)
        frame_of = torch.arange(layout.grid[0], device=q.device).repeat_interleave(layout.tokens_per_frame)
        per_query[:, glob_rows] = global_keep[frame_of]
    for i in range(b):
        qi, ki, vi = (t[i].transpose(0, 1).double() for t in (q, k, v))  # (H, N, D)
        second = groups2[i] if groups2 is not None else None
        masks = {name: m & per_query for name, m in branch_masks(layout, cfg, groups[i], second).items()}
        qv = qi[:, p:p + nv]
        if cfg.combine == "union":
            union = masks["global"] | masks["group"]
            for name in ("window", "frame"):
                if name in masks:
                    union = union | masks[name]
            video = _masked_attention(qv, ki, vi, union, scale)
        else:
            video = _masked_attention(qv, ki, vi, masks["group"] | masks["global"], scale)
            if gate is not None:
                video = video * gate[i].double()[None, :, None]
            for name in ("window", "frame"):
                if name in masks:
                    video = video + _masked_attention(qv, ki, vi, masks[name] | masks["global"], scale)
            video = video / cfg.num_branches
        out[i, p:p + nv] = video.transpose(0, 1)
        if layout.num_global_tokens:
            qg = qi[:, glob_rows]
            scores = (torch.matmul(qg, ki.transpose(-1, -2)) * scale).masked_fill(~valid, float("-inf"))
            dense = torch.softmax(scores, dim=-1) @ vi
            out[i, glob_rows] = dense.transpose(0, 1)
    return out.to(q.dtype)


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain softmax attention on (B, N, H, D) through SDPA (the baseline MoGA approximates)."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           scale=scale)
    return out.transpose(1, 2)
