"""The MoGA router: a linear map from a token's hidden state to M group scores, softmax, hard top-1.

``groups, gate = router(x)``: ``groups`` is the argmax group (int64), ``gate`` = p(groups | x), the winning
probability, which carries the router's gradient (the argmax does not). `balance_loss` is the Switch-style group
balancing loss of the paper (α·M·Σ F_i·P_i). `Router.fit` builds a router without training: k-means centroids c_i
become the rows of an exact linear router, since argmax_i (x·c_i − ‖c_i‖²/2) is the nearest centroid.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

_ROUTE_CHUNK = 1 << 16  # rows per chunk for the float32 logits (bounds the temporary upcast of x)


def _check_x(x: torch.Tensor, width: int | None = None, name: str = "x") -> None:
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a tensor (B, N, C) or (N, C), got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be (B, N, C) or (N, C), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"{name} has width C = {x.shape[-1]} but the router expects C = {width}")


class Router(nn.Module):
    """Linear router d → M with bias. ``weight`` (M, C), ``bias`` (M,)."""

    def __init__(self, in_features: int, num_groups: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be an int >= 1, got {in_features!r}")
        self.weight = nn.Parameter(torch.empty(num_groups, in_features, device=device, dtype=dtype or torch.float32))
        self.bias = nn.Parameter(torch.zeros(num_groups, device=device, dtype=dtype or torch.float32)) if bias else None
        nn.init.normal_(self.weight, std=in_features ** -0.5)

    @property
    def num_groups(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "Router":
        """A router holding exactly ``weight`` (M, C) and ``bias`` (M,) (float32 copies)."""
        if not torch.is_tensor(weight) or weight.dim() != 2:
            raise ValueError(f"router weight must be a 2-D tensor (M, C), got {getattr(weight, 'shape', weight)}")
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
            raise ValueError(f"router bias must be (M,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
        router = cls(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device)
        with torch.no_grad():
            router.weight.copy_(weight.float())
            if bias is not None:
                router.bias.copy_(bias.float())
        return router

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Group scores in float32, shape x.shape[:-1] + (M,).

        Computed in float32 even for bf16 activations: a k-means router's bias −‖c‖²/2 is large and the decision
        is a small difference of large numbers, which bf16 would round away.
        """
        _check_x(x, self.in_features)
        weight = self.weight.float()
        bias = self.bias.float() if self.bias is not None else None
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= _ROUTE_CHUNK or torch.is_grad_enabled():
            out = nn.functional.linear(flat.float(), weight, bias)
        else:
            out = torch.empty(flat.shape[0], weight.shape[0], device=x.device, dtype=torch.float32)
            for start in range(0, flat.shape[0], _ROUTE_CHUNK):
                out[start:start + _ROUTE_CHUNK] = nn.functional.linear(flat[start:start + _ROUTE_CHUNK].float(),
                                                                       weight, bias)
        return out.reshape(*x.shape[:-1], weight.shape[0])

    def route(self, x: torch.Tensor, balanced: bool = False, capacity: float | None = None):
        """-> (groups int64, gate, probs (…, M), logits (…, M)); groups/gate have x's leading shape.

        ``capacity``: no group holds more than ``ceil(capacity · N / M)`` of a sample's N tokens (see
        `capacity_assignment`); ``None`` = plain top-1. ``balanced=True`` is ``capacity=1.0``.
        """
        if balanced:
            if capacity is not None and float(capacity) != 1.0:
                raise ValueError(f"balanced=True means capacity=1.0; got capacity={capacity!r} as well")
            capacity = 1.0
        logits = self.logits(x)
        probs = torch.softmax(logits, dim=-1)
        if capacity is not None:
            batched = logits if logits.dim() == 3 else logits.unsqueeze(0)
            groups = capacity_assignment(batched.detach(), capacity).reshape(logits.shape[:-1])
        else:
            groups = logits.argmax(dim=-1)
        gate = probs.gather(-1, groups.unsqueeze(-1)).squeeze(-1)
        return groups, gate, probs, logits

    def forward(self, x: torch.Tensor, balanced: bool = False, capacity: float | None = None):
        groups, gate, _, _ = self.route(x, balanced, capacity)
        return groups, gate

    def route2(self, x: torch.Tensor, capacity: float | None = None):
        """-> (groups, gate, groups2): `route`'s groups and gate plus each token's second group
        (`second_choice`), all with x's leading shape. The capacity bound applies to ``groups`` only."""
        groups, gate, _, logits = self.route(x, capacity=capacity)
        return groups, gate, second_choice(logits, groups)

    @classmethod
    def fit(cls, x: torch.Tensor, num_groups: int, iters: int = 25, seed: int = 0, max_points: int = 65536) -> "Router":
        """k-means (k-means++ init, ``iters`` Lloyd steps, deterministic under ``seed``) → exact linear router.

        ``x``: (N, C) or (B, N, C) router inputs. At most ``max_points`` rows (a seeded subsample) are clustered.
        """
        _check_x(x)
        points = x.detach().reshape(-1, x.shape[-1])
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        if num_groups > points.shape[0]:
            raise ValueError(f"cannot fit {num_groups} groups to {points.shape[0]} tokens; expected M <= tokens")
        centroids = kmeans(points, num_groups, iters=iters, seed=seed, max_points=max_points)
        return cls.from_weights(centroids, -0.5 * (centroids.double() ** 2).sum(-1).float())


