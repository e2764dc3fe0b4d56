"""Routers fitted to the video being made ("auto" routers), and the seeded router-input sample they are fitted on.

When MoGAApply gets no router, `patcher.MogaPatch` owns an `AutoRouters`: in every sampling run it samples each
routed block's router input (video tokens of every sample of the forward: cond and uncond, every context window)
during the run's *last dense step* — the last step whose sigma lies above the sparse range, read from the run's
``transformer_options["sample_sigmas"]`` — and, just before the first sparse forward, fits each block's router by
k-means on that sample (`moga_core.Router.fit`, seeded). The routers live for that run only: the next run refits
on its own video. Same inputs and the same seed give the same routers.

When the run has no dense step before the sparse range (a schedule that starts inside it, e.g. denoise < 1), the
first step of the range runs dense and is the one sampled. ``start_percent = 0`` asks for MoGA from the first step:
with auto routers that is refused when the patch is made (`check_auto_options`).

`RouterInputSample` is shared with the calibration pass (`calibrate.CapturePatch`).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from ..moga_core import Router
from ..moga_core.routers import RouterSet

log = logging.getLogger("moga")

AUTO_SEED = 0  # seed of the token sample and of k-means: the video (the sampling seed) decides the routers
# router-input rows kept per block: k-means of M <= 20 groups on 4096 rows; CPU memory rows x C x 2 bytes per block
# (Wan 14B, C = 5120, 40 blocks: 1.7 GB while a run's capture step is held, freed once the routers are fitted)
AUTO_TOKENS_PER_BLOCK = 4096
AUTO_ITERS = 25
_UNSET = object()


class RouterInputSample:
    """Per block, a uniform random sample (reservoir, seeded) of up to ``capacity`` router-input rows (CPU fp16)."""

    def __init__(self, capacity: int, seed: int):
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.buffers: dict[int, torch.Tensor] = {}
        self.seen: dict[int, int] = {}

    def add(self, index: int, x: torch.Tensor) -> None:
        """Offer the rows of ``x`` (…, C) to block ``index``'s sample."""
        flat = x.reshape(-1, x.shape[-1])
        n, k = flat.shape[0], self.capacity
        seen = self.seen.get(index, 0)
        buf = self.buffers.get(index)
        if buf is None:
            buf = torch.empty(k, flat.shape[-1], dtype=torch.float16)
            self.buffers[index] = buf
        order = self.rng.permutation(n)  # rows in random order, then Algorithm R over them
        position = seen + np.arange(n)
        slot = np.where(position < k, position, np.floor(self.rng.random(n) * (position + 1)).astype(np.int64))
        accept = slot < k
        rows, slots = order[accept], slot[accept]
        # a slot written twice keeps the later row, as the sequential algorithm would
        last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
        rows, slots = rows[last], slots[last]
        if len(rows):
            picked = flat[torch.from_numpy(rows).to(flat.device)].to(torch.float16).cpu()
            buf[torch.from_numpy(slots)] = picked
        self.seen[index] = seen + n

    def sample(self, index: int) -> torch.Tensor | None:
        """(rows, C) float16 on the CPU, or None when block ``index`` saw nothing."""
        if index not in self.buffers:
            return None
        return self.buffers[index][: min(self.seen[index], self.capacity)]


def capture_sigma_of(step_sigmas: list[float], sparse_at) -> tuple[float | None, bool]:
    """The sigma of the step whose router inputs the routers are fitted on, and whether that step is taken out
    of the sparse range (run dense) to be sampled.

    ``step_sigmas``: the sigmas the run's steps start at (``sample_sigmas`` without the last); ``sparse_at``:
    sigma -> whether MoGA runs there. The step is the last one before the first sparse step; when the first step is
    already sparse, that step itself (forced dense). None when no step is sparse (nothing to fit).
    """
    for i, sigma in enumerate(step_sigmas):
        if sparse_at(sigma):
            return (step_sigmas[i - 1], False) if i > 0 else (sigma, True)
    return None, False


