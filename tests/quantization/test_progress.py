"""The cost-weighted ETA of the error-compensated log line."""
import pytest

from mmquant.quantization.progress import CostEta

# a synthetic run: six layers whose costs differ tenfold and more; each
# phase costs a fixed overhead plus a part proportional to its own work
# estimate
WORK = dict(forward=[1.0, 2.0, 20.0, 2.0, 1.0, 10.0],
            statistics=[4e8, 8e8, 4e9, 1e9, 2e8, 8e9],
            solver=[1e6, 2e6, 3e7, 2e6, 1e6, 6e7])
RATE = dict(forward=0.25, statistics=1e-9, solver=2e-7)
OVERHEAD = dict(forward=0.0, statistics=0.05, solver=0.3)


def _seconds(k):
    return {p: OVERHEAD[p] + RATE[p] * WORK[p][k] for p in WORK}


def test_eta_holds_on_tenfold_cost_differences():
    eta = CostEta(WORK)
    assert eta.eta() == 0.0  # nothing measured yet
    total = [sum(_seconds(k).values()) for k in range(6)]
    eta.update(_seconds(0))
    # one step: half of each phase's time taken as overhead
    first = sum(s / 2 * 5 + s / 2 / WORK[p][0] * sum(WORK[p][1:])
                for p, s in _seconds(0).items())
    assert eta.eta() == pytest.approx(first, rel=1e-12)
    for k in range(1, 6):
        eta.update(_seconds(k))
        # two distinct work estimates per phase pin a and b down
        assert eta.eta() == pytest.approx(sum(total[k + 1:]), rel=1e-9,
                                          abs=1e-12)
        for p in WORK:
            assert eta.fit(p) == pytest.approx((OVERHEAD[p], RATE[p]),
                                               abs=1e-12, rel=1e-9)
    assert eta.eta() == 0.0
    # the plain average of the seconds per step (today's ETA) is far off
    # after step 2
    plain = sum(total[:2]) / 2 * 4
    assert plain < 0.2 * sum(total[2:])


def test_fit_keeps_overhead_and_rate_non_negative():
    # time falls as work grows (noise): no negative rate, the mean
    eta = CostEta(dict(solver=[1, 2, 3]))
    eta.update(dict(solver=3.0))
    eta.update(dict(solver=1.0))
    assert eta.fit('solver') == (2.0, 0.0)
    assert eta.eta() == 2.0
    # a line through the points would need a negative overhead: fitted
    # through the origin instead
    eta = CostEta(dict(solver=[1, 2, 4]))
    eta.update(dict(solver=1.0))
    eta.update(dict(solver=3.0))
    a, b = eta.fit('solver')
    assert a == 0.0 and b == pytest.approx(7 / 5)
    assert eta.eta() == pytest.approx(4 * 7 / 5)


def test_phase_without_estimates_uses_mean_per_step():
    eta = CostEta(dict(forward=[0, 0, 0, 0]))
    eta.update(dict(forward=2.0))
    eta.update(dict())  # a missing phase took no time
    assert eta.eta() == pytest.approx(2 * 1.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r'one work estimate per step, '
                       r'got lengths \[1, 2\]'):
        CostEta(dict(a=[1], b=[1, 2]))
    with pytest.raises(ValueError, match="work estimates of 'a' must be"):
        CostEta(dict(a=[1, -1]))
    eta = CostEta(dict(a=[1]))
    with pytest.raises(ValueError, match=r"unknown phase\(s\) \['b'\]"):
        eta.update(dict(b=1.0))
    eta.update(dict(a=1.0))
    with pytest.raises(ValueError, match='all 1 steps already recorded'):
        eta.update(dict(a=1.0))
