"""Atomic file writes: a temporary file next to the target, then a rename.

Every file mmquant and its tools write (INT checkpoints, float benchmark
checkpoints, reports, benchmark results and tables) goes through
:func:`atomic_write`, so an interrupted or failing write never leaves a
partial file: the target is either the previous file or the new one.
"""
import errno
import os
import os.path as osp
import secrets
from typing import IO, Any, Callable, Optional, Tuple

__all__ = ['atomic_write', 'save_atomic', 'write_text_atomic']


def _fsync_dir(dirpath: str) -> None:
    """Flush a directory entry to disk where the platform supports it.

    Args:
        dirpath: The directory to sync.

    Raises:
        OSError: If syncing fails for a reason other than lack of support.
    """
    if os.name == 'nt':  # Directories cannot be opened for fsync there.
        return
    fd = os.open(dirpath, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _open_temp(dirpath: str, basename: str) -> Tuple[int, str]:
    """Create a new, exclusive temporary file next to the final file.

    The file is created with mode ``0o666`` so that the process umask
    applies, as for a file created by ``open(path, 'wb')``.

    Args:
        dirpath: Directory of the final file.
        basename: Name of the final file.

    Returns:
        ``(fd, temp_path)``.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0)
    flags |= getattr(os, 'O_CLOEXEC', 0)
    while True:
        # Keep the name well under NAME_MAX (255) for long basenames.
        tmp = osp.join(dirpath,
                       f'.{basename[:200]}.{secrets.token_hex(6)}.tmp')
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


#: errnos of a full disk (or of an exhausted disk quota).
_DISK_FULL = tuple(
    getattr(errno, name) for name in ('ENOSPC', 'EDQUOT')
    if hasattr(errno, name))


class _WatchedFile:
    """A binary file that remembers the first ``OSError`` of a write.

    ``torch.save`` writes through a C++ writer that may turn the
    ``OSError`` of a full disk into a ``RuntimeError`` without its errno;
    the error recorded here is what :func:`atomic_write` reports.

    Args:
        f: The file to forward to.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        """Write ``data``, recording an ``OSError``.

        Args:
            data: A bytes-like object.

        Returns:
            The number of bytes written.
        """
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        """Flush the file, recording an ``OSError``."""
        try:
            self._f.flush()
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str) -> Any:
        """Forward everything else to the file.

        Args:
            name: Attribute name.

        Returns:
            The file's attribute.
        """
        return getattr(self._f, name)


def _disk_full(error: BaseException,
               recorded: Optional[OSError]) -> Optional[OSError]:
    """Find the full-disk ``OSError`` behind a failed write, if any.

    Args:
        error: The exception the write raised.
        recorded: The first ``OSError`` the file saw, if any.

    Returns:
        The ``OSError`` with ``ENOSPC``/``EDQUOT``, or None.
    """
    seen = set()
    todo = [recorded, error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return e
        todo += [e.__cause__, e.__context__]
    return None


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file atomically through ``write(binary_file)``.

    ``write`` fills a new temporary file in the destination directory,
    which is flushed and fsync'ed, moved onto ``path`` with
    :func:`os.replace`, and the directory is fsync'ed. If anything fails,
    the temporary file is removed and ``path`` is left as it was (absent,
    or the previous file). The parent directory must exist.

    Args:
        path (str): Destination file.
        write (callable): Writes the content to the open binary file.

    Raises:
        OSError: If writing fails. A full disk (or quota) raises an
            ``OSError`` with ``errno.ENOSPC`` (``EDQUOT``) whose message
            names the file and the directory, whatever the writer raised
            (``torch.save`` reports it as a ``RuntimeError``).
    """
    dirpath, basename = osp.split(osp.abspath(os.fspath(path)))
    fd, tmp = _open_temp(dirpath, basename)
    watched = None
    try:
        with os.fdopen(fd, 'wb') as f:
            watched = _WatchedFile(f)
            write(watched)
            watched.flush()
            os.fsync(f.fileno())
        os.replace(tmp, osp.join(dirpath, basename))
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        full = _disk_full(e, watched.error if watched else None)
        if full is None:
            raise
        raise OSError(
            full.errno,
            f'cannot write {osp.join(dirpath, basename)!r}: the disk '
            f'holding {dirpath!r} is full ({full.strerror}); free some '
            'space there or write to another directory (nothing was '
            'written)') from e
    _fsync_dir(dirpath)


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj)`` atomically (see :func:`atomic_write`).

    Args:
        obj: What to save.
        path (str): Destination; its folder is created if needed.
    """
    import torch
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write`).

    Args:
        path (str): Destination; its folder is created if needed.
        text (str): The content.
    """
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))
