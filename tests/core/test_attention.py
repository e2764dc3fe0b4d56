"""The fast path against the O(N²) definition, and the method's properties (CPU, float32)."""

import warnings
from dataclasses import replace

import pytest
import torch

from moga_core import MogaConfig, Router, VideoLayout, dense_attention, moga_attention, reference_attention
from moga_core.router import capacity_assignment
from moga_core.synthetic import even_shots, structured_video_tokens, synthetic_qkv


def rel_err(out, ref):
    """max |out - ref| / max |ref| (scale-aware; element-wise relative error is ill-defined near zero)."""
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


def make_inputs(layout, b, h, d, m, seed, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    n, nv = layout.num_tokens, layout.num_video_tokens
    q, k, v = (torch.randn(b, n, h, d, generator=gen).to(device, dtype) for _ in range(3))
    groups = torch.randint(0, m, (b, nv), generator=gen).to(device)
    gate = torch.rand(b, nv, generator=gen).to(device, dtype)
    return q, k, v, groups, gate


# a curated sweep: every axis of the Done-means list is covered, without the full Cartesian product
SWEEP = [
    # (B, H, D, grid, shots, prefix, suffix, M, window, temporal_group, neighbor_frames, frame_branch)
    (1, 2, 64, (5, 3, 5), (0,), 0, 0, 1, (2, 2), 2, 1, True),
    (2, 3, 64, (7, 5, 6), (0, 3, 5), 0, 0, 5, (2, 2), 2, 1, True),
    (1, 1, 128, (6, 4, 3), (0, 2), 4, 0, 2, (2, 3), 3, 2, True),
    (2, 2, 128, (9, 3, 3), (0, 2, 4, 7), 3, 2, 8, (3, 3), 2, 2, False),
    (1, 4, 64, (4, 7, 5), (0, 1), 0, 3, 5, None, 10, 2, True),
    (2, 2, 64, (3, 5, 5), (0,), 2, 0, 8, None, 10, 2, False),
    (1, 2, 64, (11, 3, 4), (0, 4, 8), 1, 1, 2, (1, 2), 10, 0, True),
]


@pytest.mark.parametrize("combine", ["mean", "union"])
@pytest.mark.parametrize("capacity", [None, 1.0, 1.5])
@pytest.mark.parametrize("case", SWEEP, ids=[f"case{i}" for i in range(len(SWEEP))])
def test_fast_path_equals_reference_fp32(case, combine, capacity):
    b, h, d, grid, shots, prefix, suffix, m, window, tg, nf, frame = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=prefix, suffix=suffix)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine=combine, capacity=capacity)
    q, k, v, groups, gate = make_inputs(layout, b, h, d, m, seed=hash(case) % 1000)
    if capacity is not None:
        logits = torch.randn(b, layout.num_video_tokens, m, generator=torch.Generator().manual_seed(3))
        groups = capacity_assignment(logits, capacity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = moga_attention(q, k, v, layout, cfg, groups, gate)
        ref = reference_attention(q, k, v, layout, cfg, groups, gate)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5


def test_every_cpu_backend_agrees():
    layout = VideoLayout(grid=(6, 4, 4), shots=(0, 3), prefix=2)
    q, k, v, groups, gate = make_inputs(layout, 2, 2, 64, 4, seed=11)
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=4, combine=combine, temporal_group=2)
        ref = reference_attention(q, k, v, layout, cfg, groups, gate)
        for backend in ("auto", "sdpa", "loop"):
            out = moga_attention(q, k, v, layout, replace(cfg, backend=backend), groups, gate)
            assert rel_err(out, ref) <= 1e-5, (combine, backend)


@pytest.mark.parametrize("window, frame", [((2, 2), True), (None, False), ((1, 1), False)])
def test_union_with_one_group_is_dense_attention(window, frame):
    layout = VideoLayout(grid=(5, 4, 6), shots=(0, 2), prefix=3)
    q, k, v, _, _ = make_inputs(layout, 2, 3, 64, 1, seed=5)
    cfg = MogaConfig(num_groups=1, window=window, frame_branch=frame, combine="union")
    out = moga_attention(q, k, v, layout, cfg)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                            v.transpose(1, 2)).transpose(1, 2)
    assert rel_err(out, sdpa) <= 1e-5


