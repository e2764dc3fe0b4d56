"""The block-sparse union kernel's plan (block lists, full/partial split, per-token mask) against the O(N²)
definition, on CPU: the kernel itself needs CUDA + Triton (tests/core/test_cuda.py runs it), but what it computes
is fixed by the plan, and `emulate_block_attention` computes exactly that in float64."""

import warnings
from dataclasses import replace

import pytest
import torch

from moga_core import MogaConfig, VideoLayout, moga_attention, reference_attention
from moga_core.attention import branch_masks
from moga_core.blocksparse import (BLOCK, block_attention, build_block_plan, emulate_block_attention, heads_per_chunk,
                                   key_set_pairs)
from moga_core.router import capacity_assignment, second_choice

from test_attention import make_inputs, rel_err

# (grid, shots, prefix, suffix, M, window, temporal_group, neighbor_frames, frame_branch, keep)
LAYOUTS = [
    ((6, 5, 7), (0, 2, 4), 0, 0, 3, (2, 2), 2, 1, True, None),
    ((9, 6, 10), (0, 4), 3, 2, 5, (2, 3), 3, 2, True, "frame"),
    ((5, 4, 4), (0,), 0, 4, 1, None, 10, 2, True, None),
    ((7, 9, 8), (0, 1, 3, 6), 2, 0, 8, (3, 2), 2, 2, False, "all"),
    ((8, 16, 16), (0, 3, 6), 0, 0, 2, (2, 2), 2, 1, True, None),  # groups of ~1k tokens: full blocks
    ((6, 12, 20), (0, 2), 5, 0, 3, (2, 2), 4, 1, True, "frame"),
]


def setup(case, combine, seed, capacity=None):
    grid, shots, pre, suf, m, window, tg, nf, frame, keep_kind = case
    layout = VideoLayout(grid=grid, shots=shots, prefix=pre, suffix=suf)
    cfg = MogaConfig(num_groups=m, window=window, temporal_group=tg, neighbor_frames=nf, frame_branch=frame,
                     combine=combine, capacity=capacity)
    q, k, v, groups, gate = make_inputs(layout, 2, 2, 16, m, seed=seed)
    if capacity is not None:
        logits = torch.randn(2, layout.num_video_tokens, m, generator=torch.Generator().manual_seed(seed))
        groups = capacity_assignment(logits, capacity)
    ng = layout.num_global_tokens
    gen = torch.Generator().manual_seed(seed + 1)
    keep = None
    if keep_kind == "frame":
        keep = torch.rand(grid[0], ng, generator=gen) > 0.4
    elif keep_kind == "all":
        keep = torch.rand(ng, generator=gen) > 0.3
    return layout, cfg, q, k, v, groups, gate, keep


def per_frame(keep, layout):
    return keep if keep is None or keep.dim() == 2 else keep.expand(layout.grid[0], -1)


def reference_video(q, k, v, layout, cfg, groups, keep, mode):
    """The video rows of the definition: union mode, or the group branch (group ∪ global) of mean mode."""
    if mode == "group":
        cfg = MogaConfig(num_groups=cfg.num_groups, window=None, frame_branch=False, combine="mean")
    ref = reference_attention(q.double(), k.double(), v.double(), layout, cfg, groups, global_keep=keep)
    return ref[:, layout.prefix:layout.prefix + layout.num_video_tokens]


def allowed_mask(layout, cfg, groups_row, keep, mode, groups2_row=None):
    """(Nv, Nv + Ng) bool in token order (video keys, then prefix and suffix keys): the definition's key sets."""
    masks = branch_masks(layout, cfg, groups_row, groups2_row)
    p, nv = layout.prefix, layout.num_video_tokens
    union = masks["group"] | masks["global"]
    if mode == "union":
        for name in ("window", "frame"):
            if name in masks:
                union = union | masks[name]
    if keep is not None:
        frame_of = torch.arange(layout.grid[0]).repeat_interleave(layout.tokens_per_frame)
        glob_cols = list(range(p)) + list(range(p + nv, layout.num_tokens))
        union[:, glob_cols] &= keep[frame_of]
    order = list(range(p, p + nv)) + list(range(p)) + list(range(p + nv, layout.num_tokens))
    return union[:, order]


