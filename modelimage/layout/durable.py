"""Files that count as written only once they would survive a power cut.

A blob or ``index.json`` is written to a temporary file, ``fsync``'d, then
renamed into place, and the directory holding it is ``fsync``'d (POSIX:
a rename is durable only once its directory is synced; this is what
``rename(2)`` and ext4's ``auto_da_alloc`` notes say, and what SQLite and
containerd's content store do). Without it, a crash can leave a layout
whose ``index.json`` names blobs that are empty (issue 15).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..durable import write_durably
from ..errors import OutputError


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` into ``path``, mode 0644 (:func:`modelimage.durable.write_durably`:
    temp file, fsync, rename, fsync of the directory). Raises
    :class:`OutputError` (one line) on any OSError; the temp file never
    stays behind."""
    try:
        write_durably(path, data, mode=0o644, temp_prefix=f".{path.name}.partial-", temp_suffix="")
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None


class BlobFile:
    """A blob being written to a temporary file in ``blobs/sha256``; on
    :meth:`commit` it is synced and renamed to its digest (the caller syncs
    the directory once, before anything names the blob)."""

    def __init__(self, blobs: Path):
        fd, name = tempfile.mkstemp(prefix=".partial-", dir=blobs)
        self.tmp = Path(name)
        self.f: BinaryIO = os.fdopen(fd, "wb", buffering=0)
        self.blobs = blobs

    def write(self, data: bytes | memoryview) -> None:
        try:
            self.f.write(data)
        except OSError as e:  # a full disk, a quota: one line, and the caller cleans up
            raise self.error(e) from None

    def fileno(self) -> int:
        return self.f.fileno()

    def error(self, e: OSError) -> OutputError:
        return OutputError(f"{self.blobs.parent.parent}: cannot write: {e.strerror or e}")

    def commit(self, digest: str) -> None:
        try:
            os.fsync(self.f.fileno())
            self.f.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.blobs / digest.split(":", 1)[1])
        except OSError as e:
            self.abort()
            raise self.error(e) from None

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on ``directory`` itself (no lock file)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_empty(dirs: list[Path]) -> None:
    """Remove the directories a failed run created, innermost first, while
    they are empty (another run may be writing beside us)."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return
