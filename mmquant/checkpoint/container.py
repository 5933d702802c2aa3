"""The mmquant INT checkpoint container: atomic save and verified load.

An INT checkpoint is a file written by :func:`torch.save` whose payload is
a plain ``dict`` holding only tensors, ``str``, ``int``, ``float``, ``bool``,
``None`` and lists/dicts of these, so that
``torch.load(path, weights_only=True)`` reads it without any allowlist::

    {
        'format': 'mmquant-int',
        'format_version': 1,
        'meta': '<JSON text of a dict>',
        'tensors': {name: tensor, ...},
        'checksums': {name: '<sha256 hex>', ...},
        'meta_sha256': '<sha256 hex of the UTF-8 meta JSON text>',
    }

The precise definition (checksums, versioning, safety model) is in
``docs/checkpoint_format.md``.  This module knows nothing about models or
quantisers: it stores named tensors plus a JSON-able ``meta`` dict.  The
file is read by :func:`.safe_torch_load` (weights-only, no allowlist)
and then verified here (:func:`verify_container`).
"""
import ctypes
import errno
import hashlib
import json
import math
import os
import os.path as osp
import re
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from mmquant.fileio import atomic_write
from .errors import (CheckpointError, CheckpointNotFoundError,
                     UnsafeCheckpointError)
from .safe_load import MapLocation, PathLike, safe_torch_load

__all__ = [
    'FORMAT_NAME', 'FORMAT_VERSION', 'SUPPORTED_FORMAT_VERSIONS',
    'NOTICE_PREFIX', 'CheckpointError', 'CheckpointNotFoundError',
    'UnsafeCheckpointError', 'TENSORS_DIGEST_KEY', 'MAX_META_BYTES',
    'MAX_META_DEPTH', 'tensor_sha256', 'tensors_digest', 'save_container',
    'load_container', 'verify_container'
]

FORMAT_NAME = 'mmquant-int'
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1, )

#: Start of the optional top-level key that carries a notice for humans
#: (see :func:`save_container`).
NOTICE_PREFIX = 'NOTICE: '

#: Meta key holding :func:`tensors_digest` of the file's checksums. It is
#: written by :func:`save_container`, covered by ``meta_sha256``, checked
#: and removed from the meta :func:`load_container` returns; callers may
#: not use it.
TENSORS_DIGEST_KEY = 'tensors_sha256'
#: Largest meta JSON text (UTF-8 bytes) written or read.
MAX_META_BYTES = 64 << 20
#: Deepest nesting of lists/dicts in meta (the meta dict itself is 1).
MAX_META_DEPTH = 64

_TOP_LEVEL_KEYS = ('format', 'format_version', 'meta', 'tensors',
                   'checksums', 'meta_sha256')
_HASH_BLOCK = 1 << 24


def _dtype_name(dtype: torch.dtype) -> str:
    """Return the short name of a dtype, e.g. ``'float32'``."""
    return str(dtype).replace('torch.', '', 1)


