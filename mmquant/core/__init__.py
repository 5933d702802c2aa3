"""Pure-torch BitSplit core: grids, bit planes, RTN, statistics, solver.

Nothing here depends on OpenMMLab; every module imports only torch and the
standard library.
"""
from .activation import (ActivationObserver, activation_grid,
                         fake_quantize_activation, fit_activation_scale)
from .grid import (check_bits, dequantize, fake_quantize_weight,
                   plane_weights, qmax, split_planes, stitch_planes)
from .rtn import mse_rtn
from .solver import (SCHEDULES, SolverResult, bitsplit_solve,
                     check_schedule, objective, solve_layer)
from .stats import (LayerGeometry, StatsAccumulator, StatsMemoryError,
                    estimate_stats_bytes)

__all__ = [
    'ActivationObserver', 'activation_grid', 'fake_quantize_activation',
    'fit_activation_scale', 'check_bits', 'dequantize',
    'fake_quantize_weight', 'plane_weights', 'qmax', 'split_planes',
    'stitch_planes', 'mse_rtn', 'SCHEDULES', 'SolverResult',
    'bitsplit_solve', 'check_schedule', 'objective', 'solve_layer',
    'LayerGeometry', 'StatsAccumulator', 'StatsMemoryError',
    'estimate_stats_bytes'
]