def check_block_lists(plan, layout, cfg, groups, keep_t, mode, groups2=None):
    """The plan lists exactly the blocks the definition's key sets touch; its full blocks hold only allowed pairs.
    Returns the number of full block pairs."""
    nv, lk = plan.seq_lengths
    p = layout.prefix
    for b in range(groups.shape[0]):
        mask = allowed_mask(layout, cfg, groups[b], keep_t, mode, None if groups2 is None else groups2[b])
        sorted_mask = mask[plan.q_pos[b] - p]  # rows in the queries' sorted order
        cols = torch.cat([plan.kv_pos[b, :nv] - p, torch.arange(nv, lk)])  # the keys' sorted order, then globals
        sorted_mask = sorted_mask[:, cols]
        nq, nk = plan.kv_num_blocks.shape[-1], plan.kv_indices.shape[-1]
        padded = torch.zeros(nq * BLOCK, nk * BLOCK, dtype=torch.bool)
        padded[:nv, :lk] = sorted_mask
        touched = padded.view(nq, BLOCK, nk, BLOCK).any(3).any(1)
        listed = torch.zeros(nq, nk, dtype=torch.bool)
        full = torch.zeros(nq, nk, dtype=torch.bool)
        for i in range(nq):
            listed[i, plan.kv_indices[b, 0, i, :int(plan.kv_num_blocks[b, 0, i])]] = True
            full[i, plan.full_kv_indices[b, 0, i, :int(plan.full_kv_num_blocks[b, 0, i])]] = True
        assert not (listed & full).any(), "a block listed both as partial and as full"
        # every block with an allowed pair is listed, and no block without one (the kernel computes no waste
        # beyond block granularity)
        assert torch.equal(listed | full, touched)
        # a full block runs without the mask: all of its real pairs must be allowed
        for i, j in full.nonzero().tolist():
            rows = slice(i * BLOCK, min((i + 1) * BLOCK, nv))
            cols_ = slice(j * BLOCK, min((j + 1) * BLOCK, lk))
            assert sorted_mask[rows, cols_].all()
    return int(plan.full_blocks.sum())


@pytest.mark.parametrize("mode", ["union", "group"])
@pytest.mark.parametrize("case", LAYOUTS, ids=[f"layout{i}" for i in range(len(LAYOUTS))])
def test_block_lists_are_exactly_the_blocks_the_key_sets_touch(case, mode):
    layout, cfg, q, k, v, groups, gate, keep = setup(case, "union", seed=len(case[0]) + case[4])
    keep_t = per_frame(keep, layout)
    plan = build_block_plan(layout, cfg, groups, mode, keep_t)
    assert torch.equal(plan.q_pos, plan.kv_pos[:, :layout.num_video_tokens])  # one order without a second group
    full_blocks = check_block_lists(plan, layout, cfg, groups, keep_t, mode)
    if case[0] == (8, 16, 16):
        assert full_blocks > 0  # the case that exercises the unmasked blocks
        assert full_blocks > int(plan.partial_blocks.sum())


@pytest.mark.parametrize("capacity", [None, 1.25])
@pytest.mark.parametrize("mode", ["union", "group"])
@pytest.mark.parametrize("case", LAYOUTS, ids=[f"layout{i}" for i in range(len(LAYOUTS))])
def test_what_the_kernel_computes_equals_the_reference(case, mode, capacity):
    layout, cfg, q, k, v, groups, gate, keep = setup(case, "union", seed=7 + case[4], capacity=capacity)
    plan = build_block_plan(layout, cfg, groups, mode, per_frame(keep, layout))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = reference_video(q, k, v, layout, cfg, groups, keep, mode)
        emulated = emulate_block_attention(q, k, v, plan, 16 ** -0.5)
    assert rel_err(emulated, ref) <= 1e-10
    if layout.num_tokens <= 600:  # FlexAttention itself, eagerly (the mask only; the block lists need the GPU)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eager = block_attention(q, k, v, plan, 16 ** -0.5, compiled=False)
            one_head_at_a_time = block_attention(q, k, v, plan, 16 ** -0.5, compiled=False, chunk_bytes=1)
        assert rel_err(eager, ref) <= 1e-5
        assert torch.equal(one_head_at_a_time, eager)


