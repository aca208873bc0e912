"""File-system moves that never leave a destination empty: renameat2 on Linux, careful renames elsewhere."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from pathlib import Path

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.renameat2  # noqa: B018  (glibc >= 2.28 exports it)
    except (OSError, AttributeError):
        _libc = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True when the kernel did it; False when renameat2 or the flag is unsupported here; OSError otherwise."""
    if _libc is None:
        return False
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):  # old kernel, or a file system without the flag
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False when this system cannot (the caller falls back)."""
    return _renameat2(a, b, RENAME_EXCHANGE)


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move src to dst, failing with FileExistsError if anything is at dst, even something that appeared late."""
    if _renameat2(src, dst, RENAME_NOREPLACE):
        return
    # Elsewhere: a directory renamed onto a non-empty directory fails by itself; an empty one or a file would
    # be replaced, so refuse those first (a narrow race remains where renameat2 is missing).
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)
