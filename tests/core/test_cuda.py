"""The same sweep on a GPU, for every backend this torch offers there (float32 and bfloat16).

Run on the device machine: ``python -m pytest -m cuda tests/core``. CI has no GPU; these are skipped there.
"""

import warnings
from dataclasses import replace

import pytest
import torch

from moga_core import MogaConfig, VideoLayout, moga_attention, reference_attention
from moga_core.backends import available_backends
from moga_core.router import balanced_assignment

from test_attention import SWEEP, make_inputs, rel_err

pytestmark = pytest.mark.cuda


def cuda_backends():
    found = available_backends()
    return [name for name in ("auto", "sdpa", "loop", "torch_varlen", "cudnn_varlen", "flash_attn") if
            name in ("auto", "sdpa", "loop") or found.get(name)]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("combine", ["mean", "union"])
@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(len(SWEEP))])
def test_cuda_fast_paths_equal_reference(case, combine, balanced, dtype, tol):
    b, h, d, grid, shots, prefix, suffix, m, window, tg, nf, frame = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=prefix, suffix=suffix)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine=combine, balanced=balanced)
    q, k, v, groups, gate = make_inputs(layout, b, h, d, m, seed=hash(case) % 1000, dtype=dtype, device="cuda")
    if balanced:
        logits = torch.randn(b, layout.num_video_tokens, m, generator=torch.Generator().manual_seed(3)).cuda()
        groups = balanced_assignment(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_attention(q.double(), k.double(), v.double(), layout, cfg, groups, gate.double())
        for backend in cuda_backends():
            if dtype == torch.float32 and backend in ("torch_varlen", "cudnn_varlen", "flash_attn"):
                continue  # half-precision kernels
            out = moga_attention(q, k, v, layout, replace(cfg, backend=backend), groups, gate)
            assert torch.isfinite(out).all(), backend
            err = rel_err(out, ref)
            assert err <= tol, f"{backend}: {err:.2e}"


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
