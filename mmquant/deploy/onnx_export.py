"""Export a quantized model to a standard ONNX QDQ graph.

The model is traced by torch's TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``) on a copy in which every
:class:`~mmquant.nn.QuantizedLayer` marks its input and its weight with
two placeholder nodes of the ``mmquant`` domain (``ActQuant``,
``WeightQuant``); the graph is then rewritten with the ``onnx`` helper
API:

* ``WeightQuant(w)`` becomes ``DequantizeLinear(q, scale, 0, axis)``
  over an integer initializer ``q`` (``INT8`` for W5-W8, ``INT4`` for
  W2-W4) with the layer's per-output-channel ``float32`` scales (axis 0;
  axis 1 for a ``ConvTranspose2d``); the float weight is dropped;
* ``ActQuant(x)`` becomes ``QuantizeLinear`` -> ``DequantizeLinear`` with
  the calibrated per-tensor scale and zero point 0 (``UINT8`` for the
  unsigned grid, ``INT8`` for the signed one), preceded by ``Max``/``Min``
  with ``lo * s``/``hi * s`` where mmquant's grid is narrower than the
  ONNX type (the narrow signed grid, and every grid below 8 bits);
* everything else (float layers, BatchNorm, activations, pooling, heads)
  is exported as torch exports it.

``QuantizeLinear`` computes ``saturate(round_half_even(x / s))``, exactly
what :func:`~mmquant.core.activation.fake_quantize_activation` computes
with ``torch.round`` (also half to even), so the graph computes what
``QuantizedLayer`` computes; only the order of float additions in the
convs differs (run it with :func:`mmquant.deploy.ort_session`: by
default onnxruntime also rounds conv biases to an int32 grid). The graph
is opset 21 (the first with ``INT4``) and passes
``onnx.checker.check_model(full_check=True)``; its initializers are named
as in the model's state dict.

``onnx`` is imported on first use, never at import time.
"""
import os
import os.path as osp
from typing import (Any, Dict, Iterable, List, Optional, Sequence, Tuple,
                    Union)

import torch
from torch import Tensor, nn

from mmquant.core.activation import activation_grid

__all__ = ['export_onnx', 'OPSET', 'INT4_MAX_BITS', 'ExportError']

#: The ONNX opset of exported graphs (the first with INT4 tensors).
OPSET = 21
#: Weights of at most this many bits are stored as ``INT4``.
INT4_MAX_BITS = 4
#: The opset torch's TorchScript exporter traces at (then converted).
_TRACE_OPSET = 20
_DOMAIN = 'mmquant'


class ExportError(ValueError):
    """A model or input that :func:`export_onnx` cannot export."""


class _ActQuant(torch.autograd.Function):
    """:func:`fake_quantize_activation` in torch; the
    ``mmquant::ActQuant`` placeholder in the traced graph."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, key: str, scale: float, bits: int,
                signed: bool) -> Tensor:
        from mmquant.core.activation import fake_quantize_activation
        return fake_quantize_activation(x, scale, bits, signed)

    @staticmethod
    def symbolic(g: Any, x: Any, key: str, scale: float, bits: int,
                 signed: bool) -> Any:
        out = g.op(f'{_DOMAIN}::ActQuant', x, key_s=key)
        out.setType(x.type())
        return out


class _WeightQuant(torch.autograd.Function):
    """Identity in torch; the ``mmquant::WeightQuant`` placeholder."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, key: str) -> Tensor:
        return w.clone()

    @staticmethod
    def symbolic(g: Any, w: Any, key: str) -> Any:
        out = g.op(f'{_DOMAIN}::WeightQuant', w, key_s=key)
        out.setType(w.type())
        return out


