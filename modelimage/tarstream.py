"""Deterministic tar layers, written and hashed in one streaming pass.

Every entry gets the same metadata whatever the source machine says: uid/gid
0, no user or group names, mode 0644 for files and 0755 for directories, one
fixed mtime. Entries are written in the order the plan gives (sorted), with
every parent directory first. Headers are POSIX pax when a name or size needs
it (long paths, files over 8 GiB), plain ustar otherwise; the archive ends
with two zero blocks, like Go's archive/tar, and no record padding.

The layer writer reads each source range once into a reused buffer, feeds
the bytes to the blob's sha256, the file's sha256 and the sink, and never
holds more than one buffer of a weight file in memory.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal as TypingLiteral
from typing import Protocol

from .content import FileRange, Literal, VirtualFile
from .errors import SourceError

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
FILE_MODE = 0o644
DIR_MODE = 0o755
CHUNK = 4 << 20  # read size: big enough to amortize syscalls, small enough for RSS

Compression = TypingLiteral["none", "gzip"]
COMPRESSIONS: tuple[str, ...] = ("none", "gzip")


class BlobSink(Protocol):
    """Where layer bytes go (a temp file in a layout, an upload...)."""

    def write(self, data: bytes | memoryview) -> None: ...


def header(name: str, size: int, *, directory: bool = False, mtime: int = 0) -> bytes:
    """The tar header block(s) for one entry: deterministic bytes."""
    info = tarfile.TarInfo(name.rstrip("/") + "/" if directory else name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = DIR_MODE if directory else FILE_MODE
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> int:
    return -size % BLOCK


def parent_dirs(paths: Iterable[str]) -> list[str]:
    """Every ancestor directory of ``paths`` (POSIX, relative), sorted so a
    parent always precedes its children."""
    dirs: set[str] = set()
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return sorted(dirs)


@dataclass(frozen=True)
class Entry:
    """A file placed at ``path`` (relative to the image root) in a layer."""

    path: str
    content: VirtualFile

    @property
    def size(self) -> int:
        return self.content.size


def layer_size(entries: Sequence[Entry], mtime: int = 0) -> int:
    """Exact size of the uncompressed tar that :func:`write_layer` produces."""
    total = len(END_OF_ARCHIVE)
    for d in parent_dirs(e.path for e in entries):
        total += len(header(d, 0, directory=True, mtime=mtime))
    for e in entries:
        total += len(header(e.path, e.size, mtime=mtime)) + e.size + padding(e.size)
    return total


def entry_overhead(path: str, size: int, mtime: int = 0) -> int:
    """Bytes a file adds to a layer beyond its content (header + padding)."""
    return len(header(path, size, mtime=mtime)) + padding(size)


@dataclass(frozen=True)
class FileDigest:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LayerResult:
    digest: str  # sha256 of the blob as stored
    size: int  # blob size as stored
    diff_id: str  # sha256 of the uncompressed tar
    tar_size: int
    files: tuple[FileDigest, ...]


class _Gzip:
    """Deterministic gzip (mtime 0, fixed level) with wbits=31 framing."""

    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class _Writer:
    """Hashes the tar stream, optionally compresses, forwards to the sink."""

    def __init__(self, sink: BlobSink, compression: Compression, progress: Callable[[int], None] | None):
        self.sink = sink
        self.tar_hash = hashlib.sha256()
        self.tar_size = 0
        self.blob_hash = self.tar_hash if compression == "none" else hashlib.sha256()
        self.blob_size = 0
        self.gz = _Gzip() if compression == "gzip" else None
        self.progress = progress

    def write(self, data: bytes | memoryview) -> None:
        self.tar_hash.update(data)
        self.tar_size += len(data)
        if self.gz is not None:
            self._emit(self.gz.compress(data))
        else:
            self.blob_size += len(data)
            self.sink.write(data)
        if self.progress is not None:
            self.progress(len(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob_hash.update(data)
            self.blob_size += len(data)
            self.sink.write(data)

    def close(self) -> None:
        if self.gz is not None:
            self._emit(self.gz.flush())


def _copy_range(seg: FileRange, out: _Writer, file_hash: "hashlib._Hash", buf: bytearray, display: str) -> None:
    view = memoryview(buf)
    try:
        with open(seg.path, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size < seg.offset + seg.length:
                raise SourceError(f"{display}: {seg.path} is shorter than planned (changed while building?)")
            f.seek(seg.offset)
            left = seg.length
            while left:
                n = f.readinto(view[: min(left, len(buf))])
                if not n:
                    raise SourceError(f"{display}: {seg.path} ended early (changed while building?)")
                chunk = view[:n]
                file_hash.update(chunk)
                out.write(chunk)
                left -= n
    except OSError as e:
        raise SourceError(f"{seg.path}: cannot read: {e.strerror or e}") from e


def write_layer(
    entries: Sequence[Entry],
    sink: BlobSink,
    *,
    mtime: int = 0,
    compression: Compression = "none",
    progress: Callable[[int], None] | None = None,
) -> LayerResult:
    """Stream one layer into ``sink`` and return its digests.

    ``entries`` must already be in their final (sorted) order.
    """
    out = _Writer(sink, compression, progress)
    for d in parent_dirs(e.path for e in entries):
        out.write(header(d, 0, directory=True, mtime=mtime))
    buf = bytearray(CHUNK)
    files: list[FileDigest] = []
    for e in entries:
        out.write(header(e.path, e.size, mtime=mtime))
        h = hashlib.sha256()
        for seg in e.content.segments:
            if isinstance(seg, Literal):
                h.update(seg.data)
                out.write(seg.data)
            else:
                _copy_range(seg, out, h, buf, e.content.origin or e.path)
        if pad := padding(e.size):
            out.write(b"\0" * pad)
        files.append(FileDigest(e.path, e.size, "sha256:" + h.hexdigest()))
    out.write(END_OF_ARCHIVE)
    out.close()
    return LayerResult(
        digest="sha256:" + out.blob_hash.hexdigest(),
        size=out.blob_size,
        diff_id="sha256:" + out.tar_hash.hexdigest(),
        tar_size=out.tar_size,
        files=tuple(files),
    )


def source_paths(entries: Sequence[Entry]) -> list[Path]:
    return sorted({s.path for e in entries for s in e.content.segments if isinstance(s, FileRange)})
