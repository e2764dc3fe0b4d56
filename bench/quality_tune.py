"""Matched densities for the quality study (bench/quality.py): pick each mode's knob so that its attention density
lands near a target, on the calibration prompts (never the evaluation's), deterministically.

Density = the paper's 1 − sparsity: query–key pairs attended / N², the key set G ∪ W ∪ F (∪ second group) of every
query of every sample (`moga_core.blocksparse.key_set_pairs_tensor`, what `moga_attention` reports as
``stats["density"]``); for the SVG2-style baseline the pairs its top-p selection keeps (`svg2_select`). No
attention is computed while tuning: the key sets follow from the groups (or the clusters) alone.

Knobs:

- routed modes (``union_auto``: routers fitted on each sample's own router inputs, the pack's auto routers;
  ``union_auto_g2``: the same with the second group; ``union_calibrated``: k-means routers fitted on the calibration
  prompts, a router file): M at the pack's capacity bound (1.25), the second group as the mode says; then,
  optionally (``capacities``), M ± 1 and the capacity bound refine it. The smallest M whose density is at most the target is found by bisection over [1, max_groups]
  (M = 1 is dense attention, density 1), and of every M bisection visited (it and M − 1 among them) the one
  closest to the target is taken (ties: fewer groups). Density falls with M only roughly (k-means groups are
  unequal), hence "closest among the visited"; the visited (M, density) pairs are kept in the result;
- random groups (balanced, seeded): M, the same search;
- SVG2-style baseline: top-p, bisection on [0, 1] (its density rises with p), 20 halvings.

Inputs: ``captured`` as `quality_model.capture` returns it: block -> list of {x (B, N, C), q, k (B, N, H, D),
layout}, one entry per calibration forward (batches × noise levels, in that order).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from moga_core import MogaConfig, VideoLayout
from moga_core.blocksparse import key_set_pairs_tensor
from moga_core.router import second_choice
from quality_model import (AttentionMode, fit_auto_routers, fit_routers, route_batch, svg2_clusters,
                           svg2_select)

ROUTED = ("union_auto", "union_auto_g2", "union_calibrated")
MODES = ROUTED + ("random_groups", "svg2")


@dataclass
class Tuned:
    """One (mode, target) choice: the knob (``params``), the calibration density it gives, what was tried."""

    mode: str
    target: float
    density: float
    params: dict
    tried: list = field(default_factory=list)  # [(knob value, density)] in the order evaluated

    def to_dict(self) -> dict:
        return asdict(self)


def keyset_density(layout: VideoLayout, cfg: MogaConfig, groups: torch.Tensor,
                   groups2: torch.Tensor | None = None) -> float:
    """Pairs of the key sets G ∪ W ∪ F (∪ second group) ∪ Glob over N², for groups (B, Nv) of one layout."""
    if groups.dim() != 2 or groups.shape[1] != layout.num_video_tokens:
        raise ValueError(f"groups must be (B, Nv) with Nv = {layout.num_video_tokens}, got {tuple(groups.shape)}")
    b, n, ng = groups.shape[0], layout.num_tokens, layout.num_global_tokens
    pairs = float(key_set_pairs_tensor(layout, cfg, groups, None, groups2))
    return (pairs + b * ng * n) / float(b * n * n)


def random_groups(nv: int, num_groups: int, seed: int, index: int) -> torch.Tensor:
    """(Nv,) balanced random groups, as `quality_model.AttentionController` draws them for block ``index``."""
    gen = torch.Generator().manual_seed(seed * 1000 + index)
    perm = torch.randperm(nv, generator=gen)
    g = torch.empty(nv, dtype=torch.int64)
    g[perm] = torch.arange(nv) % num_groups
    return g


def search_groups(density_of, target: float, max_groups: int) -> tuple[int, float, list]:
    """Bisection over M in [1, max_groups] for the smallest M with density <= target; returns the visited M
    closest to the target (ties: fewer groups; M and M − 1 are both visited), its density and the visited
    (M, density) pairs."""
    if max_groups < 2:
        raise ValueError(f"max_groups must be >= 2, got {max_groups}")
    cache: dict[int, float] = {}
    tried = []

    def f(m):
        if m not in cache:
            cache[m] = float(density_of(m))
            tried.append((m, cache[m]))
        return cache[m]

    lo, hi = 1, max_groups
    if f(hi) > target:  # even max_groups stays above the target: the closest reachable
        return hi, f(hi), tried
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) <= target:
            hi = mid
        else:
            lo = mid
    best = min(cache, key=lambda m: (abs(cache[m] - target), m))  # lo and hi bracket the crossing
    return best, cache[best], tried


def _entries(captured: dict[int, list[dict]]):
    blocks = sorted(captured)
    return blocks, len(captured[blocks[0]])


def tune(captured: dict[int, list[dict]], base: MogaConfig, targets, modes=MODES, *, capacity: float | None = 1.25,
         capacities: tuple = (), max_groups: int = 64, seed: int = 0, auto_entries: list[int] | None = None,
         svg2: AttentionMode | None = None, log=None) -> list[Tuned]:
    """Every (mode, target) of ``modes`` × ``targets``: see the module docstring. ``base``: the MoGA settings other
    than M, capacity and the second group (window, temporal group, neighbour frames, frame branch; union).
    ``capacity``: the routed modes' capacity bound while M is searched; ``capacities``: if given, the routed modes'
    choice is then refined over (M − 1, M, M + 1) × ``capacities`` (integer M moves the density in steps of about
    1/M² of it; the bound moves it between balanced groups and plain top-1): the closest pair wins, ties going to
    ``capacity`` and then to fewer groups. ``auto_entries``: which calibration forwards the auto routers are fitted
    on and measured with (default: all); ``svg2``: the baseline's mode (clusters, iterations, seed; its top-p is
    what is tuned)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown tuning modes {unknown}; expected some of {MODES}")
    if not targets or any(not 0.0 < float(t) < 1.0 for t in targets):
        raise ValueError(f"targets must be densities in (0, 1), got {tuple(targets)}")
    blocks, count = _entries(captured)
    auto_entries = list(range(count)) if auto_entries is None else list(auto_entries)
    out: list[Tuned] = []

    def cfg_for(m, second, cap=capacity):
        return replace(base, num_groups=m, combine="union", capacity=cap, second_group=second, balanced=False)

    fits: dict[tuple, object] = {}  # (kind, M) -> fitted routers; auto and auto + second group share them

    def routers_for(kind, m):
        if (kind, m) not in fits:
            if kind == "calibrated":
                fits[(kind, m)] = fit_routers(captured, m, seed=seed)
            else:
                fits[(kind, m)] = {j: fit_auto_routers({i: [captured[i][j]] for i in blocks}, m)
                                   for j in auto_entries}
        return fits[(kind, m)]

    def routed_density(kind, m, second, cap):
        cfg = cfg_for(m, second, cap)
        routers = routers_for(kind, m)
        if kind == "calibrated":
            vals = [_routed_density(routers[bi], e, cfg) for bi, i in enumerate(blocks) for e in captured[i]]
        else:
            vals = [_routed_density(routers[j][i], captured[i][j], cfg) for j in auto_entries for i in blocks]
        return sum(vals) / len(vals)

    for mode in modes:
        if mode in ROUTED:
            second = mode == "union_auto_g2"
            kind = "calibrated" if mode == "union_calibrated" else "auto"
            cache: dict[tuple, float] = {}

            def dens(m, cap=capacity, kind=kind, second=second, cache=cache):
                if (m, cap) not in cache:
                    cache[(m, cap)] = routed_density(kind, m, second, cap)
                return cache[(m, cap)]

            for target in targets:
                m, d, tried = search_groups(dens, target, max_groups)
                cap = capacity
                if capacities:
                    cands = [(mm, c) for mm in (m - 1, m, m + 1) if 2 <= mm <= max_groups for c in capacities]
                    for mm, c in cands:
                        tried.append(((mm, c), dens(mm, c)))
                    m, cap = min(cands, key=lambda k: (abs(dens(*k) - target), k[1] != capacity, k[0]))
                    d = dens(m, cap)
                out.append(Tuned(mode, float(target), d, {"num_groups": m, "capacity": cap,
                                                          "second_group": second}, tried))
                if log:
                    log(f"tune {mode} @ {target:.2f}: M = {m}, capacity {cap} -> calibration density {d:.3f}")
        elif mode == "random_groups":
            def density_of(m):
                cfg = cfg_for(m, False)
                vals = []
                for i in blocks:
                    for e in captured[i]:
                        lay = e["layout"]
                        g = random_groups(lay.num_video_tokens, m, seed, i).to(e["x"].device)
                        vals.append(keyset_density(lay, cfg, g.expand(e["x"].shape[0], -1)))
                return sum(vals) / len(vals)
            for target in targets:
                m, d, tried = search_groups(density_of, target, max_groups)
                out.append(Tuned(mode, float(target), d, {"num_groups": m, "capacity": None, "second_group": False},
                                 tried))
                if log:
                    log(f"tune {mode} @ {target:.2f}: M = {m} -> calibration density {d:.3f}")
        else:  # svg2
            base_mode = svg2 or AttentionMode("svg2", seed=seed)
            clusters = [svg2_clusters(e["q"], e["k"], {}, i, base_mode) for i in blocks for e in captured[i]]

            def density_at(p):
                return sum(svg2_select(c, p)[1] for c in clusters) / len(clusters)

            for target in targets:
                lo, hi, tried = 0.0, 1.0, []
                for _ in range(20):
                    mid = (lo + hi) / 2
                    d = density_at(mid)
                    tried.append((round(mid, 6), d))
                    if d < target:
                        lo = mid
                    else:
                        hi = mid
                p = min((lo, hi), key=lambda x: abs(density_at(x) - target))
                d = density_at(p)
                out.append(Tuned(mode, float(target), d, {"svg2_top_p": p}, tried))
                if log:
                    log(f"tune {mode} @ {target:.2f}: top-p = {p:.4f} -> calibration density {d:.3f}")
    return out


def _routed_density(router, entry: dict, cfg: MogaConfig) -> float:
    lay = entry["layout"]
    xv = entry["x"][:, lay.prefix:lay.prefix + lay.num_video_tokens]
    with torch.no_grad():
        groups, _, _, logits = route_batch(router, xv, cfg)
    groups2 = second_choice(logits, groups) if cfg.second_group else None
    return keyset_density(lay, cfg, groups, groups2)


def closest_is_chosen(t: Tuned) -> bool:
    """The choice is the visited candidate closest to the target (the property the CI slice checks)."""
    return all(abs(t.density - t.target) <= abs(d - t.target) + 1e-12 for _, d in t.tried) and \
        math.isfinite(t.density)
