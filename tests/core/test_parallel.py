"""Sequence-parallel MoGA (moga_core.parallel) against single-process `moga_attention` on CPU with gloo.

One process group per world size (2 and 3 ranks, spawned once for the module on 127.0.0.1) runs every case; the
ranks build the same full inputs from a seed, each takes its shard, calls `sequence_parallel_moga_attention`, and
rank 0 gathers the output (and gradients) and compares them with `moga_attention` on the whole sequence.
"""

from __future__ import annotations

import os
import socket
import tempfile
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moga_core import MogaConfig, VideoLayout, moga_attention
from moga_core.parallel import (gather_sequence, sequence_parallel_moga_attention, shard_range, shard_segments,
                                shard_sequence, shard_sizes, unshard_sequence)
from moga_core.router import balanced_assignment

WORLD_SIZES = (2, 3)

# (name, B, heads per rank, D, grid, shots, prefix, suffix, M, combine, window, temporal_group, neighbor_frames,
#  frame_branch, mode, global_keep)
#  mode: "groups" (ids + gate), "nogate" (ids, gate None), "logits" (router logits, argmax), "balanced" (logits,
#  capacity-constrained routing over all tokens), "padded" (engine-style even chunks with tail padding),
#  "segments" (text and the rest padded and sharded separately, as raylight's HunyuanVideo double blocks),
#  "segments3" (three segments, uneven sizes, a rank holding none of one), "grad" / "segments-grad" (gradients of
#  q, k, v and gate compared too)
CASES = [
    ("odd-1shot-M1-mean", 1, 1, 16, (5, 3, 5), (0,), 0, 0, 1, "mean", (2, 2), 2, 1, True, "groups", None),
    ("odd-1shot-M1-union", 1, 2, 16, (5, 3, 5), (0,), 0, 0, 1, "union", (2, 2), 2, 1, True, "nogate", None),
    ("3shots-M5-mean", 2, 1, 16, (7, 5, 6), (0, 3, 5), 0, 0, 5, "mean", (2, 2), 2, 1, True, "groups", None),
    ("3shots-M5-union", 2, 1, 16, (7, 5, 6), (0, 3, 5), 0, 0, 5, "union", (2, 2), 2, 1, True, "groups", None),
    ("2shots-prefix-M2-mean", 1, 2, 16, (6, 4, 3), (0, 2), 4, 0, 2, "mean", (2, 3), 3, 2, True, "groups", None),
    ("2shots-prefix-M2-union", 1, 1, 16, (6, 4, 3), (0, 2), 4, 0, 2, "union", (2, 3), 3, 2, True, "logits", None),
    ("4shots-pre-suf-M5-mean-noframe", 2, 1, 16, (9, 3, 3), (0, 2, 4, 7), 3, 2, 5, "mean", (3, 3), 2, 2, False,
     "logits", None),
    ("4shots-pre-suf-M5-union-noframe", 1, 2, 16, (9, 3, 3), (0, 2, 4, 7), 3, 2, 5, "union", (3, 3), 2, 2, False,
     "groups", None),
    ("suffix-M2-mean-nowindow", 1, 1, 16, (4, 7, 5), (0, 1), 0, 3, 2, "mean", None, 10, 2, True, "groups", None),
    ("suffix-M5-union-nolocal", 1, 1, 16, (4, 7, 5), (0, 1), 0, 3, 5, "union", None, 10, 2, False, "groups", None),
    ("keep-flat-M5-mean", 1, 1, 16, (6, 3, 4), (0, 3), 3, 2, 5, "mean", (1, 2), 2, 1, True, "groups", "flat"),
    ("keep-frame-M2-union", 2, 1, 16, (6, 3, 4), (0, 3), 3, 2, 2, "union", (1, 2), 2, 1, True, "groups", "frame"),
    ("balanced-M5-mean", 1, 1, 16, (11, 3, 4), (0, 4, 8), 1, 1, 5, "mean", (1, 2), 10, 0, True, "balanced", None),
    ("balanced-M2-union", 2, 1, 16, (5, 4, 4), (0, 2), 2, 0, 2, "union", (2, 2), 2, 1, True, "balanced", None),
    ("padded-M5-mean", 1, 1, 16, (7, 5, 6), (0, 3, 5), 1, 0, 5, "mean", (2, 2), 2, 1, True, "padded", None),
    ("padded-M2-union-B2", 2, 2, 16, (5, 3, 5), (0, 2), 0, 2, 2, "union", (2, 2), 2, 1, True, "padded", "flat"),
    ("segments-text-M5-mean", 1, 1, 16, (5, 4, 4), (0, 3), 5, 0, 5, "mean", (2, 2), 2, 1, True, "segments", "flat"),
    ("segments-text-M2-union-B2", 2, 2, 16, (5, 3, 5), (0, 2), 7, 1, 2, "union", (2, 2), 2, 1, True, "segments",
     None),
    ("segments3-M5-union", 1, 1, 16, (6, 3, 4), (0, 2, 4), 2, 2, 5, "union", (1, 2), 2, 1, True, "segments3", None),
    ("segments-grad-M5-mean", 1, 1, 16, (4, 4, 5), (0, 2), 3, 0, 5, "mean", (2, 2), 2, 1, True, "segments-grad",
     None),
    ("grad-M5-mean", 1, 1, 16, (4, 4, 5), (0, 2), 2, 1, 5, "mean", (2, 2), 2, 1, True, "grad", None),
    ("grad-M2-union-B2", 2, 1, 16, (4, 4, 5), (0, 2), 0, 1, 2, "union", (2, 2), 2, 1, True, "grad", None),
]
CASE_IDS = [c[0] for c in CASES]
SUBGROUP_CASE = next(c for c in CASES if c[0] == "4shots-pre-suf-M5-union-noframe")


