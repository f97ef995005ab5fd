"""Deterministic tar layers, written and hashed in one streaming pass.

Every entry gets the same metadata whatever the source machine says: uid/gid
0, no user or group names, mode 0644 for files and 0755 for directories, one
fixed mtime. Entries are written in the order the plan gives (sorted), with
every parent directory first. Headers are POSIX pax when a name or size needs
it (long paths, files over 8 GiB), plain ustar otherwise; the archive ends
with two zero blocks, like Go's archive/tar, and no record padding.

The layer writer reads each source range once into a reused buffer, feeds
the bytes to the blob's sha256, the file's sha256 and the sink, and never
holds more than one buffer of a weight file in memory. A remote object (an
S3 object, see :mod:`modelimage.sources.s3`) is read the same way, by
ranged GETs a few parts ahead: a bounded number of parts in memory, nothing
on disk.

A raw layer (:meth:`LayerStream.raw`, used by model artifacts) is one file's
bytes with no tar around them: its blob digest and diff_id are the file's
sha256. It streams, resumes and hashes through the same code as a tar layer.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from typing import Literal as TypingLiteral

from .content import FileRange, Literal, Source, VirtualFile, check_listed, is_remote, listed_source
from .errors import SourceError

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
_PADDINGS = tuple(b"\0" * n for n in range(BLOCK))  # each tar padding made once, shared (100,000 files: 28 MB)
FILE_MODE = 0o644
DIR_MODE = 0o755
CHUNK = 4 << 20  # read size: big enough to amortize syscalls, small enough for RSS
BACKGROUND_COPY = 8 << 20  # a local range this big or bigger is copied beside its hashing (layerfile)
COPYING = (-1, -1)  # located_chunks' "where" for a chunk that a RangeCopier is copying

Compression = TypingLiteral["none", "gzip"]
COMPRESSIONS: tuple[str, ...] = ("none", "gzip")
StreamKind = TypingLiteral["tar", "raw"]


class BackgroundCopy(Protocol):
    """Copies one local source range into the blob, beside its reading
    (:class:`modelimage.layerfile.RangeCopier`)."""

    def start(self, src: int, src_offset: int, offset: int, length: int, name: str) -> None: ...
    def join(self) -> None: ...
    def stop(self) -> None: ...


class SplitFeed(Protocol):
    """A layer writer's share of the files checked whole across layers
    (:class:`modelimage.splitcheck.Feed`): the stream's bytes by offset."""

    def feed(self, at: int, data: bytes | memoryview) -> None: ...
    def copy(self) -> "SplitFeed": ...


class SplitCheck(Protocol):
    """What a layer stream holding pieces of such files carries
    (:class:`modelimage.splitcheck.LayerCheck`)."""

    def feeder(self) -> SplitFeed: ...
    def turn(self) -> "AbstractContextManager[None]": ...
    def after_check(self, fn: Callable[[], None]) -> None: ...


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


@dataclass(frozen=True, slots=True)
class Entry:
    """A file placed at ``path`` (relative to the image root) in a layer."""

    path: str
    content: VirtualFile

    @property
    def size(self) -> int:
        return self.content.size


def layer_size(entries: Sequence[Entry], mtime: int = 0) -> int:
    """Exact size of the uncompressed tar of ``entries``."""
    return LayerStream(entries, mtime).size


def entry_overhead(path: str, size: int, mtime: int = 0) -> int:
    """Bytes a file adds to a layer beyond its content (header + padding)."""
    return len(header(path, size, mtime=mtime)) + padding(size)


class _Gzip:
    """Deterministic gzip (mtime 0, fixed level) with wbits=31 framing."""

    def __init__(self, level: int = 6) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._z.compress(data)

    def flush(self) -> bytes:
        return self._z.flush()


