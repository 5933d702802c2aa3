"""Reading an untrusted ``torch.save`` file safely.

:func:`safe_torch_load` is the one place this package calls
:func:`torch.load`: always with ``weights_only=True``, only on a regular
file (a FIFO or a device is refused at once), after refusing a zip archive
whose members would inflate too much, and with errors that say what is
wrong with the file (missing, a directory, truncated, in the safetensors
format, holding pickled Python objects) without ever passing on torch's
advice to load unsafely.  The INT container (:mod:`.container`) and float
checkpoint loading (:mod:`.float_loading`) both read through it.
"""
import os
import pickle
import re
import stat
import zipfile
from typing import IO, Any, Callable, Dict, Optional, Tuple, Union

import torch

from .errors import (CheckpointError, CheckpointNotFoundError,
                     UnsafeCheckpointError)

__all__ = ['PathLike', 'MapLocation', 'safe_torch_load']

PathLike = Union[str, 'os.PathLike[str]']
MapLocation = Union[None, str, torch.device, Dict[str, str],
                    Callable[..., Any]]

#: Zip members of a file may expand to at most
#: ``max(_INFLATE_MIN_CAP, _INFLATE_RATIO * file size)`` bytes in all.
_INFLATE_MIN_CAP = 64 << 20
_INFLATE_RATIO = 8

_UNSAFE_GLOBAL_RE = re.compile(r'GLOBAL\s+([\w.]+)')
_WEIGHTS_ERROR_RE = re.compile(r'WeightsUnpickler error:\s*(.*?)(?:\n\n|$)',
                               re.S)
#: Words of torch's advice to load unsafely; never passed on.
_UNSAFE_ADVICE = ('safe_globals', 'weights_only', 'Please')
_FILE_KINDS = ((stat.S_ISFIFO, 'a FIFO (named pipe)'),
               (stat.S_ISCHR, 'a character device'),
               (stat.S_ISBLK, 'a block device'),
               (stat.S_ISSOCK, 'a socket'))


def _unsafe_globals(f: IO[bytes]) -> list:
    """List the globals a checkpoint needs beyond torch's default allowlist.

    Args:
        f (IO[bytes]): The open checkpoint file.

    Returns:
        list: Fully qualified names; empty if they cannot be determined (e.g. a
        legacy, non-zip file).
    """
    get = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint',
                  None)
    if get is None:
        return []
    try:
        f.seek(0)
        return list(get(f))
    except Exception:  # noqa: BLE001 - best effort diagnostics only
        return []


def _torch_reason(message: str) -> str:
    """Extract torch's diagnosis from a weights-only load error.

    Only the first sentence of the ``WeightsUnpickler error`` is kept, and
    nothing of torch's advice to allowlist globals or to load with
    ``weights_only`` off, which would be unsafe for an untrusted file.

    Args:
        message (str): The text of torch's ``UnpicklingError``.

    Returns:
        str: E.g. ``' torch: Unsupported global: GLOBAL os.system was not an
        allowed global by default.'``, or ``''``.
    """
    detail = _WEIGHTS_ERROR_RE.search(message)
    if detail is None:
        return ''
    first = re.split(r'(?<=\.)\s', detail.group(1).strip(), maxsplit=1)[0]
    if not first or any(word in first for word in _UNSAFE_ADVICE):
        return ''
    return f' torch: {first}' + ('' if first.endswith('.') else '.')


def _open_regular(path: str, kind: str) -> Tuple[IO[bytes], int]:
    """Open a checkpoint for reading, refusing anything but a regular file.

    The file is opened without blocking and checked with ``fstat`` on the
    open descriptor, so a FIFO, a device or a directory is refused at once
    (a FIFO would otherwise block until a writer appears).

    Args:
        path (str): The file.
        kind (str): Human-readable kind of file for messages.

    Returns:
        tuple: ``(file, size)``, the file opened in binary mode and its size.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        CheckpointError: If it is not a regular file or cannot be read.
    """
    flags = (os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0)
             | getattr(os, 'O_BINARY', 0) | getattr(os, 'O_CLOEXEC', 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise CheckpointNotFoundError(
            f'{kind} file not found: {path!r}') from e
    except IsADirectoryError as e:
        raise CheckpointError(f'{kind} path is a directory, not a file: '
                              f'{path!r}') from e
    except OSError as e:
        raise CheckpointError(
            f'cannot read {kind} {path!r}: {e.strerror or e}') from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f'{kind} path is a directory, not a file: '
                                  f'{path!r}')
        if not stat.S_ISREG(st.st_mode):
            what = next((name for test, name in _FILE_KINDS
                         if test(st.st_mode)), 'not a regular file')
            raise CheckpointError(
                f'{kind} path {path!r} is {what}, not a regular file; give '
                'the path of a checkpoint file')
        if hasattr(os, 'O_NONBLOCK'):
            os.set_blocking(fd, True)
        return os.fdopen(fd, 'rb'), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _check_zip_sizes(f: IO[bytes], size: int, path: str,
                     kind: str) -> None:
    """Refuse a zip archive whose members would expand too much.

    ``torch.save`` stores its members uncompressed, but a zip member may be
    deflate-compressed, and torch inflates such members into memory of the
    size their directory entry declares.  The declared sizes of all members
    together may not exceed ``max(64 MiB, 8 * size)``.  Only the central
    directory is read; nothing is inflated.

    Args:
        f (IO[bytes]): The open file, at any position (left at 0).
        size (int): Its size in bytes.
        path (str): The file, for messages.
        kind (str): Human-readable kind of file for messages.

    Raises:
        CheckpointError: If the zip directory cannot be read or the members
            would expand beyond the limit.
    """
    f.seek(0)
    if f.read(4) != b'PK\x03\x04':
        f.seek(0)
        return
    try:
        with zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
    except Exception as e:  # noqa: BLE001 - zipfile raises many kinds
        raise CheckpointError(
            f'{kind} {path!r} is truncated or corrupted: its zip directory '
            f'cannot be read ({type(e).__name__}: {e})') from e
    f.seek(0)
    expanded = sum(info.file_size for info in infos)
    cap = max(_INFLATE_MIN_CAP, _INFLATE_RATIO * size)
    if expanded > cap:
        packed = sum(1 for info in infos
                     if info.compress_type != zipfile.ZIP_STORED)
        raise CheckpointError(
            f'{kind} {path!r} is refused: its {len(infos)} zip members '
            f'({packed} compressed) would expand to {expanded} bytes, more '
            f'than the {cap} bytes allowed for a file of {size} bytes '
            '(max(64 MiB, 8 x the file size)); torch.save never compresses '
            'its members, so this file was not written by torch.save or '
            'was tampered with')


