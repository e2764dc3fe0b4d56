"""Installs MoGA on a clone of a MODEL through ComfyUI's own hooks, and holds the state of its sampling runs.

One patch holder per patched model (shared by reference by later clones; never copied). `BlockPatch` is what every
holder shares, installed by `install_patch` through the model family's adapter:

- a DIFFUSION_MODEL wrapper reads the per-forward facts (latent grid, extra-token inputs, shot plan, whether this
  sigma is inside the sparse range) and, for MoGA, puts its attention override on top of whatever override the
  call carries;
- a block replace patch per wanted block (``patches_replace["dit"][(type, i)]``, chained onto any earlier one)
  gives the holder each block call's arguments before the block runs;
- ON_PRE_RUN / ON_CLEANUP open and close a run's statistics.

`MogaPatch` routes (with the given routers, random groups, or routers it fits to each run's video: `auto_routers`): its
block patch computes the block's router input, routes the video tokens and leaves the
routing (``wiring.ROUTE``) for the block's self-attention call; its attention override
(``transformer_options["optimized_attention_override"]``, chained onto the previous one) takes that one call and
runs `moga_core.moga_attention`; every other call (cross-attention, the token refiner, VACE blocks, dense steps) goes
to the previous override or the default backend untouched. The calibration pass installs its own holder
(`calibrate.CapturePatch`) through the same `install_patch`.

An unpatched clone of the same model never sees any of it. Keys and readers of the per-call state: `wiring`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch.profiler import record_function

import comfy.model_management
import comfy.patcher_extension
from ..moga_core import PlanCache, RandomGroups, VideoLayout, moga_attention
from ..moga_core.speed import DENSE, SPARSE, TIME_DENSE, SpeedCheck
from ..moga_core.routers import RouterSet

from . import wiring
from .adapters import BlockKey, ModelAdapter, adapter_for
from .auto_routers import AutoRouters
from .module_patches import add_module_patch
from .options import PatchOptions
from .shots import ShotPlan, frame_shots, text_keep_table

RANDOM_SEED = 0  # grouping "random": block i's partition is RandomGroups(M, seed=RANDOM_SEED + i)
# device memory the block plans of content-free groups may hold during a run (moga_core.PlanCache): about 17 MiB a
# block at 187,200 tokens, so every block of Wan 1.3B/14B fits; at longer lengths the first blocks are cached
PLAN_CACHE_BYTES = 1 << 30

log = logging.getLogger("moga")
DENSE_MEASURED = "measured slower than dense at this length"  # the run's speed check (moga_core.speed)
DENSE_TIMING = "timed dense for the speed check"  # the few dense calls the speed check compares against
UNTAKEN = "no self-attention call took the routing"  # e.g. a self-attention that made no attention call
DENSE_BY_COST = "groups too unequal to pay off"  # the estimate said the sparse layer would not beat dense (old reason)


def summarize_run(stats: dict | None) -> str:
    """One line on a sampling run of a patched model: sparse vs dense attention calls, why calls were dense,
    the group-size skew and the density of the sparse calls."""
    if not stats or not stats.get("forwards"):
        return "MoGA: no sampling run yet"
    sparse = sum(stats["sparse_calls"].values())
    dense = sum(stats["dense"].values())
    parts = [f"MoGA: {sparse} sparse / {dense} dense attention calls"]
    if dense:
        parts.append("dense: " + ", ".join(f"{reason} {count}" for reason, count in stats["dense"].most_common()))
    if sparse:
        parts.append(f"largest group {100 * stats['largest_group_sum'] / sparse:.0f}% of the tokens on average "
                     f"(max {100 * stats['largest_group_max']:.0f}%)")
        parts.append(f"density {stats['density_sum'] / sparse:.3f}")
        if stats.get("plans_reused"):
            parts.append(f"block plans reused in {stats['plans_reused']} calls")
    for (tokens, _heads), (verdict, sparse_ms, dense_ms) in sorted((stats.get("speed") or {}).items()):
        parts.append(f"speed check at {tokens:,} tokens: sparse {sparse_ms:.2f} ms vs dense {dense_ms:.2f} ms "
                     f"per call, so {verdict}")
    others = stats.get("other_attention")
    if others:
        parts.append("calls MoGA did not take went to " + " and ".join(sorted(others)))
    if stats.get("auto_fits"):
        parts.append(f"auto routers fitted in {stats['auto_fit_s']:.2f} s (inputs sampled in "
                     f"{stats.get('auto_capture_s', 0.0):.2f} s) at sigma {stats.get('auto_capture_sigma') or 0:.4g}")
    return "; ".join(parts)


def parse_block_list(text: str, num_blocks: int) -> set[int]:
    """``"0,1,-1"`` or ``"0-3, 20"`` -> block indices (negative counts from the end; ranges inclusive)."""
    out: set[int] = set()
    text = (text or "").strip()
    if not text:
        return out
    for part in re.split(r"[,\s;]+", text):
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)(?:\s*(?:\.\.|:|-(?=\d|-))\s*(-?\d+))?", part)
        if not m:
            raise ValueError(f"dense_blocks: cannot read {part!r} in {text!r}; expected block numbers like "
                             "'0,1,-1' or ranges like '0-3'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        for value in (lo, hi):
            if not -num_blocks <= value < num_blocks:
                raise ValueError(f"dense_blocks: block {value} does not exist; the model has {num_blocks} blocks "
                                 f"(0..{num_blocks - 1}, or -1..-{num_blocks} from the end)")
        lo, hi = lo % num_blocks, hi % num_blocks
        out.update(range(min(lo, hi), max(lo, hi) + 1))
    return out


@dataclass
class ForwardInfo:
    """What a holder's DIFFUSION_MODEL wrapper read for one model call."""

    sparse: bool  # inside [start_percent, end_percent]
    cuts: tuple[int, ...]  # latent-frame shot starts of the whole video
    facts: dict = field(default_factory=dict)  # the adapter's per-forward facts (latent shape, extra tokens)
    plan: ShotPlan | None = None  # the multi-shot plan, when the cond carries per-shot captions
    capture: str | None = None  # why this call's router inputs are sampled for auto routers (None: they are not)
    adapter: ModelAdapter | None = None  # the family adapter over the diffusion model this call runs (see bind)


