"""The per-layer records of an INT checkpoint and the checks of a file.

A quantized model's INT checkpoint (see :mod:`.int_model`) describes each
``QuantizedLayer`` by one record in ``meta['layers']`` and stores its
integers bit-packed as the tensor ``'<layer>.qweight_packed'``.  This
module owns that schema: it writes a record (:func:`layer_record`) and
validates a whole file on its own, without a model
(:func:`validate_file`): the records, the size and codes of every packed
tensor and the scales.  Loading (:mod:`.int_model`) and inspecting
(:mod:`.inspection`) both start with :func:`validate_file`, so they refuse
the same files with the same messages.

The layout is specified in ``docs/checkpoint_format.md`` ("Model-level
layout").
"""
import math
from typing import Any, Container, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .packing import MAX_BITS, MIN_BITS, packed_nbytes, unpack_int

__all__ = [
    'PACKED_SUFFIX', 'RESERVED_META_KEYS', 'FLOAT32_BYTES', 'DTYPES',
    'packed_name', 'is_packed_name', 'nbytes', 'layer_record',
    'parent_record', 'validate_file'
]

#: Suffix of the tensor holding a quantized layer's packed integers.
PACKED_SUFFIX = 'qweight_packed'

#: Meta keys written by :func:`.save_quantized`; callers may not set them.
RESERVED_META_KEYS = ('layers', 'mmquant_version', 'float_bytes',
                      'packed_bytes')

#: Bytes of one float32 weight, the size the packed integers replace.
FLOAT32_BYTES = 4
#: Compute dtypes a layer record may name (``dtype``); absent: float32.
DTYPES = {
    'float16': torch.float16,
    'bfloat16': torch.bfloat16,
    'float32': torch.float32,
    'float64': torch.float64,
}

_LAYER_KEYS = ('name', 'w_bits', 'a_bits', 'act_signed', 'shape', 'numel',
               'layer_type')


def packed_name(layer: str) -> str:
    """Return the name of the tensor holding a layer's packed integers.

    Args:
        layer (str): Dotted module name of the quantized layer.

    Returns:
        str: ``'<layer>.qweight_packed'``.
    """
    return f'{layer}.{PACKED_SUFFIX}'


def is_packed_name(key: str) -> bool:
    """Tell whether a tensor name is that of a layer's packed integers.

    Args:
        key (str): A tensor name.

    Returns:
        bool: True if ``key`` ends with ``'.qweight_packed'``.
    """
    return key.endswith(f'.{PACKED_SUFFIX}')


def nbytes(t: Tensor) -> int:
    """Return the size of a tensor's data in bytes.

    Args:
        t (Tensor): Any tensor.

    Returns:
        int: ``t.numel() * t.element_size()``.
    """
    return t.numel() * t.element_size()


def layer_record(name: str, layer: nn.Module) -> Dict[str, Any]:
    """Build the ``meta['layers']`` record of a quantized layer.

    Args:
        name (str): Dotted module name of the layer in the model.
        layer (nn.Module): The :class:`~mmquant.nn.QuantizedLayer`.

    Returns:
        dict: ``name``, ``w_bits``, ``a_bits``, ``act_signed``, ``shape``,
        ``numel``, ``layer_type``, ``channels`` and, for a layer that does
        not compute in float32, ``dtype``.

    Raises:
        ValueError: If the layer computes in a dtype a record cannot name.
    """
    record = {
        'name': name,
        'w_bits': int(layer.w_bits),
        'a_bits': None if layer.a_bits is None else int(layer.a_bits),
        'act_signed': bool(layer.act_signed),
        'shape': [int(s) for s in layer.qweight.shape],
        'numel': int(layer.qweight.numel()),
        'layer_type': type(layer.layer).__name__,
        'channels': int(layer.weight_scale.numel()),
    }
    dtype = _dtype_name(layer.compute_dtype, name)
    if dtype != 'float32':
        # absent means float32, so float32 models write the same
        # files as before dtype support
        record['dtype'] = dtype
    return record


def _dtype_name(dtype: torch.dtype, name: str) -> str:
    """Return the record name of a layer's compute dtype.

    Args:
        dtype (torch.dtype): The layer's ``compute_dtype``.
        name (str): The layer's name, for the message.

    Returns:
        str: ``'float16'``, ``'bfloat16'``, ``'float32'`` or ``'float64'``.

    Raises:
        ValueError: For any other dtype.
    """
    for key, value in DTYPES.items():
        if value == dtype:
            return key
    raise ValueError(f'layer {name!r} computes in {dtype}, which an INT '
                     f'checkpoint cannot record (one of {sorted(DTYPES)})')


