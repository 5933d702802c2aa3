"""Quantized modules (pure torch)."""
from .module_utils import inside_quantized, set_submodule
from .quantized_layer import QuantizedLayer

__all__ = ['QuantizedLayer', 'inside_quantized', 'set_submodule']