def rel_err(out, ref):
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


def build_case(case, world):
    """Full (unsharded) inputs of a case, identical on every rank (seeded)."""
    (name, b, hp, d, grid, shots, prefix, suffix, m, combine, window, tg, nf, frame, mode, keep) = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=prefix, suffix=suffix)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine=combine, balanced=(mode == "balanced"), backend="auto")
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    n, h = layout.num_tokens, hp * world
    q, k, v = (torch.randn(b, n, h, d, generator=gen) for _ in range(3))
    logits = torch.randn(b, n, m, generator=gen) * 2
    groups = logits.argmax(-1)
    gate = torch.softmax(logits, -1).gather(-1, groups[..., None])[..., 0]
    ng = layout.num_global_tokens
    global_keep = None
    if keep == "flat":
        global_keep = torch.rand(ng, generator=gen) > 0.3
        global_keep[0] = True
    elif keep == "frame":
        global_keep = torch.rand(grid[0], ng, generator=gen) > 0.4
        global_keep[:, 0] = True
        global_keep[1] = False  # a frame that sees no global token
    return layout, cfg, q, k, v, logits, groups, gate, global_keep


def single_process(case, world):
    """The expected output (and gradients): `moga_attention` on the whole sequence in one process."""
    layout, cfg, q, k, v, logits, groups, gate, keep = build_case(case, world)
    mode = case[14]
    if mode == "balanced":
        video = logits[:, layout.prefix:layout.prefix + layout.num_video_tokens]
        groups = balanced_assignment(video)
        gate = torch.softmax(video, -1).gather(-1, groups[..., None])[..., 0]
    if mode == "nogate":
        gate = None
    if mode.endswith("grad"):
        q, k, v, gate = (t.clone().requires_grad_(True) for t in (q, k, v, gate))
    out = moga_attention(q, k, v, layout, cfg, groups=groups, gate=gate, global_keep=keep)
    grads = None
    if mode.endswith("grad"):
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        (out * weight).sum().backward()
        grads = [t.grad for t in (q, k, v, gate)]
    return out.detach(), grads


