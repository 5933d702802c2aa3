"""Helpers shared by the tests and the analysis tools.

Importable from the installed package (tools do not import each other):
generated solver problems (:mod:`.solver_problems`) and the direct port of
the paper's solver (:mod:`.reference`). Nothing here runs at import.
"""
from .reference import direct_port, synchronize
from .solver_problems import (make_layer_problem, make_problem, relu_rows,
                              statistics_f64)

__all__ = [
    'direct_port', 'synchronize', 'make_layer_problem', 'make_problem',
    'relu_rows', 'statistics_f64'
]
