"""BitSplit output-reconstruction solver on sufficient statistics.

For one output channel ``m`` with calibration inputs ``X`` (``K x N``) and
targets ``y`` (``K``), BitSplit minimises over a positive scale ``s`` and an
integer vector ``q`` on the ``k``-bit grid (written as ternary bit planes,
see :mod:`mmquant.core.grid`)::

    f(s, q) = ||y - s X q||^2 = yy - 2 s c^T q + s^2 q^T A q

with ``A = X^T X``, ``c = X^T y`` (a column of ``C = X^T Y``) and
``yy = ||y||^2``. The data enters only through ``(A, C, yy)``; ``X`` is never
needed again. The solver keeps ``h = A q`` (as ``h / diag(A)``), ``C^T q``
and ``q^T A q`` up to date incrementally, so that the objective and every
coordinate update are exact and cheap.

Algorithm (all channels and, in :func:`solve_layer`, all groups at once):

1. Initialise with MSE round-to-nearest (:mod:`mmquant.core.rtn`).
2. Repeat rounds of

   * the closed-form scale ``s = c^T q / q^T h`` (a negative optimum is
     absorbed by negating ``q``, which the symmetric grid allows; a
     degenerate ``q^T h <= 0`` keeps the previous scale), then
   * one ascending Gauss-Seidel pass over the coordinates ``n``. With
     ``a = A[n, n]`` the objective restricted to ``q[n]`` is
     ``a s^2 (q[n] - t)^2 + const`` with
     ``t = q[n] + (c[n] / s - h[n]) / a``, and ``q[n]`` moves to

     - the best integer ``clip(round(t), -qmax, qmax)`` (*integer* rounds,
       mmquant's default; the pass visits every coordinate), or
     - the best value reachable from ``q[n]`` by changing single bit
       planes of its canonical sign-magnitude split, re-split after every
       change (*canonical-plane* rounds, looked up in a small precomputed
       table; the pass visits the coordinates that can improve at the
       start of the round; not the paper's update). Every single
       bit-plane change is an integer change, so an integer move is never
       worse than the plane move.

   until no channel improves (or ``max_rounds``).

The ``schedule`` picks the rounds (see :data:`SCHEDULES`): ``'integer'``
(default), ``'canonical-planes'``, ``'canonical-planes+integer'``
(canonical-plane rounds until nothing changes, then integer rounds), or
``'paper'``: the authors' update (``ofwa_rr`` of their code). It keeps the
``k - 1`` ternary planes as independent arrays (initialised by the
canonical split; splits such as ``1 = 2 - 1`` arise and stay) and runs
``max_rounds`` rounds of: the closed-form scale, then for each plane from
the most significant a Gauss-Seidel pass over all inputs in order, each
bit set to its best value in ``{-1, 0, +1}`` given everything else (an
exact tie takes the non-zero value, as their code does). Its result
equals the authors' from the same start except in degenerate cases: an
input that is always zero keeps its initial integer (their code zeroes
its bits; the objective is the same), a negative optimal scale is
absorbed by negating the planes, and ``q^T A q = 0`` keeps the previous
scale. A result of integer rounds is optimal with respect to every
single-plane change, every single-integer change and the scale.

Every step is an exact minimisation, so the objective never increases.
See ``docs/solver.md`` for the complexity and the degenerate-case policy.

Three modules, one job each:

* :mod:`~mmquant.core.solver.api`: the public entry points
  (:func:`bitsplit_solve`, :func:`solve_layer`, :func:`objective`,
  :data:`SCHEDULES`) and the checks of their inputs;
* :mod:`~mmquant.core.solver.rounds`: the batched round machinery (the
  state of all channels and groups, the rounds and phases of a schedule,
  the shrinking working set);
* :mod:`~mmquant.core.solver.sweep`: the hot loop, one Gauss-Seidel pass
  over the coordinates, compiled by TorchScript.

Below the API one name, ``update`` (one of
:data:`~mmquant.core.solver.sweep.UPDATES`: ``'integer'``,
``'canonical-planes'``, ``'paper'``), says which coordinate update a phase,
a round and a pass make; a schedule is a sequence of them.
"""
from .api import (SCHEDULES, SolverResult, bitsplit_solve, check_schedule,
                  objective, solve_layer)

__all__ = [
    'SCHEDULES', 'SolverResult', 'bitsplit_solve', 'check_schedule',
    'objective', 'solve_layer'
]