def test_batches_never_mix_samples():
    layout = VideoLayout(grid=(4, 4, 4), shots=(0, 2))
    q, k, v, groups, gate = make_inputs(layout, 2, 2, 64, 3, seed=9)
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=3, combine=combine, temporal_group=2)
        out = moga_attention(q, k, v, layout, cfg, groups, gate)
        k2, v2 = k.clone(), v.clone()
        k2[1] += torch.randn_like(k2[1])
        v2[1] += 5.0
        out2 = moga_attention(q, k2, v2, layout, cfg, groups, gate)
        assert torch.equal(out[0], out2[0])
        assert not torch.allclose(out[1], out2[1])


def test_empty_groups_are_allowed():
    layout = VideoLayout(grid=(3, 4, 4))
    q, k, v, _, gate = make_inputs(layout, 1, 2, 64, 8, seed=2)
    groups = torch.zeros(1, layout.num_video_tokens, dtype=torch.long)
    groups[0, ::3] = 7  # groups 1..6 empty
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=8, combine=combine)
        out = moga_attention(q, k, v, layout, cfg, groups, gate)
        assert rel_err(out, reference_attention(q, k, v, layout, cfg, groups, gate)) <= 1e-5


def test_router_gradient_reaches_weights_through_gate_in_mean_mode():
    layout = VideoLayout(grid=(3, 4, 4), shots=(0, 2))
    torch.manual_seed(0)
    x = torch.randn(1, layout.num_video_tokens, 32)
    router = Router(32, 4)
    q, k, v = (torch.randn(1, layout.num_tokens, 2, 16) for _ in range(3))
    groups, gate = router(x)
    out = moga_attention(q, k, v, layout, MogaConfig(num_groups=4, temporal_group=2, combine="mean"), groups, gate)
    out.square().sum().backward()
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert router.bias.grad is not None and router.bias.grad.abs().sum() > 0


def test_gradients_flow_to_qkv_in_both_modes():
    layout = VideoLayout(grid=(3, 4, 4), shots=(0, 2), prefix=2)
    q, k, v, groups, gate = make_inputs(layout, 1, 2, 16, 3, seed=4, dtype=torch.float64)
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=3, combine=combine, temporal_group=2)
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        moga_attention(qq, kk, vv, layout, cfg, groups, gate).sin().sum().backward()
        qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
        reference_attention(qr, kr, vr, layout, cfg, groups, gate).sin().sum().backward()
        for a, b_ in ((qq, qr), (kk, kr), (vv, vr)):
            assert rel_err(a.grad, b_.grad) <= 1e-8, combine


def test_kmeans_routing_beats_random_groups_of_the_same_sizes():
    """Objects recurring across shots: grouping by content keeps the keys a query needs; random groups of the same
    sizes (hence the same density) drop most of them."""
    layout = VideoLayout(grid=(12, 8, 12), shots=even_shots(12, 3))
    x, _ = structured_video_tokens(layout, channels=64, seed=0)
    q, k, v = synthetic_qkv(x, heads=4, head_dim=64, seed=1)
    dense = dense_attention(q, k, v)
    gen = torch.Generator().manual_seed(0)
    for m in (4, 8):
        groups, _ = Router.fit(x, m, seed=0)(x)
        cfg = MogaConfig(num_groups=m, window=None, frame_branch=False, combine="union")
        err_kmeans = float((moga_attention(q, k, v, layout, cfg, groups) - dense).norm() / dense.norm())
        errs_random = []
        for _ in range(5):
            shuffled = groups[:, torch.randperm(groups.shape[1], generator=gen)]  # same sizes, same density
            errs_random.append(float((moga_attention(q, k, v, layout, cfg, shuffled) - dense).norm() / dense.norm()))
        print(f"M={m}: k-means {err_kmeans:.4f}, random (5 draws) min {min(errs_random):.4f}")
        assert err_kmeans < min(errs_random)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: dict(a, q=a["q"][0]), r"q must be \(B, N, H, D\)"),
        (lambda a: dict(a, k=a["k"][:, :-1]), "same shape"),
        (lambda a: dict(a, v=a["v"].double()), "share a dtype"),
        (lambda a: dict(a, q=a["q"].long(), k=a["k"].long(), v=a["v"].long()), "floating point"),
        (lambda a: dict(a, layout=VideoLayout(grid=(2, 4, 4))), "layout expects 32"),
        (lambda a: dict(a, groups=a["groups"][:, :-1]), r"groups must be \(B, Nv\)"),
        (lambda a: dict(a, groups=a["groups"].float()), "integer tensor"),
        (lambda a: dict(a, groups=a["groups"] + 3), r"ids in \[0, 3\)"),
        (lambda a: dict(a, groups=None), "groups .* are required"),
        (lambda a: dict(a, gate=a["gate"].long()), "gate must be floating"),
        (lambda a: dict(a, cfg=MogaConfig(num_groups=3, window=(5, 1))), "more windows than the frame"),
        (lambda a: dict(a, cfg=MogaConfig(num_groups=100)), "exceeds the 48 video tokens"),
    ],
)
def test_bad_input_is_a_clear_error(mutate, message):
    layout = VideoLayout(grid=(3, 4, 4))
    q, k, v, groups, gate = make_inputs(layout, 1, 2, 16, 3, seed=0)
    args = dict(q=q, k=k, v=v, layout=layout, cfg=MogaConfig(num_groups=3), groups=groups, gate=gate)
    args = mutate(args)
    with pytest.raises(ValueError, match=message):
        moga_attention(**args)
    with pytest.raises(ValueError, match=message):
        reference_attention(**args)


