"""The mmquant INT checkpoint container: atomic save and safe load.

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
quantisers: it stores named tensors plus a JSON-able ``meta`` dict.
"""
import ctypes
import errno
import hashlib
import json
import math
import os
import os.path as osp
import pickle
import re
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from mmquant.fileio import atomic_write

__all__ = [
    'FORMAT_NAME', 'FORMAT_VERSION', 'SUPPORTED_FORMAT_VERSIONS',
    'NOTICE_PREFIX', 'CheckpointError', 'CheckpointNotFoundError',
    'UnsafeCheckpointError',
    'tensor_sha256', 'save_container', 'load_container'
]

FORMAT_NAME = 'mmquant-int'
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1, )

#: Start of the optional top-level key that carries a notice for humans
#: (see :func:`save_container`).
NOTICE_PREFIX = 'NOTICE: '

PathLike = Union[str, 'os.PathLike[str]']
MapLocation = Union[None, str, torch.device, Dict[str, str],
                    Callable[..., Any]]

_TOP_LEVEL_KEYS = ('format', 'format_version', 'meta', 'tensors',
                   'checksums', 'meta_sha256')
_HASH_BLOCK = 1 << 24


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, unsafe or of a wrong kind."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist.

    Also a :class:`FileNotFoundError`, so either can be caught.
    """


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled Python objects and is refused for safety."""


def _dtype_name(dtype: torch.dtype) -> str:
    """Return the short name of a dtype, e.g. ``'float32'``.

    Args:
        dtype: A torch dtype.

    Returns:
        ``str(dtype)`` without the ``'torch.'`` prefix.
    """
    return str(dtype).replace('torch.', '', 1)


def tensor_sha256(t: torch.Tensor) -> str:
    """Return the SHA-256 checksum of a tensor's dtype, shape and data.

    The digest covers the UTF-8 header ``'<dtype>;<shape>\\n'`` followed by
    the tensor's raw bytes in C (row-major) order and native (little-endian)
    byte order, where ``<dtype>`` is e.g. ``float32`` and ``<shape>`` is the
    JSON list of the sizes, e.g. ``[64, 3, 3, 3]`` (``[]`` for a scalar).

    Args:
        t: Any strided tensor, on any device.

    Returns:
        The lowercase hexadecimal SHA-256 digest.

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


def _check_json(value: Any, where: str) -> None:
    """Check that ``value`` round-trips exactly through strict JSON.

    Args:
        value: The value to check.
        where: Its location, used in error messages (e.g. ``"meta['a']"``).

    Raises:
        TypeError: If a value or key is not JSON-serialisable.
        ValueError: If a float is NaN or infinite.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f'{where} is {value!r}; NaN and infinity are '
                             'not allowed in checkpoint meta (strict JSON)')
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f'{where}[{i}]')
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f'{where} has a key {key!r} of type '
                    f'{type(key).__name__}; checkpoint meta keys must be str '
                    '(JSON objects only have string keys)')
            _check_json(item, f'{where}[{key!r}]')
        return
    raise TypeError(f'{where} is of type {type(value).__module__}.'
                    f'{type(value).__qualname__}, which is not '
                    'JSON-serialisable; checkpoint meta may only hold dict, '
                    'list, tuple, str, int, float, bool and None (convert '
                    'tensors/numpy values with .tolist() or .item())')


