"""The same sweep on a GPU, for every backend this torch offers there (float32 and bfloat16).

Run on the device machine: ``python -m pytest -m cuda tests/core``. CI has no GPU; these are skipped there.
"""

import warnings
from dataclasses import replace

import pytest
import torch

from moga_core import MogaConfig, VideoLayout, dense_attention, moga_attention, reference_attention
from moga_core.backends import available_backends
from moga_core.blocksparse import build_block_plan
from moga_core.router import capacity_assignment

from test_attention import SWEEP, make_inputs, rel_err

pytestmark = pytest.mark.cuda


def cuda_backends():
    found = available_backends()
    return [name for name in ("auto", "flex", "varlen", "sdpa", "loop", "torch_varlen", "cudnn_varlen", "flash_attn")
            if name in ("auto", "varlen", "sdpa", "loop") or found.get(name)]


# The whole sweep runs through what `auto` can pick (the block kernel, the varlen paths). The forced backends that
# call cuDNN on every small segment (sdpa, loop, cudnn_varlen: a new cuDNN graph per new segment length, ~60 ms
# each) run in half precision on two cases only (`test_cuda_forced_cudnn_backends_equal_reference`), so the suite
# ends in minutes; in float32 cuDNN is not involved and every backend runs everywhere. The block kernel is compiled
# per (length, heads, dtype, mask shape): float32 runs it on one case with D = 64 (the float32 kernel at D = 128
# took over five minutes to compile on an H200 with torch 2.11, and no user runs it: auto takes it for half
# precision only).
SWEEP_BACKENDS = {torch.float32: ("auto", "varlen", "sdpa", "loop"),
                  torch.bfloat16: ("auto", "flex", "varlen", "torch_varlen", "flash_attn")}
CUDNN_BACKENDS = ("sdpa", "loop", "cudnn_varlen")
FORCED = [(1, torch.float32, 1e-5, ("flex",)), (1, torch.bfloat16, 2e-2, CUDNN_BACKENDS),
          (3, torch.bfloat16, 2e-2, CUDNN_BACKENDS)]


def sweep_backends(dtype):
    return [name for name in cuda_backends() if name in SWEEP_BACKENDS[dtype]]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("combine", ["mean", "union"])
@pytest.mark.parametrize("capacity", [None, 1.0, 1.5])
@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(len(SWEEP))])
def test_cuda_fast_paths_equal_reference(case, combine, capacity, dtype, tol):
    b, h, d, grid, shots, prefix, suffix, m, window, tg, nf, frame = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=prefix, suffix=suffix)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine=combine, capacity=capacity)
    q, k, v, groups, gate = make_inputs(layout, b, h, d, m, seed=hash(case) % 1000, dtype=dtype, device="cuda")
    if capacity is not None:
        logits = torch.randn(b, layout.num_video_tokens, m, generator=torch.Generator().manual_seed(3)).cuda()
        groups = capacity_assignment(logits, capacity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_attention(q.double(), k.double(), v.double(), layout, cfg, groups, gate.double())
        for backend in sweep_backends(dtype):
            out = moga_attention(q, k, v, layout, replace(cfg, backend=backend), groups, gate)
            assert torch.isfinite(out).all(), backend
            err = rel_err(out, ref)
            assert err <= tol, f"{backend}: {err:.2e}"


@pytest.mark.parametrize("combine", ["mean", "union"])
@pytest.mark.parametrize("index, dtype, tol, backends", FORCED,
                         ids=[f"case{i}-{'fp32' if t == torch.float32 else 'bf16'}" for i, t, _, _ in FORCED])
def test_cuda_forced_backends_equal_reference(index, dtype, tol, backends, combine):
    """The backends the sweep leaves out (see SWEEP_BACKENDS), forced, on two of its cases, capacity 1.5."""
    case = SWEEP[index]
    b, h, d, grid, shots, prefix, suffix, m, window, tg, nf, frame = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=prefix, suffix=suffix)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine=combine, capacity=1.5)
    q, k, v, _, gate = make_inputs(layout, b, h, d, m, seed=hash(case) % 1000, dtype=dtype, device="cuda")
    logits = torch.randn(b, layout.num_video_tokens, m, generator=torch.Generator().manual_seed(3)).cuda()
    groups = capacity_assignment(logits, 1.5)
    ran = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_attention(q.double(), k.double(), v.double(), layout, cfg, groups, gate.double())
        for backend in cuda_backends():
            if backend not in backends:
                continue
            out = moga_attention(q, k, v, layout, replace(cfg, backend=backend), groups, gate)
            assert torch.isfinite(out).all(), backend
            err = rel_err(out, ref)
            assert err <= tol, f"{backend}: {err:.2e}"
            ran += 1
    assert ran, f"none of {backends} is available here"


