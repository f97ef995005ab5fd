"""What a file inside an image is made of.

A file in a planned layer is a sequence of segments: byte ranges of source
files and small literal byte strings (for example a regenerated safetensors
header). This lets the planner describe a resharded file exactly, and the
layer writer stream it, without a resharded copy ever touching the disk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol, TypeGuard

from .errors import SourceError


class RemoteObject(Protocol):
    """A source file that is not on a local disk (an object in S3): an
    immutable version of it (``identity`` names it, ``stamp`` is its size
    and ETag), read by ranges. :class:`modelimage.sources.s3.S3Object` is
    the one there is."""

    @property
    def size(self) -> int: ...
    @property
    def name(self) -> str: ...  # the last path component, like Path.name
    @property
    def stamp(self) -> tuple[int, str]: ...  # (size, ETag): the change check
    @property
    def identity(self) -> list[str | int]: ...  # what the digest cache keys on

    def read(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        """The bytes of one range, in order, in pieces (fetched ahead in
        parallel); each piece stays valid after the next is asked for."""
        ...

    def open(self) -> BinaryIO:
        """A seekable, buffered file object, for reading headers."""
        ...

    def read_bytes(self) -> bytes: ...  # a whole (small) file, like Path.read_bytes


Source = Path | RemoteObject  # where a file's bytes come from


class RangeFile(io.RawIOBase):
    """A seekable raw file over ``get(offset, length)`` (an object in a
    bucket, a file inside an image's blob): each read is one ranged read of
    the bytes asked for; wrap it in ``io.BufferedReader`` for read-ahead."""

    def __init__(self, get: Callable[[int, int], bytes | memoryview], size: int, name: str = "file"):
        super().__init__()
        self.get, self.size, self.name_, self.pos = get, size, name, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"{self.name_}: seek to {base + offset}")
        self.pos = base + offset
        return self.pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.size - self.pos)
        if n <= 0:
            return 0
        b[:n] = self.get(self.pos, n)
        self.pos += n
        return n


class RangedObject:
    """What a :class:`RemoteObject` built on one ranged read has in common
    (:class:`~modelimage.sources.s3.S3Object`, a file inside an image's blob,
    :class:`~modelimage.sources.image.ImageFile`). The class that mixes it
    in gives ``size`` (bytes), ``get(offset, length)`` (exactly those
    bytes, one ranged read) and a ``str()`` that ends in the object's POSIX
    path (``s3://BUCKET/KEY``, ``IMAGE:/PATH``); this gives ``name``, the
    range check, ``open`` (a seekable file reading ahead :data:`READAHEAD`
    bytes) and ``read_bytes``."""

    READAHEAD = 64 << 10  # bytes per ranged read of a header: a tar header, a GGUF or safetensors header's start
    size: int

    def get(self, offset: int, length: int) -> bytes | memoryview:
        raise NotImplementedError

    def read(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The last component of the object's path, like ``Path.name``."""
        return PurePosixPath(str(self)).name

    def check_range(self, offset: int, length: int) -> None:
        """Raise :class:`~modelimage.errors.SourceError` unless ``[offset,
        offset + length)`` lies inside the object's ``size`` bytes."""
        if offset < 0 or offset + length > self.size:
            raise SourceError(f"{self}: range {offset}+{length} is outside its {self.size} bytes")

    def open(self) -> BinaryIO:
        """A seekable, buffered file object over ranged reads, for reading headers."""
        return io.BufferedReader(RangeFile(self.get, self.size, str(self)),  # type: ignore[return-value]
                                 buffer_size=self.READAHEAD)

    def read_bytes(self) -> bytes:
        """The whole (small) object, like ``Path.read_bytes``."""
        return b"".join(self.read(0, self.size))


def is_remote(path: object) -> TypeGuard[RemoteObject]:
    """True for a :class:`RemoteObject`, False for a local path."""
    return not isinstance(path, (str, os.PathLike))


def listed_source(vf: "VirtualFile") -> RemoteObject | None:
    """The remote object ``vf`` is the whole of, when its source lists the
    object's sha256 (``expected_sha256``: a Hub LFS file,
    :class:`modelimage.sources.hub.HubFile`); else None. The layer writer
    hashes such a file anyway and checks it (:func:`check_listed`)."""
    if len(vf.segments) != 1 or not isinstance(seg := vf.segments[0], FileRange) or not is_remote(seg.path):
        return None
    whole = seg.offset == 0 and seg.length == seg.path.size
    return seg.path if whole and getattr(seg.path, "expected_sha256", None) else None


def check_listed(obj: RemoteObject, got: str) -> None:
    """Raise :class:`SourceError` naming ``obj`` unless ``got`` (hex) is the
    sha256 its source lists: called as the file's last byte is hashed,
    before that byte reaches a sink, so no blob holding it is committed."""
    listed = getattr(obj, "expected_sha256", None)
    if got != listed:
        mismatch = getattr(obj, "mismatch", None)
        raise mismatch("sha256", got, listed) if mismatch else SourceError(
            f"{obj}: its bytes have sha256 {got}, its source lists {listed}")


@dataclass(frozen=True, slots=True)
class FileRange:
    """``length`` bytes of ``path`` starting at ``offset``.

    ``path`` is a local file or a :class:`RemoteObject`. ``stamp`` is the
    file's (size, mtime in ns) when it was inspected, or a remote object's
    (size, ETag): the layer writer refuses a file whose stamp changed, so a
    file rewritten while an image is built never ends up half old, half new.
    """

    path: Source
    offset: int
    length: int
    stamp: tuple[int, int | str] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes generated by the planner (headers, index files, padding)."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)


Segment = FileRange | Literal


@dataclass(frozen=True, slots=True)
class VirtualFile:
    """A file as it will appear in the image.

    ``name`` is a POSIX path relative to the model root (for example
    ``unet/diffusion_pytorch_model-00001-of-00002.safetensors``).
    ``origin`` names the source file(s) it comes from, for messages.
    """

    name: str
    segments: tuple[Segment, ...]
    origin: str = ""

    @property
    def size(self) -> int:
        return sum(s.length for s in self.segments)

    @classmethod
    def whole(cls, name: str, path: Source, size: int) -> "VirtualFile":
        """A source file copied as it is."""
        return cls(name, (FileRange(path, 0, size),) if size else (), origin=name)


def stamped(vf: VirtualFile, stamps: dict[Source, tuple[int, int | str]]) -> VirtualFile:
    """``vf`` with each source range carrying its file's inspected stamp."""
    segs = tuple(
        FileRange(s.path, s.offset, s.length, stamps.get(s.path)) if isinstance(s, FileRange) else s
        for s in vf.segments
    )
    return VirtualFile(vf.name, segs, vf.origin)


def coalesce(segments: list[Segment]) -> tuple[Segment, ...]:
    """Merge adjacent ranges of the same file and adjacent literals, so a
    resharded file streams with as few reads as possible."""
    out: list[Segment] = []
    for seg in segments:
        if seg.length == 0:
            continue
        prev = out[-1] if out else None
        if (
            isinstance(seg, FileRange)
            and isinstance(prev, FileRange)
            and prev.path == seg.path
            and prev.offset + prev.length == seg.offset
        ):
            out[-1] = FileRange(prev.path, prev.offset, prev.length + seg.length, prev.stamp)
        elif isinstance(seg, Literal) and isinstance(prev, Literal):
            out[-1] = Literal(prev.data + seg.data)
        else:
            out.append(seg)
    return tuple(out)


REMOTE_READS = 8  # remote objects read at once by read_each (a header each: one ranged GET of 64 KiB)


def read_each(reader: Callable[[Any], Any], paths: list[Source]) -> tuple[Any, ...]:
    """``reader(path)`` of each of ``paths`` (a weight set's shard headers),
    in order. Remote files (a Hub or bucket: a round trip each) are read
    :data:`REMOTE_READS` at a time in daemon threads, each in a copy of the
    caller's context (the registry transport's options); local ones one
    after another. The first failing
    path in order raises its error, as reading them in turn would; the wait
    ends on Ctrl-C."""
    if len(paths) < 2 or not any(is_remote(p) for p in paths):
        return tuple(reader(p) for p in paths)
    import contextvars
    import threading

    results: list[tuple[bool, Any]] = [(False, None)] * len(paths)
    todo = iter(range(len(paths)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            try:
                results[i] = (True, reader(paths[i]))
            except BaseException as e:  # noqa: BLE001  (raised in the caller's thread, below)
                results[i] = (False, e)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True,
                                name="remote-read") for _ in range(min(REMOTE_READS, len(paths)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ok, value in results:
        if not ok:
            raise value
    return tuple(value for _, value in results)