@dataclass(frozen=True)
class FileDigest:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LayerResult:
    digest: str  # sha256 of the blob as stored
    size: int  # blob size as stored
    diff_id: str  # sha256 of the uncompressed stream (the tar; a raw layer's file)
    tar_size: int  # bytes of the uncompressed stream
    files: tuple[FileDigest, ...]

    def to_json(self) -> dict:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id, "tar_size": self.tar_size,
                "files": [[f.path, f.size, f.sha256] for f in self.files]}

    @classmethod
    def from_json(cls, d: dict) -> "LayerResult":
        return cls(d["digest"], d["size"], d["diff_id"], d["tar_size"], tuple(FileDigest(*f) for f in d["files"]))


@dataclass(frozen=True, slots=True)
class _Piece:
    """A run of the tar stream: literal bytes or a source range, and the
    index of the file whose content it is (-1 for headers and padding)."""

    offset: int
    length: int
    data: bytes | FileRange
    file: int


class _Pieces:
    """Builds the run list of a stream, offsets included."""

    def __init__(self) -> None:
        self.items: list[_Piece] = []
        self.offset = 0

    def add(self, data: bytes | FileRange, file: int = -1) -> None:
        n = len(data) if isinstance(data, bytes) else data.length
        if n:
            self.items.append(_Piece(self.offset, n, data, file))
            self.offset += n

    def add_content(self, content: VirtualFile, file: int) -> None:
        for seg in content.segments:
            self.add(seg.data if isinstance(seg, Literal) else seg, file)


class LayerStream:
    """The bytes of one layer's tar (or, made with :meth:`raw`, of one file),
    computed from the plan, readable from any offset: an interrupted upload
    resumes where the registry says it stopped, without the files being read
    again from the start."""

    kind: StreamKind = "tar"
    split: SplitCheck | None = None  # pieces of listed files checked whole across layers (splitcheck)

    def __init__(self, entries: Sequence[Entry], mtime: int = 0):
        self.entries = tuple(entries)
        self.mtime: int | None = mtime
        pieces = _Pieces()
        for d in parent_dirs(e.path for e in entries):
            pieces.add(header(d, 0, directory=True, mtime=mtime))
        for i, e in enumerate(self.entries):
            pieces.add(header(e.path, e.size, mtime=mtime))
            pieces.add_content(e.content, i)
            pieces.add(_PADDINGS[padding(e.size)])
        pieces.add(END_OF_ARCHIVE)
        self.pieces = tuple(pieces.items)
        self.size = pieces.offset

    @classmethod
    def raw(cls, name: str, content: VirtualFile) -> "LayerStream":
        """A layer whose blob is exactly the bytes of ``content`` (no tar):
        its digest and diff_id are the file's sha256. ``name`` is the path
        its digest is reported under. ``mtime`` is None, since no header
        carries one; that also keys it apart from tar layers in the digest
        cache, which hashes the mtime with the entries."""
        stream = cls.__new__(cls)
        stream.entries = (Entry(name, content),)
        stream.mtime = None
        stream.kind = "raw"
        pieces = _Pieces()
        pieces.add_content(content, 0)
        stream.pieces = tuple(pieces.items)
        stream.size = pieces.offset
        return stream

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes | memoryview, int]]:
        """``(data, file index)`` from ``start`` to ``end``. A memoryview is
        only valid until the next item: consume it before asking for more."""
        for data, file, _ in self.located_chunks(start, end):
            yield data, file

    def located_chunks(self, start: int = 0, end: int | None = None, copier: BackgroundCopy | None = None
                       ) -> Iterator[tuple[bytes | memoryview, int, tuple[int, int] | None]]:
        """Like :meth:`chunks`, plus where a chunk of a local source file
        lies, ``(fd, offset)`` (None for generated bytes and remote objects),
        so a file sink can have the kernel copy it (:func:`modelimage.layerfile.write_layer_fd`).
        With a ``copier``, a local range of :data:`BACKGROUND_COPY` bytes or
        more is copied by it, beside the reading, to its stream offset: its
        chunks come with :data:`COPYING` instead."""
        end = self.size if end is None else end
        buf: bytearray | None = None
        for p in self.pieces:
            lo, hi = max(start, p.offset), min(end, p.offset + p.length)
            if lo >= hi:
                continue
            if isinstance(p.data, bytes):
                yield p.data[lo - p.offset : hi - p.offset], p.file, None
                continue
            if buf is None and not is_remote(p.data.path):  # a remote object reads into parts of its own
                buf = bytearray(CHUNK)
            to = (copier, lo) if copier is not None and hi - lo >= BACKGROUND_COPY else None
            yield from _read_range(p.data, p.data.offset + lo - p.offset, hi - lo, buf, p.file,
                                   self.entries[p.file].content.origin or self.entries[p.file].path, to)


