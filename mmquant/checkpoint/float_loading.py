"""Safe loading of OpenMMLab float checkpoints.

Float checkpoints written by mmengine's ``Runner`` hold, besides the
``state_dict``, training metadata: the ``message_hub`` state with
:class:`mmengine.logging.HistoryBuffer` objects wrapping numpy arrays, numpy
scalars and dtypes, ``collections`` containers, optimizer and scheduler
states.  ``torch.load(weights_only=True)`` refuses these by default.

This module loads such files with ``weights_only=True`` plus an explicit,
minimal allowlist of data-only classes (see :func:`float_safe_globals`);
it never falls back to ``weights_only=False``.  Anything outside the
allowlist is refused with an error naming the offending global.  Files in
the safetensors format are read with the ``safetensors`` package when it
is installed.
"""
import argparse
import hashlib
import importlib
import os
from collections import OrderedDict
from typing import IO, Any, Dict, Iterable, List, Mapping

import torch

from .errors import CheckpointError
from .safe_load import MapLocation, PathLike, safe_torch_load

__all__ = [
    'float_safe_globals', 'load_float_checkpoint_file', 'extract_state_dict',
    'load_float_checkpoint', 'sha256_file'
]

_HISTORY_BUFFER = 'mmengine.logging.history_buffer.HistoryBuffer'

_UNSAFE_HINT = (
    ' To use a file you trust, convert it once to a weights-only file in '
    'the environment that trained the model, from the model object '
    'itself: `torch.save({"state_dict": model.state_dict()}, '
    '"weights.pth")` (mmengine: `runner.model.state_dict()`), and quantize '
    'weights.pth. Classes it names that are plain data containers you '
    'trust may instead be passed as `extra_safe_globals=[...]`; never '
    'allow functions such as builtins.getattr, eval or exec, which let a '
    'file run code.')


def _import_attr(dotted: str) -> Any:
    """Import ``module.attr`` and return the attribute.

    Args:
        dotted (str): Fully qualified name, e.g. ``'numpy.ndarray'``.

    Returns:
        Any: The attribute.

    Raises:
        ImportError: If the module cannot be imported.
        AttributeError: If the attribute is missing.
    """
    module, _, name = dotted.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _numpy_globals() -> List[Any]:
    """Return the numpy entries of the allowlist.

    numpy arrays pickle as ``_reconstruct(ndarray, shape, dtype)`` plus a
    ``BUILD`` with the raw bytes; numpy scalars as ``scalar(dtype, bytes)``;
    dtypes as ``dtype(str, ...)`` plus a ``BUILD`` on the dtype instance,
    whose type is a ``numpy.dtypes.*DType`` class on numpy >= 1.25.  Object
    arrays unpickle their elements through the same restricted unpickler.

    Returns:
        list: Classes/functions, and ``(object, name)`` pairs mapping the names
        used by numpy 1.x and 2.x pickles to the installed objects.
        Empty if numpy is not installed.
    """
    try:
        import numpy as np
    except ImportError:
        return []
    entries: List[Any] = [np.ndarray, np.dtype]
    funcs = {}
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        for name in ('_reconstruct', 'scalar'):
            if name not in funcs:
                try:
                    funcs[name] = _import_attr(f'{module}.{name}')
                except (ImportError, AttributeError):
                    pass
    for name, func in funcs.items():
        for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
            entries.append((func, f'{module}.{name}'))
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if (name.endswith('DType') and isinstance(obj, type)
                    and issubclass(obj, np.dtype)):
                entries.append(obj)
    return entries


def _history_buffer_globals() -> List[Any]:
    """Return the mmengine ``HistoryBuffer`` entries of the allowlist.

    ``HistoryBuffer.__getstate__`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'min')`` etc.  Instead of allowlisting the
    builtin ``getattr`` (which would reach arbitrary attributes), the
    ``builtins.getattr`` global is mapped to a restricted version that only
    resolves plain functions defined on ``HistoryBuffer`` itself.

    Returns:
        list: The entries; empty if mmengine is not installed.
    """
    try:
        history_buffer = _import_attr(_HISTORY_BUFFER)
    except (ImportError, AttributeError):
        return []

    def restricted_getattr(obj: Any, name: str) -> Any:
        """Resolve ``getattr(HistoryBuffer, name)`` for its own methods.

        Args:
            obj (Any): Must be the ``HistoryBuffer`` class.
            name (str): Name of a public function defined on it.

        Returns:
            Any: The function.

        Raises:
            pickle.UnpicklingError: For any other object or attribute.
        """
        import pickle
        func = vars(history_buffer).get(name) if isinstance(
            name, str) else None
        if (obj is not history_buffer or name.startswith('_')
                or type(func).__name__ != 'function'):
            raise pickle.UnpicklingError(
                f'Unsupported global: GLOBAL builtins.getattr on {obj!r}, '
                f'{name!r} (mmquant only allows getattr(HistoryBuffer, '
                '<its own public method>))')
        return func

    return [
        history_buffer, (restricted_getattr, 'builtins.getattr'),
        (restricted_getattr, '__builtin__.getattr')
    ]