class AutoRouters:
    """One patched model's auto routers: the run's capture step, its router-input sample and the fitted routers.

    ``blocks``: block indices that get routers; ``num_groups``: M. Run statistics (seconds spent sampling inputs and
    fitting, the capture sigma) go to the patch's stats dict handed to `begin_forward`.
    """

    def __init__(self, adapter, num_groups: int, blocks: set[int], tokens_per_block: int = AUTO_TOKENS_PER_BLOCK,
                 seed: int = AUTO_SEED, iters: int = AUTO_ITERS):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"auto_groups must be an int >= 1, got {num_groups!r}")
        self.adapter = adapter
        self.num_groups = num_groups
        self.blocks = set(blocks)
        self.tokens_per_block = tokens_per_block
        self.seed = seed
        self.iters = iters
        self.fits = 0  # over the holder's life: one per run that reached its sparse range
        self.new_run()

    def new_run(self) -> None:
        self.sample: RouterInputSample | None = None
        self.routers: dict[int, Router] | None = None  # fitted for this run, on the model's device
        self.capture_sigma = _UNSET
        self.forced = False
        self.no_schedule = False  # the run did not say its sigmas: sample every dense step, keep the latest
        self._last_dense = None  # without sample_sigmas: the sigma the sample holds

    def router_set(self) -> RouterSet | None:
        """This run's routers as a RouterSet (CPU copies), or None before they are fitted."""
        if not self.routers:
            return None
        return RouterSet({i: r.cpu() for i, r in self.routers.items()}, self.adapter.family,
                         self.adapter.hidden_size, self.adapter.num_blocks, combine="union", source="calibrated",
                         extra={"auto": {"seed": self.seed, "tokens_per_block": self.tokens_per_block}})

    # ---- per forward
    def begin_forward(self, sigma: float | None, to: dict, sparse: bool, stats: dict) -> tuple[bool, str | None]:
        """-> (sparse, capture) for this model call: whether MoGA runs, and None or why the call's router inputs
        are sampled ("last dense step", or "forced dense" for a step taken out of the sparse range)."""
        if self.routers is not None:
            return sparse, None
        if sigma is None:
            return False, None  # no run context: nothing to fit on, no routers
        if self.capture_sigma is _UNSET:
            sigmas = to.get("sample_sigmas")
            if torch.is_tensor(sigmas) and sigmas.numel() >= 2:
                steps = [float(s) for s in sigmas.reshape(-1)[:-1].tolist()]
                self.capture_sigma, self.forced = capture_sigma_of(steps, self._sparse_at)
            else:
                self.capture_sigma, self.no_schedule = None, True
            stats["auto_capture_sigma"] = self.capture_sigma
        if self.capture_sigma is not None and math.isclose(sigma, self.capture_sigma, rel_tol=1e-4, abs_tol=1e-6):
            self._start_sample(sigma)
            return False, "forced dense" if self.forced else "last dense step"
        if not sparse:
            if self.no_schedule:  # the latest dense step is the last one so far
                if self._last_dense is None or not math.isclose(sigma, self._last_dense, rel_tol=1e-4):
                    self.sample = None
                self._start_sample(sigma)
                return False, "last dense step"
            return False, None
        if self.sample is None:  # the sparse range began without a sampled step: this one runs dense and is sampled
            self.capture_sigma, self.forced = sigma, True
            stats["auto_capture_sigma"] = sigma
            self._start_sample(sigma)
            return False, "forced dense"
        self.fit(stats)
        return sparse, None

    _sparse_at = staticmethod(lambda sigma: True)  # replaced by the holder's own rule (`bind`)

    def bind(self, sparse_at) -> "AutoRouters":
        self._sparse_at = sparse_at
        return self

    def _start_sample(self, sigma: float) -> None:
        if self.sample is None:
            self.sample = RouterInputSample(self.tokens_per_block, self.seed)
        self._last_dense = sigma

    def add(self, index: int, x: torch.Tensor, stats: dict) -> None:
        """Sample block ``index``'s router input ``x`` (B, Nv, C) of a capture step."""
        if index not in self.blocks or self.sample is None:
            return
        if x.is_cuda:  # the copy to the CPU below waits for the queued work: time the capture alone
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        self._device = x.device  # k-means runs where the model runs
        self.sample.add(index, x)  # ends with a copy to the CPU: the time is the real cost
        stats["auto_capture_s"] = stats.get("auto_capture_s", 0.0) + time.perf_counter() - start

    def fit(self, stats: dict) -> None:
        """k-means on each block's sample (`Router.fit`, float32, on the device the inputs came from)."""
        start = time.perf_counter()
        routers: dict[int, Router] = {}
        skipped = []
        for index in sorted(self.blocks):
            rows = self.sample.sample(index) if self.sample is not None else None
            if rows is None or rows.shape[0] < self.num_groups:
                skipped.append(index)  # too few video tokens (or none): this block stays dense
                continue
            routers[index] = Router.fit(rows.to(device=self._device, dtype=torch.float32), self.num_groups,
                                        iters=self.iters, seed=self.seed)
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        seconds = time.perf_counter() - start
        self.routers = routers
        self.sample = None  # the rows are not needed any more (CPU memory)
        self.fits += 1
        stats["auto_fits"] = stats.get("auto_fits", 0) + 1
        stats["auto_fit_s"] = stats.get("auto_fit_s", 0.0) + seconds
        log.info("MoGA: auto routers (%d groups) fitted for %d blocks in %.2f s%s", self.num_groups, len(routers),
                 seconds, f"; blocks {skipped} stay dense (too few video tokens)" if skipped else "")

    _device = torch.device("cpu")
