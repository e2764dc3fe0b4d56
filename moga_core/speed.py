"""`SpeedCheck`: does the sparse layer beat dense attention for this call shape on this device? Measured, not guessed.

The block kernel's cost model (`blocksparse.relative_cost`) counts key blocks; it does not know the fixed costs of a
call (gathers, the block plan, launches), which decide short sequences: at 32,760 tokens on an H200 the default layer
ran sparse at 0.67× dense. So a run times a few of its own calls of each shape — sparse ones, then dense ones — on
the device's clock, and from then on sends that shape to whichever was faster.

Timing never waits for the device: each call's start and end are events recorded on its stream, read only once they
have completed (``Event.query``), so the check adds no synchronisation. On the CPU the clock is the host's
(`time.perf_counter`), which there measures the work itself.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Hashable

import torch

SPARSE, DENSE, TIME_DENSE = "sparse", "dense", "time dense"


@dataclass
class _Shape:
    sparse: list = field(default_factory=list)  # pending or finished samples: [start, end] events or ms floats
    dense: list = field(default_factory=list)
    discarded: int = 0  # sparse samples thrown away (first calls: compilation, plan building)
    verdict: str | None = None  # SPARSE or DENSE once decided
    sparse_ms: float | None = None
    dense_ms: float | None = None


class Sample:
    """One timed call (see `SpeedCheck.timing`)."""

    def __init__(self):
        self.kept = True

    def discard(self) -> None:
        self.kept = False


class SpeedCheck:
    """Per call shape (any hashable key): time ``sparse_samples`` sparse calls (after ``skip_first`` of them), then
    ``dense_samples`` dense calls, then pick the faster by the medians: sparse stays when
    ``sparse_ms < margin · dense_ms`` (``margin`` < 1 asks sparse to win by more than the timing noise).

    Use: ``action = check.action(key)``; `SPARSE` — run sparse, inside ``with check.timing(key, SPARSE, device):``
    (or not, once decided); `TIME_DENSE` — run dense inside ``with check.timing(key, DENSE, device):``; `DENSE` —
    the shape was measured slower than dense: run dense. ``clock``: "auto" (CUDA events on CUDA devices, the host
    clock elsewhere) or a function returning seconds (tests).
    """

    def __init__(self, sparse_samples: int = 3, dense_samples: int = 2, skip_first: int = 1, margin: float = 1.0,
                 clock: str | Callable[[], float] = "auto"):
        for name, value, low in (("sparse_samples", sparse_samples, 1), ("dense_samples", dense_samples, 1),
                                 ("skip_first", skip_first, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not 0.0 < float(margin) <= 2.0:
            raise ValueError(f"margin must be in (0, 2], got {margin!r}")
        self.sparse_samples, self.dense_samples, self.skip_first = sparse_samples, dense_samples, skip_first
        self.margin = float(margin)
        self.clock = clock
        self._shapes: dict[Hashable, _Shape] = {}

    def reset(self) -> None:
        self._shapes.clear()

    # ---- what to run
    def action(self, key: Hashable) -> str:
        shape = self._shapes.setdefault(key, _Shape())
        if shape.verdict is not None:
            return shape.verdict
        self._collect(shape)
        if len(shape.sparse) < self.sparse_samples:
            return SPARSE
        if not self._finished(shape.sparse):
            return SPARSE  # the timed sparse calls are still on the device: keep going sparse meanwhile
        if len(shape.dense) < self.dense_samples:
            return TIME_DENSE
        if not self._finished(shape.dense):
            return SPARSE
        shape.sparse_ms = statistics.median(self._ms(s) for s in shape.sparse)
        shape.dense_ms = statistics.median(self._ms(s) for s in shape.dense)
        shape.verdict = SPARSE if shape.sparse_ms < self.margin * shape.dense_ms else DENSE
        return shape.verdict

    def measured(self, key: Hashable) -> tuple[float, float] | None:
        """(sparse ms, dense ms) medians once ``key`` is decided, else None."""
        shape = self._shapes.get(key)
        if shape is None or shape.verdict is None:
            return None
        return shape.sparse_ms, shape.dense_ms

    def decided(self) -> dict:
        """{key: (verdict, sparse ms, dense ms)} of the shapes decided so far."""
        return {k: (s.verdict, s.sparse_ms, s.dense_ms) for k, s in self._shapes.items() if s.verdict is not None}

    # ---- timing
    @contextmanager
    def timing(self, key: Hashable, kind: str, device: torch.device):
        """Time the enclosed call as a ``kind`` (SPARSE or DENSE) sample of ``key``. Yields a `Sample`; calling its
        ``discard()`` inside the block drops it (a call that turned out not to be a steady-state one of its kind)."""
        shape = self._shapes.setdefault(key, _Shape())
        samples = shape.sparse if kind == SPARSE else shape.dense
        wanted = self.sparse_samples if kind == SPARSE else self.dense_samples
        sample = Sample()
        if shape.verdict is not None or len(samples) >= wanted:
            yield sample
            return
        if kind == SPARSE and shape.discarded < self.skip_first:
            yield sample
            if sample.kept:
                shape.discarded += 1  # only steady-state calls count as the ones skipped
            return
        use_events = self.clock == "auto" and torch.device(device).type == "cuda"
        if use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield sample
            end.record()
            if sample.kept:
                samples.append([start, end])
        else:
            clock = time.perf_counter if self.clock == "auto" else self.clock
            t0 = clock()
            yield sample
            if sample.kept:
                samples.append((clock() - t0) * 1e3)

    # ---- helpers
    @staticmethod
    def _finished(samples) -> bool:
        return all(not isinstance(s, list) or s[1].query() for s in samples)

    @staticmethod
    def _ms(sample) -> float:
        return sample[0].elapsed_time(sample[1]) if isinstance(sample, list) else float(sample)

    def _collect(self, shape: _Shape) -> None:
        """Turn finished event pairs into milliseconds (the events can then be freed)."""
        for samples in (shape.sparse, shape.dense):
            for i, s in enumerate(samples):
                if isinstance(s, list) and s[1].query():
                    samples[i] = self._ms(s)
