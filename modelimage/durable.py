"""Writes that count as done only once they would survive a power cut.

A file is written to a temporary file beside it, ``fsync``'d, renamed over
the old one, and the folder holding it is ``fsync``'d (POSIX: a rename is
durable only once its directory is synced; this is what ``rename(2)`` and
ext4's ``auto_da_alloc`` notes say, and what SQLite and containerd's
content store do). One helper for every small file modelimage replaces:
a layout's ``index.json`` (:mod:`modelimage.layout.durable`), a pull's
record (:mod:`modelimage.pull.state`), ``DEST/model.sig``
(:mod:`modelimage.signing.pulled`), docker's ``config.json``
(:mod:`modelimage.registry.keychain`). Big files written front to back
(a pull's staged files, a layout's blobs) start their writeback as they go
(:func:`start_writeback`, :class:`Writeback`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make the entries of ``directory`` (renames, new names) durable. Raises OSError."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, *, mode: int | None = None, temp_prefix: str | None = None,
                  temp_suffix: str = ".new") -> None:
    """Replace ``path`` with ``data`` (bytes): a temporary file beside it
    (``temp_prefix`` + random + ``temp_suffix``; the prefix defaults to
    ``.NAME.``), fsynced, given ``mode`` (permission bits; None keeps
    mkstemp's 0600), renamed over ``path``, then the folder fsynced. On any error the temporary file is removed and
    the old ``path`` is left as it was; the error (OSError) is raised."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix if temp_prefix is not None else f".{path.name}.",
                               suffix=temp_suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Begin writing the dirty pages of ``fd`` in ``offset .. offset+length``
    (bytes) to the disk without waiting for them (Linux ``sync_file_range(2)``
    with ``SYNC_FILE_RANGE_WRITE``, through libc), so a later ``fsync`` waits
    for the tail only while the disk works beside the CPU. Durability still
    comes from that ``fsync``: this only starts it early. Best effort: a
    no-op where there is no such call, and its failures are ignored (they
    only mean no head start). Raises nothing."""
    _starter()(fd, offset, length)


WRITEBACK_STEP = 16 << 20  # bytes a file written front to back runs ahead of the writeback it asked for


class Writeback:
    """Starts the writeback of a file written front to back every ``step``
    bytes (:func:`start_writeback`; default :data:`WRITEBACK_STEP`): call
    :meth:`wrote` with each write's length. ``offset`` is where the writes
    begin (bytes)."""

    def __init__(self, fd: int, offset: int = 0, step: int = WRITEBACK_STEP):
        self.fd, self.step = fd, step
        self.started = self.end = offset  # bytes: writeback asked up to started; written up to end

    def wrote(self, n: int) -> None:
        self.end += n
        if self.end - self.started >= self.step:
            start_writeback(self.fd, self.started, self.end - self.started)
            self.started = self.end


def _starter() -> Callable[[int, int, int], None]:
    global _STARTER
    if _STARTER is None:
        _STARTER = _no_writeback
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)
                call = libc.sync_file_range
                call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
                call.restype = ctypes.c_int
            except (OSError, AttributeError, ImportError):
                pass
            else:
                def start(fd: int, offset: int, length: int) -> None:
                    call(fd, offset, length, SYNC_FILE_RANGE_WRITE)

                _STARTER = start
    return _STARTER


def _no_writeback(fd: int, offset: int, length: int) -> None:
    pass


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>
_STARTER: Callable[[int, int, int], None] | None = None