def kmeans(points: torch.Tensor, k: int, iters: int = 25, seed: int = 0, max_points: int = 65536) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on (N, C) points; returns (k, C) float32 centroids.

    Deterministic: the subsample and the seeding draw from a CPU generator seeded with ``seed``; an emptied cluster
    is re-seeded at the point farthest from its centroid.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n = points.shape[0]
    if n > max_points:
        pick = torch.randperm(n, generator=gen)[:max_points].sort().values.to(points.device)
        points = points[pick]
        n = max_points
    data = points.float()
    sq = (data * data).sum(-1)

    def dist2(c: torch.Tensor) -> torch.Tensor:
        return (sq[:, None] - 2.0 * data @ c.T + (c * c).sum(-1)[None, :]).clamp_min_(0)

    first = int(torch.randint(n, (1,), generator=gen))
    centroids = data[first:first + 1].clone()
    closest = dist2(centroids)[:, 0]
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:  # all remaining points coincide with a centroid: take any unused one
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            probs = (closest / total).double().cpu()
            idx = int(torch.multinomial(probs, 1, generator=gen))
        centroids = torch.cat([centroids, data[idx:idx + 1]], 0)
        closest = torch.minimum(closest, dist2(centroids[-1:])[:, 0])
    for _ in range(iters):
        d = dist2(centroids)
        labels = d.argmin(-1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, data)
        new = sums / counts.clamp_min(1)[:, None].to(sums.dtype)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            far = d.gather(1, labels[:, None])[:, 0]
            for e in empty:
                idx = int(far.argmax())
                new[e] = data[idx]
                far[idx] = -1
        centroids = new
    return centroids


def check_capacity(capacity) -> float:
    """``capacity`` as a float >= 1.0, or a ValueError that says what came."""
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not capacity == capacity:
        raise ValueError(f"capacity must be a number >= 1.0 (or None for no bound), got {capacity!r}")
    if capacity < 1.0:
        raise ValueError(f"capacity must be >= 1.0: below 1.0 the M groups cannot hold all N tokens; got {capacity}")
    return float(capacity)


def group_capacities(num_tokens: int, num_groups: int, capacity: float) -> list[int]:
    """Per-group size bound for ``num_tokens`` tokens: ``ceil(capacity · N / M)`` each, at most N.

    ``capacity = 1.0`` is the tightest bound and gives balanced groups: the first ``N mod M`` groups hold
    ``ceil(N / M)`` tokens, the others ``floor(N / M)`` (their sum is exactly N, so every group is filled).
    """
    capacity = check_capacity(capacity)
    base, extra = divmod(num_tokens, num_groups)
    if capacity == 1.0:
        return [base + (1 if i < extra else 0) for i in range(num_groups)]
    bound = min(num_tokens, math.ceil(capacity * num_tokens / num_groups))
    return [bound] * num_groups