class _ExportLayer(nn.Module):
    """Stand-in for a ``QuantizedLayer`` while the model is traced.

    It computes what the ``QuantizedLayer`` computes (the wrapped layer's
    own ``forward`` on the fake-quantized input, with the dequantized
    weight) and marks the input and the weight for the rewrite.

    Args:
        qlayer (nn.Module): The ``QuantizedLayer``.
        key (str): Its name in the model.
    """

    def __init__(self, qlayer: nn.Module, key: str) -> None:
        super().__init__()
        # the wrapped layer keeps its state-dict path (``<key>.layer.*``),
        # so the graph's float initializers (biases) are named as in the
        # INT checkpoint; the QuantizedLayer itself is held outside the
        # module tree
        self.layer = qlayer.layer
        self._qlayer = (qlayer, )
        self.key = key

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        q = self._qlayer[0]
        if q.a_bits is not None:
            x = _ActQuant.apply(x, self.key, float(q.act_scale), q.a_bits,
                                q.act_signed)
        inner = self.layer
        weight = inner.weight
        inner.weight = _WeightQuant.apply(weight, self.key)
        try:
            return inner(x, *args, **kwargs)
        finally:
            inner.weight = weight


class _Normalize(nn.Module):
    """A data preprocessor's channel flip and ``(x - mean) / std``.

    Args:
        model (nn.Module): The model to run after normalizing.
        mean (Tensor, optional): ``(1, C, 1, 1)`` means.
        std (Tensor, optional): ``(1, C, 1, 1)`` standard deviations.
        flip (bool): Reverse the channel order first (BGR <-> RGB).
    """

    def __init__(self, model: nn.Module, mean: Optional[Tensor],
                 std: Optional[Tensor], flip: bool) -> None:
        super().__init__()
        self.model = model
        self.flip = flip
        self.register_buffer('mean', mean)
        self.register_buffer('std', std)

    def forward(self, x: Tensor) -> Any:
        if self.flip and x.size(1) == 3:
            x = x.flip(1)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.model(x)


class _TensorMode(nn.Module):
    """``model(inputs, None, 'tensor')`` of an mmengine ``BaseModel``.

    Args:
        model (nn.Module): An mmpretrain classifier, an mmdet detector or
            an ``mmquant.QuantizedModel``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model(x, None, 'tensor')


def _quantized_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    from mmquant.nn import QuantizedLayer
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, QuantizedLayer)]


def _weight_axis(name: str, qlayer: nn.Module) -> int:
    """The DequantizeLinear axis of a layer's output channels.

    Raises:
        ExportError: For a layer the QDQ graph cannot express.
    """
    inner = qlayer.layer
    if isinstance(inner, nn.MultiheadAttention):
        raise ExportError(
            f'layer {name!r}: a quantized nn.MultiheadAttention cannot be '
            'exported to ONNX (torch exports it as one fused op whose '
            'in_proj weight cannot take a DequantizeLinear); quantize '
            'the model without it (QuantConfig skip) to export it')
    if qlayer.compute_dtype != torch.float32:
        raise ExportError(
            f'layer {name!r} computes in {qlayer.compute_dtype}; ONNX '
            'export supports float32 models only (call model.float())')
    if isinstance(inner, nn.ConvTranspose2d):
        if inner.groups != 1:
            raise ExportError(
                f'layer {name!r}: a grouped nn.ConvTranspose2d (groups='
                f'{inner.groups}) has per-channel scales that no single '
                'DequantizeLinear axis holds; not supported')
        return 1
    return 0


def _wrap_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Replace every ``QuantizedLayer`` by an ``_ExportLayer``, in place.

    Returns:
        dict: ``{name: QuantizedLayer}``.
    """
    layers = dict(_quantized_layers(model))
    for name, qlayer in layers.items():
        _weight_axis(name, qlayer)
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _ExportLayer(qlayer, name))
    return layers


def _as_tuple(example_inputs: Union[Tensor, Sequence[Tensor]]
              ) -> Tuple[Tensor, ...]:
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs, )
    inputs = tuple(example_inputs)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise ExportError('example_inputs must be a tensor or a sequence '
                          'of tensors')
    for t in inputs:
        if t.dtype != torch.float32:
            raise ExportError(f'example inputs must be float32, got '
                              f'{t.dtype}')
    return tuple(t.detach().cpu() for t in inputs)


def _flatten_tensors(outputs: Any) -> List[Tensor]:
    """The tensors of nested tuples/lists/dicts, in export order.

    Raises:
        ExportError: For anything else in ``outputs``.
    """
    flat: List[Tensor] = []

    def walk(o: Any) -> None:
        if isinstance(o, Tensor):
            flat.append(o)
        elif isinstance(o, (list, tuple)):
            for item in o:
                walk(item)
        elif isinstance(o, dict):
            for item in o.values():
                walk(item)
        else:
            raise ExportError('the model returns a '
                              f'{type(o).__name__}; ONNX export needs '
                              'tensors (nested in tuples/lists/dicts)')

    walk(outputs)
    return flat