def _read_range(seg: FileRange, offset: int, length: int, buf: bytearray | None, file: int, display: str,
                copy_to: tuple[BackgroundCopy, int] | None = None
                ) -> Iterator[tuple[bytes | memoryview, int, tuple[int, int] | None]]:
    if is_remote(seg.path):
        # a remote object reads ahead in parallel, in parts it allocates;
        # each GET is pinned to the inspected version (If-Match: ETag)
        got = 0
        for data in seg.path.read(offset, length):
            got += len(data)
            view = memoryview(data)
            for start in range(0, len(view), CHUNK):  # sinks copy what they send: keep pieces CHUNK-sized
                yield view[start:start + CHUNK], file, None
        if got != length:
            raise SourceError(f"{display}: {seg.path} gave {got} of {length} bytes (changed while building)")
        return
    assert buf is not None
    view = memoryview(buf)
    try:
        with open(seg.path, "rb", buffering=0) as f:
            _check_unchanged(f, seg, display)
            fd, pos, left = f.fileno(), offset, length
            if copy_to is not None:  # the same open file, copied while it is read: one file, checked once
                copy_to[0].start(fd, offset, copy_to[1], length, f"{display}: {seg.path}")
            try:
                while left:
                    n = os.preadv(fd, [view[: min(left, len(buf))]], pos)
                    if not n:
                        raise SourceError(f"{display}: {seg.path} ended early (changed while building)")
                    yield view[:n], file, COPYING if copy_to is not None else (fd, pos)
                    pos += n
                    left -= n
                if copy_to is not None:
                    copy_to[0].join()
            finally:
                if copy_to is not None:  # never close the source under a copy in flight
                    copy_to[0].stop()
            _check_unchanged(f, seg, display)
    except OSError as e:
        raise SourceError(f"{seg.path}: cannot read: {e.strerror or e}") from e


def _check_unchanged(f: "BinaryIO", seg: FileRange, display: str) -> None:
    """The file still has the size (and mtime) it had when inspected."""
    st = os.fstat(f.fileno())
    if st.st_size < seg.offset + seg.length:
        raise SourceError(f"{display}: {seg.path} is shorter than planned (changed while building)")
    if seg.stamp is not None and (st.st_size, st.st_mtime_ns) != seg.stamp:
        raise SourceError(f"{display}: {seg.path} changed while building (size or mtime differs from "
                          "when it was inspected); run again once it is stable")


