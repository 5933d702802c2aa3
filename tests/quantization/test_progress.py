"""The cost-weighted ETA of the error-compensated log line."""
import pytest

from mmquant.quantization.progress import CostEta

# a synthetic run: six layers whose costs differ tenfold and more; each
# phase costs rate * work ** alpha
WORK = dict(forward=[1.0, 2.0, 20.0, 2.0, 1.0, 10.0],
            statistics=[4e8, 8e8, 4e9, 1e9, 2e8, 8e9],
            solver=[1e4, 2e6, 3e7, 2e6, 1e4, 6e8])
RATE = dict(forward=0.25, statistics=1e-2, solver=2e-3)
ALPHA = dict(forward=1.0, statistics=0.25, solver=0.5)


def _seconds(k):
    return {p: RATE[p] * WORK[p][k]**ALPHA[p] for p in WORK}


def test_eta_holds_on_tenfold_cost_differences():
    eta = CostEta(WORK, ALPHA)
    assert eta.eta() == 0.0  # nothing measured yet
    total = [sum(_seconds(k).values()) for k in range(6)]
    assert max(total) > 10 * min(total)
    for k in range(6):
        eta.update(_seconds(k))
        assert eta.eta() == pytest.approx(sum(total[k + 1:]), rel=1e-12,
                                          abs=1e-12)
    assert eta.eta() == 0.0
    # the plain average of the seconds per step (the ETA before) is far
    # off after the first two steps
    plain = sum(total[:2]) / 2 * 4
    assert plain < 0.6 * sum(total[2:])


def test_default_exponent_is_proportional_and_zero_is_the_mean():
    eta = CostEta(dict(a=[1, 3, 6]))
    eta.update(dict(a=2.0))
    assert eta.eta() == pytest.approx(2.0 * 9)
    eta = CostEta(dict(a=[1, 3, 6]), dict(a=0.0))
    eta.update(dict(a=2.0))
    assert eta.eta() == pytest.approx(2.0 * 2)


def test_phase_without_work_uses_mean_per_step():
    eta = CostEta(dict(forward=[0, 0, 5, 5]))
    eta.update(dict(forward=2.0))
    eta.update(dict())  # a missing phase took no time
    assert eta.eta() == pytest.approx(2 * 1.0)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r'one work estimate per step, '
                       r'got lengths \[1, 2\]'):
        CostEta(dict(a=[1], b=[1, 2]))
    with pytest.raises(ValueError, match="work estimates of 'a' must be"):
        CostEta(dict(a=[1, -1]))
    with pytest.raises(ValueError, match=r"exponent of 'a' must be in "
                       r'\[0, 1\], got 1.5'):
        CostEta(dict(a=[1]), dict(a=1.5))
    with pytest.raises(ValueError, match=r"unknown phase\(s\) \['b'\]"):
        CostEta(dict(a=[1]), dict(b=0.5))
    eta = CostEta(dict(a=[1]))
    with pytest.raises(ValueError, match=r"unknown phase\(s\) \['b'\]"):
        eta.update(dict(b=1.0))
    eta.update(dict(a=1.0))
    with pytest.raises(ValueError, match='all 1 steps already recorded'):
        eta.update(dict(a=1.0))