def tensor_sha256(t: torch.Tensor) -> str:
    """Return the SHA-256 checksum of a tensor's dtype, shape and data.

    The digest covers the UTF-8 header ``'<dtype>;<shape>\\n'`` followed by
    the tensor's raw bytes in C (row-major) order and native (little-endian)
    byte order, where ``<dtype>`` is e.g. ``float32`` and ``<shape>`` is the
    JSON list of the sizes, e.g. ``[64, 3, 3, 3]`` (``[]`` for a scalar).

    Args:
        t (Tensor): Any strided tensor, on any device.

    Returns:
        str: The lowercase hexadecimal SHA-256 digest.

    Raises:
        TypeError: If ``t`` is not a strided tensor with materialised data.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'expected a torch.Tensor, got {type(t).__name__}')
    if t.layout != torch.strided or t.is_meta or t.is_quantized:
        raise TypeError('only dense tensors with data can be checksummed, '
                        f'got layout={t.layout}, device={t.device}')
    data = t.detach()
    if data.device.type != 'cpu':
        data = data.cpu()
    if data.is_conj() or data.is_neg():
        data = data.resolve_conj().resolve_neg()
    data = data.contiguous()
    header = f'{_dtype_name(data.dtype)};{json.dumps(list(data.shape))}\n'
    digest = hashlib.sha256(header.encode('utf-8'))
    nbytes = data.numel() * data.element_size()
    ptr = data.data_ptr()
    for offset in range(0, nbytes, _HASH_BLOCK):
        size = min(_HASH_BLOCK, nbytes - offset)
        # Zero-copy view of the tensor memory; ``data`` stays alive here.
        digest.update((ctypes.c_char * size).from_address(ptr + offset))
    return digest.hexdigest()


def tensors_digest(checksums: Mapping[str, str]) -> str:
    """Return the digest of a file's tensor names and checksums.

    The digest is the SHA-256 of the ASCII JSON text of the list of
    ``[name, checksum]`` pairs sorted by name, written with
    ``json.dumps(pairs, separators=(',', ':'))`` (non-ASCII characters
    escaped). Stored in the meta, which ``meta_sha256`` covers, it ties
    every checksum to its tensor's name, so a renamed tensor or two
    tensors swapped together with their checksums are detected.

    Args:
        checksums (dict): Mapping from tensor names to :func:`tensor_sha256`
            values.

    Returns:
        str: The lowercase hexadecimal digest.
    """
    pairs = [[name, checksums[name]] for name in sorted(checksums)]
    text = json.dumps(pairs, separators=(',', ':'))
    return hashlib.sha256(text.encode('ascii')).hexdigest()


def _check_json(value: Any, where: str, depth: int = 1) -> None:
    """Check that ``value`` round-trips exactly through strict JSON.

    Args:
        value (Any): The value to check.
        where (str): Its location, used in error messages (e.g.
            ``"meta['a']"``).
        depth (int): Nesting depth of ``value`` (the meta dict itself is 1).

    Raises:
        TypeError: If a value or key is not JSON-serialisable.
        ValueError: If a float is NaN or infinite, or lists/dicts are
            nested deeper than :data:`MAX_META_DEPTH`.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f'{where} is {value!r}; NaN and infinity are '
                             'not allowed in checkpoint meta (strict JSON)')
        return
    if isinstance(value, (list, tuple, dict)) and depth > MAX_META_DEPTH:
        raise ValueError(f'{where} is nested {depth} levels deep; '
                         f'checkpoint meta may nest at most {MAX_META_DEPTH} '
                         'levels of lists and dicts')
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f'{where}[{i}]', depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f'{where} has a key {key!r} of type '
                    f'{type(key).__name__}; checkpoint meta keys must be str '
                    '(JSON objects only have string keys)')
            _check_json(item, f'{where}[{key!r}]', depth + 1)
        return
    raise TypeError(f'{where} is of type {type(value).__module__}.'
                    f'{type(value).__qualname__}, which is not '
                    'JSON-serialisable; checkpoint meta may only hold dict, '
                    'list, tuple, str, int, float, bool and None (convert '
                    'tensors/numpy values with .tolist() or .item())')


_JSON_TOKEN_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _json_depth(text: str) -> int:
    """Return the deepest list/dict nesting of a JSON text, cheaply.

    Brackets inside strings are skipped; the scan stops as soon as the
    depth exceeds :data:`MAX_META_DEPTH`, so the text need not be valid.

    Args:
        text (str): JSON text.

    Returns:
        int: The depth (0 for a scalar), or ``MAX_META_DEPTH + 1`` if deeper.
    """
    depth = deepest = 0
    for match in _JSON_TOKEN_RE.finditer(text):
        token = match.group()
        if token == '[' or token == '{':
            depth += 1
            if depth > MAX_META_DEPTH:
                return depth
            deepest = max(deepest, depth)
        elif token == ']' or token == '}':
            depth -= 1
    return deepest