def float_safe_globals() -> List[Any]:
    """Return the allowlist used to load OpenMMLab float checkpoints.

    It holds only data containers: numpy arrays, scalars and dtypes,
    mmengine's ``HistoryBuffer`` (with a ``getattr`` restricted to its own
    methods) and :class:`argparse.Namespace` (found in some upstream
    checkpoints with a ``model`` key).  ``collections.OrderedDict``,
    ``collections.Counter``, tensors, parameters and plain Python
    containers are allowed by torch itself.  numpy and mmengine are imported
    here, lazily; missing packages just shorten the list.

    Returns:
        list: Entries suitable for :func:`torch.serialization.safe_globals`.
    """
    return (_numpy_globals() + _history_buffer_globals() +
            [argparse.Namespace])


def load_float_checkpoint_file(
        path: PathLike,
        map_location: MapLocation = 'cpu',
        extra_safe_globals: Iterable[Any] = (),
) -> Any:
    """Load a whole float checkpoint file safely.

    Uses ``torch.load(weights_only=True)`` inside
    ``torch.serialization.safe_globals(...)`` with
    :func:`float_safe_globals` plus ``extra_safe_globals``; never
    ``weights_only=False``.  Globals the caller had already allowlisted stay
    allowlisted afterwards.  A file in the safetensors format is read with
    the ``safetensors`` package instead (``{name: tensor}``).  Only a
    regular file is read, and a zip whose members would expand beyond
    ``max(64 MiB, 8 x file size)`` is refused before anything is inflated.

    Args:
        path (str or os.PathLike): Checkpoint file.
        map_location (str or torch.device or dict or callable): Passed to
            :func:`torch.load` (default ``'cpu'``).
        extra_safe_globals (Iterable[Any]): Additional classes/functions (or
            ``(object, 'module.name')`` pairs) the caller trusts.

    Returns:
        Any: The unpickled checkpoint (usually a dict with ``state_dict``,
        ``meta``, ``message_hub`` ... keys).

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the file needs a global outside the
            allowlist; the message names it and explains how to convert a
            trusted file safely.
        CheckpointError: If the file is not a regular file, a zip bomb,
            truncated or corrupted, or in the safetensors format without
            the ``safetensors`` package installed.
        RuntimeError: If torch is older than 2.6.
    """
    if not hasattr(torch.serialization, 'safe_globals'):
        raise RuntimeError(
            'safe loading of float checkpoints needs torch>=2.6 '
            f'(torch.serialization.safe_globals); found {torch.__version__}')
    wanted = float_safe_globals() + list(extra_safe_globals)
    already = set()
    get_safe = getattr(torch.serialization, 'get_safe_globals', None)
    if get_safe is not None:
        already = {id(g) if not isinstance(g, tuple) else g
                   for g in get_safe()}
    new = []
    for g in wanted:
        key = g if isinstance(g, tuple) else id(g)
        if key not in already:
            already.add(key)
            new.append(g)
    with torch.serialization.safe_globals(new):
        return safe_torch_load(path, map_location, 'float checkpoint',
                               _UNSAFE_HINT, _load_safetensors)