def _output_names(outputs: Any) -> List[str]:
    """``output`` for one tensor, else ``output_<i>`` per flattened one."""
    flat = _flatten_tensors(outputs)
    if len(flat) == 1:
        return ['output']
    return [f'output_{i}' for i in range(len(flat))]


def _trace(model: nn.Module, inputs: Tuple[Tensor, ...],
           input_names: List[str], dynamic_batch: bool,
           quantized: bool) -> Any:
    """Run torch's TorchScript exporter; returns the ``ModelProto``."""
    import io
    import warnings

    import onnx
    try:
        with torch.no_grad():
            outputs = model(*inputs)
    except (RuntimeError, ValueError, IndexError) as err:
        shapes = ', '.join(str(tuple(t.shape)) for t in inputs)
        raise ExportError(f'the model does not run on example inputs of '
                          f'shape {shapes}: {err}') from err
    output_names = _output_names(outputs)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {n: {0: 'batch'} for n in input_names + output_names}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            model,
            inputs,
            buf,
            dynamo=False,
            opset_version=_TRACE_OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            custom_opsets={_DOMAIN: 1} if quantized else None,
            do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _int_tensor(name: str, values: Tensor, bits: int) -> Any:
    """An ``INT4`` (``bits <= 4``) or ``INT8`` initializer."""
    import numpy as np
    from onnx import numpy_helper
    arr = values.detach().cpu().to(torch.int8).numpy()
    if bits <= INT4_MAX_BITS:
        import ml_dtypes
        arr = arr.astype(ml_dtypes.int4)
    else:
        arr = arr.astype(np.int8)
    return numpy_helper.from_array(arr, name)


def _weight_nodes(key: str, tag: str, qlayer: nn.Module, out: str,
                  axis: int, int4: bool) -> Tuple[list, list]:
    """``DequantizeLinear`` of one layer's integers; (nodes, inits).

    Initializers are named after the layer (``key``), nodes after the
    call (``tag``: ``key``, then ``key.1`` ... for a layer that runs
    several times, as a detector head's convs do once per level).
    """
    from onnx import helper, numpy_helper
    bits = qlayer.w_bits if int4 else max(qlayer.w_bits, INT4_MAX_BITS + 1)
    q = qlayer.qweight
    scale = qlayer.weight_scale.detach().cpu().to(torch.float32)
    inits = [
        _int_tensor(f'{key}.qweight', q, bits),
        numpy_helper.from_array(scale.numpy(), f'{key}.weight_scale'),
        _int_tensor(f'{key}.weight_zero_point',
                    torch.zeros(scale.numel(), dtype=torch.int8), bits)
    ]
    node = helper.make_node(
        'DequantizeLinear', [i.name for i in inits], [out],
        name=f'{tag}.weight_dq', axis=axis)
    return [node], inits


def _act_nodes(key: str, tag: str, qlayer: nn.Module, inp: str,
               out: str) -> Tuple[list, list]:
    """``[Max -> Min ->] QuantizeLinear -> DequantizeLinear``."""
    import numpy as np
    from onnx import helper, numpy_helper
    lo, hi = activation_grid(qlayer.a_bits, qlayer.act_signed)
    dtype = np.int8 if qlayer.act_signed else np.uint8
    info = np.iinfo(dtype)
    scale = np.float32(qlayer.act_scale.item())
    inits = [
        numpy_helper.from_array(np.array(scale), f'{key}.act_scale'),
        numpy_helper.from_array(np.array(0, dtype), f'{key}.act_zero_point')
    ]
    nodes = []
    # QuantizeLinear saturates to the type's range; mmquant's grid may be
    # narrower (narrow signed, < 8 bits): Max/Min to lo * s, hi * s first,
    # only the bounds that differ from the type's (fl(lo * s) / s rounds
    # to lo: the error is far below 0.5).
    for op, bound, edge in (('Max', lo, int(info.min)),
                            ('Min', hi, int(info.max))):
        if bound == edge:
            continue
        value = np.array(np.float64(bound) * np.float64(scale), np.float32)
        bound_name = f'{key}.act_{op.lower()}_value'
        inits.append(numpy_helper.from_array(value, bound_name))
        name = f'{tag}.act_{op.lower()}'
        nodes.append(
            helper.make_node(op, [inp, bound_name], [f'{name}_out'],
                             name=name))
        inp = f'{name}_out'
    qdq = [f'{key}.act_scale', f'{key}.act_zero_point']
    nodes += [
        helper.make_node('QuantizeLinear', [inp] + qdq,
                         [f'{tag}.act_quantized'], name=f'{tag}.act_q'),
        helper.make_node('DequantizeLinear', [f'{tag}.act_quantized'] + qdq,
                         [out], name=f'{tag}.act_dq')
    ]
    return nodes, inits