def case_segments(layout, mode, world):
    """The segmented sharding of a "segments…" case: [(real_tokens, per-rank sizes), …]."""
    n, p = layout.num_tokens, layout.prefix
    ceil = lambda a: -(-a // world)  # noqa: E731
    if mode == "segments3":
        a, b = p + layout.num_video_tokens // 2, layout.num_video_tokens - layout.num_video_tokens // 2
        c = n - a - b
        return [(a, shard_sizes(a, world)), (b, [ceil(b) + 1] * world), (c, [0] + shard_sizes(c, world - 1))]
    # raylight's HunyuanVideo double blocks: text and image each padded to a multiple of P and chunked
    return [(p, [ceil(p)] * world), (n - p, [ceil(n - p)] * world)]


def run_case_on_rank(case, rank, world, group=None):
    """This rank's part of a case (``rank``/``world`` within ``group``); returns (full output, grads) gathered on
    every rank of the group."""
    layout, cfg, q, k, v, logits, groups, gate, keep = build_case(case, world)
    mode = case[14]
    n = layout.num_tokens
    sizes = segments = None
    if mode == "padded":  # an engine that pads to a multiple of P and chunks evenly
        chunk = -(-(n + 1) // world)  # at least one padding token
        sizes = [chunk] * world
    if mode.startswith("segments"):
        segments = case_segments(layout, mode, world)
        shard = (lambda t: shard_segments(t, segments, rank, dim=1).contiguous())
    else:
        shard = (lambda t: shard_sequence(t, world, rank, dim=1, sizes=sizes).contiguous())
    ql, kl, vl = (shard(t) for t in (q, k, v))
    kwargs = dict(layout=layout, cfg=cfg, global_keep=keep, process_group=group)
    if segments is not None:
        kwargs["segments"] = segments
    else:
        kwargs["sizes"] = sizes
    if mode in ("logits", "balanced"):
        kwargs["logits"] = shard(logits)
    else:
        kwargs["groups"] = shard(groups)
        kwargs["gate"] = None if mode == "nogate" else shard(gate)
    grad = mode.endswith("grad")
    if grad:
        ql, kl, vl = (t.requires_grad_(True) for t in (ql, kl, vl))
        kwargs["gate"] = kwargs["gate"].requires_grad_(True)
    out_local = sequence_parallel_moga_attention(ql, kl, vl, **kwargs)

    def gather(t):
        if segments is not None:
            return gather_sequence(t, process_group=group, segments=segments)
        return gather_sequence(t, process_group=group, sizes=sizes if sizes else shard_sizes(n, world), num_tokens=n)

    out = gather(out_local.detach())
    if sizes is not None or segments is not None:  # padding rows come back as exact zeros
        assert torch.equal(out_local.detach(), shard(out)), "padding rows must be zero, real rows in place"
    grads = None
    if grad:
        weight = torch.randn((q.shape[0], n) + tuple(q.shape[2:]), generator=torch.Generator().manual_seed(7))
        (out_local * shard(weight)).sum().backward()
        grads = [None if t.grad is None else gather(t.grad) for t in (ql, kl, vl, kwargs["gate"])]
    return out, grads


def _worker(rank, world, port, path):
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    if "lo" in {name for _, name in socket.if_nameindex()}:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # uneven window rounding is expected on these odd grids
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    try:
        for case in CASES:
            try:
                out, grads = run_case_on_rank(case, rank, world)
                results[case[0]] = ("ok", out, grads)
            except Exception:
                results[case[0]] = ("error", traceback.format_exc(), None)
        # heads not divisible by the world size: every rank raises before any collective
        q = torch.randn(1, shard_sizes(30, world)[rank], world + 1, 8)
        layout = VideoLayout(grid=(2, 3, 5))
        try:
            sequence_parallel_moga_attention(q, q, q, layout, MogaConfig(num_groups=1))
            results["heads"] = ("no error", None, None)
        except ValueError as e:
            results["heads"] = ("ValueError", str(e), None)
        # a shard of the wrong length
        q = torch.randn(1, shard_sizes(30, world)[rank] + 1, world, 8)
        try:
            sequence_parallel_moga_attention(q, q, q, layout, MogaConfig(num_groups=1))
            results["length"] = ("no error", None, None)
        except ValueError as e:
            results["length"] = ("ValueError", str(e), None)
        if world == 3:  # a subgroup, as an engine's sequence-parallel group: global ranks 1 and 2 (group ranks 0, 1)
            sub = dist.new_group([1, 2])
            if rank in (1, 2):
                try:
                    out, _ = run_case_on_rank(SUBGROUP_CASE, dist.get_rank(sub), 2, group=sub)
                    results["subgroup"] = ("ok", out, None)
                except Exception:
                    results["subgroup"] = ("error", traceback.format_exc(), None)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank == 0 or "subgroup" in results:
        torch.save(results, f"{path}.{rank}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def parallel_results():
    """{world: {case name: (status, output or traceback, grads)}} from one spawned process group per world size."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in WORLD_SIZES:
            path = os.path.join(tmp, f"world{world}.pt")
            mp.spawn(_worker, args=(world, _free_port(), path), nprocs=world, join=True)
            results[world] = torch.load(f"{path}.0", weights_only=False)
            if world == 3:
                results["subgroup"] = [torch.load(f"{path}.{r}", weights_only=False)["subgroup"] for r in (1, 2)]
    return results


@pytest.mark.parametrize("world", WORLD_SIZES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_parallel_equals_single_process(parallel_results, case, world):
    status, out, grads = parallel_results[world][case[0]]
    assert status == "ok", out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ref_grads = single_process(case, world)
    assert out.shape == ref.shape and out.dtype == ref.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5
    if ref_grads is not None:
        for name, g, rg in zip(("q", "k", "v", "gate"), grads, ref_grads):
            if rg is None:  # the gate does not enter "union" attention
                assert name == "gate" and case[9] == "union" and g is None
                continue
            assert g.shape == rg.shape, name
            assert rel_err(g, rg) <= 1e-5, name


def test_a_subgroup_as_process_group(parallel_results):
    """Ranks 1 and 2 of a 3-process world run a case over their own group (shards ordered by group rank)."""
    ref, _ = single_process(SUBGROUP_CASE, 2)
    for status, out, _ in parallel_results["subgroup"]:
        assert status == "ok", out
        assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_heads_not_divisible_by_world_size_is_an_error(parallel_results, world):
    status, msg, _ = parallel_results[world]["heads"]
    assert status == "ValueError"
    assert f"{world + 1} heads are not divisible by world size {world}" in msg


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_wrong_shard_length_is_an_error(parallel_results, world):
    status, msg, _ = parallel_results[world]["length"]
    assert status == "ValueError"
    assert f"its shard of the 30-token layout has {shard_sizes(30, world)[0]}" in msg


def test_shard_sizes_first_ranks_get_the_ceiling():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(11, 3) == [4, 4, 3]
    assert shard_sizes(2, 3) == [1, 1, 0]
    assert shard_sizes(12, 4) == [3, 3, 3, 3]
    assert [shard_range(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        shard_sizes(10, 0)
    with pytest.raises(ValueError, match=r"expected 3 entries, got 2"):
        shard_range(10, 3, 0, sizes=[5, 5])
    with pytest.raises(ValueError, match=r"fewer than the 10 real tokens"):
        shard_range(10, 2, 0, sizes=[4, 4])


def test_shard_and_unshard_round_trip_with_padding():
    x = torch.arange(2 * 11 * 3).reshape(2, 11, 3)
    for world in (1, 2, 3, 4):
        shards = [shard_sequence(x, world, r) for r in range(world)]
        assert [s.shape[1] for s in shards] == shard_sizes(11, world)
        assert torch.equal(unshard_sequence(shards), x)
    padded = [shard_sequence(x, 3, r, sizes=[4, 4, 4]) for r in range(3)]
    assert padded[2].shape == (2, 4, 3) and torch.equal(padded[2][:, 3], torch.zeros(2, 3, dtype=x.dtype))
    assert torch.equal(unshard_sequence(padded, num_tokens=11), x)


def test_shard_segments_pads_each_segment_and_keeps_rank_order():
    x = torch.arange(10).view(1, 10)
    segments = [(3, [2, 2]), (7, [4, 4])]  # text 3 -> 4, image 7 -> 8
    r0, r1 = (shard_segments(x, segments, r) for r in range(2))
    assert r0.tolist() == [[0, 1, 3, 4, 5, 6]]
    assert r1.tolist() == [[2, 0, 7, 8, 9, 0]]
    with pytest.raises(ValueError, match="segments hold 9 real tokens"):
        shard_segments(x, [(3, [2, 2]), (6, [4, 4])], 0)
    with pytest.raises(ValueError, match="segment 1: sizes .* fewer than the 7 real tokens"):
        shard_segments(x, [(3, [2, 2]), (7, [3, 3])], 0)


def test_needs_an_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    q = torch.randn(1, 30, 2, 8)
    with pytest.raises(ValueError, match="initialised torch.distributed process group"):
        sequence_parallel_moga_attention(q, q, q, VideoLayout(grid=(2, 3, 5)), MogaConfig(num_groups=1))