def capacity_assignment(logits: torch.Tensor, capacity: float) -> torch.Tensor:
    """Capacity-bounded top-1: no group takes more than ``ceil(capacity · N / M)`` of a sample's N tokens.

    ``logits`` (B, N, M) → groups (B, N) int64. M rounds of proposals: each unassigned token proposes to its
    next-best group; a group accepts its highest-scoring proposers up to its remaining room. So the first choices
    a group can hold are all kept (the best-scoring ones when it is over-subscribed), and a token over capacity
    goes to its best group with room. Every round works on all tokens with fixed-size tensor ops (no boolean
    indexing), so nothing waits for the host: on a GPU the whole assignment is a queue of kernels. Stable sorts
    make it deterministic. The bounds sum to at least N, so after M rounds every token has a group (a token refused
    by all M groups would mean all of them are full). ``capacity = 1.0`` gives balanced groups (sizes differ by at
    most one); a capacity of M or more changes nothing (plain argmax).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, N, M), got shape {tuple(logits.shape)}")
    b, n, m = logits.shape
    device = logits.device
    capacity = torch.tensor(group_capacities(n, m, capacity) + [0], dtype=torch.int64, device=device)
    capacity = capacity.repeat(b, 1)  # (B, M + 1); bucket m of each sample collects placed tokens: it takes nobody
    flat_logits = logits.reshape(b * n, m)
    preference = torch.argsort(flat_logits, dim=-1, descending=True, stable=True)  # (B·N, M)
    sample = torch.arange(b, device=device).repeat_interleave(n) * (m + 1)  # bucket offset of each token
    positions = torch.arange(b * n, device=device)
    groups = torch.full((b * n,), -1, dtype=torch.int64, device=device)
    for r in range(m):
        cand = preference[:, r]
        score = flat_logits.gather(1, cand[:, None])[:, 0]
        bucket = sample + torch.where(groups < 0, cand, torch.full_like(cand, m))
        # proposals ordered by bucket, then by score (highest first); ties keep token order
        order = torch.argsort(-score, stable=True)
        order = order[torch.argsort(bucket[order], stable=True)]
        sorted_bucket = bucket[order]
        counts = torch.bincount(sorted_bucket, minlength=b * (m + 1))
        starts = torch.cumsum(counts, 0) - counts
        rank = positions - starts[sorted_bucket]
        accept = rank < capacity.view(-1)[sorted_bucket]
        chosen = torch.where(accept, sorted_bucket % (m + 1), groups[order])
        groups = groups.scatter(0, order, chosen)
        taken = torch.zeros(b * (m + 1), dtype=torch.int64, device=device).scatter_add_(0, sorted_bucket,
                                                                                         accept.long())
        capacity = capacity - taken.view(b, m + 1)
    return groups.reshape(b, n)


def second_choice(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each token's second group: its best-scoring group other than ``groups`` (its assigned one).

    ``logits`` (…, M), ``groups`` (…) int64 → (…) int64. Not capacity-bounded: it only adds keys to a query's set
    and moves no token, so group sizes (what the bound protects) do not change. Where capacity moved a token off its
    argmax, its argmax is its second group. With M = 1 the second group is the first (no extra keys). Ties go to the
    lower group id.
    """
    if logits.shape[:-1] != groups.shape:
        raise ValueError(f"logits (…, M) and groups (…) disagree: {tuple(logits.shape)} vs {tuple(groups.shape)}")
    if logits.shape[-1] == 1:
        return groups.clone()
    masked = logits.detach().float().scatter(-1, groups.unsqueeze(-1), float("-inf"))
    return masked.argmax(dim=-1)


def balanced_assignment(logits: torch.Tensor) -> torch.Tensor:
    """Balanced top-1 (every group ⌈N/M⌉ or ⌊N/M⌋ tokens): `capacity_assignment` with ``capacity = 1.0``."""
    return capacity_assignment(logits, 1.0)