def _is_safetensors(f: IO[bytes], size: int) -> bool:
    """Tell whether a file is in the safetensors format.

    A safetensors file starts with the little-endian 64-bit length of the
    JSON header that follows it, and the header starts with ``{``.

    Args:
        f (IO[bytes]): The open file (left at position 0).
        size (int): Its size in bytes.

    Returns:
        bool: True if the first bytes have that layout.
    """
    f.seek(0)
    head = f.read(9)
    f.seek(0)
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], 'little')
    return head[8:9] == b'{' and 2 <= length <= size - 8


def safe_torch_load(
        path: PathLike,
        map_location: MapLocation = 'cpu',
        kind: str = 'checkpoint',
        unsafe_hint: str = '',
        safetensors_loader: Optional[Callable[..., Any]] = None) -> Any:
    """Run ``torch.load(weights_only=True)`` with clear error messages.

    Only a regular file is read (a FIFO or a device is refused at once),
    and a zip archive whose members would expand beyond
    ``max(64 MiB, 8 x file size)`` is refused before anything is inflated.

    Args:
        path (str or os.PathLike): File to load.
        map_location (str or torch.device or dict or callable): Passed to
            :func:`torch.load`.
        kind (str): Human-readable kind of file for messages.
        unsafe_hint (str): Extra advice appended to the message of an
            :class:`UnsafeCheckpointError`.
        safetensors_loader (callable, optional): Reads a file in the
            safetensors format: ``loader(file, path, map_location)``. If None,
            such a file is refused with an error that names the format.

    Returns:
        Any: The unpickled object.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the file holds Python objects (or pickle
            constructs) that weights-only loading refuses.
        CheckpointError: If the file is a directory or not a regular file,
            a zip bomb, a safetensors file nobody reads here, truncated or
            corrupted.
    """
    path = os.fspath(path)
    f, size = _open_regular(path, kind)
    with f:
        _check_zip_sizes(f, size, path, kind)
        if _is_safetensors(f, size):
            if safetensors_loader is None:
                raise CheckpointError(
                    f'{kind} {path!r} is in the safetensors format, not a '
                    'torch.save file; mmquant INT checkpoints are torch.save '
                    'files (tools/ptq.py writes them), and a float '
                    'checkpoint in the safetensors format loads with '
                    'mmquant.checkpoint.load_float_checkpoint')
            return safetensors_loader(f, path, map_location)
        try:
            return torch.load(f, map_location=map_location,
                              weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            f.seek(0)
            head = f.read(4)
            looks_torch = (head.startswith(b'PK\x03\x04')
                           or head[:1] == b'\x80')
            if ('Weights only load failed' not in msg
                    or ('Unsupported global' not in msg
                        and not looks_torch)):
                raise CheckpointError(
                    f'{kind} {path!r} is truncated or corrupted: '
                    f'{type(e).__name__}: {msg}') from e
            names = sorted(set(_unsafe_globals(f)))
            match = _UNSAFE_GLOBAL_RE.search(msg)
            # torch names builtins without their module: getattr
            if match and not {match.group(1), 'builtins.' + match.group(1)
                              } & set(names):
                names.insert(0, match.group(1))
            found = (f' It references: {", ".join(names)}.'
                     if names else '')
            raise UnsafeCheckpointError(
                f'{kind} {path!r} contains pickled Python objects (or '
                'pickle constructs) that safe, weights-only loading does '
                'not allow, so it is refused for safety: mmquant never '
                f'runs code from a checkpoint file.{found}'
                f'{_torch_reason(msg)}{unsafe_hint}') from e
        except Exception as e:  # noqa: BLE001 - torch raises many kinds
            raise CheckpointError(
                f'{kind} {path!r} is truncated or corrupted: '
                f'{type(e).__name__}: {e}') from e