@dataclass
class Route:
    """What a block call leaves for its self-attention."""

    patch: "MogaPatch"
    key: BlockKey
    layout: VideoLayout
    groups: torch.Tensor | None  # (B, Nv) int64 (None when the route carries logits instead)
    gate: torch.Tensor | None  # (B, Nv)
    info: ForwardInfo
    groups2: torch.Tensor | None = None  # (B, Nv) int64: each token's second group (second-group mode)
    logits: torch.Tensor | None = None  # (B, n, M) float32 router logits of a sequence shard (sequence parallel)
    plan_key: tuple | None = None  # content-free groups: fixes `groups` (moga_core.PlanCache), else None
    speed_key: tuple | None = None  # set when the speed check wants this call timed on the dense backend
    scoped: bool = False  # taken only inside the adapter's self-attention module (`ModelAdapter.scoped_self_attention`)


class GroupMapProbe:
    """Asks the patch for the router's groups of one latent frame in one block (of the cond pass), every step.

    Put in a clone's transformer_options under ``wiring.GROUP_MAP``; shared by reference, so the per-call copies
    reach it.
    """

    def __init__(self, block: int, frame: int | None = None):
        self.block, self.frame = block, frame
        self.snapshot: dict | None = None
        self.steps = 0

    def __deepcopy__(self, memo):
        return self

    def record(self, groups: torch.Tensor, layout: VideoLayout, to: dict, num_groups: int) -> None:
        rows = to.get("cond_or_uncond") or [0]
        if 0 not in rows:
            return
        t_len, h, w = layout.grid
        frame = min(self.frame if self.frame is not None else t_len // 2, t_len - 1)
        per_row = groups.shape[0] // max(len(rows), 1)
        sample = groups[rows.index(0) * per_row].reshape(t_len, h, w)[frame]
        self.steps += 1
        self.snapshot = {"frame": frame, "block": self.block, "step": self.steps, "height": h, "width": w,
                         "num_groups": num_groups, "groups": sample.flatten().tolist()}


class BlockPatch:
    """A patch holder: sees every forward and every wanted block call of one patched model (see the module doc).

    Subclasses say which blocks they want (`takes_block`), what to do before a block runs (`before_block`) and
    which attention override to chain (`override_over`).
    """

    def __init__(self, adapter: ModelAdapter):
        self.adapter = adapter
        self._lock = threading.Lock()
        self.stats = self._new_stats()
        self.last_run_stats = None

    # ComfyUI versions that deep-copy model_options must not copy the holder
    def __deepcopy__(self, memo):
        return self

    @staticmethod
    def _new_stats():
        return {"forwards": 0, "sparse_forwards": 0, "sparse_calls": Counter(), "dense": Counter(),
                "sigmas": [], "density_sum": 0.0, "largest_group_sum": 0.0, "largest_group_max": 0.0,
                "other_attention": set(), "plans_reused": 0}

    # ---- what a subclass decides
    def takes_block(self, key: BlockKey) -> bool:
        raise NotImplementedError

    def before_block(self, key: BlockKey, args: dict, to: dict, info: ForwardInfo):
        """Work before the block runs; returns a `Route` for the block's self-attention call, or None."""
        raise NotImplementedError

    def override_over(self, previous):
        """The attention override to install over ``previous`` (``previous`` itself when the holder takes none)."""
        return previous

    def sparse_at(self, sigma: float | None) -> bool:
        return True

    def forward_mode(self, sigma: float | None, to: dict) -> tuple[bool, str | None]:
        """(sparse, capture) of one model call: whether MoGA runs, and why its router inputs are sampled (None)."""
        return self.sparse_at(sigma), None

    # ---- run bookkeeping
    def on_pre_run(self, model_patcher, *rest):
        self.stats = self._new_stats()

    def on_cleanup(self, model_patcher, *rest):
        if self.stats["forwards"]:
            self.last_run_stats = self.stats
        self.stats = self._new_stats()

    def _dense(self, reason: str):
        with self._lock:
            self.stats["dense"][reason] += 1
        return None

    # ---- the DIFFUSION_MODEL wrapper
    def diffusion_wrapper(self, executor, *args, **kwargs):
        to = wiring.call_options(args, kwargs)
        if to is None:
            return executor(*args, **kwargs)
        sigma = wiring.sigma_of(to)
        sparse, capture = self.forward_mode(sigma, to)
        with self._lock:
            self.stats["forwards"] += 1
            self.stats["sparse_forwards"] += int(sparse)
            if sigma is not None:
                self.stats["sigmas"].append(sigma)
        # the model being run may be a delegate loaded after the patch was made (dynamic VRAM): modules come from it
        running = self.adapter.bind(getattr(executor, "class_obj", None))
        infos = dict(to.get(wiring.FORWARD) or {})
        infos[id(self)] = ForwardInfo(sparse, wiring.shot_cuts_of(to), running.forward_info(args, kwargs),
                                      wiring.shot_plan_of(to), capture, running)
        to[wiring.FORWARD] = infos
        current = to.get(wiring.ATTENTION_OVERRIDE)
        if not _is_ours(current, self):  # a node applied later replaced us for this model: go back on top
            override = self.override_over(current)
            if override is not None:
                to[wiring.ATTENTION_OVERRIDE] = override
        other = wiring.describe_override(_strip_moga(to.get(wiring.ATTENTION_OVERRIDE)))
        if other is not None:
            with self._lock:
                self.stats["other_attention"].add(other)
        try:
            return executor(*args, **kwargs)
        finally:
            infos.pop(id(self), None)

    # ---- block replace patch
    def block_patch(self, key: BlockKey, previous):
        def moga_block(args, extra):
            comfy.model_management.throw_exception_if_processing_interrupted()  # interrupt within a step too
            to = args["transformer_options"]
            route = self._before_block(key, args, to)
            if route is not None:
                to[wiring.ROUTE] = route
            try:
                return previous(args, extra) if previous is not None else extra["original_block"](args)
            finally:
                if route is not None and to.get(wiring.ROUTE) is route:
                    to.pop(wiring.ROUTE, None)
                    self._dense(UNTAKEN)  # the block made no self-attention call MoGA could take

        moga_block._moga_patch = self
        moga_block._moga_previous = previous
        return moga_block

    # torch.compile (ComfyUI's compile nodes) traces around these: routing and packing need host-side sizes
    @torch.compiler.disable
    def _before_block(self, key: BlockKey, args: dict, to: dict):
        info = (to.get(wiring.FORWARD) or {}).get(id(self))
        if info is None:
            return self._dense("no forward info")
        return self.before_block(key, args, to, info)

    def video_tokens(self, key: BlockKey, args: dict, to: dict, info: ForwardInfo):
        """(grid, span) of this block call's video tokens, or None (counted as a dense reason)."""
        adapter = info.adapter or self.adapter
        reason = adapter.dense_reason(key, args, info.facts)
        if reason is not None:
            return self._dense(reason)
        grid = wiring.video_grid(adapter, info.facts, to)
        if grid is None:
            return self._dense("no video grid")
        span = adapter.video_span(key, args, grid[0] * grid[1] * grid[2], info.facts)
        if span is None:
            return self._dense("token layout not understood")
        return grid, span


class MogaPatch(BlockPatch):
    """The holder of one patched model's MoGA state (options, routers on each device, run statistics).

    ``routers`` None: ``options.auto_groups`` groups for every block that is not in ``dense_blocks``, as
    ``options.grouping`` says — "random": `moga_core.RandomGroups` per block (``self.random``); "kmeans": auto routers
    (`auto_routers.AutoRouters`, ``self.auto``) fitted in each run on the router inputs of its last dense step.
    """

    def __init__(self, adapter: ModelAdapter, routers: RouterSet | None, options: PatchOptions):
        super().__init__(adapter)
        self.routers = routers
        self.options = options
        self.dense_blocks = parse_block_list(options.dense_blocks, adapter.num_blocks)
        self.auto = None
        self.random = None
        if routers is None:
            check_auto_options(options)
            blocks = {key.index for key in adapter.blocks()} - self.dense_blocks
            # groups without a trained router are meant for union (exact attention over the key sets)
            self.cfg = options.moga_config(num_groups=options.auto_groups, router_combine="union")
            if options.grouping == "kmeans":
                self.auto = AutoRouters(adapter, options.auto_groups, blocks).bind(self.sparse_at)
            else:
                # one partition per block (seeded by its index): blocks see different samples of the far keys
                self.random = {i: RandomGroups(options.auto_groups, seed=RANDOM_SEED + i) for i in blocks}
        else:
            self.cfg = options.moga_config(num_groups=routers.num_groups, router_combine=routers.combine,
                                           router_capacity=routers.capacity)
        self.sigma_start = None  # set per run from the model's model_sampling (ON_PRE_RUN)
        self.sigma_end = None
        self._device_routers: dict = {}
        self._overrides: dict = {}
        # random groups are the same at every step: their block plans are built once per run (ON_PRE_RUN clears)
        self.plan_cache = PlanCache(PLAN_CACHE_BYTES) if self.random is not None else None
        # dense_if_slower: besides moga_core's estimate, each run times a few sparse and dense calls of each shape
        # and keeps the faster (the estimate does not see a call's fixed costs, which decide short sequences)
        self.speed = SpeedCheck() if options.dense_if_slower else None

    def routed_blocks(self) -> list[int]:
        """Indices of the blocks MoGA routes (no router: every block but the dense ones)."""
        if self.random is not None:
            return sorted(self.random)
        return sorted(self.auto.blocks if self.auto is not None else self.routers.routers)

    def takes_block(self, key: BlockKey) -> bool:
        if self.random is not None:
            return key.index in self.random
        if self.auto is not None:
            return key.index in self.auto.blocks
        return key.index in self.routers.routers

    # ---- run bookkeeping
    def on_pre_run(self, model_patcher, *rest):
        model_sampling = model_patcher.get_model_object("model_sampling")
        self.sigma_start = float(model_sampling.percent_to_sigma(self.options.start_percent))
        self.sigma_end = float(model_sampling.percent_to_sigma(self.options.end_percent))
        if self.auto is not None:
            self.auto.new_run()  # a new run fits its own routers
        if self.plan_cache is not None:
            self.plan_cache.clear()
        if self.speed is not None:
            self.speed.reset()  # measured per run: the card, the model's placement and the shapes may change
        super().on_pre_run(model_patcher, *rest)

    def forward_mode(self, sigma: float | None, to: dict) -> tuple[bool, str | None]:
        sparse = self.sparse_at(sigma)
        if self.auto is None:
            return sparse, None
        with self._lock:  # the fit happens once, before the run's first sparse call
            return self.auto.begin_forward(sigma, to, sparse, self.stats)

    def on_cleanup(self, model_patcher, *rest):
        if self.speed is not None:
            # what the speed check measured: (tokens, heads) -> verdict, sparse ms, dense ms (medians)
            self.stats["speed"] = {(layout.num_tokens, shape[2]): found
                                   for (layout, shape, *_), found in self.speed.decided().items()}
        if self.stats["forwards"]:
            log.info("%s", summarize_run(self.stats))
        super().on_cleanup(model_patcher, *rest)
        self._overrides.clear()
        if self.plan_cache is not None:
            self.plan_cache.clear()  # the plans hold device memory; the next run builds its own

    def sparse_at(self, sigma: float | None) -> bool:
        if self.sigma_start is None or sigma is None:
            return True  # no run context (direct model call): no warm-up gating
        return self.sigma_end - 1e-6 <= sigma <= self.sigma_start + 1e-6

    # ---- routers on the model's device (one float32 copy per device, shared by every clone of the model)
    def router(self, index: int, device: torch.device):
        """Block ``index``'s router on ``device``, or None (auto routers: none fitted for this block)."""
        if self.auto is not None:
            router = (self.auto.routers or {}).get(index)
            return router.to(device) if router is not None else None
        per_device = self._device_routers.get(device)
        if per_device is None:
            with self._lock:
                per_device = self._device_routers.get(device)
                if per_device is None:
                    per_device = {i: r.to(device) for i, r in self.routers.routers.items()}
                    self._device_routers[device] = per_device
        return per_device[index]

    # ---- before each routed block: route its video tokens
    def before_block(self, key: BlockKey, args: dict, to: dict, info: ForwardInfo):
        if key.index in self.dense_blocks:
            return self._dense("dense block")
        if info.capture is not None:  # a step whose router inputs the auto routers are fitted on
            found = self.video_tokens(key, args, to, info)
            if found is not None:
                with torch.no_grad():
                    self.auto.add(key.index, info.adapter.router_input(key, args, found[1]), self.stats)
            if info.capture == "forced dense":
                return self._dense("dense step to fit auto routers")
        if not info.sparse:
            return self._dense("outside start/end percent")
        found = self.video_tokens(key, args, to, info)
        if found is None:
            return None
        grid, span = found
        if grid[0] * grid[1] * grid[2] + span[0] + span[1] < self.options.min_tokens:
            return self._dense("below min_tokens")
        try:
            layout = _layout(grid, wiring.shot_frames_in_call(info.cuts, grid[0], to), span)
        except ValueError as exc:
            log.warning("MoGA: %s; block %s stays dense", exc, key)
            return self._dense("bad shot plan")
        with torch.no_grad(), record_function("moga.route"):
            if self.random is not None:  # content-free groups: the router input (a norm over all tokens) is not needed
                route = self.route_random(self.random[key.index], self.adapter.block_tokens(args), key, layout, info)
            else:
                x_mod = info.adapter.router_input(key, args, span)
                router = self.router(key.index, x_mod.device)
                if router is None:
                    return self._dense("no auto router (too few video tokens)")
                route = self.route(router, x_mod, key, layout, info)
        route.scoped = self.adapter.scoped_self_attention(key) is not None
        probe = to.get(wiring.GROUP_MAP)
        if probe is not None and probe.block == key.index and route.groups is not None:
            probe.record(route.groups, layout, to, self.cfg.num_groups)
        return route

    def route(self, router, x_mod: torch.Tensor, key: BlockKey, layout: VideoLayout, info: ForwardInfo) -> Route:
        """Route the video tokens ``x_mod`` (B, Nv, C) of one block call."""
        groups2 = None
        if self.cfg.second_group:
            groups, gate, groups2 = router.route2(x_mod, capacity=self.cfg.capacity)
        else:
            groups, gate = router(x_mod, capacity=self.cfg.capacity)
        return Route(self, key, layout, groups, gate.to(x_mod.dtype), info, groups2)

    def route_random(self, groups: RandomGroups, tokens: torch.Tensor, key: BlockKey, layout: VideoLayout,
                     info: ForwardInfo) -> Route:
        """Random groups for one block call: the block's partition of the Nv video tokens, for each of the B samples
        of ``tokens`` (the block's token stream (B, n, C)); no gate (union mode)."""
        ids = groups.partition(layout.num_video_tokens, tokens.device).expand(tokens.shape[0], -1).contiguous()
        # the partition depends on the seed, M and Nv only (the layout holds Nv, the config M): a plan key
        return Route(self, key, layout, ids, None, info, plan_key=("random", groups.seed, groups.num_groups))

    # ---- attention override
    def override_over(self, previous):
        """Our override chained onto ``previous`` (cached per previous, so a run builds a few closures at most)."""
        cached = self._overrides.get(id(previous))
        if cached is not None and cached[0] is previous:
            return cached[1]
        override = _make_override(self, previous)
        if len(self._overrides) >= 16:  # a node that installs a fresh override every run must not grow this
            self._overrides.clear()
        self._overrides[id(previous)] = (previous, override)
        return override

    @torch.compiler.disable
    def attend(self, route: Route, q, k, v, heads, mask, skip_reshape, skip_output_reshape, kwargs):
        """MoGA for one self-attention call, or None to leave it to the dense backend."""
        if q.shape != k.shape or q.shape != v.shape or kwargs.get("enable_gqa") or \
                "low_precision_attention" in kwargs:
            return self._dense("not self-attention")
        # ComfyUI passes (B, N, H·D), or (B, H, N, D) with skip_reshape; moga_core takes (B, N, H, D)
        if skip_reshape:
            n = q.shape[2]
        else:
            n = q.shape[1]
            if heads is None or q.shape[2] % heads:
                return self._dense("head layout")
        layout = route.layout
        if n != layout.num_tokens:
            return self._dense("token count mismatch")
        width = self.adapter.attention_width(route.key)
        if width is not None and (q.shape[1] * q.shape[3] if skip_reshape else q.shape[2]) != width:
            return self._dense("not the video self-attention")
        global_keep = None
        plan_key = route.plan_key
        if mask is not None:
            global_keep = _global_keep_from_mask(mask, layout, n)
            if global_keep is None:
                return self._dense("attention mask")
            if plan_key is not None:  # the padding mask is part of the plan (read back already, Ng values)
                plan_key += ("mask", global_keep.cpu().numpy().tobytes())
        captions = self._caption_keep(route, layout, n, kwargs.get("transformer_options") or {}, q.device)
        if captions is not None:
            if plan_key is not None:  # built on the host from the shot plan: its bytes identify it
                plan_key += ("captions", tuple(captions.shape), captions.numpy().tobytes())
            captions = captions.to(q.device)
            global_keep = captions if global_keep is None else captions & global_keep[None]
        pattern = "b h n d -> b n h d" if skip_reshape else "b n (h d) -> b n h d"
        q4, k4, v4 = (rearrange(t, pattern, **({} if skip_reshape else {"h": heads})) for t in (q, k, v))
        gate = route.gate if self.cfg.combine == "mean" else None
        speed_key = None
        if self.speed is not None and self.cfg.combine == "union":  # mean mode has no dense equivalent
            speed_key = (layout, tuple(q4.shape), q4.dtype, str(q4.device), global_keep is not None)
            action = self.speed.action(speed_key)
            if action == DENSE:
                return self._dense(DENSE_MEASURED)
            if action == TIME_DENSE:
                route.speed_key = speed_key  # the override times the dense backend on this call
                return self._dense(DENSE_TIMING)
        call = {}
        with (self.speed.timing(speed_key, SPARSE, q4.device) if speed_key is not None else nullcontext()) as sample:
            out = moga_attention(q4, k4, v4, layout, self.cfg, route.groups, gate, scale=kwargs.get("scale"),
                                 global_keep=global_keep, stats=call,
                                 dense_fallback=self.options.dense_if_slower, groups2=route.groups2,
                                 plan_cache=self.plan_cache, plan_key=plan_key)
            # only steady-state sparse calls are samples: not the estimate's dense calls, nor a plan's first build
            if sample is not None and (call["path"] == "dense" or (plan_key is not None and not call["plan_cached"])):
                sample.discard()
        self.count_call(route, call)
        return rearrange(out, "b n h d -> b h n d" if skip_output_reshape else "b n h d -> b n (h d)")

    def count_call(self, route: Route, call: dict) -> None:
        """Add one attention call's ``stats`` (from `moga_attention`) to the run's statistics."""
        sizes = call["group_sizes"].double()
        largest = float((sizes.max(1).values / sizes.sum(1)).mean())
        with self._lock:
            if call["path"] == "dense":  # computed densely inside moga_attention (union mode's M = 1 case)
                # why moga_core ran it dense: one group, the cost at this length, or unequal groups
                self.stats["dense"][call.get("dense_reason") or DENSE_BY_COST] += 1
            else:
                self.stats["sparse_calls"][(route.key.block_type, route.key.block_index)] += 1
                self.stats["density_sum"] += call["density"]
                self.stats["plans_reused"] += bool(call.get("plan_cached"))
                self.stats["largest_group_sum"] += largest
                self.stats["largest_group_max"] = max(self.stats["largest_group_max"], largest)

    def _caption_keep(self, route: Route, layout: VideoLayout, n: int, to: dict, device):
        """(T, prefix + suffix) bool on the host: caption visibility per latent frame when the cond carries
        per-shot captions; else None."""
        plan = route.info.plan
        if plan is None or plan.shot_tokens is None or layout.num_global_tokens == 0:
            return None
        found = self.adapter.text_layout(n, n, True, layout.num_video_tokens, plan.text_tokens, route.info.facts)
        if found is None or found[0] != "joint":
            return None
        text_start = found[1]
        num_frames = layout.grid[0]
        rows = text_keep_table(plan, frame_shots(plan, num_frames, wiring.window_frames(to, num_frames)))
        keep = torch.ones(num_frames, layout.num_global_tokens, dtype=torch.bool)
        keep[:, text_start:text_start + plan.text_tokens] = torch.tensor(rows, dtype=torch.bool)
        return keep  # on the host: the caller keys the plan cache by its bytes before moving it


def _make_override(patch: MogaPatch, previous):
    def moga_override(func, q, k, v, heads=None, mask=None, attn_precision=None, skip_reshape=False,
                      skip_output_reshape=False, **kwargs):
        to = kwargs.get("transformer_options")
        route = to.get(wiring.ROUTE) if isinstance(to, dict) else None
        if route is not None and route.scoped and not to.get(wiring.ROUTE_SCOPE):
            route = None  # not the call of the block's self-attention module: leave the routing for it
        if route is not None and route.patch is patch:
            to.pop(wiring.ROUTE, None)  # one self-attention call per block takes the routing
            out = patch.attend(route, q, k, v, heads, mask, skip_reshape, skip_output_reshape, kwargs)
            if out is not None:
                return out
        info = (to.get(wiring.FORWARD) or {}).get(id(patch)) if isinstance(to, dict) else None

        def dense():
            return wiring.pass_down(func, previous, info.adapter if info is not None else None, q, k, v, heads,
                                    dict(kwargs, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                                         skip_output_reshape=skip_output_reshape))

        if route is not None and route.patch is patch and route.speed_key is not None:
            with patch.speed.timing(route.speed_key, DENSE, q.device):
                return dense()
        return dense()

    # no `container_function` attribute on purpose: newer ComfyUI then hands us plain tensors
    moga_override._moga_patch = patch
    moga_override._moga_previous = previous
    moga_override.memory_efficient = True
    return moga_override


def _in_route_scope(module, *args, **kwargs):
    """The forward of a block's self-attention module (`ModelAdapter.scoped_self_attention`) with the routing
    takeable while it runs: an attention call made outside it (e.g. the text cross-attention after a self-attention
    that spatio-temporal guidance skipped) never gets the routing, whatever its shape."""
    to = kwargs.get("transformer_options")
    if not isinstance(to, dict):
        return type(module).forward(module, *args, **kwargs)
    to[wiring.ROUTE_SCOPE] = True
    try:
        return type(module).forward(module, *args, **kwargs)
    finally:
        to.pop(wiring.ROUTE_SCOPE, None)


def _is_ours(override, patch) -> bool:
    while override is not None:
        if getattr(override, "_moga_patch", None) is patch:
            return True
        override = getattr(override, "_moga_previous", None)
    return False


def _strip_moga(obj):
    """Unwrap MoGA layers from an override or block patch chain (re-applying MoGA replaces, never stacks)."""
    while obj is not None and getattr(obj, "_moga_patch", None) is not None:
        obj = obj._moga_previous
    return obj


_LAYOUTS: dict = {}


def _layout(grid, shots, span) -> VideoLayout:
    key = (tuple(grid), tuple(shots), tuple(span))
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = VideoLayout(grid=tuple(grid), shots=tuple(shots), prefix=span[0], suffix=span[1])
        if len(_LAYOUTS) > 256:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def _global_keep_from_mask(mask, layout: VideoLayout, n: int):
    """HunyuanVideo's additive text-padding mask (…, N) -> which global tokens are real keys; None otherwise."""
    if not torch.is_tensor(mask) or mask.shape[-1] != n or mask.numel() != n:
        return None  # a mask that differs per row/batch is not a key-padding mask
    flat = mask.reshape(n)
    p, nv = layout.prefix, layout.num_video_tokens
    if flat.dtype == torch.bool:
        keep = flat
    else:
        keep = flat == 0  # additive: 0 keeps a key, a huge negative number (or -inf) drops it
        if not bool((keep | (flat <= -1e4)).all()):
            return None  # a soft bias, not a padding mask: leave it to the dense backend
    if not bool(keep[p:p + nv].all()):
        return None  # masks video tokens: not ours to interpret
    return torch.cat([keep[:p], keep[p + nv:]])


def install_patch(model_patcher, holder: BlockPatch) -> BlockPatch:
    """Install ``holder`` on ``model_patcher`` (already a clone) in place; an earlier MoGA holder is replaced."""
    adapter = holder.adapter
    refuse_multigpu(model_patcher)
    to = model_patcher.model_options.setdefault("transformer_options", {})
    model_patcher.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, wiring.PATCH_KEY)
    for kind in (comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, comfy.patcher_extension.CallbacksMP.ON_CLEANUP):
        model_patcher.remove_callbacks_with_key(kind, wiring.PATCH_KEY)
    override = holder.override_over(_strip_moga(to.get(wiring.ATTENTION_OVERRIDE)))
    if override is not None:
        to[wiring.ATTENTION_OVERRIDE] = override
    else:
        to.pop(wiring.ATTENTION_OVERRIDE, None)
    dit = to.get("patches_replace", {}).get("dit", {})
    for key in adapter.blocks():
        name = (f"{key.block_type}_block", key.block_index)
        earlier = _strip_moga(dit.get(name))
        if holder.takes_block(key):
            model_patcher.set_model_patch_replace(holder.block_patch(key, earlier), "dit", *name)
        elif earlier is not None:
            model_patcher.set_model_patch_replace(earlier, "dit", *name)
        elif name in dit:
            dit.pop(name)
    for path, (behaviour, what) in {**adapter.module_patches(), **adapter.shot_module_patches()}.items():
        add_module_patch(model_patcher, path, behaviour, what)
    for key in adapter.blocks():
        path = adapter.scoped_self_attention(key) if holder.takes_block(key) else None
        if path is not None:
            add_module_patch(model_patcher, path, _in_route_scope, "MoGA routing scope")
    model_patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, wiring.PATCH_KEY,
                                       holder.diffusion_wrapper)
    model_patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, wiring.PATCH_KEY,
                                        holder.on_pre_run)
    model_patcher.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, wiring.PATCH_KEY,
                                        holder.on_cleanup)
    on_match = getattr(comfy.patcher_extension.CallbacksMP, "ON_MATCH_MULTIGPU_CLONES", None)  # ComfyUI >= 0.2x
    if on_match is not None:
        model_patcher.remove_callbacks_with_key(on_match, wiring.PATCH_KEY)
        model_patcher.add_callback_with_key(on_match, wiring.PATCH_KEY, _refuse_multigpu_clones)
    wiring.set_patch(model_patcher, holder)
    return holder


