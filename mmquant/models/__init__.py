"""Quantized model wrappers for OpenMMLab runners."""
from .quantized_model import QuantizedModel

__all__ = ['QuantizedModel']
