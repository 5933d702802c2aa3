"""Run exported graphs with onnxruntime (imported on first use)."""
from typing import Any, Optional

__all__ = ['ort_session', 'EXACT_DISABLED_OPTIMIZERS']

#: onnxruntime (>= 1.20) graph transformers that change what a QDQ graph
#: computes: ``WeightBiasQuantization`` rounds the float bias of a
#: Conv/Gemm whose input and weight come from ``DequantizeLinear`` to an
#: ``int32`` grid of step ``input_scale * weight_scale`` (an error of up
#: to half that step per output).
EXACT_DISABLED_OPTIMIZERS = ('WeightBiasQuantization', )


def ort_session(model: Any,
                exact: bool = True,
                num_threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for an exported graph.

    Args:
        model (str | bytes | onnx.ModelProto): The ``.onnx`` path, its
            bytes or the graph.
        exact (bool): Disable :data:`EXACT_DISABLED_OPTIMIZERS`, so that
            the session computes what ``QuantizedModel`` computes (up to
            the order of float additions). ``False`` keeps every
            onnxruntime default. Defaults to True.
        num_threads (int, optional): Intra-op threads (``None``:
            onnxruntime's default).

    Returns:
        onnxruntime.InferenceSession: The session.
    """
    import onnxruntime as ort
    if hasattr(model, 'SerializeToString'):
        model = model.SerializeToString()
    opts = ort.SessionOptions()
    if num_threads is not None:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    disabled = list(EXACT_DISABLED_OPTIMIZERS) if exact else None
    return ort.InferenceSession(model, opts,
                                providers=['CPUExecutionProvider'],
                                disabled_optimizers=disabled)