class Digester:
    """Hashes a layer as it streams: the tar (diff_id), each file's content,
    and, when compressing, the compressed blob. ``copy()`` snapshots the
    whole state so a resumed upload can continue from a confirmed offset."""

    def __init__(self, stream: LayerStream, compression: Compression = "none"):
        self.stream = stream
        self.compression = compression
        self.tar = hashlib.sha256()
        self.offset = 0
        self.blob = self.tar if compression == "none" else hashlib.sha256()
        self.blob_size = 0
        self.gz = _Gzip() if compression == "gzip" else None
        self.files: list[str] = []  # finished file digests, in entry order
        self.current: "hashlib._Hash | None" = None
        self.current_index = -1
        # a raw layer is its one file: the file's sha256 is the stream's, hashed once
        self.one_file = stream.kind == "raw"
        self.fed = 0  # bytes of the current file hashed so far
        # files whose source lists their sha256 (Hub LFS files): checked as their last byte is hashed
        self.expected = {i: o for i, e in enumerate(stream.entries) if (o := listed_source(e.content)) is not None}
        # pieces of listed files spread over layers: into their running sha256 (modelimage.splitcheck)
        self.split = stream.split.feeder() if stream.split is not None else None

    def copy(self) -> "Digester":
        if self.gz is not None:
            raise TypeError("compressed layers cannot be resumed mid-stream")
        d = object.__new__(Digester)
        d.__dict__.update(self.__dict__)
        d.tar = self.tar.copy()
        d.blob = d.tar
        d.files = list(self.files)
        d.current = self.current.copy() if self.current is not None else None
        d.split = self.split.copy() if self.split is not None else None
        return d

    def feed(self, data: bytes | memoryview, file: int) -> bytes | memoryview:
        """Account for ``data``; return the bytes to store (compressed or not)."""
        if self.split is not None:
            self.split.feed(self.offset, data)
        self.tar.update(data)
        self.offset += len(data)
        if file >= 0 and not self.one_file:
            while self.current_index < file:
                self._finish_file()
            assert self.current is not None
            self.current.update(data)
            self.fed += len(data)
            if file in self.expected and self.fed == self.stream.entries[file].size:
                check_listed(self.expected[file], self.current.hexdigest())
        elif self.one_file and 0 in self.expected and self.offset == self.stream.size:
            check_listed(self.expected[0], self.tar.hexdigest())
        if self.gz is None:
            self.blob_size += len(data)
            return data
        out = self.gz.compress(data)
        self.blob.update(out)
        self.blob_size += len(out)
        return out

    def _finish_file(self) -> None:
        if self.current is not None:
            self.files.append("sha256:" + self.current.hexdigest())
        self.current_index += 1
        self.current = hashlib.sha256()
        self.fed = 0

    def flush(self) -> bytes:
        """The last compressed bytes (empty for uncompressed layers)."""
        if self.gz is None:
            return b""
        out = self.gz.flush()
        self.blob.update(out)
        self.blob_size += len(out)
        return out

    def result(self) -> LayerResult:
        if self.offset != self.stream.size:
            raise SourceError(f"layer stream ended at {self.offset} of {self.stream.size} bytes")
        if self.one_file:
            (e,) = self.stream.entries
            tar = "sha256:" + self.tar.hexdigest()
            return LayerResult(tar if self.gz is None else "sha256:" + self.blob.hexdigest(), self.blob_size, tar,
                               self.stream.size, (FileDigest(e.path, e.size, tar),))
        while self.current_index < len(self.stream.entries):
            self._finish_file()
        files = tuple(
            FileDigest(e.path, e.size, d) for e, d in zip(self.stream.entries, self.files, strict=True)
        )
        return LayerResult("sha256:" + self.blob.hexdigest(), self.blob_size, "sha256:" + self.tar.hexdigest(),
                           self.stream.size, files)


def blob_chunks(stream: LayerStream, digester: Digester, start: int = 0,
                progress: Callable[[int], None] | None = None) -> Iterator[bytes | memoryview]:
    """The blob's bytes from tar offset ``start`` (digester must be at
    ``start``), hashed on the way; ends with the compressor's tail."""
    if digester.offset != start:
        raise ValueError(f"digester at {digester.offset}, stream asked from {start}")
    for data, file in stream.chunks(start):
        out = digester.feed(data, file)
        if out:
            yield out
        if progress is not None:
            progress(len(data))
    tail = digester.flush()
    if tail:
        yield tail


def write_layer(
    entries: Sequence[Entry],
    sink: BlobSink,
    *,
    mtime: int = 0,
    compression: Compression = "none",
    progress: Callable[[int], None] | None = None,
) -> LayerResult:
    """Stream one layer into ``sink`` (anything with ``write``) and return
    its digests. ``entries`` must already be in their final (sorted) order."""
    stream = LayerStream(entries, mtime)
    digester = Digester(stream, compression)
    for data in blob_chunks(stream, digester, progress=progress):
        sink.write(data)
    return digester.result()


def source_paths(entries: Sequence[Entry]) -> list[Source]:
    """The files the entries read: local paths sorted, then remote objects by name."""
    paths = {s.path for e in entries for s in e.content.segments if isinstance(s, FileRange)}
    return sorted(p for p in paths if not is_remote(p)) + sorted((p for p in paths if is_remote(p)), key=str)
