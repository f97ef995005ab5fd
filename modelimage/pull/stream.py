"""The byte stream of a layer: chunks as they arrive, decompressed, read as a tar.

- :class:`Stream` turns an iterator of byte chunks into the forward-only file
  object :mod:`tarfile` reads headers from; member data is copied straight
  from the chunks into the destination file (no second copy of the blob).
- :func:`decompressed` undoes gzip or zstd with bounded output per step
  (:func:`sniff` tells which from the first bytes, whatever the media type says).
- :func:`members` walks a tar on a stream, front to back, keeping no headers.
- :class:`Journal` records what a plain tar stream consumed (header bytes
  kept, file bytes as "so many bytes of this staged file"), so a layer cut
  mid-way can be hashed again from disk and continued with a ``Range``
  request instead of fetched from its first byte.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from collections.abc import Callable, Iterator

from ..errors import BadLayer

OUT_CHUNK = 4 << 20  # decompressed bytes per step: bounded memory for any input
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Journal:
    """The bytes a :class:`Stream` consumed, in order, from the blob's start:
    ``["meta", bytes]`` for what was read or skipped (tar headers, padding,
    files not wanted) and ``["file", tag, n]`` for ``n`` bytes copied into a
    staged file (``tag`` says which). ``pos`` is where it ends. With the
    staged files, it is enough to hash the blob's prefix again and continue
    from ``pos``. Recording stops (``valid`` False) when more than
    ``max_meta`` bytes would have to be kept, or if bytes ever came out of
    order."""

    def __init__(self, max_meta: int = 64 << 20):
        self.pos = 0
        self.segments: list[list] = []
        self.valid = True
        self.max_meta = max_meta
        self._meta = 0

    def meta(self, pos: int, data: bytes | memoryview) -> None:
        end = pos + len(data)
        if not self.valid or end <= self.pos:
            return  # read again after a short backward seek: already recorded
        if pos > self.pos:
            self.valid = False
            return
        new = bytes(data[self.pos - pos :])
        self._meta += len(new)
        if self._meta > self.max_meta:
            self.valid, self.segments = False, []
            return
        if self.segments and self.segments[-1][0] == "meta":
            self.segments[-1][1] += new  # a bytearray: extended in place (a run of skipped members stays linear)
        else:
            self.segments.append(["meta", bytearray(new)])
        self.pos = end

    def trim(self, n: int) -> tuple[dict, int] | None:
        """Forget up to ``n`` bytes at the end, if the journal ends in a
        staged file: (its tag, the bytes of it still described), else None.
        The caller truncates the staged file to match."""
        if not self.valid or not self.segments or self.segments[-1][0] != "file":
            return None
        last = self.segments[-1]
        cut = min(n, last[2])
        last[2] -= cut
        self.pos -= cut
        if last[2] == 0:
            self.segments.pop()
        return last[1], last[2]

    def data(self, pos: int, n: int, tag: dict) -> None:
        if not self.valid:
            return
        if pos != self.pos:
            self.valid = False
            return
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] == "file" and last[1] is tag:
            last[2] += n
        else:
            self.segments.append(["file", tag, n])
        self.pos += n


class Stream:
    """A forward-only file object over byte chunks (each valid until the
    next is asked for): ``read``, ``tell``, ``seek`` forward (and a few bytes
    back), and :meth:`copy_to` that hands out slices without copying."""

    def __init__(self, chunks: Iterator[bytes | memoryview], *, start: int = 0, journal: Journal | None = None):
        self._chunks = chunks
        self._cur: memoryview = memoryview(b"")
        self._at = 0  # position in _cur
        self._pos = start  # stream position: the chunks begin at ``start`` of the blob
        self.journal = journal
        self._tail = b""  # the last bytes before _pos, for short backward seeks
        self._back = b""  # bytes to read again after a backward seek
        self.eof = False

    def _fill(self) -> bool:
        while self._at >= len(self._cur):
            try:
                nxt = next(self._chunks)
            except StopIteration:
                self.eof = True
                return False
            self._cur, self._at = memoryview(nxt), 0
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        at = self._pos
        out = bytearray()
        while n < 0 or len(out) < n:
            if self._back:
                take = self._back[: (len(self._back) if n < 0 else n - len(out))]
                out += take
                self._back = self._back[len(take) :]
                self._pos += len(take)
                continue
            if not self._fill():
                break
            end = len(self._cur) if n < 0 else min(len(self._cur), self._at + n - len(out))
            out += self._cur[self._at : end]
            self._pos += end - self._at
            self._at = end
        data = bytes(out)
        self._tail = (self._tail + data)[-1024:]
        if self.journal is not None:
            self.journal.meta(at, data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 1:
            pos += self._pos
        elif whence != 0:
            raise OSError("cannot seek from the end of a stream")
        if pos < self._pos:
            back = self._pos - pos
            if back > len(self._tail):
                raise OSError(f"cannot seek back from {self._pos} to {pos} in a stream")
            self._back = self._tail[-back:] + self._back
            self._tail = self._tail[:-back]
            self._pos = pos
            return pos
        self.skip(pos - self._pos)
        return pos

    def skip(self, n: int) -> None:
        self.copy_to(n, None)

    def copy_to(self, n: int, write: Callable[[memoryview], None] | None,
                hasher: "hashlib._Hash | None" = None, tag: dict | None = None) -> None:
        """Pass the next ``n`` bytes to ``write`` (and ``hasher``); ``tag``
        names the staged file they go to, for the journal."""
        left = n
        while left and self._back:
            take = self._back[:left]
            self._back = self._back[len(take) :]
            self._hand(memoryview(take), write, hasher, tag)
            left -= len(take)
        while left:
            if not self._fill():
                raise BadLayer("the layer ends in the middle of a file (truncated blob?)")
            end = min(len(self._cur), self._at + left)
            view = self._cur[self._at : end]
            self._at = end
            self._hand(view, write, hasher, tag)
            left -= len(view)
        if n:
            self._tail = b""

    def _hand(self, view: memoryview, write: Callable[[memoryview], None] | None,
              hasher: "hashlib._Hash | None", tag: dict | None) -> None:
        if write is not None:
            try:
                write(view)
            except OSError as e:  # a full disk: what was written before stays described
                done = getattr(e, "written", 0)
                if done and self.journal is not None and tag is not None:
                    self.journal.data(self._pos, done, tag)
                self._pos += done
                raise
        if hasher is not None:
            hasher.update(view)
        if self.journal is not None:
            if write is not None and tag is not None:
                self.journal.data(self._pos, len(view), tag)
            else:
                self.journal.meta(self._pos, view)
        self._pos += len(view)

    def drain(self) -> int:
        """Read to the end (so the whole blob is hashed); bytes skipped."""
        n = 0
        while self._fill():
            view = self._cur[self._at :]
            self._at = len(self._cur)
            self._hand(view, None, None, None)
            n += len(view)
        self._tail = b""
        return n

    def readable(self) -> bool:
        return True


def sniff(head: bytes) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"`` from a blob's first bytes. A zstd
    stream may start with a skippable frame (magic 0x184D2A50-5F, RFC 8878
    section 3.1.2; pzstd and zstd:chunked writers use them)."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC) or (len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        return "zstd"
    return "none"


def decompressed(chunks: Iterator[bytes | memoryview], media_type: str,
                 seen: Callable[[str], None] | None = None) -> Iterator[bytes | memoryview]:
    """The tar bytes of a layer blob: decompressed when its first bytes say
    gzip or zstd (media types lie: some tools label plain tars ``+gzip``).
    ``seen`` is told which (``"none"``, ``"gzip"``, ``"zstd"``)."""
    first = b""
    for c in chunks:
        if len(c):
            first = bytes(c)
            break
    if not first:
        return
    kind = sniff(first)
    if seen is not None:
        seen(kind)

    def rest() -> Iterator[bytes | memoryview]:
        yield first
        yield from chunks

    if kind == "none":
        yield from rest()
    elif kind == "gzip":
        yield from _gunzip(rest())
    else:
        yield from _unzstd(rest())


def _gunzip(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits=31)
    for c in chunks:
        data: bytes | memoryview = c
        while data:
            out = d.decompress(data, OUT_CHUNK)
            if out:
                yield out
            if d.eof:
                data = d.unused_data
                if data.strip(b"\0"):
                    d = zlib.decompressobj(wbits=31)  # concatenated gzip members
                else:
                    data = b""
            else:
                data = d.unconsumed_tail
    while not d.eof:
        out = d.decompress(b"", OUT_CHUNK)
        if not out:
            break
        yield out
    if not d.eof:
        raise BadLayer("the gzip stream ends early (truncated blob?)")


def _unzstd(chunks: Iterator[bytes | memoryview]) -> Iterator[bytes]:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency
        raise BadLayer("zstd layers need the zstandard package (pip install zstandard)") from None
    reader = zstandard.ZstdDecompressor().stream_reader(Stream(chunks), read_size=1 << 20,
                                                        read_across_frames=True)
    try:
        while True:
            out = reader.read(OUT_CHUNK)
            if not out:
                break
            yield out
    except zstandard.ZstdError as e:
        raise BadLayer(f"zstd: {e}") from None


def members(stream: Stream, label: str) -> Iterator[tarfile.TarInfo]:
    """The members of the tar on ``stream``, in order; member data is read by
    the caller from ``stream`` (``member.offset_data``) or skipped."""
    try:
        tf = tarfile.TarFile(fileobj=stream, mode="r")  # type: ignore[arg-type]
    except tarfile.ReadError as e:
        if stream.eof and stream.tell() == 0:
            return  # an empty blob: no members
        raise BadLayer(f"{label}: not a tar archive ({e})") from None
    if tf.firstmember is None:
        return  # at the end already (tarfile would seek back to check, which a stream cannot)
    last: tarfile.TarInfo | None = None
    while True:
        try:
            m = tf.next()
        except tarfile.ReadError as e:
            raise BadLayer(f"{label}: broken tar ({e})") from None
        except BadLayer as e:
            # The blob ends after the last member's data, without its padding
            # and the end-of-archive blocks: umoci < 0.4.8 ``insert`` writes
            # such layers (umoci#436, fixed by umoci#534), and Go readers
            # (podman, containerd, umoci) take them. Every byte of every file
            # is there; the blob's digest is still checked by the caller.
            if last is not None and stream.eof and last.offset_data + last.size <= stream.tell() < tf.offset:
                return
            raise BadLayer(f"{label}: {e}") from None
        if m is None:
            return
        tf.members = []  # nothing is looked up by name: do not keep every header
        last = m
        yield m
