"""The cost-weighted ETA of the error-compensated log line."""
import pytest

from mmquant.quantization.progress import CostEta

# a synthetic run: six layers whose costs differ tenfold and more, each
# phase proportional to its own work estimate
WORK = dict(forward=[1.0, 2.0, 20.0, 2.0, 1.0, 10.0],
            statistics=[4e8, 4e8, 4e9, 1e9, 2e8, 8e9],
            solver=[1e6, 1e6, 3e7, 2e6, 1e6, 6e7])
RATE = dict(forward=0.25, statistics=1e-9, solver=2e-7)


def _seconds(k):
    return {p: RATE[p] * WORK[p][k] for p in WORK}


def test_eta_holds_on_tenfold_cost_differences():
    eta = CostEta(WORK)
    assert eta.eta() == 0.0  # nothing measured yet
    total = [sum(_seconds(k).values()) for k in range(6)]
    for k in range(6):
        eta.update(_seconds(k))
        assert eta.eta() == pytest.approx(sum(total[k + 1:]), rel=1e-12)
    assert eta.eta() == 0.0
    # the plain average of the seconds per step is far off after step 1
    plain = total[0] * 5
    assert plain < 0.15 * sum(total[1:])


def test_phase_without_estimates_uses_mean_per_step():
    eta = CostEta(dict(forward=[0, 0, 0, 0], solver=[1, 1, 4, 4]))
    eta.update(dict(forward=2.0, solver=1.0))
    # forward: 2 s per step for 3 steps; solver: 1 s per unit for 9 units
    assert eta.eta() == pytest.approx(3 * 2.0 + 9 * 1.0)
    eta.update(dict(solver=1.0))  # a missing phase took no time
    assert eta.eta() == pytest.approx(2 * 1.0 + 8 * 1.0)


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