def _rewrite(proto: Any, layers: Dict[str, nn.Module], int4: bool) -> Any:
    """Replace the ``mmquant`` placeholders by Q/DQ nodes and integer
    initializers, drop what became unused and move to :data:`OPSET`."""
    import onnx
    from onnx import helper
    graph = proto.graph
    new_nodes: list = []
    new_inits: list = []
    calls: Dict[Tuple[str, str], int] = {}
    for node in graph.node:
        if node.domain != _DOMAIN:
            new_nodes.append(node)
            continue
        key = helper.get_attribute_value(node.attribute[0])
        key = key.decode() if isinstance(key, bytes) else key
        qlayer = layers[key]
        call = calls.get((node.op_type, key), 0)
        calls[(node.op_type, key)] = call + 1
        tag = key if call == 0 else f'{key}.{call}'
        if node.op_type == 'WeightQuant':
            nodes, inits = _weight_nodes(key, tag, qlayer, node.output[0],
                                         _weight_axis(key, qlayer), int4)
        elif node.op_type == 'ActQuant':
            nodes, inits = _act_nodes(key, tag, qlayer, node.input[0],
                                      node.output[0])
        else:
            raise ExportError(f'unexpected node {node.op_type}')
        new_nodes += nodes
        if call == 0:
            new_inits += inits
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _prune(graph)
    kept = [o for o in proto.opset_import if o.domain != _DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    proto = onnx.version_converter.convert_version(proto, OPSET)
    proto.producer_name = 'mmquant'
    return proto


def _strip_prefix(graph: Any, prefix: str) -> None:
    """Rename initializers ``<prefix><name>`` to ``<name>`` (the names of
    the model's state dict, without the export wrappers' prefix)."""
    if not prefix:
        return
    names = {t.name for t in graph.initializer}
    rename = {
        n: n[len(prefix):]
        for n in names
        if n.startswith(prefix) and n[len(prefix):] not in names
    }
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]


def _batch_dims(graph: Any) -> None:
    """Declare dim 0 of every graph input and output as ``batch``.

    torch's exporter can leave a fixed size there (its shape inference
    through a reshape) although the graph computes any batch; the
    intermediate ``value_info`` (optional) is dropped for the same reason.
    """
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = 'batch'
    del graph.value_info[:]


