"""Deployment: ONNX export of quantized models and onnxruntime sessions
(``onnx``/``onnxruntime`` are imported on first use)."""
from .onnx_export import ExportError, export_onnx
from .runtime import EXACT_DISABLED_OPTIMIZERS, ort_session

__all__ = [
    'export_onnx', 'ExportError', 'ort_session', 'EXACT_DISABLED_OPTIMIZERS'
]