def _is_bits(value: Any) -> bool:
    """Whether ``value`` is an ``int`` (not a bool) in the bit range."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and MIN_BITS <= value <= MAX_BITS)


def _check_record(where: str, rec: Any) -> Dict[str, Any]:
    """Validate one ``meta['layers']`` record.

    Args:
        where (str): Location for messages, e.g.
            ``"'ckpt.pth': meta['layers'][3]"``.
        rec (Any): The record.

    Returns:
        dict: A copy of the record with ``shape`` as a tuple and
        ``channels`` and ``dtype`` filled in where an older file lacks them.

    Raises:
        CheckpointError: If a key is missing or a value is invalid.
    """
    if not isinstance(rec, dict):
        raise CheckpointError(f'{where} is not a dict')
    missing = [k for k in _LAYER_KEYS if k not in rec]
    if missing:
        raise CheckpointError(f'{where} lacks the key(s) {missing}')
    name = rec['name']
    if not isinstance(name, str) or not name:
        raise CheckpointError(f'{where} has an invalid name {name!r}')
    where = f'{where} (layer {name!r})'
    if not _is_bits(rec['w_bits']):
        raise CheckpointError(
            f'{where}: w_bits must be an int in [{MIN_BITS}, {MAX_BITS}], '
            f'got {rec["w_bits"]!r}')
    if rec['a_bits'] is not None and not _is_bits(rec['a_bits']):
        raise CheckpointError(
            f'{where}: a_bits must be null or an int in [{MIN_BITS}, '
            f'{MAX_BITS}], got {rec["a_bits"]!r}')
    if not isinstance(rec['act_signed'], bool):
        raise CheckpointError(f'{where}: act_signed must be a bool, got '
                              f'{rec["act_signed"]!r}')
    shape = rec['shape']
    if (not isinstance(shape, list) or not shape or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0
            for s in shape)):
        raise CheckpointError(f'{where}: shape must be a non-empty list of '
                              f'non-negative ints, got {shape!r}')
    numel = rec['numel']
    if (not isinstance(numel, int) or isinstance(numel, bool)
            or numel != math.prod(shape)):
        raise CheckpointError(f'{where}: numel {numel!r} does not match '
                              f'shape {shape}')
    if not isinstance(rec['layer_type'], str):
        raise CheckpointError(f'{where}: layer_type must be a str, got '
                              f'{rec["layer_type"]!r}')
    # files written before ConvTranspose2d support have no 'channels':
    # their scales are along dim 0 of the weight
    channels = rec.get('channels', shape[0])
    if (not isinstance(channels, int) or isinstance(channels, bool)
            or channels < 0):
        raise CheckpointError(f'{where}: channels must be a non-negative '
                              f'int, got {channels!r}')
    # files written before dtype support have no 'dtype': float32
    dtype = rec.get('dtype', 'float32')
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f'{where}: dtype must be one of '
                              f'{sorted(DTYPES)}, got {dtype!r}')
    out = dict(rec)
    out['shape'] = tuple(shape)
    out['channels'] = channels
    out['dtype'] = dtype
    return out


def _layer_records(path: str, meta: Mapping[str, Any]) -> List[dict]:
    """Validate ``meta['layers']`` as a whole.

    Args:
        path (str): The file, for messages.
        meta (dict): The loaded meta.

    Returns:
        list: The validated records.

    Raises:
        CheckpointError: If ``meta['layers']`` is absent or invalid, names
            a layer twice, or nests one layer inside another.
    """
    layers = meta.get('layers')
    if not isinstance(layers, list):
        raise CheckpointError(
            f'{path!r} is an mmquant INT container but not a quantized '
            "model checkpoint (meta['layers'] is missing or not a list)")
    records = [
        _check_record(f"{path!r}: meta['layers'][{i}]", rec)
        for i, rec in enumerate(layers)
    ]
    names = set()
    for rec in records:
        if rec['name'] in names:
            raise CheckpointError(f"{path!r}: meta['layers'] names layer "
                                  f"{rec['name']!r} twice")
        names.add(rec['name'])
    for rec in records:
        parts = rec['name'].split('.')
        for i in range(1, len(parts)):
            parent = '.'.join(parts[:i])
            if parent in names and parts[i] != 'layer':
                raise CheckpointError(
                    f"{path!r}: meta['layers'] nests layer {rec['name']!r} "
                    f'inside layer {parent!r}')
    return records


def parent_record(name: str, names: Container[str]) -> Optional[str]:
    """Find the record a nested record lies in.

    A record may name a layer inside another quantized layer only as
    ``P.layer.<child>``: an attention's ``out_proj`` inside the
    attention's ``QuantizedLayer`` ``P``.

    Args:
        name (str): The record's layer name.
        names (Container[str]): The layer names of all records.

    Returns:
        str or None: The name ``P`` of the enclosing record, or None for a
        top-level record.
    """
    parts = name.split('.')
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == 'layer' and '.'.join(parts[:i]) in names:
            return '.'.join(parts[:i])
    return None


def _scale_tensors(path: str, rec: dict,
                   tensors: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor]:
    """Fetch and check a layer's ``weight_scale`` and ``act_scale``.

    Args:
        path (str): The file, for messages.
        rec (dict): The validated layer record.
        tensors (dict): All tensors of the file.

    Returns:
        tuple: ``(weight_scale, act_scale)``.

    Raises:
        CheckpointError: If a tensor is missing, mis-shaped, not floating
            point, or a used scale is not finite and positive.
    """
    name = rec['name']
    out = []
    for attr, shape in (('weight_scale', (rec['channels'], )),
                        ('act_scale', ())):
        key = f'{name}.{attr}'
        t = tensors.get(key)
        if t is None:
            raise CheckpointError(f'{path!r}: quantized layer {name!r} has '
                                  f'no tensor {key!r}')
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise CheckpointError(
                f'{path!r}: {key!r} must be a floating tensor of shape '
                f'{list(shape)}, got {t.dtype} of shape {list(t.shape)}')
        used = attr == 'weight_scale' or rec['a_bits'] is not None
        if used and t.numel() and not bool(
                (torch.isfinite(t) & (t > 0)).all()):
            raise CheckpointError(f'{path!r}: {key!r} must be finite and '
                                  'positive')
        out.append(t)
    return out[0], out[1]


def _unpack_layer(path: str, rec: dict,
                  tensors: Mapping[str, Tensor]) -> Tensor:
    """Unpack and check a layer's integer weights.

    Args:
        path (str): The file, for messages.
        rec (dict): The validated layer record.
        tensors (dict): All tensors of the file.

    Returns:
        Tensor: The int8 weights, shaped ``rec['shape']``, on the CPU.

    Raises:
        CheckpointError: If the packed tensor is missing, has the wrong
            dtype or size for the recorded bits, or decodes to values
            outside the grid.
    """
    name, bits, numel = rec['name'], rec['w_bits'], rec['numel']
    key = packed_name(name)
    packed = tensors.get(key)
    if packed is None:
        raise CheckpointError(f'{path!r}: quantized layer {name!r} has no '
                              f'packed weight tensor {key!r}')
    expected = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise CheckpointError(
            f'{path!r}: {key!r} must be a 1-D uint8 tensor, got '
            f'{packed.dtype} of shape {list(packed.shape)}')
    if packed.numel() != expected:
        raise CheckpointError(
            f'{path!r}: {key!r} holds {packed.numel()} bytes but '
            f'{numel} {bits}-bit values need {expected}; w_bits or shape '
            f'of layer {name!r} is wrong')
    try:
        q = unpack_int(packed, bits, numel)
    except ValueError as e:
        raise CheckpointError(f'{path!r}: the integer weights of layer '
                              f'{name!r} are out of range: {e}') from e
    return q.reshape(rec['shape'])


def validate_file(
    path: str, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> Tuple[List[dict], Dict[str, Tensor], Dict[str, Tuple[Tensor,
                                                          Tensor]]]:
    """Check an INT checkpoint on its own, as loading and inspecting do.

    The layer records must be well formed; each layer's packed tensor must
    have exactly the size its ``w_bits`` and ``numel`` need and decode
    without the reserved out-of-grid code; its scales must be well shaped,
    finite and positive; and every packed tensor must belong to a record.

    Args:
        path (str): The file, for messages.
        tensors (dict): The container's verified tensors.
        meta (dict): The container's meta.

    Returns:
        tuple: ``(records, ints, scales)``, the validated records, the int8
        weights and ``(weight_scale, act_scale)`` of each layer by name.

    Raises:
        CheckpointError: On the first problem found.
    """
    records = _layer_records(path, meta)
    ints, scales = {}, {}
    for rec in records:
        scales[rec['name']] = _scale_tensors(path, rec, tensors)
        ints[rec['name']] = _unpack_layer(path, rec, tensors)
    recorded = {packed_name(rec['name']) for rec in records}
    for key in tensors:
        if is_packed_name(key) and key not in recorded:
            raise CheckpointError(
                f'{path!r}: tensor {key!r} holds the packed integers of a '
                f"layer that meta['layers'] has no record for (was the "
                'record removed?)')
    return records, ints, scales
