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
from typing import IO, Any, Callable, Tuple

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
    """
    dirpath, basename = osp.split(osp.abspath(os.fspath(path)))
    fd, tmp = _open_temp(dirpath, basename)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, osp.join(dirpath, basename))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
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
