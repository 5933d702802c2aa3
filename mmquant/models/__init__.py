"""Quantized model wrappers for OpenMMLab runners."""
