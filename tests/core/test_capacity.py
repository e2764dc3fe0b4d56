"""Capacity-bounded routing: no group over ceil(capacity·N/M), first choices kept where there is room, balanced
routing is the case capacity = 1.0."""

import math

import pytest
import torch

from moga_core import MogaConfig, Router
from moga_core.router import balanced_assignment, capacity_assignment, group_capacities


def skewed_logits(b, n, m, seed, skew=2.5):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, m, generator=gen)
    logits[:, :, 0] += skew  # most tokens prefer group 0, as a router calibrated on a short clip does on a long one
    return logits


@pytest.mark.parametrize("capacity", [1.0, 1.1, 1.25, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("b, n, m", [(1, 97, 5), (2, 1000, 8), (3, 64, 1), (1, 50, 7)])
def test_no_group_over_capacity_and_every_token_placed(capacity, b, n, m):
    logits = skewed_logits(b, n, m, seed=n + m)
    groups = capacity_assignment(logits, capacity)
    assert groups.shape == (b, n) and groups.dtype == torch.int64
    assert int(groups.min()) >= 0 and int(groups.max()) < m
    bound = min(n, math.ceil(capacity * n / m))
    for row in groups:
        sizes = torch.bincount(row, minlength=m)
        assert int(sizes.max()) <= bound, (sizes.tolist(), bound)
        assert int(sizes.sum()) == n


@pytest.mark.parametrize("capacity", [1.0, 1.25, 2.0])
def test_first_choices_kept_where_there_is_room(capacity):
    b, n, m = 2, 600, 6
    logits = skewed_logits(b, n, m, seed=1)
    groups = capacity_assignment(logits, capacity)
    caps = group_capacities(n, m, capacity)
    first = logits.argmax(-1)
    for i in range(b):
        for g in range(m):
            wanted = first[i] == g
            kept = wanted & (groups[i] == g)
            # a group keeps as many of the tokens that chose it first as it has room for ...
            assert int(kept.sum()) == min(int(wanted.sum()), caps[g])
            # ... and those are the ones that scored it highest
            refused = wanted & ~kept
            if refused.any():
                assert logits[i, kept, g].min() >= logits[i, refused, g].max()
        # a refused token went to the best group that still had room for it: never to a group it ranks below
        # one that ended with free places
        sizes = torch.bincount(groups[i], minlength=m)
        room = sizes < torch.tensor(caps)
        moved = groups[i] != first[i]
        score_taken = logits[i, moved].gather(1, groups[i, moved][:, None])[:, 0]
        better_with_room = (logits[i, moved] > score_taken[:, None]) & room[None, :]
        assert not better_with_room.any()


def test_capacity_that_never_binds_is_plain_argmax():
    logits = skewed_logits(2, 300, 5, seed=2, skew=0.0)
    assert torch.equal(capacity_assignment(logits, 5.0), logits.argmax(-1))


def test_balanced_is_capacity_one():
    logits = skewed_logits(2, 103, 5, seed=3)
    groups = capacity_assignment(logits, 1.0)
    assert torch.equal(balanced_assignment(logits), groups)
    for row in groups:
        sizes = torch.bincount(row, minlength=5)
        assert int(sizes.max() - sizes.min()) <= 1
    router = Router(8, 3)
    x = torch.randn(2, 30, 8)
    assert all(torch.equal(a, c) for a, c in zip(router(x, balanced=True), router(x, capacity=1.0)))
    # the config: `balanced=True` (older workflows) and `capacity=1.0` are the same configuration
    assert MogaConfig(balanced=True) == MogaConfig(capacity=1.0)
    assert MogaConfig(capacity=1.0).balanced and not MogaConfig(capacity=1.5).balanced
    assert MogaConfig().capacity is None


def test_capacity_assignment_is_deterministic():
    logits = skewed_logits(1, 500, 7, seed=4)
    logits[:, 100:200] = logits[:, :100]  # exact ties between tokens
    assert torch.equal(capacity_assignment(logits, 1.2), capacity_assignment(logits.clone(), 1.2))


@pytest.mark.parametrize("call, message", [
    (lambda: capacity_assignment(torch.randn(1, 10, 3), 0.5), r"capacity must be >= 1.0"),
    (lambda: capacity_assignment(torch.randn(1, 10, 3), "big"), r"capacity must be a number"),
    (lambda: capacity_assignment(torch.randn(10, 3), 1.5), r"\(B, N, M\)"),
    (lambda: MogaConfig(capacity=0.9), r"capacity must be a number >= 1.0"),
    (lambda: MogaConfig(capacity=1.5, balanced=True), r"balanced=True means capacity=1.0"),
    (lambda: Router(4, 2)(torch.randn(3, 4), balanced=True, capacity=2.0), r"balanced=True means capacity=1.0"),
])
def test_capacity_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
