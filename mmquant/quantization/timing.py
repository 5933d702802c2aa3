"""One clock for a run's phases.

:class:`PhaseTimer` books wall time to named phases (``forward``,
``statistics``, ``solver``, ...). Phases nest exclusively: while an inner
phase runs (a statistics hook inside a forward pass), the outer one's
clock stops, so the forward time is the model's own time, without the
hooks'.
"""
import contextlib
import time
from typing import Dict, Iterator, List, Sequence


class PhaseTimer:
    """Seconds per phase, with exclusive nesting.

    Args:
        phases (Sequence[str]): The phases reported even if never entered.
    """

    def __init__(self, phases: Sequence[str]) -> None:
        self.seconds: Dict[str, float] = {name: 0.0 for name in phases}
        self._stack: List[list] = []  # [phase, start of its open stretch]

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Book the block's time to ``phase`` (less nested phases').

        Args:
            phase (str): The phase's name.
        """
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self._book(outer[0], now - outer[1])
        self._stack.append([phase, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            name, start = self._stack.pop()
            self._book(name, now - start)
            if self._stack:
                self._stack[-1][1] = now

    def _book(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def clock(self, *excluding: str) -> float:
        """A clock (seconds) that stands still during ``excluding`` phases.

        Differences of two readings give the time spent outside those
        phases (booked up to the last phase boundary).

        Args:
            *excluding (str): Phases whose time is left out.

        Returns:
            float: ``perf_counter()`` less the time booked to them.
        """
        return time.perf_counter() - sum(
            self.seconds.get(name, 0.0) for name in excluding)

    def total(self, *phases: str) -> float:
        """The seconds booked so far to ``phases``, summed.

        Args:
            *phases (str): Phase names.

        Returns:
            float: Their booked seconds.
        """
        return sum(self.seconds.get(name, 0.0) for name in phases)
