"""Deployment: ONNX export of quantized models (``onnx`` loaded lazily)."""
from .onnx_export import ExportError, export_onnx

__all__ = ['export_onnx', 'ExportError']
