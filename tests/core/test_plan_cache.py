"""`PlanCache`: the group-dependent plan of content-free groups, built once and reused by later calls.

A hit must give exactly the result of building the plan again (the same kernel inputs), report the same statistics,
skip the read-back, and never serve a call whose key, layout, config or batch differ."""

import functools

import pytest
import torch

import moga_core.attention as attention
from moga_core import MogaConfig, PlanCache, RandomGroups, VideoLayout, moga_attention, reference_attention
from moga_core.blocksparse import block_attention

LAYOUT = VideoLayout(grid=(6, 8, 8), shots=(0, 3), prefix=3)
CFG = MogaConfig(num_groups=4, combine="union", window=(2, 2), temporal_group=2, neighbor_frames=1)


def qkv(seed, batch=2, layout=LAYOUT, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, layout.num_tokens, 2, 16, generator=gen).to(dtype) for _ in range(3)]


def random_groups(batch=2, layout=LAYOUT, m=4, seed=0):
    return RandomGroups(m, seed=seed).partition(layout.num_video_tokens).expand(batch, -1).contiguous()


@pytest.fixture(params=["varlen", "block"])
def path(request, monkeypatch):
    """Both paths on the CPU: the varlen pieces, and the block plan run by FlexAttention's eager mode."""
    if request.param == "block":
        monkeypatch.setattr(attention, "flex_available", lambda device: True)
        monkeypatch.setattr(attention, "block_attention", functools.partial(block_attention, compiled=False))
        monkeypatch.setattr(attention, "_BLOCK_KERNEL_FAILURE", [])
    return request.param


def dtype_of(path):
    return torch.bfloat16 if path == "block" else torch.float32  # the block kernel takes half precision


def test_a_hit_equals_a_fresh_plan_and_reports_the_same_statistics(path):
    dtype = dtype_of(path)
    cache = PlanCache()
    groups = random_groups()
    keep = torch.ones(LAYOUT.grid[0], LAYOUT.num_global_tokens, dtype=torch.bool)
    keep[3:, 1] = False  # the second shot does not see global token 1 (a per-shot caption)
    runs = []
    for step in range(3):
        q, k, v = qkv(step, dtype=dtype)
        fresh_stats, cached_stats = {}, {}
        fresh = moga_attention(q, k, v, LAYOUT, CFG, groups, global_keep=keep, stats=fresh_stats)
        cached = moga_attention(q, k, v, LAYOUT, CFG, groups, global_keep=keep, stats=cached_stats,
                                plan_cache=cache, plan_key=("random", 0))
        assert torch.equal(fresh, cached), f"step {step}: the cached plan changed the output"
        assert cached_stats.pop("plan_cached") is (step > 0) and fresh_stats.pop("plan_cached") is False
        sizes_fresh, sizes_cached = fresh_stats.pop("group_sizes"), cached_stats.pop("group_sizes")
        assert torch.equal(sizes_fresh, sizes_cached) and fresh_stats == cached_stats
        runs.append(cached.float())
        ref = reference_attention(q, k, v, LAYOUT, CFG, groups, global_keep=keep).float()
        assert float((cached.float() - ref).abs().max()) < (3e-2 if dtype == torch.bfloat16 else 1e-5)
    assert (cache.hits, cache.misses, len(cache)) == (2, 1, 1) and cache.bytes > 0
    assert not torch.equal(runs[0], runs[1])  # new q, k, v each step: the plan is reused, not the output


def test_keys_layouts_configs_and_batches_do_not_share_entries(path):
    dtype = dtype_of(path)
    cache = PlanCache()
    q, k, v = qkv(0, dtype=dtype)
    moga_attention(q, k, v, LAYOUT, CFG, random_groups(), plan_cache=cache, plan_key="a")
    other = random_groups(seed=1)
    stats = {}
    out = moga_attention(q, k, v, LAYOUT, CFG, other, plan_cache=cache, plan_key="b", stats=stats)
    assert stats["plan_cached"] is False
    assert torch.equal(out, moga_attention(q, k, v, LAYOUT, CFG, other))
    cfg2 = MogaConfig(num_groups=4, combine="union", window=(2, 2), temporal_group=3, neighbor_frames=1)
    moga_attention(q, k, v, LAYOUT, cfg2, random_groups(), plan_cache=cache, plan_key="a", stats=stats)
    assert stats["plan_cached"] is False
    q1, k1, v1 = (t[:1] for t in (q, k, v))
    moga_attention(q1, k1, v1, LAYOUT, CFG, random_groups(batch=1), plan_cache=cache, plan_key="a", stats=stats)
    assert stats["plan_cached"] is False
    assert len(cache) == 4 and cache.hits == 0


def test_over_budget_plans_are_not_stored_and_still_run(path):
    dtype = dtype_of(path)
    cache = PlanCache(max_bytes=0)
    q, k, v = qkv(0, dtype=dtype)
    groups = random_groups()
    outs = [moga_attention(q, k, v, LAYOUT, CFG, groups, plan_cache=cache, plan_key="a") for _ in range(2)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], moga_attention(q, k, v, LAYOUT, CFG, groups))
    assert len(cache) == 0 and cache.skipped == 2 and cache.bytes == 0


def test_bad_ids_raise_and_are_not_cached(path):
    dtype = dtype_of(path)
    cache = PlanCache()
    q, k, v = qkv(0, dtype=dtype)
    groups = random_groups()
    groups[0, 5] = 7
    for _ in range(2):  # the second call must check again: nothing was stored
        with pytest.raises(ValueError, match=r"ids in \[0, 4\)"):
            moga_attention(q, k, v, LAYOUT, CFG, groups, plan_cache=cache, plan_key="a")
    assert len(cache) == 0


def test_no_cache_under_autograd_and_clear_empties_it():
    cache = PlanCache()
    q, k, v = (t.requires_grad_() for t in qkv(0))
    out = moga_attention(q, k, v, LAYOUT, CFG, random_groups(), plan_cache=cache, plan_key="a")
    out.sum().backward()
    assert len(cache) == 0 and cache.misses == 0 and q.grad is not None
    with torch.no_grad():
        moga_attention(q, k, v, LAYOUT, CFG, random_groups(), plan_cache=cache, plan_key="a")
    assert len(cache) == 1
    cache.clear()
    assert (len(cache), cache.bytes, cache.hits, cache.misses) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"max_bytes must be an int >= 0"):
        PlanCache(max_bytes=-1)
