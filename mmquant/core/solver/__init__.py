"""BitSplit output-reconstruction solver on sufficient statistics (see
:mod:`mmquant.core.solver.api`)."""
from .api import (SCHEDULES, SolverResult, bitsplit_solve, check_schedule,
                  objective, solve_layer)

__all__ = [
    'SCHEDULES', 'SolverResult', 'bitsplit_solve', 'check_schedule',
    'objective', 'solve_layer'
]
