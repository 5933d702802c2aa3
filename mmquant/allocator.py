"""Keep freed memory in the process (glibc), for the command-line tools.

glibc's ``malloc`` serves large blocks (the activations, im2col rows and
statistics of a calibration run, tens to hundreds of MB each) with
``mmap`` and hands them back to the kernel on ``free``; the next block of
that size is page-faulted in again, page by page. A calibration run
allocates such blocks by the thousand: measured on the 2-core development
machine, a fast-mode run of torchvision MobileNetV2 (128 images at
224 px) took 7.5 million page faults and 14.6 s of system time, 31 % of
its wall time ([docs/ptq_speed.md](../docs/ptq_speed.md)). Raising
glibc's mmap and trim thresholds to their maximum (``mallopt``; what the
environment variables ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` set at start-up) keeps freed blocks for reuse
instead; the process's resident memory then stays near its peak until it
exits, which suits a one-shot tool. One arena for all threads
(``MALLOC_ARENA_MAX=1``): the threads of error-compensated mode's one
pass (:mod:`mmquant.quantization.one_pass`, one running at a time) would
otherwise each get an arena of 64 MB heaps, which serves a larger block
with ``mmap`` whatever the thresholds.

:func:`keep_freed_memory` changes the whole process, so the library never
calls it: ``tools/ptq.py``, ``tools/test.py`` and the benchmark scripts
do, when run as commands. ``MMQUANT_KEEP_FREED_MEMORY=0`` turns it off.
"""
import ctypes
import ctypes.util
import os
import sys

__all__ = ['keep_freed_memory']

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MAX_INT = 2**31 - 1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to their maximum and use
    one arena for the threads started from now on.

    Returns:
        bool: Whether all three were set: False off Linux/glibc, when
        ``MMQUANT_KEEP_FREED_MEMORY=0``, or when ``mallopt`` refused.
    """
    if os.environ.get('MMQUANT_KEEP_FREED_MEMORY', '1') == '0':
        return False
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all([mallopt(_M_MMAP_THRESHOLD, _MAX_INT),
                mallopt(_M_TRIM_THRESHOLD, _MAX_INT),
                mallopt(_M_ARENA_MAX, 1)])
