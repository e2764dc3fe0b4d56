"""Ulysses sequence-parallel MoGA attention on ``torch.distributed`` (any backend: NCCL on GPUs, gloo on CPU).

Every rank of a process group holds a contiguous shard of the attention sequence (all heads). One MoGA layer:

1. routing is local: each rank routes its own tokens (the router needs the full hidden width, which only the
   sequence shard has) and passes its tokens' group ids and gates — or its router logits — in;
2. the router output is all-gathered (two numbers per token, or M logits per token for capacity-bounded routing): small,
   never hidden states;
3. one all-to-all per q, k, v turns the sequence shards into head shards: every rank then holds the *whole*
   sequence for ``H / P`` heads;
4. `moga_attention` runs on that head shard with the full `VideoLayout` and the gathered groups — every rank builds
   the same packing, so the result is exactly the single-process result for those heads;
5. one all-to-all turns the output back into sequence shards.

Sharding of a sequence of ``N`` tokens into ``P`` shards (`shard_sizes`): contiguous ranges in rank order; the first
``N mod P`` ranks hold ``ceil(N / P)`` tokens, the others ``floor(N / P)`` (``torch.tensor_split``'s rule). An engine
that shards differently passes ``sizes`` (the token count of every rank, in rank order); ``sum(sizes)`` may exceed
``N``, in which case the global positions ``N ..`` are padding (e.g. an engine that pads the sequence to a multiple of
``P`` and chunks evenly): padding is dropped before attention, is never attended, and its output rows are zero.
An engine that pads and shards parts of the sequence separately (raylight's HunyuanVideo double blocks: text and
image) passes ``segments``: ``[(real_tokens, per-rank sizes), …]``, a rank holding its piece of every segment in turn.

The all-to-alls use ``all_to_all_single`` with explicit split sizes (uneven shards are sent as they are, never padded
to equal chunks); they are differentiable (the backward pass is the reverse all-to-all), so the layer can be trained
as well as sampled.
Every rank must pass tensors of the same batch size, head count, head dim and dtype (as any Ulysses layer needs).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from .attention import moga_attention
from .config import MogaConfig, VideoLayout

__all__ = [
    "shard_sizes",
    "shard_range",
    "shard_sequence",
    "shard_segments",
    "unshard_sequence",
    "gather_sequence",
    "sequence_parallel_moga_attention",
]


# ---------------------------------------------------------------------------------------------------------------
# sharding


def shard_sizes(num_tokens: int, world_size: int) -> list[int]:
    """Token count of every rank when ``num_tokens`` are split into ``world_size`` contiguous shards.

    The first ``num_tokens % world_size`` ranks get ``ceil(num_tokens / world_size)``, the rest the floor (ranks
    may get 0 tokens when ``num_tokens < world_size``).
    """
    for name, value, low in (("num_tokens", num_tokens, 0), ("world_size", world_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    base, extra = divmod(num_tokens, world_size)
    return [base + (r < extra) for r in range(world_size)]


def _check_sizes(sizes, world_size: int, num_tokens: int) -> list[int]:
    try:
        sizes = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise ValueError(f"sizes must be a sequence of per-rank token counts, got {sizes!r}") from None
    if len(sizes) != world_size:
        raise ValueError(f"sizes must give one token count per rank: expected {world_size} entries, got "
                         f"{len(sizes)} ({sizes})")
    if any(s < 0 for s in sizes):
        raise ValueError(f"sizes must be non-negative token counts, got {sizes}")
    if sum(sizes) < num_tokens:
        raise ValueError(f"sizes {sizes} hold {sum(sizes)} tokens in all, fewer than the {num_tokens} real tokens; "
                         f"expected sum(sizes) >= {num_tokens} (positions beyond them are padding)")
    return sizes


def shard_range(num_tokens: int, world_size: int, rank: int, sizes: Sequence[int] | None = None) -> tuple[int, int]:
    """``(start, end)`` (end exclusive) global positions of ``rank``'s shard; positions >= ``num_tokens`` are
    padding (only possible with explicit ``sizes``)."""
    sizes = shard_sizes(num_tokens, world_size) if sizes is None else _check_sizes(sizes, world_size, num_tokens)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def shard_sequence(x: torch.Tensor, world_size: int, rank: int, dim: int = 1,
                   sizes: Sequence[int] | None = None) -> torch.Tensor:
    """``rank``'s shard of a full sequence: ``x`` (…, N, …) with the sequence along ``dim`` → (…, n_rank, …).

    With ``sizes`` summing past N the missing tail positions are zero padding. Returns a view when no padding is
    needed.
    """
    n = x.shape[dim]
    start, end = shard_range(n, world_size, rank, sizes)
    if end <= n:
        return x.narrow(dim, start, end - start)
    real = x.narrow(dim, min(start, n), max(0, n - start))
    pad_shape = list(x.shape)
    pad_shape[dim] = (end - start) - real.shape[dim]
    return torch.cat([real, x.new_zeros(pad_shape)], dim=dim)


def unshard_sequence(shards: Sequence[torch.Tensor], dim: int = 1, num_tokens: int | None = None) -> torch.Tensor:
    """Inverse of `shard_sequence`: concatenate the shards of all ranks (rank order) along ``dim`` and drop the
    padding beyond ``num_tokens`` (if given)."""
    full = torch.cat(list(shards), dim=dim)
    if num_tokens is not None:
        if num_tokens > full.shape[dim]:
            raise ValueError(f"num_tokens = {num_tokens} exceeds the {full.shape[dim]} tokens of the shards")
        full = full.narrow(dim, 0, num_tokens)
    return full


def _check_segments(segments, world_size: int, num_tokens: int) -> list[tuple[int, list[int]]]:
    try:
        segments = [(int(real), list(sizes)) for real, sizes in segments]
    except (TypeError, ValueError):
        raise ValueError(f"segments must be a sequence of (real_tokens, per-rank sizes) pairs, "
                         f"got {segments!r}") from None
    if not segments:
        raise ValueError("segments must name at least one (real_tokens, per-rank sizes) pair")
    out = []
    for i, (real, sizes) in enumerate(segments):
        if real < 0:
            raise ValueError(f"segment {i} has a negative token count {real}")
        try:
            out.append((real, _check_sizes(sizes, world_size, real)))
        except ValueError as e:
            raise ValueError(f"segment {i}: {e}") from None
    total = sum(real for real, _ in out)
    if total != num_tokens:
        raise ValueError(f"segments hold {total} real tokens ({[real for real, _ in out]}) but the layout has "
                         f"{num_tokens}; expected the real token counts to sum to layout.num_tokens")
    return out


def shard_segments(x: torch.Tensor, segments, rank: int, dim: int = 1) -> torch.Tensor:
    """``rank``'s local tensor under segmented sharding: ``x`` (…, N, …) holds the real tokens of all segments in
    order; every segment ``(real_tokens, sizes)`` is padded with zeros at its end to ``sum(sizes)`` and cut into
    per-rank pieces; a rank holds its piece of segment 0, then of segment 1, …"""
    segments = _check_segments(segments, len(segments[0][1]), x.shape[dim])
    pieces, start = [], 0
    for real, sizes in segments:
        seg = x.narrow(dim, start, real)
        pieces.append(shard_sequence(seg, len(sizes), rank, dim=dim, sizes=sizes))
        start += real
    return torch.cat(pieces, dim=dim)


class _Sharding:
    """How the ranks' local tokens map to the global sequence.

    ``counts[r]``: tokens rank r holds. The rank-major concatenation of all local tensors has ``sum(counts)``
    positions; the ``N`` real tokens are its first ``N`` (one segment: padding only at the end) or, with several
    segments, those at ``perm`` (their positions in it, in global order).
    """

    def __init__(self, segments: list[tuple[int, list[int]]], world: int, device):
        self.counts = [sum(sizes[r] for _, sizes in segments) for r in range(world)]
        self.total = sum(self.counts)
        self.num_tokens = sum(real for real, _ in segments)
        self.perm = None
        self.tail_only = len(segments) == 1  # one segment: padding only at the end, a slice drops it
        if self.tail_only:
            return
        rank_start = [sum(self.counts[:r]) for r in range(world)]
        parts = []
        for s, (real, sizes) in enumerate(segments):
            seg = [torch.arange(sizes[r]) + rank_start[r] + sum(segments[t][1][r] for t in range(s))
                   for r in range(world)]
            parts.append(torch.cat(seg)[:real])
        self.perm = torch.cat(parts).to(device)

    def to_global(self, x: torch.Tensor) -> torch.Tensor:
        """(B, sum(counts), …) rank-major → (B, N, …) global order, padding dropped."""
        if self.tail_only:
            return x if self.total == self.num_tokens else x.narrow(1, 0, self.num_tokens)
        return x.index_select(1, self.perm)

    def to_ranks(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N, …) global order → (B, sum(counts), …) rank-major, zeros at padding positions."""
        if self.tail_only:
            if self.total == self.num_tokens:
                return y
            pad = y.new_zeros((y.shape[0], self.total - self.num_tokens) + tuple(y.shape[2:]))
            return torch.cat([y, pad], dim=1)
        return y.new_zeros((y.shape[0], self.total) + tuple(y.shape[2:])).index_copy(1, self.perm, y)