def test_padded_global_tokens_are_ignored_as_keys():
    layout = VideoLayout(grid=(4, 3, 4), shots=(0, 2), prefix=5, suffix=2)
    q, k, v, groups, gate = make_inputs(layout, 2, 2, 32, 3, seed=21)
    keep = torch.tensor([True, True, True, False, False, True, False])
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=3, combine=combine, temporal_group=2)
        out = moga_attention(q, k, v, layout, cfg, groups, gate, global_keep=keep)
        ref = reference_attention(q, k, v, layout, cfg, groups, gate, global_keep=keep)
        assert rel_err(out, ref) <= 1e-5
        # changing a padded key changes nothing
        k2 = k.clone()
        k2[:, 3] += 10
        v2 = v.clone()
        v2[:, 3] -= 4
        out2 = moga_attention(q, k2, v2, layout, cfg, groups, gate, global_keep=keep)
        assert torch.allclose(out, out2, atol=1e-6)
    with pytest.raises(ValueError, match=r"global_keep must be a bool tensor of shape \(7,\)"):
        moga_attention(q, k, v, layout, MogaConfig(num_groups=3), groups, gate, global_keep=keep[:5])


def test_per_frame_global_keys_restrict_video_queries_only():
    """Multi-shot text in joint attention: each shot's frames see the global caption and their own."""
    layout = VideoLayout(grid=(4, 3, 3), shots=(0, 2), prefix=6)
    q, k, v, groups, gate = make_inputs(layout, 1, 2, 32, 2, seed=31)
    keep = torch.zeros(4, 6, dtype=torch.bool)
    keep[:, :2] = True  # global caption tokens 0-1
    keep[:2, 2:4] = True  # shot 0's caption for frames 0-1
    keep[2:, 4:5] = True  # shot 1's caption (token 5 is padding nobody sees)
    for combine in ("mean", "union"):
        cfg = MogaConfig(num_groups=2, combine=combine, temporal_group=2)
        out = moga_attention(q, k, v, layout, cfg, groups, gate, global_keep=keep)
        assert rel_err(out, reference_attention(q, k, v, layout, cfg, groups, gate, global_keep=keep)) <= 1e-5
        k2, v2 = k.clone(), v.clone()
        k2[:, 4] += 3.0
        v2[:, 4] += 3.0  # shot 1's caption changes
        out2 = moga_attention(q, k2, v2, layout, cfg, groups, gate, global_keep=keep)
        nv_rows = slice(6, 6 + 18)  # frames 0-1 of the video
        # shot 0's frames see no shot-1 caption token directly; their group/local keys are video tokens only
        assert torch.allclose(out[:, nv_rows], out2[:, nv_rows], atol=1e-6)
        assert not torch.allclose(out[:, 6 + 18:], out2[:, 6 + 18:])