def _prune(graph: Any) -> None:
    """Drop nodes and initializers no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def export_onnx(model: nn.Module,
                example_inputs: Union[Tensor, Sequence[Tensor]],
                path: Optional[str] = None,
                input_names: Optional[Iterable[str]] = None,
                dynamic_batch: bool = True,
                tensor_mode: Optional[bool] = None,
                normalize: bool = False,
                require_quantized: bool = True,
                int4: bool = True) -> Any:
    """Export a quantized model as an ONNX QDQ graph (opset 21).

    Example::

        qmodel, _ = mmquant.quantize(model, batches,
                                     mmquant.QuantConfig(w_bits=4))
        mmquant.export_onnx(qmodel, torch.randn(1, 3, 224, 224),
                            'model_w4a8.onnx')

    Args:
        model (nn.Module): A model holding
            :class:`~mmquant.nn.QuantizedLayer`\\ s (from
            :func:`mmquant.quantize` or :func:`mmquant.load`, or an
            ``mmquant.QuantizedModel``); it is deep-copied, not changed.
        example_inputs (Tensor | Sequence[Tensor]): ``float32`` inputs the
            graph is traced with; their shapes become the graph's (the
            batch dimension stays dynamic with ``dynamic_batch``).
        path (str, optional): Where to write the ``.onnx`` file (written
            atomically, folders created); ``None`` writes nothing.
        input_names (Iterable[str], optional): Graph input names; default
            ``input`` (one input) or ``input_<i>``.
        dynamic_batch (bool): Make dim 0 of inputs and outputs dynamic.
            Defaults to True.
        tensor_mode (bool, optional): Trace ``model(x, None, 'tensor')``
            (an mmengine ``BaseModel``: a classifier's logits, a
            detector's raw head outputs) instead of ``model(x)``. ``None``
            (default) picks it for models that have a
            ``data_preprocessor``.
        normalize (bool): With ``tensor_mode``, put the model's data
            preprocessor normalization (channel flip, ``(x - mean) /
            std``) into the graph, so that it takes the images as the
            dataset pipeline packs them (float pixels, NCHW). Batch
            padding is not included. Defaults to False.
        require_quantized (bool): Refuse a model without
            ``QuantizedLayer``. ``False`` exports a float model as it is
            (a baseline for comparisons). Defaults to True.
        int4 (bool): Store W2-W4 integers as ``INT4``; ``False`` stores
            every layer as ``INT8`` (same values, twice the bytes at W4),
            for runtimes without ``INT4`` ``DequantizeLinear``. Defaults
            to True.

    Returns:
        onnx.ModelProto: The checked graph.

    Raises:
        ExportError: If the model holds no ``QuantizedLayer`` (a float
            model), does not run on ``example_inputs``, or holds a layer
            the QDQ graph cannot express (a quantized
            ``nn.MultiheadAttention``, a grouped ``nn.ConvTranspose2d``,
            a non-float32 layer).
    """
    import onnx
    inputs = _as_tuple(example_inputs)
    if require_quantized and not _quantized_layers(model):
        raise ExportError(
            f'{type(model).__name__} holds no QuantizedLayer: it is a float '
            'model. Quantize it first (mmquant.quantize) or load an INT '
            'checkpoint into it (mmquant.load); a float model is exported '
            'with torch.onnx.export')
    net = _copy_for_export(model)
    if tensor_mode is None:
        tensor_mode = hasattr(net, 'data_preprocessor')
    layers = _wrap_layers(net)
    prefix = ''
    if tensor_mode:
        pre = getattr(net, 'data_preprocessor', None)
        net = _TensorMode(net)
        prefix = 'model.'
        if normalize:
            net = _normalizer(net, pre)
            prefix = 'model.model.'
    elif normalize:
        raise ExportError('normalize=True needs tensor_mode (an mmengine '
                          'model with a data_preprocessor)')
    net.eval()
    if input_names is None:
        names = ['input'] if len(inputs) == 1 else [
            f'input_{i}' for i in range(len(inputs))
        ]
    else:
        names = [str(n) for n in input_names]
        if len(names) != len(inputs):
            raise ExportError(f'{len(names)} input names for '
                              f'{len(inputs)} inputs')
    traced = _trace(net, inputs, names, dynamic_batch, bool(layers))
    _strip_prefix(traced.graph, prefix)
    proto = _rewrite(traced, layers, int4)
    if dynamic_batch:
        _batch_dims(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        from mmquant.fileio import atomic_write
        path = os.fspath(path)
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        data = proto.SerializeToString()
        atomic_write(path, lambda f: f.write(data))
    return proto


def _copy_for_export(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode deep copy of ``model``."""
    import copy
    net = copy.deepcopy(model)
    return net.cpu().eval()


def _normalizer(net: nn.Module, pre: Optional[nn.Module]) -> nn.Module:
    """Wrap ``net`` in the preprocessor's normalization."""
    if pre is None:
        raise ExportError('normalize=True: the model has no '
                          'data_preprocessor')
    flip = bool(
        getattr(pre, '_channel_conversion', False)
        or getattr(pre, 'to_rgb', False))
    mean = std = None
    if getattr(pre, '_enable_normalize', False):
        mean = pre.mean.detach().float().reshape(1, -1, 1, 1).clone()
        std = pre.std.detach().float().reshape(1, -1, 1, 1).clone()
    return _Normalize(net, mean, std, flip)
