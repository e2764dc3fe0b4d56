"""`RandomGroups`: the content-free grouping of union mode (balanced, seeded, one partition per length)."""

import pytest
import torch

from moga_core import MogaConfig, RandomGroups, VideoLayout, moga_attention, reference_attention


@pytest.mark.parametrize("n, m", [(23, 5), (100, 4), (7, 7), (3, 1)])
def test_groups_are_balanced_and_the_same_for_every_sample(n, m):
    groups, gate = RandomGroups(m, seed=1)(torch.randn(3, n, 8))
    assert groups.shape == (3, n) and groups.dtype == torch.int64 and groups.is_contiguous()
    sizes = torch.bincount(groups[0], minlength=m)
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == n
    assert torch.equal(groups[0], groups[1]) and torch.equal(groups[0], groups[2])
    assert torch.equal(gate, torch.ones(3, n))


def test_seeded_content_free_and_not_positional():
    x = torch.randn(2, 400, 8)
    a, _ = RandomGroups(4, seed=0)(x)
    assert torch.equal(a, RandomGroups(4, seed=0)(torch.randn(2, 400, 8) * 9)[0])  # the content does not matter
    assert torch.equal(a[0], RandomGroups(4, seed=0)(x[0])[0])  # (N, C) as well
    assert not torch.equal(a, RandomGroups(4, seed=1)(x)[0])
    # not a stride pattern: neighbours land in the same group about 1/M of the time, not never
    same = float((a[0, 1:] == a[0, :-1]).float().mean())
    assert 0.1 < same < 0.4


def test_union_attention_with_random_groups_equals_the_reference():
    layout = VideoLayout(grid=(6, 4, 4), shots=(0, 3), prefix=2)
    cfg = MogaConfig(num_groups=5, combine="union", window=(2, 2), temporal_group=2, neighbor_frames=1)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, layout.num_tokens, 2, 16, generator=gen) for _ in range(3))
    groups, _ = RandomGroups(5, seed=0)(torch.randn(2, layout.num_video_tokens, 4))
    out = moga_attention(q, k, v, layout, cfg, groups)
    ref = reference_attention(q, k, v, layout, cfg, groups)
    assert float((out - ref).abs().max()) < 1e-5


def test_bad_input_says_what_was_expected():
    with pytest.raises(ValueError, match="num_groups must be an int >= 1"):
        RandomGroups(0)
    with pytest.raises(ValueError, match="seed must be an int"):
        RandomGroups(3, seed=1.5)
    with pytest.raises(ValueError, match=r"\(B, N, C\) or \(N, C\)"):
        RandomGroups(3)(torch.randn(5))
    with pytest.raises(ValueError, match="second_group off"):
        RandomGroups(3).route2(torch.randn(1, 5, 2))