@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(len(SWEEP))])
def test_cuda_second_group_equals_reference(case):
    """Second-group mode (union) through every backend in bfloat16, the compiled block kernel included."""
    from moga_core.router import second_choice

    b, h, d, grid, shots, prefix, suffix, m, window, tg, nf, frame = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=prefix, suffix=suffix)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine="union", capacity=1.25, second_group=True)
    q, k, v, _, _ = make_inputs(layout, b, h, d, m, seed=hash(case) % 1000, dtype=torch.bfloat16, device="cuda")
    logits = torch.randn(b, layout.num_video_tokens, m, generator=torch.Generator().manual_seed(4)).cuda()
    groups = capacity_assignment(logits, 1.25)
    groups2 = second_choice(logits, groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_attention(q.double(), k.double(), v.double(), layout, cfg, groups, groups2=groups2)
        for backend in sweep_backends(torch.bfloat16):
            out = moga_attention(q, k, v, layout, replace(cfg, backend=backend), groups, groups2=groups2)
            assert torch.isfinite(out).all(), backend
            err = rel_err(out, ref)
            assert err <= 2e-2, f"{backend}: {err:.2e}"


def test_cuda_large_groups_bf16():
    """A realistic size (16 latent frames of 30x52) through every backend, checked against the fp32 loop."""
    layout = VideoLayout(grid=(16, 30, 52), shots=(0, 6, 11))
    q, k, v, groups, gate = make_inputs(layout, 1, 12, 128, 5, seed=0, dtype=torch.bfloat16, device="cuda")
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=5, combine=combine)
        ref = moga_attention(q.float(), k.float(), v.float(), layout, replace(cfg, backend="loop"), groups,
                             gate.float())
        for backend in cuda_backends():
            out = moga_attention(q, k, v, layout, replace(cfg, backend=backend), groups, gate)
            assert rel_err(out, ref) <= 2e-2, (combine, backend)


def test_cuda_block_kernel_is_what_auto_picks_for_half_precision():
    layout = VideoLayout(grid=(4, 8, 8), shots=(0, 2))
    q, k, v, groups, gate = make_inputs(layout, 1, 2, 64, 3, seed=0, dtype=torch.bfloat16, device="cuda")
    stats = {}
    moga_attention(q, k, v, layout, MogaConfig(num_groups=3, combine="union"), groups, stats=stats)
    assert stats["backend"] == "flex"


def test_cuda_union_with_one_group_is_dense_attention_on_the_block_kernel():
    layout = VideoLayout(grid=(8, 30, 52), shots=(0, 3, 6))
    q, k, v, _, _ = make_inputs(layout, 2, 4, 128, 1, seed=1, dtype=torch.bfloat16, device="cuda")
    out = moga_attention(q, k, v, layout, MogaConfig(num_groups=1, combine="union", backend="flex"))
    ref = dense_attention(q.float(), k.float(), v.float())
    assert rel_err(out, ref) <= 2e-2


def test_cuda_block_kernel_compiles_once_per_length():
    """New groups at the same sequence length (other group sizes, other block lists) reuse the compiled kernel."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    layout = VideoLayout(grid=(12, 30, 52), shots=(0, 4, 9), prefix=0)
    cfg = MogaConfig(num_groups=5, combine="union", backend="flex")
    q, k, v, _, _ = make_inputs(layout, 1, 4, 128, 5, seed=2, dtype=torch.bfloat16, device="cuda")
    before = counters["stats"]["unique_graphs"]
    for seed in range(4):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        skew = torch.rand(5, device="cuda", generator=gen) * 3 * seed  # from balanced to very unequal
        logits = torch.randn(1, layout.num_video_tokens, 5, device="cuda", generator=gen) + skew
        groups = logits.argmax(-1)
        out = moga_attention(q, k, v, layout, cfg, groups)
        assert torch.isfinite(out).all()
    graphs = counters["stats"]["unique_graphs"] - before
    assert graphs == 1, f"{graphs} compilations for one sequence length"


def test_cuda_block_kernel_large_layout_against_fp32_loop():
    """16 latent frames of 30x52 with prefix/suffix tokens and per-frame global keys: full and partial blocks."""
    layout = VideoLayout(grid=(16, 30, 52), shots=(0, 6, 11), prefix=40, suffix=3)
    q, k, v, groups, gate = make_inputs(layout, 2, 4, 128, 5, seed=3, dtype=torch.bfloat16, device="cuda")
    keep = torch.rand(16, 43, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0)) > 0.3
    for combine in ("union", "mean"):
        cfg = MogaConfig(num_groups=5, combine=combine)
        ref = moga_attention(q.float(), k.float(), v.float(), layout, replace(cfg, backend="loop"), groups,
                             gate.float(), global_keep=keep)
        out = moga_attention(q, k, v, layout, replace(cfg, backend="flex"), groups, gate, global_keep=keep)
        assert rel_err(out, ref) <= 2e-2, combine
    plan = build_block_plan(layout, MogaConfig(num_groups=5, combine="union"), groups, "union", keep)
    assert int(plan.full_blocks.sum()) > 0 and int(plan.partial_blocks.sum()) > 0
