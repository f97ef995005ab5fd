"""An image's manifests and blobs in one registry repository, read: the
registry side of :class:`modelimage.image.Store` (the layout side is
:mod:`modelimage.layout`).

Manifests come checked against the digest and size asked for (and
:data:`~modelimage.oci.MAX_MANIFEST_BYTES`, by the client). Blobs stream over
several ranged connections (:class:`~modelimage.registry.fetch.BlobReader`);
single ranges are one ranged GET each, and a registry that ignores ``Range``
is read forward as one stream per blob (:class:`_Stream`). Nothing here is
verified against a blob's digest: whoever consumes the bytes does that.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import SourceError
from ..oci import Descriptor
from .client import RegistryClient
from .fetch import BlobReader, FetchStats
from .pieces import content_range_start
from .reference import Reference


class _Stream:
    """One whole-blob GET read forward, for a registry that ignores
    ``Range`` (answers 200): bytes before the next ones asked for are read
    and dropped, never asked for again. Each read takes :data:`EXTRA` bytes
    more than asked and keeps what it took (within the store's
    :data:`RegistryStore.KEEP_BYTES`), so reads that go back (a file's
    header, after the tar headers around it were listed; a buffered
    reader's next piece) are answered from what was kept."""

    EXTRA = 68 << 10  # a header read's worth (64 KiB) past a tar header (512 B, a pax one more)

    def __init__(self, response: Any, stats: FetchStats, budget: list[int]):
        self.response, self.stats, self.budget = response, stats, budget
        self.chunks, self.pos, self.rest = response.iter_raw(), 0, b""
        self.seen: dict[int, bytes] = {}  # offset -> bytes read there and kept

    def read(self, offset: int, length: int) -> bytes | None:
        """Bytes ``offset..offset+length`` (fewer at the blob's end), or
        None when they are behind the stream and not all kept."""
        end = offset + length
        if offset >= self.pos:
            return self._take(offset, length)
        upto = self._covered(offset)
        if upto >= end:
            return self._kept(offset, end)
        if upto >= self.pos:  # kept up to where the stream is: the rest from it
            return self._kept(offset, self.pos) + self._take(self.pos, end - self.pos)
        return None

    def _covered(self, offset: int) -> int:
        """Where the kept bytes that run on from ``offset`` end."""
        at = offset
        for start in sorted(self.seen):
            if start > at:
                break
            at = max(at, start + len(self.seen[start]))
        return at

    def _kept(self, offset: int, end: int) -> bytes:
        out, at = bytearray(), offset
        for start in sorted(self.seen):
            data = self.seen[start]
            if start <= at < start + len(data):
                piece = data[at - start: end - start]
                out += piece
                at += len(piece)
                if at >= end:
                    break
        return bytes(out)

    def _take(self, offset: int, length: int) -> bytes:
        keep = self.budget[0] >= length + self.EXTRA
        want, out = length + (self.EXTRA if keep else 0), bytearray()
        while len(out) < want:
            if not self.rest:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.stats.add(len(chunk))
                self.rest = bytes(chunk)
            if self.pos < offset:  # before the bytes asked for: dropped
                cut = min(offset - self.pos, len(self.rest))
            else:
                cut = min(want - len(out), len(self.rest))
                out += self.rest[:cut]
            self.rest, self.pos = self.rest[cut:], self.pos + cut
        data = bytes(out)
        if keep:
            self.budget[0] += len(self.seen.get(offset, b"")) - len(data)
            self.seen[offset] = data
        return data[:length]

    def close(self) -> None:
        self.response.close()


class RegistryStore:
    """The manifests and blobs of ``served`` (a repository and a tag or
    digest, the registry's or a mirror's) read through ``client``, for
    :func:`modelimage.image.open_store`. ``connections`` per blob,
    ``retries`` per piece; bytes received counted in ``stats``. Raises
    :class:`~modelimage.errors.SourceError` and the registry's errors."""

    KEEP_BYTES = 64 << 20  # what the whole-blob streams keep, all blobs together

    def __init__(self, source: str, client: RegistryClient, served: Reference, connections: int, retries: int,
                 stats: FetchStats):
        self.source, self.client, self.served = source, client, served
        self.repository, self.ref = served.repository, served.ref
        self.connections, self.retries, self.stats = connections, retries, stats
        self.ranged = True  # False once the registry answered a ranged GET with the whole blob
        self.streams: dict[str, _Stream] = {}  # blob digest -> its whole-blob GET, once ranges are ignored
        self.budget = [self.KEEP_BYTES]  # bytes the streams may still keep

    def top(self) -> tuple[Descriptor, bytes]:
        m = self.client.get_manifest(self.repository, self.ref)
        return Descriptor(m.media_type, m.digest, len(m.data)), m.data

    def manifest(self, desc: Descriptor) -> bytes:
        m = self.client.get_manifest(self.repository, desc.digest)  # checked against the digest
        if len(m.data) != desc.size:  # as a layout's blob_bytes checks it
            raise SourceError(f"{self.source}: blob {desc.digest[:19]} is {len(m.data)} bytes, its descriptor "
                              f"says {desc.size}")
        return m.data

    def blob(self, desc: Descriptor) -> bytes:
        return self.client.get_blob(self.repository, desc.digest)

    def read(self, desc: Descriptor, start: int) -> Iterator[memoryview]:
        return BlobReader(self.client, self.repository, desc.digest, desc.size, connections=self.connections,
                          retries=self.retries, stats=self.stats).chunks(start)

    def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        """One ``Range: bytes=offset-end`` GET. A registry that answers the
        whole blob (200) gets no more ranged GETs: each blob is then read
        as one stream, forward (:class:`_Stream`), so a walk over a layer's
        tar headers costs one blob, not one blob per header. A 206 whose
        ``Content-Range`` does not cover the range asked for raises
        :class:`~modelimage.registry.pieces.FetchError`."""
        length = max(0, min(length, desc.size - offset))
        if length == 0:
            return b""
        if not self.ranged:
            return self._checked(self._streamed(desc, offset, length), desc, offset, length)
        r = self.client.stream_blob(self.repository, desc.digest, offset, offset + length - 1)
        if r.status_code == 200 and (offset or length < desc.size):  # Range ignored (a 200 for all of it is fine):
            self.ranged = False  # this blob's stream is kept, and no range is asked for again
            self.streams[desc.digest] = _Stream(r, self.stats, self.budget)
            return self._checked(self._streamed(desc, offset, length), desc, offset, length)
        try:  # other bytes than asked for would be read as these (a proxy's bug)
            skip = 0 if r.status_code == 200 else offset - content_range_start(
                f"{self.source}: blob {desc.digest[:19]}", r.headers.get("Content-Range"), offset,
                offset + length - 1, desc.size)
            out = bytearray()
            for chunk in r.iter_raw():
                self.stats.add(len(chunk))
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                out += chunk[: length - len(out)]
                if len(out) >= length:
                    break
        finally:
            r.close()
        return self._checked(bytes(out), desc, offset, length)

    def _streamed(self, desc: Descriptor, offset: int, length: int) -> bytes:
        stream = self.streams.get(desc.digest)
        data = stream.read(offset, length) if stream is not None else None
        if data is not None:
            return data
        again = _Stream(self.client.stream_blob(self.repository, desc.digest), self.stats, self.budget)
        if stream is not None:  # behind the stream, not kept: the blob read again from its start
            stream.close()
            again.seen = stream.seen  # what was kept still answers
        self.streams[desc.digest] = again
        data = again.read(offset, length)
        assert data is not None  # a new stream is at 0
        return data

    def _checked(self, data: bytes, desc: Descriptor, offset: int, length: int) -> bytes:
        if len(data) != length:
            raise SourceError(f"{self.source}: blob {desc.digest[:19]}: asked for {length} bytes at {offset}, "
                              f"got {len(data)}")
        return data

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()
        self.streams.clear()
        self.client.close()