def _encode_meta(meta: Mapping[str, Any],
                 digest: Optional[str] = None) -> str:
    """Validate ``meta`` and serialise it to canonical JSON text.

    Args:
        meta (dict): The metadata dict.
        digest (str, optional): If given, stored as
            ``meta[TENSORS_DIGEST_KEY]``.

    Returns:
        str: JSON text with sorted keys.

    Raises:
        TypeError: If ``meta`` is not a dict or holds non-JSON values.
        ValueError: If ``meta`` holds NaN or infinite floats, nests deeper
            than :data:`MAX_META_DEPTH`, uses :data:`TENSORS_DIGEST_KEY`
            or its text exceeds :data:`MAX_META_BYTES`.
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f'meta must be a dict, got {type(meta).__name__}')
    meta = dict(meta)
    if TENSORS_DIGEST_KEY in meta:
        raise ValueError(f'meta key {TENSORS_DIGEST_KEY!r} is reserved: '
                         'save_container writes it; use another name')
    _check_json(meta, 'meta')
    if digest is not None:
        meta[TENSORS_DIGEST_KEY] = digest
    text = json.dumps(meta, sort_keys=True, allow_nan=False,
                      ensure_ascii=False, separators=(',', ':'))
    size = len(text.encode('utf-8', 'surrogatepass'))
    if size > MAX_META_BYTES:
        raise ValueError(f'checkpoint meta takes {size} bytes as JSON, more '
                         f'than the {MAX_META_BYTES} allowed; store large '
                         'data as tensors')
    return text


def _prepare_tensors(
        tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Validate tensors and make CPU, contiguous, storage-owning copies.

    Args:
        tensors (dict): Mapping from names to tensors.

    Returns:
        dict: A new dict with the same names and order.

    Raises:
        TypeError: If a name is not a str or a value is not a dense tensor.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError('tensors must be a dict of str to torch.Tensor, got '
                        f'{type(tensors).__name__}')
    out = {}
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f'tensor names must be str, got {name!r} of '
                            f'type {type(name).__name__}')
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'tensors[{name!r}] must be a torch.Tensor, '
                            f'got {type(t).__name__}')
        if t.layout != torch.strided or t.is_meta or t.is_quantized:
            raise TypeError(f'tensors[{name!r}] must be a dense tensor with '
                            f'data, got layout={t.layout}, '
                            f'device={t.device}, dtype={t.dtype}')
        data = t.detach()
        if data.is_conj() or data.is_neg():
            data = data.resolve_conj().resolve_neg()
        # ``Parameter`` and other subclasses would need an allowlist on
        # load; always store a plain tensor.
        if type(data) is not torch.Tensor:
            data = data.as_subclass(torch.Tensor)
        # Clone so that a view does not drag its whole storage into the
        # file and later mutation of the caller's tensor cannot race.
        out[name] = data.to('cpu').clone(
            memory_format=torch.contiguous_format)
    return out


def save_container(path: PathLike,
                   tensors: Mapping[str, torch.Tensor],
                   meta: Mapping[str, Any],
                   notice: Optional[str] = None) -> None:
    """Write an INT checkpoint file atomically.

    The payload is written to a temporary file in the destination
    directory, flushed and fsync'ed, moved onto ``path`` with
    :func:`os.replace`, and the directory is fsync'ed.  If anything fails,
    the temporary file is removed and ``path`` is left as it was (absent,
    or the previous file).  The parent directory must exist.  If ``path``
    is a symbolic link, the link itself is replaced by the new file.

    Args:
        path (str or os.PathLike): Destination file.
        tensors (dict): Mapping from str names to dense tensors (any
            device/dtype). They are stored as contiguous CPU clones in the
            given order.
        meta (dict): JSON-able dict (str keys; dict, list, tuple, str, int,
            finite float, bool, None values; at most :data:`MAX_META_DEPTH`
            levels deep and :data:`MAX_META_BYTES` as JSON; not the key
            :data:`TENSORS_DIGEST_KEY`, which is added).  Tuples are read back
            as lists.
        notice (str, optional): A one-line text for humans, stored as the
            *name* of the first top-level key (``NOTICE_PREFIX + notice``,
            value ``None``). mmengine's runner, given the file as the
            checkpoint of a float model, prints the top-level keys it cannot
            load, so the notice is what such a user reads. Readers ignore it.

    Raises:
        TypeError: If a tensor name is not a str, a value is not a tensor,
            ``meta`` is not JSON-serialisable (the message names the
            offending entry) or ``notice`` is not a str.
        ValueError: If ``meta`` holds NaN/infinite floats, is too deep or
            too large, or uses :data:`TENSORS_DIGEST_KEY`.
        FileNotFoundError: If the parent directory does not exist.
        IsADirectoryError: If ``path`` is a directory.
        OSError: If writing fails; a full disk raises an ``OSError`` with
            ``errno.ENOSPC`` whose message names the file.
    """
    path = osp.abspath(os.fspath(path))
    if notice is not None and not isinstance(notice, str):
        raise TypeError(
            f'notice must be a str, got {type(notice).__name__}')
    _encode_meta(meta)  # validate before copying the tensors
    data = _prepare_tensors(tensors)
    checksums = {name: tensor_sha256(t) for name, t in data.items()}
    meta_json = _encode_meta(meta, tensors_digest(checksums))
    payload: Dict[str, Any] = {}
    if notice:
        payload[NOTICE_PREFIX + notice] = None
    payload.update({
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'meta': meta_json,
        'tensors': data,
        'checksums': checksums,
        'meta_sha256': hashlib.sha256(meta_json.encode('utf-8')).hexdigest(),
    })
    dirpath, basename = osp.split(path)
    if not osp.isdir(dirpath):
        raise FileNotFoundError(
            errno.ENOENT, 'directory of the checkpoint does not exist',
            dirpath)
    if osp.isdir(path):
        raise IsADirectoryError(errno.EISDIR,
                                'checkpoint path is a directory', path)
    atomic_write(path, lambda f: torch.save(payload, f))


def load_container(
        path: PathLike,
        map_location: MapLocation = 'cpu',
        verify_checksums: bool = True,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Load and verify an INT checkpoint written by :func:`save_container`.

    The file is read with ``torch.load(weights_only=True)`` and no extra
    allowlist, so it can never execute code or build arbitrary objects.

    Only a regular file is opened (a FIFO or a device is refused at
    once), a zip whose members would expand to more than ``max(64 MiB, 8 x
    the file size)`` is refused before anything is inflated, and a meta of
    more than :data:`MAX_META_BYTES` or nested deeper than
    :data:`MAX_META_DEPTH` is refused before it is parsed.

    Args:
        path (str or os.PathLike): Checkpoint file.
        map_location (str or torch.device or dict or callable): Passed to
            :func:`torch.load` (default ``'cpu'``).
        verify_checksums (bool): Whether to verify every tensor checksum (the
            meta checksum and the tensor-name digest are always verified).

    Returns:
        tuple: ``(tensors, meta)``, the named tensors in stored order and
        the decoded meta dict (without :data:`TENSORS_DIGEST_KEY`).

    Warns:
        UserWarning: If the file predates the tensor-name digest (its
            tensor names are then not covered by any checksum).

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the file contains pickled Python objects.
        CheckpointError: If the file is not a regular file, truncated or
            corrupted, too large when inflated, not an mmquant INT
            checkpoint (e.g. a float checkpoint, or a safetensors file),
            has an unsupported ``format_version``, is malformed, its meta
            is too large or deep, a checksum does not match (the message
            names the tensor), or the tensor names or checksums do not
            match the digest in the meta (a renamed or swapped tensor).
    """
    path = os.fspath(path)
    obj = safe_torch_load(
        path, map_location, 'INT checkpoint',
        ' An mmquant INT checkpoint never contains Python objects, so this '
        'file was not written by mmquant or was altered; if it is a float '
        'checkpoint, load it with mmquant.checkpoint.load_float_checkpoint '
        'instead.')
    return verify_container(obj, path, verify_checksums)


