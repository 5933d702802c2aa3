"""Save, load and apply whole quantized models as INT checkpoints.

A model whose ``nn.Conv2d``/``nn.Linear`` layers were replaced by
:class:`~mmquant.nn.QuantizedLayer` is written with :func:`save_quantized`
into an ``mmquant-int`` container (see :mod:`.container`): the integer
weights of every quantized layer are bit-packed (:func:`.pack_int`), all
other state-dict entries are stored unchanged, and ``meta['layers']``
records what is needed to rebuild the layers (see :mod:`.layer_records`).
:func:`load_quantized` turns a freshly built *float* model of the same
architecture into the quantized model, after validating the whole file
against the model; :func:`apply_quantized` does the same for a container
another loader has already read.

The model-level layout is specified in ``docs/checkpoint_format.md``
("Model-level layout").
"""
import difflib
import os
import os.path as osp
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from mmquant.nn.layer_kinds import QUANTIZABLE, out_channels, weight_name
from mmquant.nn.module_utils import set_submodule
from mmquant.nn.quantized_layer import QuantizedLayer
from .container import load_container, save_container
from .errors import CheckpointError
from .layer_records import (DTYPES, FLOAT32_BYTES, PACKED_SUFFIX,
                            RESERVED_META_KEYS, is_packed_name,
                            layer_record, nbytes, packed_name,
                            parent_record, validate_file)
from .packing import pack_int
from .safe_load import MapLocation, PathLike

__all__ = [
    'INT_SUFFIX', 'READY_CONFIG_SUFFIX', 'CheckpointMismatchError',
    'int_file_notice', 'save_quantized', 'load_quantized', 'apply_quantized'
]

#: ``tools/ptq.py`` names its INT checkpoint ``<stem>_int.pth`` and writes
#: the config that evaluates it next to it as ``<stem>_quantized.py``.
INT_SUFFIX = '_int.pth'
READY_CONFIG_SUFFIX = '_quantized.py'


class CheckpointMismatchError(CheckpointError):
    """A valid INT checkpoint does not fit the model it is loaded into.

    Raised for missing layers, layers of the wrong type or shape, and
    missing/unexpected/mis-shaped state-dict entries.  Problems of the
    file itself (malformed meta, bad bit widths, corrupted data) raise a
    plain :class:`CheckpointError`.
    """


def _mmquant_version() -> str:
    """Return ``mmquant.version.__version__``."""
    from mmquant.version import __version__
    return __version__


def _quantized_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """List the quantized layers of a model in ``named_modules`` order.

    Args:
        model (nn.Module): The model.

    Returns:
        list: ``[(name, layer), ...]``.

    Raises:
        ValueError: If the model itself is a ``QuantizedLayer`` or one
            ``QuantizedLayer`` is reachable under several names.
    """
    found: List[Tuple[str, nn.Module]] = []
    seen: Dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, QuantizedLayer):
            continue
        if not name:
            raise ValueError(
                'the model itself is a QuantizedLayer; wrap it in a parent '
                'module (e.g. nn.Sequential) to save it')
        if id(module) in seen:
            raise ValueError(
                f'QuantizedLayer {seen[id(module)]!r} is shared as '
                f'{name!r}; shared quantized layers are not supported')
        seen[id(module)] = name
        found.append((name, module))
    return found


def int_file_notice(path: PathLike) -> str:
    """The notice :func:`save_quantized` stores in an INT checkpoint.

    mmengine's runner prints it when the file is given as the checkpoint
    of a float model (see :func:`.save_container`). For a file named
    ``<stem>_int.pth`` it names ``<stem>_quantized.py``, the config
    ``tools/ptq.py`` writes next to it.

    Args:
        path (str or os.PathLike): The INT checkpoint.

    Returns:
        str: One line of text (without :data:`.NOTICE_PREFIX`).
    """
    name = osp.basename(os.fspath(path))
    text = ('this is an mmquant INT checkpoint and not a float state dict; '
            'a float model config loads none of its weights and evaluates '
            'a RANDOMLY INITIALISED model. Evaluate it with an '
            'mmquant.QuantizedModel config')
    if name.endswith(INT_SUFFIX) and len(name) > len(INT_SUFFIX):
        ready = name[:-len(INT_SUFFIX)] + READY_CONFIG_SUFFIX
        text += (f' such as {ready} which tools/ptq.py writes next to it: '
                 f'tools/test.py {ready} {name}')
    return text


