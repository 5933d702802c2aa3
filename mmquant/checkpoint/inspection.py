"""Inspection of an INT checkpoint without a model.

:func:`inspect_quantized` verifies a quantized model's INT checkpoint
with every check loading it makes on the file alone
(:func:`.validate_file`) and summarises its layers, bit widths and sizes.
``tools/inspect_checkpoint.py`` renders that summary for a terminal or as
JSON.
"""
import os
import os.path as osp
from typing import Any, Dict

from .container import load_container
from .layer_records import (FLOAT32_BYTES, RESERVED_META_KEYS, nbytes,
                            packed_name, validate_file)
from .safe_load import PathLike

__all__ = ['inspect_quantized']


def inspect_quantized(path: PathLike) -> Dict[str, Any]:
    """Verify and summarise an INT checkpoint without a model.

    The file gets every check :func:`.load_quantized` makes without a
    model: :func:`.load_container` (checksums, tensor-name digest, meta),
    then the layer records, the size of every packed tensor against its
    ``w_bits`` and ``numel``, the decoding of every integer (no reserved
    code), the scales, and that every packed tensor has a record.

    Args:
        path (str or os.PathLike): The INT checkpoint.

    Returns:
        dict: A JSON-able dict with

        * ``path`` and ``file_bytes``;
        * ``mmquant_version``: the version that wrote the file;
        * ``meta``: the caller's meta (all non-reserved keys);
        * ``layers``: one dict per quantized layer, in file order, with
          ``name``, ``layer_type``, ``w_bits``, ``a_bits``, ``act_signed``,
          ``shape``, ``numel``, ``dtype`` (the compute dtype's name,
          ``'float32'`` for a record without it), ``packed_bytes``,
          ``float_bytes`` (float32 size of the weight) and ``ratio``
          (``float_bytes / packed_bytes``);
        * ``totals``: ``layers``, ``packed_bytes``, ``float_bytes``,
          ``ratio``, ``scale_bytes`` (weight and activation scales),
          ``other_bytes`` (all non-packed tensors, scales included),
          ``int_model_bytes`` (all tensors of the file),
          ``float_model_bytes`` (the same model with float32 weights and
          no scales), ``model_ratio`` (``float_model_bytes /
          int_model_bytes``) and ``file_bytes``.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        CheckpointError: If the file is corrupted, unsafe, not a quantized
            model checkpoint, or fails any check :func:`.load_quantized`
            makes on the file alone (the message is the same).
    """
    path_str = os.fspath(path)
    tensors, meta = load_container(path_str)
    records, _, _ = validate_file(path_str, tensors, meta)
    layers = []
    packed_total = float_total = scale_total = 0
    scale_keys = set()
    for rec in records:
        name = rec['name']
        packed_bytes = nbytes(tensors[packed_name(name)])
        float_bytes = rec['numel'] * FLOAT32_BYTES
        packed_total += packed_bytes
        float_total += float_bytes
        for attr in ('weight_scale', 'act_scale'):
            scale_keys.add(f'{name}.{attr}')
            scale_total += nbytes(tensors[f'{name}.{attr}'])
        layers.append({
            'name': name,
            'layer_type': rec['layer_type'],
            'w_bits': rec['w_bits'],
            'a_bits': rec['a_bits'],
            'act_signed': rec['act_signed'],
            'shape': list(rec['shape']),
            'numel': rec['numel'],
            'dtype': rec['dtype'],
            'packed_bytes': packed_bytes,
            'float_bytes': float_bytes,
            'ratio': float_bytes / packed_bytes if packed_bytes else None,
        })
    packed_keys = {packed_name(r['name']) for r in records}
    other_total = sum(
        nbytes(t) for k, t in tensors.items() if k not in packed_keys)
    int_model = packed_total + other_total
    float_model = float_total + other_total - scale_total
    return {
        'path': path_str,
        'file_bytes': osp.getsize(path_str),
        'mmquant_version': meta.get('mmquant_version'),
        'meta': {
            k: v
            for k, v in meta.items() if k not in RESERVED_META_KEYS
        },
        'layers': layers,
        'totals': {
            'layers': len(layers),
            'packed_bytes': packed_total,
            'float_bytes': float_total,
            'ratio': float_total / packed_total if packed_total else None,
            'scale_bytes': scale_total,
            'other_bytes': other_total,
            'int_model_bytes': int_model,
            'float_model_bytes': float_model,
            'model_ratio': float_model / int_model if int_model else None,
            'file_bytes': osp.getsize(path_str),
        },
    }
