"""`SpeedCheck`: a run's own timing of sparse against dense calls decides which one a call shape gets."""

import pytest
import torch

from moga_core.speed import DENSE, SPARSE, TIME_DENSE, SpeedCheck


class FakeClock:
    """Seconds that advance only by what a test says a call took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(check, key, clock, sparse_ms, dense_ms, calls, plan_built_first=False):
    """``calls`` calls of one shape as the patcher makes them; returns the actions taken."""
    actions = []
    for i in range(calls):
        action = check.action(key)
        actions.append(action)
        kind = SPARSE if action == SPARSE else DENSE
        if action == DENSE:
            continue  # decided: the dense backend runs, untimed
        with check.timing(key, kind, torch.device("cpu")) as sample:
            clock.now += (sparse_ms if kind == SPARSE else dense_ms) / 1e3
            if kind == SPARSE and plan_built_first and i == 0:
                sample.discard()
    return actions


@pytest.mark.parametrize("sparse_ms, dense_ms, verdict", [(12.0, 10.0, DENSE), (5.0, 10.0, SPARSE),
                                                           (10.2, 10.0, DENSE)])
def test_the_faster_path_wins_after_the_samples(sparse_ms, dense_ms, verdict):
    clock = FakeClock()
    check = SpeedCheck(sparse_samples=3, dense_samples=2, skip_first=1, clock=clock)
    actions = run(check, "shape", clock, sparse_ms, dense_ms, calls=10)
    # one skipped sparse call (compilation), three timed, two timed dense, then the verdict for good
    assert actions[:6] == [SPARSE] * 4 + [TIME_DENSE] * 2
    assert actions[6:] == [verdict] * 4
    assert check.measured("shape") == pytest.approx((sparse_ms, dense_ms))
    assert check.decided() == {"shape": (verdict, pytest.approx(sparse_ms), pytest.approx(dense_ms))}


def test_discarded_calls_are_not_samples_and_shapes_are_apart():
    clock = FakeClock()
    check = SpeedCheck(sparse_samples=2, dense_samples=1, skip_first=1, clock=clock)
    # the first call builds its plan (discarded, so it is not even the skipped one): 1 + 1 + 2 sparse calls
    actions = run(check, "a", clock, 3.0, 9.0, calls=7, plan_built_first=True)
    assert actions == [SPARSE] * 4 + [TIME_DENSE] + [SPARSE] * 2
    assert check.measured("b") is None and check.action("b") == SPARSE
    check.reset()
    assert check.decided() == {} and check.action("a") == SPARSE


def test_margin_asks_sparse_to_win_clearly():
    clock = FakeClock()
    check = SpeedCheck(sparse_samples=1, dense_samples=1, skip_first=0, margin=0.9, clock=clock)
    assert run(check, "k", clock, 9.5, 10.0, calls=3)[-1] == DENSE  # 0.95 of dense: within the margin


def test_bad_arguments():
    with pytest.raises(ValueError, match="sparse_samples must be an int >= 1"):
        SpeedCheck(sparse_samples=0)
    with pytest.raises(ValueError, match="skip_first must be an int >= 0"):
        SpeedCheck(skip_first=-1)
    with pytest.raises(ValueError, match=r"margin must be in \(0, 2\]"):
        SpeedCheck(margin=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_events_are_read_without_waiting():
    """On CUDA the samples are events; the check keeps answering sparse until they have completed."""
    check = SpeedCheck(sparse_samples=1, dense_samples=1, skip_first=0)
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    with check.timing("k", SPARSE, a.device):
        for _ in range(20):
            a = a @ a / 64  # long enough to still be running at the next question
    assert check.action("k") in (SPARSE, TIME_DENSE)  # answered at once, finished or not: never a wait
    torch.cuda.synchronize()
    assert check.action("k") == TIME_DENSE
    with check.timing("k", DENSE, a.device):
        torch.cuda._sleep(1 << 22)
    torch.cuda.synchronize()
    verdict = check.action("k")
    sparse_ms, dense_ms = check.measured("k")
    assert sparse_ms > 0 and dense_ms > 0 and verdict == (SPARSE if sparse_ms < dense_ms else DENSE)