def save_quantized(model: nn.Module,
                   path: PathLike,
                   meta: Optional[Mapping[str, Any]] = None,
                   notice: Optional[str] = None) -> Dict[str, int]:
    """Write a model containing ``QuantizedLayer``\\ s as an INT checkpoint.

    For every ``QuantizedLayer`` named ``L`` the int8 ``L.qweight`` is
    stored bit-packed as the uint8 tensor ``'L.qweight_packed'`` and
    described by a record in ``meta['layers']``; every other entry of
    ``model.state_dict()`` (``L.weight_scale``, ``L.act_scale``,
    ``L.layer.bias``, BN statistics, unquantized layers...) is stored
    unchanged under its state-dict key, in state-dict order.  The file is
    written atomically by :func:`.save_container`.

    Args:
        model (nn.Module): The quantized model.
        path (str or os.PathLike): Destination file; its directory must exist.
        meta (dict, optional): Extra JSON-able metadata merged into the file's
            meta, e.g. ``{'quantizer': qcfg.to_dict(), 'source_config':
            cfg.pretty_text, 'float_checkpoint_sha256': sha256_file(ckpt)}``.
            It may not use the keys of :data:`.RESERVED_META_KEYS`.
        notice (str, optional): The text for humans who load the file as the
            checkpoint of a float model (see :func:`.save_container`); default
            :func:`int_file_notice`; ``''`` for none.

    Returns:
        dict: A size summary: ``file_bytes`` (the file on disk),
        ``packed_weight_bytes`` (all packed integer tensors),
        ``float_weight_bytes`` (what the quantized layers' weights take
        in float32), ``other_bytes`` (every other stored tensor: scales,
        biases, buffers, unquantized layers) and ``layers`` (the number of
        quantized layers).

    Raises:
        ValueError: If the model has no ``QuantizedLayer``, is one itself,
            shares one under several names, holds integers outside a
            layer's grid, if ``meta`` uses a reserved key, or a state-dict
            key ends like a packed tensor name (``'.qweight_packed'``).
        TypeError: If ``meta`` is not a dict or is not JSON-able.
        OSError: If writing fails (``path`` is then left untouched).
    """
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise TypeError(f'meta must be a dict, got {type(meta).__name__}')
    reserved = sorted(k for k in meta if k in RESERVED_META_KEYS)
    if reserved:
        raise ValueError(f'meta keys {reserved} are reserved and written by '
                         'save_quantized; use other names')
    layers = _quantized_layers(model)
    if not layers:
        raise ValueError(
            f'{type(model).__name__} contains no QuantizedLayer; quantize '
            'it first (an INT checkpoint of a float model is pointless)')
    state = model.state_dict()
    by_qweight = {f'{name}.qweight': (name, layer) for name, layer in layers}
    for key in state:
        if is_packed_name(key):
            raise ValueError(f'state-dict key {key!r} ends like the packed '
                             f'weight of a quantized layer ({PACKED_SUFFIX!r})'
                             '; rename it')
    tensors: Dict[str, Tensor] = OrderedDict()
    records: List[Dict[str, Any]] = []
    packed_bytes = float_bytes = other_bytes = 0
    for key, value in state.items():
        if key not in by_qweight:
            tensors[key] = value
            other_bytes += nbytes(value)
            continue
        name, layer = by_qweight[key]
        try:
            packed = pack_int(layer.qweight, layer.w_bits)
        except ValueError as e:
            raise ValueError(f'cannot pack layer {name!r}: {e}') from e
        tensors[packed_name(name)] = packed
        packed_bytes += nbytes(packed)
        float_bytes += layer.qweight.numel() * FLOAT32_BYTES
        records.append(layer_record(name, layer))
    missing = [name for name, _ in layers
               if f'{name}.qweight' not in state]
    if missing:
        raise ValueError(f'the state dict of {type(model).__name__} lacks '
                         f'the qweight of quantized layer(s) {missing}')
    full_meta = dict(meta)
    full_meta.update({
        'layers': records,
        'mmquant_version': _mmquant_version(),
        'float_bytes': float_bytes,
        'packed_bytes': packed_bytes,
    })
    if notice is None:
        notice = int_file_notice(path)
    save_container(path, tensors, full_meta, notice)
    return {
        'file_bytes': osp.getsize(os.fspath(path)),
        'packed_weight_bytes': packed_bytes,
        'float_weight_bytes': float_bytes,
        'other_bytes': other_bytes,
        'layers': len(records),
    }


def _suggest(name: str, candidates: List[str]) -> str:
    """Return a ``'; did you mean ...?'`` hint for ``name``, or ``''``."""
    close = difflib.get_close_matches(name, candidates, n=3)
    return f'; did you mean {", ".join(map(repr, close))}?' if close else ''