def _load_safetensors(f: IO[bytes], path: str,
                      map_location: MapLocation) -> Dict[str, Any]:
    """Read a float checkpoint in the safetensors format.

    The format holds only named tensors and string metadata, so reading it
    cannot run code.  It needs the ``safetensors`` package.

    Args:
        f (IO[bytes]): The open file.
        path (str): Its path, for messages.
        map_location (str or torch.device or dict or callable): A device
            (``str`` or ``torch.device``) to move the tensors to; anything else
            leaves them on the CPU.

    Returns:
        dict: ``{name: tensor}`` in the file's order.

    Raises:
        CheckpointError: If ``safetensors`` is not installed or the file is
            malformed.
    """
    try:
        from safetensors.torch import load as load_safetensors
    except ImportError as e:
        raise CheckpointError(
            f'float checkpoint {path!r} is in the safetensors format, '
            'which needs the safetensors package: pip install safetensors '
            '(or save the weights with torch.save)') from e
    try:
        tensors = load_safetensors(f.read())
    except Exception as e:  # noqa: BLE001 - safetensors raises many kinds
        raise CheckpointError(
            f'float checkpoint {path!r} is a truncated or corrupted '
            f'safetensors file: {type(e).__name__}: {e}') from e
    if isinstance(map_location, (str, torch.device)):
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    return tensors


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> 'OrderedDict':
    """Strip a ``module.`` prefix if every key has it.

    Args:
        state_dict (dict): A state dict, possibly with ``_metadata``.

    Returns:
        OrderedDict: A new state dict (with adjusted ``_metadata`` if
        present).
    """
    prefix = 'module.'
    metadata = getattr(state_dict, '_metadata', None)
    strip = bool(state_dict) and all(
        k.startswith(prefix) for k in state_dict)
    out = OrderedDict((k[len(prefix):] if strip else k, v)
                      for k, v in state_dict.items())
    if metadata is not None:
        if strip:
            new_meta = OrderedDict()
            for k, v in metadata.items():
                if k == 'module':
                    new_meta[''] = v
                elif k.startswith(prefix):
                    new_meta[k[len(prefix):]] = v
            metadata = new_meta
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def extract_state_dict(checkpoint: Any) -> 'OrderedDict[str, Any]':
    """Extract the model state dict from a loaded float checkpoint.

    Follows mmengine's conventions: use ``checkpoint['state_dict']`` if
    present, else ``checkpoint['model']`` if it is a dict, else the
    checkpoint itself; then strip a ``module.`` prefix (DataParallel /
    DistributedDataParallel) if all keys carry it.  The state dict's
    ``_metadata`` (module versions) is kept.

    Args:
        checkpoint (Any): The object returned by
            :func:`load_float_checkpoint_file`.

    Returns:
        OrderedDict: The state dict, str names to values (tensors).

    Raises:
        CheckpointError: If no state dict with str keys and at least one
            tensor can be found.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError('a float checkpoint must be a dict, got '
                              f'{type(checkpoint).__name__}')
    if 'state_dict' in checkpoint:
        state_dict = checkpoint['state_dict']
    elif isinstance(checkpoint.get('model'), Mapping):
        state_dict = checkpoint['model']
    else:
        state_dict = checkpoint
    if not isinstance(state_dict, Mapping):
        raise CheckpointError('the checkpoint state dict must be a dict, '
                              f'got {type(state_dict).__name__}')
    bad = [k for k in state_dict if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f'state dict keys must be str, got {bad[:5]}')
    if not any(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(
            'no state dict found in the checkpoint: expected a '
            "'state_dict' or 'model' entry, or a dict of tensors; top-level "
            f'keys are {sorted(map(str, checkpoint))[:20]}')
    return _strip_module_prefix(state_dict)


def load_float_checkpoint(
        path: PathLike,
        map_location: MapLocation = 'cpu',
        extra_safe_globals: Iterable[Any] = (),
) -> 'OrderedDict[str, Any]':
    """Safely load the model state dict of an OpenMMLab float checkpoint.

    Equivalent to ``extract_state_dict(load_float_checkpoint_file(...))``.

    Args:
        path (str or os.PathLike): Checkpoint file (e.g. an mmengine
            ``epoch_N.pth`` or a released mmpretrain/mmdet model).
        map_location (str or torch.device or dict or callable): Passed to
            :func:`torch.load` (default ``'cpu'``).
        extra_safe_globals (Iterable[Any]): Additional classes/functions the
            caller trusts.

    Returns:
        OrderedDict: The state dict, str names to tensors.

    Raises:
        CheckpointNotFoundError: If ``path`` does not exist.
        UnsafeCheckpointError: If the file needs a global outside the
            allowlist (the message names it).
        CheckpointError: If the file is truncated, corrupted, or holds no
            state dict.
    """
    checkpoint = load_float_checkpoint_file(path, map_location,
                                            extra_safe_globals)
    return extract_state_dict(checkpoint)


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the SHA-256 of a file's bytes, reading it in chunks.

    Args:
        path (str or os.PathLike): The file.
        chunk_size (int): Bytes read per step.

    Returns:
        str: The lowercase hexadecimal digest.

    Raises:
        OSError: If the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(os.fspath(path), 'rb') as f:
        for block in iter(lambda: f.read(chunk_size), b''):
            digest.update(block)
    return digest.hexdigest()
