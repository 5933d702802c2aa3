"""An ETA for a sequence of steps whose costs differ.

Error-compensated PTQ runs one step per layer, and layers differ in cost
by more than tenfold (the solver of a 3x3 conv with 512 channels against
that of a 1x1 conv with 64).  A plain average of the seconds per step so
far is then wrong by as much: the first layers are the cheapest.
:class:`CostEta` splits each step into phases (forward, statistics,
solver), gives every step of every phase a *work estimate* ``u`` known in
advance, and models a step's seconds in a phase as ``rate * u ** alpha``
with a fixed exponent ``alpha`` per phase (``alpha < 1``: fixed overheads
make small steps cost more than their share of the arithmetic).  Only the
rate is fitted, as the ratio of the seconds to the ``u ** alpha`` of the
steps done, so a few cheap first steps cannot make it explode.
"""
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ['CostEta']


class CostEta:
    """Predict the time left from per-phase work estimates.

    A phase whose steps done all have zero work costs its mean seconds per
    step.

    Args:
        work (Mapping[str, Sequence[float]]): ``{phase: estimates}``, one
            non-negative estimate per step, in any unit (e.g. ``M * N**2``
            for a solver phase).
        exponents (Mapping[str, float], optional): ``{phase: alpha}``,
            each in ``[0, 1]``; a phase not named gets 1 (cost
            proportional to the work).  0 makes every step of the phase
            cost the same (the plain average).

    Raises:
        ValueError: If the phases have different numbers of steps, an
            estimate is negative, or an exponent is outside ``[0, 1]`` or
            names an unknown phase.
    """

    def __init__(self, work: Mapping[str, Sequence[float]],
                 exponents: Optional[Mapping[str, float]] = None) -> None:
        lengths = {len(v) for v in work.values()}
        if len(lengths) > 1:
            raise ValueError('every phase needs one work estimate per '
                             f'step, got lengths {sorted(lengths)}')
        self.steps = lengths.pop() if lengths else 0
        exponents = dict(exponents or {})
        unknown = sorted(set(exponents) - set(work))
        if unknown:
            raise ValueError(f'exponents for unknown phase(s) {unknown}')
        self.work: Dict[str, List[float]] = {}
        for phase, values in work.items():
            values = [float(v) for v in values]
            if any(v < 0 for v in values):
                raise ValueError(f'work estimates of {phase!r} must be '
                                 '>= 0')
            alpha = float(exponents.get(phase, 1.0))
            if not 0 <= alpha <= 1:
                raise ValueError(f'the exponent of {phase!r} must be in '
                                 f'[0, 1], got {alpha}')
            self.work[phase] = [v**alpha if v > 0 else 0.0 for v in values]
        self.spent = {phase: 0.0 for phase in self.work}
        self.done = 0

    def update(self, seconds: Mapping[str, float]) -> None:
        """Record the measured seconds of the next step.

        Args:
            seconds (Mapping[str, float]): ``{phase: seconds}``; a missing
                phase took no time.

        Raises:
            ValueError: If all steps are already recorded or ``seconds``
                names an unknown phase.
        """
        if self.done >= self.steps:
            raise ValueError(f'all {self.steps} steps already recorded')
        unknown = sorted(set(seconds) - set(self.work))
        if unknown:
            raise ValueError(f'unknown phase(s) {unknown}; phases: '
                             f'{sorted(self.work)}')
        for phase, value in seconds.items():
            self.spent[phase] += float(value)
        self.done += 1

    def eta(self) -> float:
        """Seconds predicted for the steps not recorded yet.

        Returns:
            float: The prediction (0 when every step is done, and before
            the first step, when nothing is measured).
        """
        if not self.done:
            return 0.0
        total = 0.0
        for phase, cost in self.work.items():
            done = sum(cost[:self.done])
            if done > 0:
                total += self.spent[phase] / done * sum(cost[self.done:])
            else:
                total += self.spent[phase] / self.done * (
                    self.steps - self.done)
        return total