def verify_container(
        obj: Any,
        path: str,
        verify_checksums: bool = True,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Verify a container already read by ``torch.load(weights_only=True)``.

    :func:`load_container` reads and verifies a file; this verifies what
    another loader (e.g. an mmengine runner's ``load_from``) has read.

    Args:
        obj (Any): The loaded object.
        path (str): Where it came from (for messages).
        verify_checksums (bool): Whether to verify every tensor checksum.

    Returns:
        tuple: ``(tensors, meta)`` as :func:`load_container`.

    Raises:
        CheckpointError: As :func:`load_container`.
    """
    if not isinstance(obj, dict) or 'format' not in obj:
        raise CheckpointError(
            f'{path!r} is not an mmquant INT checkpoint (no \'format\' '
            'key); did you mean to load a float checkpoint?')
    if obj['format'] != FORMAT_NAME:
        raise CheckpointError(
            f'{path!r} is not an mmquant INT checkpoint: format is '
            f'{obj["format"]!r}, expected {FORMAT_NAME!r}')
    version = obj.get('format_version')
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        hint = ''
        if isinstance(version, int) and version > max(
                SUPPORTED_FORMAT_VERSIONS):
            hint = '; it was written by a newer mmquant, please upgrade'
        raise CheckpointError(
            f'{path!r} has unsupported format_version {version!r}; this '
            'mmquant supports format_version '
            f'{", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))}{hint}')
    missing = [k for k in _TOP_LEVEL_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f'{path!r} is corrupted: missing key(s) '
                              f'{missing}')
    tensors, checksums = obj['tensors'], obj['checksums']
    meta_json, meta_sha = obj['meta'], obj['meta_sha256']
    if not (isinstance(tensors, dict) and isinstance(checksums, dict)
            and isinstance(meta_json, str) and isinstance(meta_sha, str)):
        raise CheckpointError(f'{path!r} is corrupted: malformed layout')
    try:
        meta_bytes = meta_json.encode('utf-8')
    except UnicodeEncodeError as e:
        raise CheckpointError(f'{path!r} is corrupted: meta is not valid '
                              f'UTF-8 text ({e})') from e
    if hashlib.sha256(meta_bytes).hexdigest() != meta_sha:
        raise CheckpointError(
            f'{path!r} is corrupted: meta checksum mismatch')
    if len(meta_bytes) > MAX_META_BYTES:
        raise CheckpointError(
            f'{path!r} is refused: its meta takes {len(meta_bytes)} bytes, '
            f'more than the {MAX_META_BYTES} allowed')
    if _json_depth(meta_json) > MAX_META_DEPTH:
        raise CheckpointError(
            f'{path!r} is refused: its meta nests lists/dicts more than '
            f'{MAX_META_DEPTH} levels deep')
    try:
        meta = json.loads(meta_json)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f'{path!r} is corrupted: meta is not valid '
                              f'JSON ({e})') from e
    if not isinstance(meta, dict):
        raise CheckpointError(f'{path!r} is corrupted: meta is not a dict')
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f'{path!r} is corrupted: entry {name!r} '
                                  'of tensors is not a named tensor')
        if t.layout != torch.strided or t.is_quantized:
            raise CheckpointError(
                f'{path!r} is corrupted: tensor {name!r} is not a dense '
                f'tensor (layout={t.layout}, dtype={t.dtype})')
        if name not in checksums:
            raise CheckpointError(
                f'{path!r} is corrupted: no checksum for tensor {name!r}')
    extra = [name for name in checksums if name not in tensors]
    if extra:
        raise CheckpointError(f'{path!r} is corrupted: checksums for '
                              f'missing tensor(s) {extra}')
    _check_digest(path, meta, checksums)
    if verify_checksums:
        for name, t in tensors.items():
            if tensor_sha256(t) != checksums[name]:
                raise CheckpointError(
                    f'{path!r} is corrupted: checksum mismatch for tensor '
                    f'{name!r} (dtype={_dtype_name(t.dtype)}, '
                    f'shape={list(t.shape)})')
    return dict(tensors), meta


def _check_digest(path: str, meta: Dict[str, Any],
                  checksums: Mapping[Any, Any]) -> None:
    """Check and remove ``meta[TENSORS_DIGEST_KEY]``.

    Files written before the digest existed have none: they load with a
    warning, as their tensor names are not covered.

    Args:
        path (str): The file, for messages.
        meta (dict): The decoded meta; the digest is removed from it.
        checksums (dict): The file's checksums (names already checked).

    Raises:
        CheckpointError: If the digest is malformed or does not match.
    """
    if TENSORS_DIGEST_KEY not in meta:
        warnings.warn(
            f'{path!r} has no {TENSORS_DIGEST_KEY!r} in its meta (it was '
            'written before mmquant recorded one), so renamed or swapped '
            'tensors cannot be detected; quantize the model again (e.g. '
            'with tools/ptq.py) to write a file that records it',
            stacklevel=4)
        return
    digest = meta.pop(TENSORS_DIGEST_KEY)
    if not all(isinstance(c, str) for c in checksums.values()):
        raise CheckpointError(f'{path!r} is corrupted: a checksum is not '
                              'a str')
    if digest != tensors_digest(checksums):
        raise CheckpointError(
            f'{path!r} is corrupted: the tensor names or checksums do not '
            f'match meta[{TENSORS_DIGEST_KEY!r}] (a tensor was renamed, '
            'added, removed or swapped with another)')