MULTIGPU_REFUSED = (
    "MoGA does not run under ComfyUI's multi-GPU work split (MultiGPU CFG Split) yet: the split runs the model's copies "
    "on several GPUs at once, and MoGA's run state has not been checked there. Remove the MultiGPU CFG Split node from "
    "this model's chain (Select Model Device alone is fine), or use raylight with the 'MoGA Patch (Ray)' node")


def refuse_multigpu(model_patcher) -> None:
    """A clone that already carries per-GPU copies (MultiGPU CFG Split applied before MoGA) is a clear error."""
    getter = getattr(model_patcher, "get_additional_models_with_key", None)
    if getter is not None and getter("multigpu"):
        raise ValueError(MULTIGPU_REFUSED)


def _refuse_multigpu_clones(model_patcher, *rest):
    """ON_MATCH_MULTIGPU_CLONES: MultiGPU CFG Split applied after MoGA (or a run about to split) is a clear error."""
    if model_patcher.get_additional_models_with_key("multigpu"):
        raise ValueError(MULTIGPU_REFUSED)


def install(model_patcher, routers: RouterSet | None, options: PatchOptions) -> MogaPatch:
    """Patch ``model_patcher`` (already a clone) with MoGA in place; returns its holder. ``routers`` None: groups as
    ``options.grouping`` says (random, or auto routers fitted to each run's video: `auto_routers`)."""
    adapter = adapter_for(model_patcher)
    if routers is not None:
        check_routers(adapter, routers, model_patcher)
    return install_patch(model_patcher, MogaPatch(adapter, routers, options))