@pytest.mark.parametrize("combine", ["union", "mean"])
@pytest.mark.parametrize("case", LAYOUTS, ids=[f"layout{i}" for i in range(len(LAYOUTS))])
def test_key_set_pairs_counts_the_definition(case, combine):
    layout, cfg, q, k, v, groups, gate, keep = setup(case, combine, seed=3)
    keep_t = per_frame(keep, layout)
    expected = 0
    for b in range(groups.shape[0]):
        if combine == "union":
            expected += int(allowed_mask(layout, cfg, groups[b], keep_t, "union").sum())
        else:
            masks = branch_masks(layout, cfg, groups[b])
            for name in ("group", "window", "frame"):
                if name in masks:
                    m = masks[name] | masks["global"]
                    if keep_t is not None:
                        p, nv = layout.prefix, layout.num_video_tokens
                        frame_of = torch.arange(layout.grid[0]).repeat_interleave(layout.tokens_per_frame)
                        glob_cols = list(range(p)) + list(range(p + nv, layout.num_tokens))
                        m[:, glob_cols] &= keep_t[frame_of]
                    expected += int(m.sum())
    assert key_set_pairs(layout, cfg, groups, keep) == expected


def test_stats_report_key_set_density_and_path():
    layout = VideoLayout(grid=(6, 5, 7), shots=(0, 3))
    cfg = MogaConfig(num_groups=3, combine="union")
    q, k, v, groups, gate = make_inputs(layout, 1, 2, 16, 3, seed=0)
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moga_attention(q, k, v, layout, cfg, groups, stats=stats)
    n = layout.num_tokens
    assert stats["path"] == "sparse" and stats["backend"] == "auto"
    assert stats["density"] == key_set_pairs(layout, cfg, groups) / n ** 2
    assert stats["work_density"] >= stats["density"]  # the varlen path also computes the intersections


def test_dense_fallback_when_one_group_holds_everything():
    """Union mode with a group that holds every token is dense attention; the fallback computes it densely and
    says so, with the same result."""
    layout = VideoLayout(grid=(6, 5, 7), shots=(0, 3), prefix=2)
    cfg = MogaConfig(num_groups=3, combine="union")
    q, k, v, _, _ = make_inputs(layout, 1, 2, 16, 3, seed=1)
    groups = torch.zeros(1, layout.num_video_tokens, dtype=torch.long)
    keep = torch.rand(6, 2, generator=torch.Generator().manual_seed(0)) > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = {}
        out = moga_attention(q, k, v, layout, cfg, groups, global_keep=keep, stats=stats, dense_fallback=True)
        ref = reference_attention(q, k, v, layout, cfg, groups, global_keep=keep)
        assert stats["path"] == "dense"
        assert rel_err(out, ref) <= 1e-5
        stats = {}
        balanced = capacity_assignment(torch.randn(1, layout.num_video_tokens, 3), 1.0)
        moga_attention(q, k, v, layout, MogaConfig(num_groups=3, combine="union", window=None, frame_branch=False),
                       balanced, stats=stats, dense_fallback=True)
        assert stats["path"] == "sparse"


