"""Why a union call ran densely under ``dense_fallback``: ``stats["dense_reason"]`` says whether one group held
every token, whether not even equal groups would beat dense attention at this length (short sequences), or whether
these groups are too unequal (equal groups would have paid off)."""

import warnings

import pytest
import torch

import moga_core.attention as attention
from moga_core import MogaConfig, RandomGroups, VideoLayout, moga_attention, reference_attention
from moga_core.attention import (DENSE_AT_LENGTH, DENSE_ONE_GROUP, DENSE_REASONS, DENSE_UNEQUAL, dense_reason,
                                 equal_groups_cost)

from test_attention import make_inputs, rel_err

SHORT = VideoLayout(grid=(4, 8, 8), shots=(0, 2))  # 256 tokens: nothing sparse pays off here
LONGER = VideoLayout(grid=(20, 16, 16), shots=(0, 10))  # 5,120 tokens, M = 8: equal groups pay off (varlen estimate)


def run(layout, cfg, groups, seed=0):
    q, k, v, _, _ = make_inputs(layout, groups.shape[0], 2, 16, cfg.num_groups, seed=seed)
    stats = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = moga_attention(q, k, v, layout, cfg, groups, stats=stats, dense_fallback=True)
    return out, stats, (q, k, v)


def equal(layout, m, batch=1):
    return RandomGroups(m, seed=3).partition(layout.num_video_tokens)[None].expand(batch, -1).contiguous()


def test_equal_random_groups_on_a_short_sequence_are_dense_because_of_the_length():
    cfg = MogaConfig(num_groups=5, combine="union")
    out, stats, (q, k, v) = run(SHORT, cfg, equal(SHORT, 5, batch=2))
    assert stats["path"] == "dense" and stats["dense_reason"] == DENSE_AT_LENGTH
    assert equal_groups_cost(SHORT, cfg, False) >= 1.0
    # what the fallback computes: union mode with every token in one group (dense attention)
    one = torch.zeros(2, SHORT.num_video_tokens, dtype=torch.long)
    assert rel_err(out, reference_attention(q, k, v, SHORT, cfg, one)) <= 1e-5


def test_one_group_holding_everything_is_named_as_such():
    cfg = MogaConfig(num_groups=4, combine="union")
    _, stats, _ = run(LONGER, cfg, torch.full((1, LONGER.num_video_tokens), 2, dtype=torch.long))
    assert stats["path"] == "dense" and stats["dense_reason"] == DENSE_ONE_GROUP
    _, stats, _ = run(SHORT, MogaConfig(num_groups=1, combine="union"),
                      torch.zeros(1, SHORT.num_video_tokens, dtype=torch.long))
    assert stats["dense_reason"] == DENSE_ONE_GROUP


def test_unequal_groups_where_equal_ones_would_pay_off_are_named_unequal():
    cfg = MogaConfig(num_groups=8, combine="union")
    assert equal_groups_cost(LONGER, cfg, False) < 1.0
    _, stats, _ = run(LONGER, cfg, equal(LONGER, 8))
    assert stats["path"] == "sparse" and "dense_reason" not in stats
    nv = LONGER.num_video_tokens
    skewed = torch.zeros(1, nv, dtype=torch.long)
    skewed[0, torch.randperm(nv, generator=torch.Generator().manual_seed(0))[: nv // 10]] = 5  # 90 % in group 0
    _, stats, _ = run(LONGER, cfg, skewed)
    assert stats["path"] == "dense" and stats["dense_reason"] == DENSE_UNEQUAL
    # a stats dict that is reused does not keep an earlier call's reason
    q, k, v, _, _ = make_inputs(LONGER, 1, 2, 16, 8, seed=0)
    moga_attention(q, k, v, LONGER, cfg, equal(LONGER, 8), stats=stats, dense_fallback=True)
    assert stats["path"] == "sparse" and "dense_reason" not in stats


def test_block_kernel_estimate_gives_the_same_reasons(monkeypatch):
    """The block kernel's estimate (block counts; CUDA only for the kernel itself, but the plan and the estimate
    are built on any device): at 256 tokens every block is partial, so equal groups cost 2.1× dense; at 32,760
    tokens equal groups cost less than dense, so a call that went dense had unequal groups."""
    cfg = MogaConfig(num_groups=5, combine="union")
    monkeypatch.setattr(attention, "use_block_kernel", lambda cfg, q: True)
    _, stats, _ = run(SHORT, cfg, equal(SHORT, 5))
    assert stats["backend"] == "flex" and stats["path"] == "dense" and stats["dense_reason"] == DENSE_AT_LENGTH

    wide = VideoLayout(grid=(21, 30, 52), shots=(0,))  # 32,760 tokens: the reason needs only the plan, no attention
    assert equal_groups_cost(wide, cfg, True) < 1.0
    nv = wide.num_video_tokens
    sizes = torch.tensor([[nv - 400, 100, 100, 100, 100]])
    assert dense_reason(wide, cfg, sizes, True) == DENSE_UNEQUAL
    assert dense_reason(wide, cfg, torch.tensor([[0, 0, nv, 0, 0]]), True) == DENSE_ONE_GROUP
    assert dense_reason(SHORT, cfg, torch.tensor([[52, 51, 51, 51, 51]]), True) == DENSE_AT_LENGTH


@pytest.mark.parametrize("reason", DENSE_REASONS)
def test_reasons_are_short_distinct_text(reason):
    assert isinstance(reason, str) and 10 < len(reason) < 80 and DENSE_REASONS.count(reason) == 1
