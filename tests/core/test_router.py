"""Router: exact k-means conversion, determinism, balanced routing, the balancing loss."""

import pytest
import torch

from moga_core import Router, balance_loss, balanced_assignment, kmeans
from moga_core.router import capacity_assignment


def blobs(n_per=40, k=5, c=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, c, generator=gen) * 4
    x = centers.repeat_interleave(n_per, 0) + torch.randn(k * n_per, c, generator=gen)
    return x


def test_fit_gives_an_exact_nearest_centroid_router():
    x = blobs()
    centroids = kmeans(x, 5, seed=0)
    router = Router.fit(x, 5, seed=0)
    assert torch.allclose(router.weight, centroids)
    groups, gate = router(x)
    nearest = torch.cdist(x.double(), centroids.double()).argmin(-1)
    assert torch.equal(groups, nearest)
    assert groups.shape == (x.shape[0],) and gate.shape == (x.shape[0],)
    # the five well-separated blobs are recovered
    assert sorted(torch.bincount(groups).tolist()) == [40] * 5


def test_fit_is_deterministic_under_a_seed_and_accepts_batches():
    x = blobs(seed=1).reshape(2, 100, 16)
    a, b, c = Router.fit(x, 4, seed=3), Router.fit(x, 4, seed=3), Router.fit(x, 4, seed=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)
    groups, gate = a(x)
    assert groups.shape == (2, 100) and gate.shape == (2, 100)


def test_fit_subsamples_deterministically():
    x = blobs(n_per=200, seed=2)
    a = Router.fit(x, 5, seed=0, max_points=300)
    b = Router.fit(x, 5, seed=0, max_points=300)
    assert torch.equal(a.weight, b.weight)


def test_balanced_assignment_gives_equal_sizes_and_prefers_best_groups():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 103, 5, generator=gen)
    logits[:, :, 0] += 3  # everyone prefers group 0
    groups = balanced_assignment(logits)
    for b in range(2):
        sizes = torch.bincount(groups[b], minlength=5)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 103
        # group 0 accepted the highest-scoring of the tokens that proposed to it first
        in_zero = groups[b] == 0
        proposed_first = logits[b].argmax(-1) == 0
        rejected = proposed_first & ~in_zero
        assert rejected.any()
        assert logits[b, in_zero & proposed_first, 0].min() >= logits[b, rejected, 0].max()
    # with capacity to spare nothing moves: an already balanced argmax is kept
    easy = torch.eye(4).repeat(1, 3, 1).reshape(1, 12, 4) * 5
    assert torch.equal(balanced_assignment(easy), easy.argmax(-1))


def test_router_balanced_flag_and_gate_is_probability_of_assigned_group():
    router = Router(8, 3)
    x = torch.randn(2, 30, 8)
    groups, gate = router(x, balanced=True)
    probs = torch.softmax(router.logits(x), -1)
    assert torch.allclose(gate, probs.gather(-1, groups[..., None])[..., 0])
    for b in range(2):
        assert torch.bincount(groups[b], minlength=3).tolist() == [10, 10, 10]


def test_balance_loss_is_alpha_at_uniform_and_larger_when_collapsed():
    m, n = 4, 400
    uniform_probs = torch.full((n, m), 1.0 / m)
    uniform_groups = torch.arange(n) % m
    assert balance_loss(uniform_probs, uniform_groups, alpha=0.1).item() == pytest.approx(0.1)
    collapsed_probs = torch.zeros(n, m)
    collapsed_probs[:, 0] = 1
    collapsed_groups = torch.zeros(n, dtype=torch.long)
    assert balance_loss(collapsed_probs, collapsed_groups, alpha=0.1).item() == pytest.approx(0.4)
    v1 = balance_loss(uniform_probs, uniform_groups, alpha=0.1, variant="moga_v1").item()
    assert v1 == pytest.approx(0.1 / m)


def test_balance_loss_gradient_pushes_towards_balance():
    router = Router(8, 3)
    with torch.no_grad():
        router.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    x = torch.randn(200, 8)
    groups, gate, probs, _ = router.route(x)
    balance_loss(probs, groups).backward()
    # lowering the over-used group's bias lowers the loss
    assert router.bias.grad[0] > 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r(torch.randn(4, 5)), "width C = 5 but the router expects C = 8"),
        (lambda r: r(torch.randint(0, 3, (4, 8))), "floating-point"),
        (lambda r: r(torch.randn(8)), r"\(B, N, C\) or \(N, C\)"),
        (lambda r: Router.fit(torch.randn(3, 8), 4), "cannot fit 4 groups to 3 tokens"),
        (lambda r: Router(8, 0), "num_groups must be an int >= 1"),
        (lambda r: Router.from_weights(torch.randn(3, 8), torch.randn(4)), r"bias must be \(M,\)"),
        (lambda r: balance_loss(torch.rand(5, 3), torch.zeros(4, dtype=torch.long)), "disagree"),
    ],
)
def test_router_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(Router(8, 3))


def test_second_choice_is_the_best_other_group():
    from moga_core.router import second_choice

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 300, 5, generator=gen)
    top2 = logits.topk(2, dim=-1).indices
    # plain top-1: the second group is the runner-up by logit
    assert torch.equal(second_choice(logits, logits.argmax(-1)), top2[..., 1])
    # capacity-bounded groups: the best group other than the assigned one (the argmax for a moved token)
    bounded = capacity_assignment(logits, 1.0)
    second = second_choice(logits, bounded)
    moved = bounded != top2[..., 0]
    assert moved.any() and torch.equal(second[moved], top2[..., 0][moved])
    assert torch.equal(second[~moved], top2[..., 1][~moved])
    assert not (second == bounded).any()
    # one group: the second group is the first
    one = torch.zeros(2, 7, 1)
    assert torch.equal(second_choice(one, torch.zeros(2, 7, dtype=torch.long)), torch.zeros(2, 7, dtype=torch.long))
    router = Router(8, 4)
    x = torch.randn(3, 10, 8, generator=gen)
    groups, gate, groups2 = router.route2(x, capacity=1.0)
    _, _, _, logits = router.route(x, capacity=1.0)
    assert torch.equal(groups2, second_choice(logits, groups))
    with pytest.raises(ValueError, match="disagree"):
        second_choice(logits, groups[:, :5])