def _encode_meta(meta: Mapping[str, Any]) -> str:
    """Validate ``meta`` and serialise it to canonical JSON text.

    Args:
        meta: The metadata dict.

    Returns:
        JSON text with sorted keys.

    Raises:
        TypeError: If ``meta`` is not a dict or holds non-JSON values.
        ValueError: If ``meta`` holds NaN or infinite floats.
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f'meta must be a dict, got {type(meta).__name__}')
    meta = dict(meta)
    _check_json(meta, 'meta')
    return json.dumps(meta, sort_keys=True, allow_nan=False,
                      ensure_ascii=False, separators=(',', ':'))


def _prepare_tensors(
        tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Validate tensors and make CPU, contiguous, storage-owning copies.

    Args:
        tensors: Mapping from names to tensors.

    Returns:
        A new dict with the same names and order.

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
        path: Destination file.
        tensors: Mapping from str names to dense tensors (any device/dtype).
            They are stored as contiguous CPU clones in the given order.
        meta: JSON-able dict (str keys; dict, list, tuple, str, int, finite
            float, bool, None values).  Tuples are read back as lists.
        notice: A one-line text for humans, stored as the *name* of the
            first top-level key (``NOTICE_PREFIX + notice``, value
            ``None``). mmengine's runner, given the file as the checkpoint
            of a float model, prints the top-level keys it cannot load, so
            the notice is what such a user reads. Readers ignore it.

    Raises:
        TypeError: If a tensor name is not a str, a value is not a tensor,
            ``meta`` is not JSON-serialisable (the message names the
            offending entry) or ``notice`` is not a str.
        ValueError: If ``meta`` holds NaN/infinite floats.
        FileNotFoundError: If the parent directory does not exist.
        IsADirectoryError: If ``path`` is a directory.
        OSError: If writing fails.
    """
    path = osp.abspath(os.fspath(path))
    if notice is not None and not isinstance(notice, str):
        raise TypeError(
            f'notice must be a str, got {type(notice).__name__}')
    meta_json = _encode_meta(meta)
    data = _prepare_tensors(tensors)
    payload: Dict[str, Any] = {}
    if notice:
        payload[NOTICE_PREFIX + notice] = None
    payload.update({
        'format': FORMAT_NAME,
        'format_version': FORMAT_VERSION,
        'meta': meta_json,
        'tensors': data,
        'checksums': {name: tensor_sha256(t)
                      for name, t in data.items()},
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


_UNSAFE_GLOBAL_RE = re.compile(r'GLOBAL\s+([\w.]+)')
_WEIGHTS_ERROR_RE = re.compile(r'WeightsUnpickler error:\s*(.*?)(?:\n\n|$)',
                               re.S)


def _unsafe_globals(path: str) -> list:
    """List the globals a checkpoint needs beyond torch's default allowlist.

    Args:
        path: Checkpoint file.

    Returns:
        Fully qualified names; empty if they cannot be determined (e.g. a
        legacy, non-zip file).
    """
    get = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint',
                  None)
    if get is None:
        return []
    try:
        return list(get(path))
    except Exception:  # noqa: BLE001 - best effort diagnostics only
        return []


def _looks_like_torch_file(path: str) -> bool:
    """Tell whether a file starts like a torch.save file.

    Args:
        path: The file.

    Returns:
        True for a zip archive (the current format) or a pickle stream
        (the legacy format), False otherwise.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'


def _torch_load_checked(path: PathLike,
                        map_location: MapLocation = 'cpu',
                        kind: str = 'checkpoint',
                        unsafe_hint: str = '') -> Any:
    """Run ``torch.load(weights_only=True)`` with clear error messages.

    Args:
        path: File to load.
        map_location: Passed to :func:`torch.load`.
        kind: Human-readable kind of file for messages.
        unsafe_hint: Extra advice appended to the message of an
            :class:`UnsafeCheckpointError`.

    Returns:
        The unpickled object.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the file holds Python objects (or pickle
            constructs) that weights-only loading refuses.
        CheckpointError: If the file is a directory, truncated or corrupted.
    """
    path = os.fspath(path)
    if not osp.exists(path):
        raise CheckpointNotFoundError(f'{kind} file not found: {path!r}')
    if osp.isdir(path):
        raise CheckpointError(f'{kind} path is a directory, not a file: '
                              f'{path!r}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if ('Weights only load failed' not in msg
                or ('Unsupported global' not in msg
                    and not _looks_like_torch_file(path))):
            raise CheckpointError(
                f'{kind} {path!r} is truncated or corrupted: '
                f'{type(e).__name__}: {msg}') from e
        detail = _WEIGHTS_ERROR_RE.search(msg)
        detail_text = detail.group(1).strip() if detail else msg
        if not detail_text.endswith('.'):
            detail_text += '.'
        names = _unsafe_globals(path)
        match = _UNSAFE_GLOBAL_RE.search(msg)
        if match and match.group(1) not in names:
            names.insert(0, match.group(1))
        found = (f' It references: {", ".join(names)}.' if names else '')
        raise UnsafeCheckpointError(
            f'{kind} {path!r} contains pickled Python objects (or pickle '
            'constructs) that safe weights-only loading does not allow, '
            'so it is refused for safety; mmquant never loads files with '
            f'weights_only=False.{found} torch said: {detail_text}'
            f'{unsafe_hint}') from e
    except PermissionError as e:
        raise CheckpointError(f'cannot read {kind} {path!r}: {e}') from e
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise CheckpointError(
            f'{kind} {path!r} is truncated or corrupted: '
            f'{type(e).__name__}: {e}') from e


def load_container(
        path: PathLike,
        map_location: MapLocation = 'cpu',
        verify_checksums: bool = True,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Load and verify an INT checkpoint written by :func:`save_container`.

    The file is read with ``torch.load(weights_only=True)`` and no extra
    allowlist, so it can never execute code or build arbitrary objects.

    Args:
        path: Checkpoint file.
        map_location: Passed to :func:`torch.load` (default ``'cpu'``).
        verify_checksums: Whether to verify every tensor checksum (the meta
            checksum is always verified).

    Returns:
        ``(tensors, meta)``: the named tensors in stored order and the
        decoded meta dict.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the file contains pickled Python objects.
        CheckpointError: If the file is truncated or corrupted, is not an
            mmquant INT checkpoint (e.g. a float checkpoint), has an
            unsupported ``format_version``, is malformed, or a checksum
            does not match (the message names the tensor).
    """
    path = os.fspath(path)
    obj = _torch_load_checked(
        path, map_location, 'INT checkpoint',
        ' An mmquant INT checkpoint never contains Python objects; if this '
        'is a float checkpoint, load it with '
        'mmquant.checkpoint.load_float_checkpoint instead.')
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
        obj: The loaded object.
        path: Where it came from (for messages).
        verify_checksums: Whether to verify every tensor checksum.

    Returns:
        ``(tensors, meta)`` as :func:`load_container`.

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
    if hashlib.sha256(meta_json.encode('utf-8')).hexdigest() != meta_sha:
        raise CheckpointError(
            f'{path!r} is corrupted: meta checksum mismatch')
    try:
        meta = json.loads(meta_json)
    except ValueError as e:
        raise CheckpointError(f'{path!r} is corrupted: meta is not valid '
                              f'JSON ({e})') from e
    if not isinstance(meta, dict):
        raise CheckpointError(f'{path!r} is corrupted: meta is not a dict')
    for name, t in tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise CheckpointError(f'{path!r} is corrupted: entry {name!r} '
                                  'of tensors is not a named tensor')
        if name not in checksums:
            raise CheckpointError(
                f'{path!r} is corrupted: no checksum for tensor {name!r}')
    extra = [name for name in checksums if name not in tensors]
    if extra:
        raise CheckpointError(f'{path!r} is corrupted: checksums for '
                              f'missing tensor(s) {extra}')
    if verify_checksums:
        for name, t in tensors.items():
            if tensor_sha256(t) != checksums[name]:
                raise CheckpointError(
                    f'{path!r} is corrupted: checksum mismatch for tensor '
                    f'{name!r} (dtype={_dtype_name(t.dtype)}, '
                    f'shape={list(t.shape)})')
    return dict(tensors), meta