def check_auto_options(options: PatchOptions) -> None:
    """What groups without a router need: auto routers (grouping "kmeans") are fitted on the last dense step before
    MoGA starts, so there must be one; random groups have no second-best group."""
    if options.grouping == "random" and options.config.get("second_group"):
        raise ValueError("second_group needs router scores (a router file, or grouping 'k-means on this video'); "
                         "random groups have no second-best group: turn second_group off or change grouping")
    if options.grouping == "kmeans" and options.start_percent <= 0.0:
        raise ValueError("auto routers (no router connected) are fitted on the last dense step before MoGA starts, "
                         "and start_percent is 0, so there is none: set start_percent above 0 (e.g. 0.2), "
                         "choose grouping 'random (balanced)', or connect a router (MoGA Router Loader or MoGA "
                         "Calibrate Router)")


def check_routers(adapter: ModelAdapter, routers: RouterSet, model_patcher=None) -> None:
    """Routers must belong to this model: same family, width and block count (the error names both sides)."""
    name = type(getattr(model_patcher, "model", None)).__name__ if model_patcher is not None else adapter.family
    problems = []
    if routers.model_family not in (adapter.family, "unknown"):
        problems.append(f"family {routers.model_family!r} vs the model's {adapter.family!r}")
    if routers.hidden_size != adapter.hidden_size:
        problems.append(f"hidden size {routers.hidden_size} vs the model's {adapter.hidden_size}")
    if routers.num_blocks != adapter.num_blocks:
        problems.append(f"{routers.num_blocks} blocks vs the model's {adapter.num_blocks}")
    if problems:
        raise ValueError(f"the router does not fit this {adapter.display_name} model ({name}): "
                         + "; ".join(problems))
