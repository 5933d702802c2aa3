"""An ETA for a sequence of steps whose costs differ.

Error-compensated PTQ runs one step per layer, and layers differ in cost
by more than tenfold (a 3x3 conv with 512 channels against a 1x1 conv
with 64).  A plain average of the seconds per step so far is then wrong
by as much.  :class:`CostEta` splits each step into phases (forward,
statistics, solver), gives every step of every phase a *work estimate*
known in advance, and predicts the remaining time per phase as
``measured seconds / done work * remaining work``.
"""
from typing import Dict, Mapping, Sequence

__all__ = ['CostEta']


class CostEta:
    """Predict the time left from per-phase work estimates.

    A phase whose work estimates are all zero so far falls back to the
    mean measured seconds per step of that phase.

    Args:
        work (Mapping[str, Sequence[float]]): ``{phase: estimates}``, one
            non-negative estimate per step, in any unit (e.g. ``rows *
            N**2`` for a statistics phase).

    Raises:
        ValueError: If the phases have different numbers of steps or an
            estimate is negative.
    """

    def __init__(self, work: Mapping[str, Sequence[float]]) -> None:
        lengths = {len(v) for v in work.values()}
        if len(lengths) > 1:
            raise ValueError('every phase needs one work estimate per '
                             f'step, got lengths {sorted(lengths)}')
        self.steps = lengths.pop() if lengths else 0
        self.work: Dict[str, list] = {}
        for phase, values in work.items():
            values = [float(v) for v in values]
            if any(v < 0 for v in values):
                raise ValueError(f'work estimates of {phase!r} must be '
                                 '>= 0')
            self.work[phase] = values
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
        for phase, values in self.work.items():
            done_work = sum(values[:self.done])
            left_work = sum(values[self.done:])
            if done_work > 0:
                total += self.spent[phase] / done_work * left_work
            else:
                total += self.spent[phase] / self.done * (
                    self.steps - self.done)
        return total