_SHARDING_CACHE: dict = {}


def _sharding(segments, world, device) -> _Sharding:
    key = (tuple((real, tuple(sizes)) for real, sizes in segments), world, str(device))
    plan = _SHARDING_CACHE.get(key)
    if plan is None:
        if len(_SHARDING_CACHE) > 64:
            _SHARDING_CACHE.clear()
        plan = _SHARDING_CACHE[key] = _Sharding(segments, world, device)
    return plan


def _group_info(process_group):
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("sequence-parallel MoGA needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group, torchrun, or the engine's own group)")
    return dist.get_world_size(process_group), dist.get_rank(process_group)


def _all_gather_padded(x: torch.Tensor, sizes: list[int], process_group, dim: int = 1) -> torch.Tensor:
    """All-gather shards of unequal length along ``dim`` (padded to the longest on the wire) → (…, sum(sizes), …)."""
    longest = max(max(sizes), 1)
    local = x.shape[dim]
    if local < longest:
        pad_shape = list(x.shape)
        pad_shape[dim] = longest - local
        x = torch.cat([x, x.new_zeros(pad_shape)], dim=dim)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x, group=process_group)
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim=dim)


def gather_sequence(x: torch.Tensor, process_group=None, dim: int = 1, sizes: Sequence[int] | None = None,
                    num_tokens: int | None = None, segments=None) -> torch.Tensor:
    """All-gather every rank's sequence shard → the full sequence on every rank (for callers and tests).

    ``x``: this rank's shard (…, n_rank, …) along ``dim``. ``sizes``: every rank's token count (default: all-gathered
    from the ranks). The result is (…, num_tokens or sum(sizes), …); padding beyond ``num_tokens`` is dropped. With
    ``segments`` (see `sequence_parallel_moga_attention`) the result is the real tokens of all segments in global
    order. Not differentiable.
    """
    world, _ = _group_info(process_group)
    if segments is not None:
        segments = _check_segments(segments, world, sum(int(real) for real, _ in segments))
        plan = _sharding(segments, world, x.device)
        full = _all_gather_padded(x.movedim(dim, 1), plan.counts, process_group)
        return plan.to_global(full).movedim(1, dim)
    if sizes is None:
        count = torch.tensor([x.shape[dim]], dtype=torch.int64, device=x.device)
        counts = [torch.empty_like(count) for _ in range(world)]
        dist.all_gather(counts, count, group=process_group)
        sizes = [int(c) for c in counts]
    else:
        sizes = _check_sizes(sizes, world, 0)
    full = _all_gather_padded(x, sizes, process_group, dim)
    if num_tokens is not None:
        full = full.narrow(dim, 0, num_tokens)
    return full


