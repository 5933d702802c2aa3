"""Run exported graphs with onnxruntime (imported on first use)."""
from typing import Any, Optional

__all__ = ['ort_session', 'EXACT_DISABLED_OPTIMIZERS', 'MODES']

#: onnxruntime graph transformers (1.23.2) that change what a QDQ graph
#: computes: ``WeightBiasQuantization`` rounds the float bias of a
#: Conv/Gemm whose input and weight come from ``DequantizeLinear`` to an
#: ``int32`` grid of step ``input_scale * weight_scale`` (an error of up
#: to half that step per output).
EXACT_DISABLED_OPTIMIZERS = ('WeightBiasQuantization', )

#: Session modes of :func:`ort_session`.
MODES = ('exact', 'ort-defaults', 'folded')


def ort_session(model: Any,
                mode: str = 'exact',
                num_threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for an exported graph.

    Args:
        model (str | bytes | onnx.ModelProto): The ``.onnx`` path, its
            bytes or the graph.
        mode (str): ``'exact'`` (default): every onnxruntime optimization
            but :data:`EXACT_DISABLED_OPTIMIZERS`, so that the session
            computes what ``QuantizedModel`` computes (up to the order of
            float additions). ``'ort-defaults'``: onnxruntime's defaults.
            ``'folded'``: onnxruntime's ``session.disable_quant_qdq``: the
            weight ``DequantizeLinear`` nodes are folded into float
            weights when the session loads, which lets onnxruntime fold
            BatchNorm into the convs and use its blocked (NCHWc) conv
            kernels; the activations keep their Q/DQ. Faster, and
            mathematically the same; the BatchNorm folding changes the
            float rounding.
        num_threads (int, optional): Intra-op threads (``None``:
            onnxruntime's default).

    Returns:
        onnxruntime.InferenceSession: The session.

    Raises:
        ValueError: On an unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    import onnxruntime as ort
    if hasattr(model, 'SerializeToString'):
        model = model.SerializeToString()
    opts = ort.SessionOptions()
    if num_threads is not None:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    disabled = None
    if mode == 'exact':
        disabled = list(EXACT_DISABLED_OPTIMIZERS)
    elif mode == 'folded':
        opts.add_session_config_entry('session.disable_quant_qdq', '1')
    return ort.InferenceSession(model, opts,
                                providers=['CPUExecutionProvider'],
                                disabled_optimizers=disabled)