def test_heads_run_in_equal_chunks_under_the_memory_budget():
    # 580,320 tokens, B = 2, 12 heads of 128 in bf16: 297 MB per head → 3 heads per 1 GiB chunk
    assert heads_per_chunk(2, 580320, 12, 128, 2, budget=1 << 30) == 3
    assert heads_per_chunk(1, 1000, 12, 128, 2, budget=1 << 30) == 12  # small: all heads at once
    assert heads_per_chunk(2, 580320, 40, 128, 2, budget=1 << 30) == 2  # 14B: 40 heads, divisors only
    assert heads_per_chunk(2, 580320, 12, 128, 2, budget=1) == 1


def test_a_block_kernel_that_cannot_be_built_falls_back_to_the_varlen_path(monkeypatch):
    """`auto` on a machine whose Triton cannot build the kernel: one warning, the varlen result, and no second
    attempt in the process; an explicit backend='flex' shows the error instead."""
    import moga_core.attention as attention

    calls = []

    def broken_kernel(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("triton: no working C compiler found")

    monkeypatch.setattr(attention, "flex_available", lambda device: True)
    monkeypatch.setattr(attention, "block_attention", broken_kernel)
    monkeypatch.setattr(attention, "_BLOCK_KERNEL_FAILURE", [])
    layout = VideoLayout(grid=(6, 5, 7), shots=(0, 3))
    q, k, v, groups, _ = make_inputs(layout, 1, 2, 16, 3, seed=0, dtype=torch.bfloat16)
    cfg = MogaConfig(num_groups=3, combine="union")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = moga_attention(q, k, v, layout, cfg, groups)
        second = moga_attention(q, k, v, layout, cfg, groups)
    failures = [w for w in caught if "failed to build or run" in str(w.message)]
    assert len(failures) == 1 and "no working C compiler" in str(failures[0].message)
    assert len(calls) == 1  # not tried again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        varlen = moga_attention(q, k, v, layout, MogaConfig(num_groups=3, combine="union", backend="varlen"), groups)
    assert torch.equal(first, varlen) and torch.equal(second, varlen)
    monkeypatch.setattr(attention, "_BLOCK_KERNEL_FAILURE", [])
    with pytest.raises(RuntimeError, match="no working C compiler"):
        moga_attention(q, k, v, layout, MogaConfig(num_groups=3, combine="union", backend="flex"), groups)


# ---------------------------------------------------------------------------------------------------------------
# second group: each query also attends to its second group's keys


def second_setup(case, seed, capacity=None, same_share=0.15):
    """The `setup` inputs in second-group mode: groups and second groups from random router logits (capacity-
    bounded when asked); a share of queries get a second group equal to their first (which adds nothing)."""
    layout, cfg, q, k, v, _, _, keep = setup(case, "union", seed)
    cfg = MogaConfig(**{**cfg.__dict__, "second_group": True})
    b, nv, m = q.shape[0], layout.num_video_tokens, cfg.num_groups
    gen = torch.Generator().manual_seed(seed + 5)
    if case[0] == (8, 16, 16):  # large groups, few second groups: blocks of queries that share both groups
        logits = torch.randn(b, nv, m, generator=gen) * 0.1
        logits[..., 0] += 2.0 * (torch.arange(nv) % 512 < 256)
    else:
        logits = torch.randn(b, nv, m, generator=gen)
    groups = logits.argmax(-1) if capacity is None else capacity_assignment(logits, capacity)
    groups2 = second_choice(logits, groups)
    same = torch.rand(b, nv, generator=gen) < same_share
    groups2 = torch.where(same, groups, groups2)
    return layout, cfg, q, k, v, groups, groups2, keep


@pytest.mark.parametrize("mode", ["union", "group"])
@pytest.mark.parametrize("case", LAYOUTS, ids=[f"layout{i}" for i in range(len(LAYOUTS))])
def test_second_group_block_lists_are_exactly_the_blocks_the_key_sets_touch(case, mode):
    layout, cfg, q, k, v, groups, groups2, keep = second_setup(case, seed=11 + case[4])
    keep_t = per_frame(keep, layout)
    plan = build_block_plan(layout, cfg, groups, mode, keep_t, groups2=groups2)
    full_blocks = check_block_lists(plan, layout, cfg, groups, keep_t, mode, groups2)
    if case[0] == (8, 16, 16):
        assert full_blocks > 0  # full blocks survive the second group (queries sorted by both groups)


@pytest.mark.parametrize("capacity", [None, 1.25])
@pytest.mark.parametrize("mode", ["union", "group"])
@pytest.mark.parametrize("case", LAYOUTS, ids=[f"layout{i}" for i in range(len(LAYOUTS))])
def test_second_group_kernel_computes_the_reference(case, mode, capacity):
    layout, cfg, q, k, v, groups, groups2, keep = second_setup(case, seed=3 + case[4], capacity=capacity)
    keep_t = per_frame(keep, layout)
    plan = build_block_plan(layout, cfg, groups, mode, keep_t, groups2=groups2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "group":
            gcfg = MogaConfig(num_groups=cfg.num_groups, window=None, frame_branch=False, second_group=True)
            ref = reference_attention(q.double(), k.double(), v.double(), layout, gcfg, groups, global_keep=keep,
                                      groups2=groups2)[:, layout.prefix:layout.prefix + layout.num_video_tokens]
        else:
            ref = reference_attention(q.double(), k.double(), v.double(), layout, cfg, groups, global_keep=keep,
                                      groups2=groups2)[:, layout.prefix:layout.prefix + layout.num_video_tokens]
        emulated = emulate_block_attention(q, k, v, plan, 16 ** -0.5)
    assert rel_err(emulated, ref) <= 1e-10
    # the second group changes the answer (except with one group, where it is the first)
    if cfg.num_groups > 1:
        first_only = reference_video(q, k, v, layout, replace(cfg, second_group=False), groups, keep, mode)
        assert rel_err(first_only, ref) > 1e-3
    if layout.num_tokens <= 600:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eager = block_attention(q, k, v, plan, 16 ** -0.5, compiled=False)
        assert rel_err(eager, ref) <= 1e-5


@pytest.mark.parametrize("capacity", [None, 1.25])
@pytest.mark.parametrize("case", LAYOUTS, ids=[f"layout{i}" for i in range(len(LAYOUTS))])
def test_second_group_varlen_path_equals_the_reference(case, capacity):
    layout, cfg, q, k, v, groups, groups2, keep = second_setup(case, seed=5 + case[4], capacity=capacity)
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = moga_attention(q, k, v, layout, cfg, groups, global_keep=keep, groups2=groups2, stats=stats)
        ref = reference_attention(q, k, v, layout, cfg, groups, global_keep=keep, groups2=groups2)
    assert stats["path"] == "sparse" and stats["backend"] == "auto"
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-5
    keep_t = per_frame(keep, layout)
    pairs = sum(int(allowed_mask(layout, cfg, groups[b], keep_t, "union", groups2[b]).sum())
                for b in range(groups.shape[0]))
    assert key_set_pairs(layout, cfg, groups, keep, groups2) == pairs


def test_second_group_inputs_are_checked():
    layout, cfg, q, k, v, groups, groups2, keep = second_setup(LAYOUTS[0], seed=0)
    with pytest.raises(ValueError, match="groups2 .* is required"):
        moga_attention(q, k, v, layout, cfg, groups)
    with pytest.raises(ValueError, match="second_group is False"):
        moga_attention(q, k, v, layout, replace(cfg, second_group=False), groups, groups2=groups2)
    with pytest.raises(ValueError, match=r"groups2 must be \(B, Nv\)"):
        moga_attention(q, k, v, layout, cfg, groups, groups2=groups2[:, :5])
    with pytest.raises(ValueError, match="ids in"):
        moga_attention(q, k, v, layout, cfg, groups, groups2=groups2 + cfg.num_groups)
    with pytest.raises(ValueError, match="combine='union'"):
        MogaConfig(num_groups=3, combine="mean", second_group=True)