def _base_layer(modules: Dict[str, nn.Module], rec: dict, strict: bool,
                errors: List[str]) -> Optional[nn.Module]:
    """Find the float conv/linear a record describes in the model.

    Args:
        modules (dict): ``dict(model.named_modules())`` of the model loaded
            into.
        rec (dict): The validated layer record.
        strict (bool): Whether the layer class name must match ``layer_type``.
        errors (list): Problems are appended here.

    Returns:
        nn.Module or None: The ``nn.Conv2d``/``nn.Linear`` to wrap (the
        inner layer of an existing ``QuantizedLayer``), or None if a problem
        was recorded.
    """
    name = rec['name']
    parts = name.split('.')
    for i in range(1, len(parts)):
        parent = modules.get('.'.join(parts[:i]))
        if isinstance(parent, QuantizedLayer):
            errors.append(f'layer {name!r} lies inside the QuantizedLayer '
                          f'{".".join(parts[:i])!r} of the model')
            return None
    module = modules.get(name)
    if module is None:
        errors.append(f'layer {name!r} of the checkpoint is not in the '
                      f'model{_suggest(name, list(modules))}')
        return None
    base = module.layer if isinstance(module, QuantizedLayer) else module
    if not isinstance(base, QUANTIZABLE + (nn.MultiheadAttention, )):
        errors.append(f'layer {name!r} is a {type(module).__name__} in the '
                      'model, not an nn.Conv2d/Conv1d/ConvTranspose2d/'
                      'Linear/MultiheadAttention')
        return None
    if strict and type(base).__name__ != rec['layer_type']:
        errors.append(f'layer {name!r} is a {type(base).__name__} in the '
                      f'model but a {rec["layer_type"]} in the checkpoint')
        return None
    weight = getattr(base, weight_name(base), None)
    if weight is None:
        errors.append(f'layer {name!r} of the model has no '
                      f'{weight_name(base)}')
        return None
    shape = tuple(weight.shape)
    if shape != rec['shape']:
        errors.append(f'shape mismatch for layer {name!r}: the checkpoint '
                      f'has {list(rec["shape"])}, the model has '
                      f'{list(shape)}')
        return None
    if out_channels(base) != rec['channels']:
        errors.append(f'layer {name!r} has {out_channels(base)} output '
                      f'channels in the model but {rec["channels"]} weight '
                      'scales in the checkpoint')
        return None
    return base


def _raise_mismatch(path: str, model: nn.Module, lines: List[str]) -> None:
    """Raise a :class:`CheckpointMismatchError` listing problems.

    Args:
        path (str): The file.
        model (nn.Module): The model.
        lines (list): One line per problem; nothing is raised when empty.

    Raises:
        CheckpointMismatchError: If ``lines`` is not empty.
    """
    if lines:
        body = ''.join(f'\n\t{line}' for line in lines)
        raise CheckpointMismatchError(
            f'Error(s) in loading INT checkpoint {path!r} into '
            f'{type(model).__name__}:{body}')


def load_quantized(model: nn.Module,
                   path: PathLike,
                   map_location: MapLocation = 'cpu',
                   strict: bool = True) -> nn.Module:
    """Load an INT checkpoint into a freshly built float model, in place.

    Every layer of ``meta['layers']`` is replaced by a
    :class:`~mmquant.nn.QuantizedLayer` wrapping (a copy of) the model's
    float ``nn.Conv2d``/``nn.Linear`` with the unpacked integers, then all
    other tensors are loaded with :meth:`nn.Module.load_state_dict`.  A
    layer that already is a ``QuantizedLayer`` is re-wrapped from its inner
    layer, so loading into an already quantized model also works.

    Everything is validated before the model is modified: on any error the
    model is left untouched.  Tensors keep the device and dtype of the
    model's parameters (as with ``load_state_dict``).

    Args:
        model (nn.Module): A float model of the architecture the file was saved
            from (e.g. built from the same config); modified in place.
        path (str or os.PathLike): The INT checkpoint.
        map_location (str or torch.device or dict or callable): Where
            :func:`torch.load` maps the file's tensors before they are copied
            into the model.
        strict (bool): If True, the stored float tensors must match the model's
            state dict exactly (no missing or unexpected keys) and each
            layer's class name must equal the recorded ``layer_type``.  If
            False, unexpected keys are ignored, missing ones keep the
            model's values and class names are not compared.  Layer
            existence, type (conv/linear) and shapes are always checked.

    Returns:
        nn.Module: ``model``, now holding ``QuantizedLayer``\\ s.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is corrupted or unsafe (see
            :func:`.load_container`), is not a quantized model checkpoint,
            or its meta/tensors are invalid (bad bits, packed size,
            out-of-range integers, bad scales).
        CheckpointMismatchError: If the file does not fit ``model``: a
            layer is missing, not a conv/linear, of another class
            (``strict``) or shape, or float tensors are missing, unexpected
            (``strict``) or mis-shaped.
    """
    path_str = os.fspath(path)
    tensors, meta = load_container(path_str, map_location=map_location)
    return apply_quantized(model, tensors, meta, strict, path_str)


