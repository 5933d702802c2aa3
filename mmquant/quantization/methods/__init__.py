"""Weight methods: one object per way of choosing a layer's integers.

Importing this package registers the built-in methods in
:data:`WEIGHT_METHODS`: ``'bitsplit'`` (:class:`BitSplitMethod`) and
``'rtn'`` (:class:`RTNMethod`).
"""
from .base import (WEIGHT_METHODS, LayerJob, LayerResult, WeightMethod,
                   build_weight_method, foreign_options,
                   register_weight_method)
from .bitsplit import BitSplitMethod, damp, relative_error
from .rtn import RTNMethod

__all__ = [
    'WEIGHT_METHODS', 'LayerJob', 'LayerResult', 'WeightMethod',
    'build_weight_method', 'foreign_options', 'register_weight_method',
    'BitSplitMethod', 'RTNMethod', 'damp', 'relative_error'
]
