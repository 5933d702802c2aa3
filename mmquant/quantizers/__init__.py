"""Registered quantizers (typed configs over the core solver)."""
from .base import BaseQuantizer
from .bitsplit import BitSplitQuantizer
from .rtn import RTNQuantizer

__all__ = ['BaseQuantizer', 'BitSplitQuantizer', 'RTNQuantizer']
