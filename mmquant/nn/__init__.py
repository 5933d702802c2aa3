"""Quantized modules (pure torch)."""
from .quantized_layer import QuantizedLayer

__all__ = ['QuantizedLayer']
