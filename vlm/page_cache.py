"""How much of a file the kernel already holds in its page cache (Linux `mincore`), without reading it.

The worker's load reads every weight byte once before building the model (a sequential read with honest progress,
which fills the page cache for the load that follows). When the files are already cached (the usual case: the same
model loaded again, or pre-warmed) that read is a pure copy into a throwaway buffer, as long as the load itself:
`resident_fraction` lets the load skip it. No torch here; None wherever the answer is not known (not Linux, an
empty file, mmap refused), and the caller then reads as before.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

_PROT_READ, _MAP_SHARED = 0x1, 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value
_LOW_BIT = bytes(i & 1 for i in range(256))  # mincore sets bit 0 of each page's byte; the other bits are undefined


def _libc():
    if not os.uname().sysname == "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


_LIBC = _libc()


def resident_fraction(path: Path) -> float | None:
    """The share of `path`'s pages in the page cache (0..1), or None when it cannot be told. Maps the file without
    touching its pages (no read, no fault), asks the kernel, unmaps."""
    if _LIBC is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        addr = _LIBC.mmap(None, size, _PROT_READ, _MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _LIBC.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return bytes(vec).translate(_LOW_BIT).count(1) / pages
        finally:
            _LIBC.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)