def apply_quantized(model: nn.Module,
                    tensors: Mapping[str, Tensor],
                    meta: Mapping[str, Any],
                    strict: bool = True,
                    source: str = '<container>') -> nn.Module:
    """Load a verified container's ``(tensors, meta)`` into a float model.

    :func:`load_quantized` reads the file and calls this; see it for the
    checks and the errors.

    Args:
        model (nn.Module): A float model of the architecture; modified in
            place.
        tensors (dict): The container's tensors.
        meta (dict): The container's meta.
        strict (bool): See :func:`load_quantized`.
        source (str): The file name, for messages.

    Returns:
        nn.Module: ``model``, now holding ``QuantizedLayer``\\ s.
    """
    path_str = source

    # 1. The file on its own: records, packed sizes, codes, scales.
    records, ints, scales = validate_file(path_str, tensors, meta)

    # 2. The layers against the model (a record nested in another one,
    # P.layer.<child>, against the rebuilt P in step 3).
    errors: List[str] = []
    bases = {}
    modules = dict(model.named_modules())
    names = {rec['name'] for rec in records}
    parents = {rec['name']: parent_record(rec['name'], names)
               for rec in records}
    for rec in records:
        if parents[rec['name']] is not None:
            continue
        base = _base_layer(modules, rec, strict, errors)
        if base is not None:
            bases[rec['name']] = base
    _raise_mismatch(path_str, model, errors)

    # 3. Build the new layers (detached from the model) and compare the
    # state dict the converted model will have with the file.
    new_layers = OrderedDict()
    built = {}
    for rec in sorted(records, key=lambda r: r['name'].count('.')):
        name = rec['name']
        parent = parents[name]
        if parent is not None:
            try:
                inner = {name: built[parent].get_submodule(
                    name[len(parent) + 1:])}
            except AttributeError:
                inner = {}
            base = _base_layer(inner, rec, strict, errors)
            _raise_mismatch(path_str, model, errors)
        else:
            base = bases[name]
        weight_scale, act_scale = scales[name]
        device = getattr(base, weight_name(base)).device
        try:
            layer = QuantizedLayer(
                base, ints[name].to(device),
                weight_scale.to(device=device, dtype=torch.float32),
                rec['w_bits'], rec['a_bits'],
                None if rec['a_bits'] is None else float(act_scale),
                rec['act_signed'], DTYPES[rec['dtype']])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f'{path_str!r}: cannot rebuild layer '
                                  f'{name!r}: {e}') from e
        # The constructor makes ``act_scale`` on the CPU: follow the model.
        if parent is not None:
            layer.to(device).train(built[parent].training)
            set_submodule(built[parent], name[len(parent) + 1:], layer)
        else:
            layer.to(device).train(modules[name].training)
            new_layers[name] = layer
        built[name] = layer
    expected = OrderedDict(
        (k, v) for k, v in model.state_dict(keep_vars=True).items()
        if not any(k.startswith(f'{n}.') for n in new_layers))
    for name, layer in new_layers.items():
        for k, v in layer.state_dict(keep_vars=True).items():
            expected[f'{name}.{k}'] = v
    packed_keys = {packed_name(n) for n in built}
    supplied = {f'{n}.qweight' for n in built}
    floats = OrderedDict(
        (k, v) for k, v in tensors.items() if k not in packed_keys)
    missing = [k for k in expected if k not in floats and k not in supplied]
    unexpected = [k for k in floats if k not in expected]
    if strict:
        if missing:
            errors.append('Missing key(s) in state_dict: ' +
                          ', '.join(f'"{k}"' for k in missing) + '.')
        if unexpected:
            errors.append('Unexpected key(s) in state_dict: ' +
                          ', '.join(f'"{k}"' for k in unexpected) + '.')
    for k, v in floats.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            errors.append(f'size mismatch for {k}: copying a param with '
                          f'shape {list(v.shape)} from checkpoint, the '
                          'shape in current model is '
                          f'{list(expected[k].shape)}.')
    _raise_mismatch(path_str, model, errors)

    # 4. Mutate: swap in the layers, then load every tensor.
    for name, layer in new_layers.items():
        set_submodule(model, name, layer)
    state = OrderedDict((k, v) for k, v in floats.items() if k in expected)
    for name in built:
        state[f'{name}.qweight'] = ints[name]
    metadata = getattr(model.state_dict(), '_metadata', None)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=strict)
    return model
