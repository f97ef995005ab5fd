"""Writes that count as done only once they would survive a power cut.

A file is written to a temporary file beside it, ``fsync``'d, renamed over
the old one, and the folder holding it is ``fsync``'d (POSIX: a rename is
durable only once its directory is synced; this is what ``rename(2)`` and
ext4's ``auto_da_alloc`` notes say, and what SQLite and containerd's
content store do). One helper for every small file modelimage replaces:
a layout's ``index.json`` (:mod:`modelimage.layout.durable`), a pull's
record (:mod:`modelimage.pull.state`), ``DEST/model.sig``
(:mod:`modelimage.signing.pulled`), docker's ``config.json``
(:mod:`modelimage.registry.keychain`).
"""

from __future__ import annotations

import os
import tempfile
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
