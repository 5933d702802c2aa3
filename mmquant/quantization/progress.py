"""An ETA for a sequence of steps whose costs differ.

Error-compensated PTQ runs one step per layer, and layers differ in cost
by more than tenfold (a 3x3 conv with 512 channels against a 1x1 conv
with 64).  A plain average of the seconds per step so far is then wrong
by as much.  :class:`CostEta` splits each step into phases (forward,
statistics, solver), gives every step of every phase a *work estimate*
``u`` known in advance, and models a step's seconds in a phase as
``a + b * u``: a fixed overhead (Python, small kernels: it dominates the
smallest layers) plus a part proportional to the work.  ``a`` and ``b``
are fitted to the steps done (least squares, both kept >= 0); the
remaining time is the fitted cost of the remaining steps.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

__all__ = ['CostEta']


class CostEta:
    """Predict the time left from per-phase work estimates.

    Per phase, the seconds of a step are modelled as ``a + b * u`` (``u``
    its work estimate), fitted by least squares with ``a, b >= 0`` to the
    steps done.  While the steps done all have the same work estimate
    (e.g. after the first step), half of their mean time is taken as the
    overhead ``a`` and half as the work part.  A phase whose work
    estimates are all zero so far costs its mean seconds per step.

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
        self.work: Dict[str, List[float]] = {}
        for phase, values in work.items():
            values = [float(v) for v in values]
            if any(v < 0 for v in values):
                raise ValueError(f'work estimates of {phase!r} must be '
                                 '>= 0')
            self.work[phase] = values
        self.seconds: Dict[str, List[float]] = {p: [] for p in self.work}
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
        for phase in self.work:
            self.seconds[phase].append(float(seconds.get(phase, 0.0)))
        self.done += 1

    def fit(self, phase: str) -> Tuple[float, float]:
        """The fitted ``(a, b)`` of one phase (see the class docstring).

        Args:
            phase (str): A phase.

        Returns:
            tuple: Overhead per step and seconds per unit of work.
        """
        u = self.work[phase][:self.done]
        t = self.seconds[phase]
        n = len(t)
        if not n:
            return 0.0, 0.0
        mean_u, mean_t = sum(u) / n, sum(t) / n
        var_u = sum((x - mean_u)**2 for x in u)
        if mean_u == 0:
            return mean_t, 0.0
        if var_u <= 1e-12 * mean_u * mean_u:
            return mean_t / 2, mean_t / 2 / mean_u
        b = sum((x - mean_u) * (y - mean_t) for x, y in zip(u, t)) / var_u
        a = mean_t - b * mean_u
        if b < 0:
            return mean_t, 0.0
        if a < 0:  # through the origin
            return 0.0, sum(x * y for x, y in zip(u, t)) / sum(
                x * x for x in u)
        return a, b

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
            a, b = self.fit(phase)
            left = values[self.done:]
            total += a * len(left) + b * sum(left)
        return total