def balance_loss(probs: torch.Tensor, groups: torch.Tensor, alpha: float = 0.1, variant: str = "switch") -> torch.Tensor:
    """Group balancing loss L = α·M·Σ_i F_i·P_i over all tokens of the batch.

    F_i: fraction of tokens routed to group i (no gradient). P_i: ``"switch"`` = mean over tokens of p(i|x) (the
    Switch-Transformer form, default); ``"moga_v1"`` = (1/N)·Σ_{x: g(x)=i} p(g(x)|x) (arXiv v1's Eq. 8 reading).
    Its minimum, α, is reached at a uniform split.
    """
    if probs.shape[:-1] != groups.shape:
        raise ValueError(f"probs (…, M) and groups (…) disagree: {tuple(probs.shape)} vs {tuple(groups.shape)}")
    m = probs.shape[-1]
    flat_p = probs.reshape(-1, m)
    flat_g = groups.reshape(-1)
    frac = torch.bincount(flat_g, minlength=m).to(flat_p.dtype) / flat_g.numel()
    if variant == "switch":
        mean_p = flat_p.mean(0)
    elif variant == "moga_v1":
        winning = flat_p.gather(-1, flat_g[:, None])[:, 0]
        mean_p = torch.zeros(m, dtype=flat_p.dtype, device=flat_p.device).index_add(0, flat_g, winning) / flat_g.numel()
    else:
        raise ValueError(f"variant must be 'switch' or 'moga_v1', got {variant!r}")
    return alpha * m * (frac * mean_p).sum()


class RandomGroups:
    """A training-free "router" that ignores content: each sample's N tokens are split into M groups of equal size
    (N mod M of them one larger) by a seeded random permutation of the positions — the same for every sample, call
    and device at a given (seed, N), so a sampling run sees one fixed partition per block.

    Why it exists: in union mode a query then attends to its local keys plus a uniform random 1/M of the other
    keys, an unbiased sample of them, where content groups (k-means on hidden states) keep the keys most like the
    query and drop the rest. On models whose long-range attention is spread out rather than concentrated, that is
    the more faithful choice at a given density (docs/QUALITY.md measures it); the groups are also exactly balanced,
    the block kernel's cheapest case, and need no fitting. ``gate`` is 1 (union mode ignores it; mean mode is for
    trained routers). There is no second choice: ``route2`` raises.
    """

    def __init__(self, num_groups: int, seed: int = 0):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.num_groups = num_groups
        self.seed = seed
        self._cache: dict[tuple[int, torch.device], torch.Tensor] = {}

    def partition(self, num_tokens: int, device=None) -> torch.Tensor:
        """(N,) int64 group of each position: group sizes differ by at most one."""
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"num_tokens must be an int >= 1, got {num_tokens!r}")
        key = (num_tokens, torch.device(device) if device is not None else torch.device("cpu"))
        groups = self._cache.get(key)
        if groups is None:
            # drawn on the CPU generator: the same partition on every device
            gen = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(num_tokens, generator=gen)
            groups = torch.empty(num_tokens, dtype=torch.int64)
            groups[perm] = torch.arange(num_tokens) % self.num_groups
            groups = groups.to(key[1])
            if len(self._cache) > 8:  # a few lengths per run (context windows); keep the cache small
                self._cache.clear()
            self._cache[key] = groups
        return groups

    def __call__(self, x: torch.Tensor, balanced: bool = False, capacity: float | None = None):
        """``x`` (B, N, C) or (N, C) -> (groups, gate) with x's leading shape. ``balanced``/``capacity`` change
        nothing (the groups are balanced already); they are accepted so callers treat this like a `Router`."""
        _check_x(x)
        groups = self.partition(x.shape[-2], x.device).expand(x.shape[:-1]).contiguous()
        return groups, torch.ones(x.shape[:-1], device=x.device, dtype=x.dtype)

    def route2(self, x: torch.Tensor, capacity: float | None = None):
        raise ValueError("random groups have no second-best group: expected second_group off with random groups")

    def __repr__(self) -> str:
        return f"RandomGroups(num_groups={self.num_groups}, seed={self.seed})"
