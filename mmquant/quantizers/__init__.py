"""Registered quantizers (typed configs over the core solver)."""
from .base import BaseQuantizer, PTQQuantizer, quantizer_for
from .bitsplit import BitSplitQuantizer
from .rtn import RTNQuantizer

__all__ = [
    'BaseQuantizer', 'PTQQuantizer', 'BitSplitQuantizer', 'RTNQuantizer',
    'quantizer_for'
]