# ---------------------------------------------------------------------------------------------------------------
# the collectives (differentiable where the router's gradient passes)


class _GatherSeq(torch.autograd.Function):
    """All-gather of (B, n_rank, …) shards along dim 1 → (B, sum(sizes), …); the gradient of a rank's shard is the
    sum over ranks of their gradients at its positions (every rank uses the gathered tensor for its own heads)."""

    @staticmethod
    def forward(ctx, x, sizes, group, rank):
        ctx.sizes, ctx.group, ctx.rank = sizes, group, rank
        return _all_gather_padded(x, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[:ctx.rank])
        return grad.narrow(1, start, ctx.sizes[ctx.rank]), None, None, None


class _AllToAll(torch.autograd.Function):
    """Flat all-to-all with explicit split sizes (in elements); its gradient is the reverse all-to-all."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits = (out_splits, in_splits)
        ctx.group = group
        out = x.new_empty(sum(out_splits))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        back = grad.new_empty(sum(in_splits))
        dist.all_to_all_single(back, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return back, None, None, None


def _seq_to_heads(x: torch.Tensor, plan: _Sharding, rank: int, group) -> torch.Tensor:
    """(B, n_rank, H, D) sequence shard → (B, N, H/P, D): every real token in global order, heads ``rank·H/P ..``."""
    b, n_local, h, d = x.shape
    sizes = plan.counts
    world = len(sizes)
    hp = h // world
    # send chunk j = my tokens, heads of rank j: (P, B, n_local, hp, D)
    send = x.reshape(b, n_local, world, hp, d).permute(2, 0, 1, 3, 4).reshape(-1)
    per = b * hp * d
    recv = _AllToAll.apply(send, [s * per for s in sizes], [n_local * per] * world, group)
    # recv = [rank i: (B, n_i, hp, D)] in rank order
    if b == 1:
        full = recv.view(1, plan.total, hp, d)
    else:
        chunks = torch.split(recv, [s * per for s in sizes])
        full = torch.cat([c.view(b, s, hp, d) for c, s in zip(chunks, sizes)], dim=1)
    return plan.to_global(full)


def _heads_to_seq(y: torch.Tensor, plan: _Sharding, rank: int, group) -> torch.Tensor:
    """(B, N, H/P, D) head shard in global order → (B, n_rank, H, D) sequence shard (inverse of `_seq_to_heads`;
    padding positions get zeros)."""
    y = plan.to_ranks(y)
    b, _, hp, d = y.shape
    sizes = plan.counts
    world = len(sizes)
    n_local = sizes[rank]
    per = b * hp * d
    if b == 1:
        send = y.reshape(-1)
    else:
        send = torch.cat([c.reshape(-1) for c in torch.split(y, sizes, dim=1)])
    recv = _AllToAll.apply(send, [n_local * per] * world, [s * per for s in sizes], group)
    # recv: (P, B, n_local, hp, D), chunk j = my tokens, heads of rank j
    return recv.view(world, b, n_local, hp, d).permute(1, 2, 0, 3, 4).reshape(b, n_local, world * hp, d)


# ---------------------------------------------------------------------------------------------------------------
# the layer


def _route_from_logits(logits: torch.Tensor):
    """argmax routing, as `Router.route` does it: (…, M) float logits → (groups int64, gate = winning prob)."""
    probs = torch.softmax(logits.float(), dim=-1)
    groups = logits.argmax(dim=-1)
    return groups, probs.gather(-1, groups.unsqueeze(-1)).squeeze(-1)


def sequence_parallel_moga_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VideoLayout, cfg: MogaConfig,
    groups: torch.Tensor | None = None, gate: torch.Tensor | None = None, *,
    logits: torch.Tensor | None = None, process_group=None, sizes: Sequence[int] | None = None,
    segments: Sequence[tuple[int, Sequence[int]]] | None = None, scale: float | None = None,
    global_keep: torch.Tensor | None = None, stats: dict | None = None, dense_fallback: bool = False,
) -> torch.Tensor:
    """Ulysses MoGA attention over a sequence-sharded batch; collective: every rank of ``process_group`` calls it.

    Args:
        q, k, v: this rank's shard, (B, n_rank, H, D), all H heads; n_rank = ``sizes[rank]`` (default
            `shard_sizes` ``(layout.num_tokens, P)``). H must be divisible by the group's world size P.
        layout: the *global* sequence (prefix + T·H·W video + suffix tokens), identical on every rank.
        cfg: `MogaConfig`, identical on every rank.
        groups: (B, n_rank) int group ids of this rank's tokens (the router run on this shard); entries at
            prefix/suffix/padding positions are ignored. May be None only when ``cfg.num_groups == 1``.
        gate: (B, n_rank) float winning probabilities, or None (ungated group branch in ``"mean"`` mode).
        logits: instead of groups/gate, the router logits (B, n_rank, M) float. Groups are the argmax and the gate
            the winning softmax probability (as `Router.route`); with ``cfg.capacity`` the logits of all tokens are
            gathered and every rank runs the same capacity-constrained assignment over the video tokens (as
            ``Router.route(x_video, capacity=cfg.capacity)`` on one process).
        process_group: a ``torch.distributed`` group (None = the default group): torchrun's world, an engine's
            sequence-parallel group (e.g. xfuser's ``get_sp_group().device_group``), …
        sizes: every rank's token count in rank order; may sum past ``layout.num_tokens`` (tail padding).
        segments: instead of ``sizes``, segmented sharding (e.g. raylight's HunyuanVideo double blocks, which pad and
            shard text and image separately): ``[(real_tokens, per-rank sizes), …]``; the global sequence is the
            real tokens of segment 0, then of segment 1, … (summing to ``layout.num_tokens``); each segment is
            padded at its end to ``sum(sizes)`` and cut into per-rank pieces; a rank's q/k/v hold its piece of
            segment 0, then of segment 1, … (`shard_segments` builds them from a full sequence).
        scale, global_keep, stats, dense_fallback: as `moga_attention` (``global_keep`` is the full-layout table;
            ``stats`` describes this rank's heads; ``dense_fallback`` decides from the gathered groups, which every
            rank holds alike, so all ranks take the same path).

    Returns:
        (B, n_rank, H, D) in q's dtype: this rank's shard of the MoGA output; rows at padding positions are zero.
    """
    world, rank = _group_info(process_group)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not torch.is_tensor(t) or t.dim() != 4:
            raise ValueError(f"{name} must be this rank's shard (B, n_rank, H, D), got "
                             f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must have the same shape (B, n_rank, H, D); got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not isinstance(layout, VideoLayout):
        raise ValueError(f"layout must be a VideoLayout, got {type(layout).__name__}")
    if not isinstance(cfg, MogaConfig):
        raise ValueError(f"cfg must be a MogaConfig, got {type(cfg).__name__}")
    b, n_local, h, d = q.shape
    if h % world:
        raise ValueError(f"sequence-parallel MoGA splits the {h} attention heads over the {world} ranks of the "
                         f"process group; {h} heads are not divisible by world size {world}")
    n = layout.num_tokens
    if segments is not None:
        if sizes is not None:
            raise ValueError("pass either sizes or segments, not both")
        segments = _check_segments(segments, world, n)
    else:
        segments = [(n, shard_sizes(n, world) if sizes is None else _check_sizes(sizes, world, n))]
    plan = _sharding(segments, world, q.device)
    if n_local != plan.counts[rank]:
        raise ValueError(f"rank {rank} holds {n_local} tokens but its shard of the {n}-token layout has "
                         f"{plan.counts[rank]} (tokens per rank {plan.counts}); expected q of shape "
                         f"({b}, {plan.counts[rank]}, {h}, {d})")

    # --- validate everything before the first collective (a rank that raised alone would hang the others) ---
    def check_shard(t, name):
        if not torch.is_tensor(t) or tuple(t.shape) != (b, n_local):
            raise ValueError(f"{name} must be (B, n_rank) = ({b}, {n_local}) for this rank's tokens, got "
                             f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")

    if logits is not None:
        if groups is not None or gate is not None:
            raise ValueError("pass either logits or groups/gate, not both")
        if not torch.is_tensor(logits) or logits.dim() != 3 or tuple(logits.shape[:2]) != (b, n_local) \
                or logits.shape[2] != cfg.num_groups:
            raise ValueError(f"logits must be (B, n_rank, M) = ({b}, {n_local}, {cfg.num_groups}), got "
                             f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
    else:
        if groups is None and gate is not None:
            raise ValueError("gate was given without groups; pass both (or logits)")
        if groups is None and cfg.num_groups != 1:
            raise ValueError(f"groups (B, n_rank) or logits (B, n_rank, M) are required when num_groups = "
                             f"{cfg.num_groups} > 1")
        if groups is not None:
            check_shard(groups, "groups")
            if groups.is_floating_point() or groups.dtype == torch.bool:
                raise ValueError(f"groups must be an integer tensor of group ids, got dtype {groups.dtype}")
        if gate is not None:
            check_shard(gate, "gate")
            if not gate.is_floating_point():
                raise ValueError(f"gate must be floating point (the router's winning probability), got {gate.dtype}")

    # --- router output of the whole sequence (small; differentiable in the gate / logits) ---
    def gather(t, differentiable):
        full = _GatherSeq.apply(t, plan.counts, process_group, rank) if differentiable else \
            _all_gather_padded(t, plan.counts, process_group)
        return plan.to_global(full)

    full_groups = full_gate = None
    if logits is not None and cfg.capacity is not None:
        from .router import capacity_assignment

        full_logits = gather(logits.float(), True)
        video = full_logits[:, layout.prefix:layout.prefix + layout.num_video_tokens]
        full_groups = capacity_assignment(video.detach(), cfg.capacity)
        full_gate = torch.softmax(video, dim=-1).gather(-1, full_groups.unsqueeze(-1)).squeeze(-1)
    else:
        if logits is not None:
            groups, gate = _route_from_logits(logits)
        if groups is not None:
            full_groups = gather(groups.to(q.device, torch.int64), False)
        if gate is not None:
            full_gate = gather(gate.to(q.device), True)

    # --- sequence shards -> head shards, MoGA on the whole sequence, back ---
    qh, kh, vh = (_seq_to_heads(t, plan, rank, process_group) for t in (q, k, v))
    out = moga_attention(qh, kh, vh, layout, cfg, groups=full_groups, gate=full_gate, scale=scale,
                         global_keep=global_keep, stats=stats, dense_fallback=dense_fallback)
    return _heads_to_seq(out, plan, rank, process_group)
