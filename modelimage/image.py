"""Existing images, read: from a registry (``HOST/REPO[:TAG|@DIGEST]``) or
an OCI layout (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, read by
:mod:`modelimage.layout`).

One place resolves a reference to an image manifest (through indexes,
nested ones too, choosing the platform: :func:`choose_platform`), reads its
config, and streams its blobs: base images for ``build --base``,
``pull``/``verify``, ``estimate REF``. Docker schema 2 manifests and
manifest lists read like their OCI counterparts. Blobs stream over several
ranged connections from registries (:class:`BlobReader`), in place from
layouts, and are verified by whoever consumes them (:meth:`Image.fetch`
verifies as it goes). Go-containerregistry's ``remote.Get``/``layout``
``Image`` split, in one small type.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import SourceError
from .layout import LayoutReader, LayoutRef, open_layout
from .layout.read import check_digest, json_object
from .oci import ANNOTATION_PREFIX, INDEX_MEDIA_TYPES, Descriptor, Platform, select_platform
from .registry.keychain import Credentials
from .registry.pieces import FetchStats, content_range_start

ANNOTATION_TARGET = ANNOTATION_PREFIX + "target"
MAX_NESTING = 4  # index -> index -> ... -> manifest: deeper is a loop or a mistake
MAX_CONFIG = 4 << 20  # configs read (bigger ones are not an image's)
Chooser = Callable[[dict[str, Any]], dict[str, Any]]  # an index (parsed) -> the entry to open


@dataclass
class Image:
    """A resolved image manifest, its config, and a way to read its blobs."""

    name: str  # as the user wrote it
    digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: tuple[Descriptor, ...]
    read: Callable[[Descriptor, int], Iterator[memoryview]]  # (blob, from offset) -> chunks, not verified
    close: Callable[[], None]
    host: str | None = None  # registry host and repository, for cross-repository mounts
    repository: str | None = None
    served_by: str | None = None  # the host its manifest and blobs come from: a mirror of ``host``, or ``host``
    # (blob, offset, length) -> exactly those bytes, one ranged GET (or read); not verified
    read_range: Callable[[Descriptor, int, int], bytes] | None = None

    @property
    def target(self) -> str | None:
        """The folder modelimage put the model in (``dev.modelimage.target``)."""
        labels = (self.config.get("config") or {}).get("Labels") or {}
        value = (self.manifest.get("annotations") or {}).get(ANNOTATION_TARGET) or labels.get(ANNOTATION_TARGET)
        return value if isinstance(value, str) and value.strip("/") else None

    @property
    def platform(self) -> Platform:
        """The platform its config names (``linux/amd64`` when it names none)."""
        c = self.config
        return Platform(str(c.get("os") or "linux"), str(c.get("architecture") or "amd64"), c.get("variant") or None)

    def fetch(self, desc: Descriptor) -> Iterator[bytes]:
        """A whole blob, verified against its digest as it streams."""
        h, n = hashlib.sha256(), 0
        for chunk in self.read(desc, 0):
            h.update(chunk)
            n += len(chunk)
            yield bytes(chunk)
        if "sha256:" + h.hexdigest() != desc.digest or n != desc.size:
            raise SourceError(f"{self.name}: blob {desc.digest[:19]} does not match its digest")


def is_index(manifest: dict[str, Any], media_type: str = "") -> bool:
    """Whether a manifest (parsed, with the media type it was served or
    listed with) is an image index / Docker manifest list."""
    return media_type in INDEX_MEDIA_TYPES or manifest.get("mediaType") in INDEX_MEDIA_TYPES or (
        "manifests" in manifest and "layers" not in manifest)


def choose_platform(index: dict[str, Any], platform: str | Platform | None, name: str) -> dict[str, Any]:
    """The entry of ``index`` (a parsed image index) for ``platform``.

    A platform asked for is matched exactly after normalisation
    (``linux/arm64`` is ``linux/arm64/v8``). Without one, this machine's
    (:meth:`Platform.host`) is matched with the platforms it also runs
    (containerd's ``platforms.Only``: ``arm64`` runs ``arm/v8``...), and an
    index with a single entry answers that entry. Raises
    :class:`SourceError` naming the platforms the index has."""
    want = Platform.parse(platform) if isinstance(platform, str) else platform
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict) and "digest" in m]
    found = [Platform.from_json(m["platform"]) if isinstance(m.get("platform"), dict) else None for m in entries]
    i = select_platform(found, want or Platform.host(), compatible=want is None)
    if i is not None:
        return entries[i]
    if want is None and len(entries) == 1:
        return entries[0]
    have = ", ".join(str(p) if p else "no platform" for p in found)
    raise SourceError(f"{name}: no {want or Platform.host()} image in the index (it has: {have or 'none'})")


def default_connections(host: str) -> int:
    """Connections per blob for a registry: one streaming GET on loopback
    (no latency to hide, and each extra ranged request costs the registry
    CPU: 2.15 GB pulled in 3.3-3.9 s that way against 4.3-5.9 s over two
    ranged connections, 2-core VM, 2026-11-25), else
    :data:`~modelimage.registry.fetch.DEFAULT_CONNECTIONS` ranged GETs."""
    from .registry.fetch import DEFAULT_CONNECTIONS
    from .registry.reference import is_loopback

    return 1 if is_loopback(host) else DEFAULT_CONNECTIONS


class _Store(Protocol):
    """Where an image's manifests and blobs are (a registry repository, a layout)."""

    def top(self) -> tuple[Descriptor, bytes]: ...  # what the reference names, and its bytes (verified)
    def manifest(self, desc: Descriptor) -> bytes: ...  # a manifest or index by digest (verified)
    def blob(self, desc: Descriptor) -> bytes: ...  # a small blob (a config), not verified yet
    def read(self, desc: Descriptor, start: int) -> Iterator[memoryview]: ...
    def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...


class _LayoutStore:
    def __init__(self, layout: LayoutReader, stats: FetchStats):
        self.layout, self.stats = layout, stats

    def top(self) -> tuple[Descriptor, bytes]:
        desc = self.layout.top()
        return desc, self.layout.blob_bytes(desc)

    def manifest(self, desc: Descriptor) -> bytes:
        return self.layout.blob_bytes(desc)

    def blob(self, desc: Descriptor) -> bytes:
        return self.layout.blob_bytes(desc)

    def read(self, desc: Descriptor, start: int) -> Iterator[memoryview]:
        return self.layout.read(desc, start, self.stats.add)

    def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes:
        path, base, size = self.layout.locate_blob(desc.digest)
        length = max(0, min(length, size - offset))
        try:
            with open(path, "rb") as f:
                f.seek(base + offset)
                data = f.read(length)
        except OSError as e:
            raise SourceError(f"{self.layout.name}: blob {desc.digest[:19]} cannot be read ({e.strerror})") from None
        if len(data) != length:
            raise SourceError(f"{self.layout.name}: blob {desc.digest[:19]} ends early (the layout is truncated)")
        self.stats.add(length)
        return data

    def close(self) -> None:
        self.layout.close()


class _Stream:
    """One whole-blob GET read forward, for a registry that ignores
    ``Range`` (answers 200): bytes before the next ones asked for are read
    and dropped, never asked for again. Each read takes :data:`EXTRA` bytes
    more than asked and keeps what it took (within the store's
    :data:`_RegistryStore.KEEP_BYTES`), so reads that go back (a file's
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


class _RegistryStore:
    KEEP_BYTES = 64 << 20  # what the whole-blob streams keep, all blobs together

    def __init__(self, source: str, client: Any, repository: str, ref: str, connections: int, retries: int,
                 stats: FetchStats):
        self.source, self.client, self.repository, self.ref = source, client, repository, ref
        self.connections, self.retries, self.stats = connections, retries, stats
        self.ranged = True  # False once the registry answered a ranged GET with the whole blob
        self.streams: dict[str, _Stream] = {}  # blob digest -> its whole-blob GET, once ranges are ignored
        self.budget = [self.KEEP_BYTES]  # bytes the streams may still keep

    def top(self) -> tuple[Descriptor, bytes]:
        m = self.client.get_manifest(self.repository, self.ref)
        return Descriptor(m.media_type, m.digest, len(m.data)), m.data

    def manifest(self, desc: Descriptor) -> bytes:
        m = self.client.get_manifest(self.repository, desc.digest)  # checked against the digest
        return m.data

    def blob(self, desc: Descriptor) -> bytes:
        return self.client.get_blob(self.repository, desc.digest)

    def read(self, desc: Descriptor, start: int) -> Iterator[memoryview]:
        from .registry.fetch import BlobReader  # only registry images load it (and httpx)

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


def _resolve(store: _Store, platform: str | Platform | None, name: str, choose: Chooser | None = None
             ) -> tuple[str, dict[str, Any]]:
    """(digest, parsed manifest) of the image ``name`` means: its indexes
    followed down to the platform's image manifest (or the entry ``choose`` picks)."""
    desc, data = store.top()
    for _ in range(MAX_NESTING):
        manifest = json_object(data, f"{name}: manifest {desc.digest[:19]}")
        if not is_index(manifest, desc.media_type):
            break
        entry = choose(manifest) if choose else choose_platform(manifest, platform, name)
        try:
            desc = Descriptor.from_json(entry)
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"{name}: index {desc.digest[:19]} has a malformed entry ({e})") from None
        data = store.manifest(desc)
    else:
        raise SourceError(f"{name}: indexes nested more than {MAX_NESTING} deep")
    if not isinstance(manifest.get("layers"), list) or not isinstance(manifest.get("config"), dict):
        raise SourceError(f"{name}: not an image manifest (schema 1 manifests are not supported)")
    return desc.digest, manifest


def not_an_image(source: str) -> SourceError:
    """The error for a path given where an image is read: it does not
    exist, or it is a layout written without its ``oci:`` prefix, or it is
    some other file or folder."""
    from pathlib import Path

    p = Path(source).expanduser()
    if not p.exists():
        return SourceError(f"{source}: no such file or folder")
    if (p / "index.json").is_file() and (p / "oci-layout").is_file():
        return SourceError(f"{source} is an OCI layout: name it oci:{source}[:TAG]")
    what = "folder" if p.is_dir() else "file"
    return SourceError(f"{source}: a {what}, not an image (give HOST/REPO[:TAG], oci:DIR[:TAG] or "
                       "oci-archive:FILE[:TAG])")


def open_image(source: str, *, platform: str | Platform | None = None, insecure: frozenset[str] = frozenset(),
               credentials: Credentials | None = None, connections: int | None = None,
               retries: int | None = None, stats: FetchStats | None = None, choose: Chooser | None = None
               ) -> Image:
    """Resolve ``source`` (a registry reference, ``oci:DIR[:TAG]`` or
    ``oci-archive:FILE[:TAG]``) to one image manifest, for ``platform``
    (:func:`choose_platform`), or the entry of an index ``choose`` picks
    (``variants.resolve.Picker``). ``connections`` per blob: None picks
    :func:`default_connections` for its host; ``retries`` per blob read: None
    is :data:`~modelimage.registry.fetch.DEFAULT_RETRIES`. A registry image is read
    through its host's mirrors when configured
    (:func:`modelimage.registry.mirror.open_client`; ``Image.served_by``
    says which host answered). Raises
    :class:`SourceError` (and the registry's errors) naming ``source``."""
    stats = stats if stats is not None else FetchStats()
    host = repository = served_by = None
    if LayoutRef.is_layout(source):
        store: _Store = _LayoutStore(open_layout(LayoutRef.parse(source)), stats)
    else:
        from .registry.fetch import DEFAULT_RETRIES
        from .registry.mirror import open_client
        from .registry.reference import Reference, looks_like_path

        if looks_like_path(source):
            raise not_an_image(source)
        ref = Reference.parse(source)
        opened = open_client(ref, insecure=insecure, credentials=credentials)  # a mirror first, if configured
        served = opened.served
        store = _RegistryStore(source, opened.client, served.repository, served.ref,
                               default_connections(served.host) if connections is None else connections,
                               DEFAULT_RETRIES if retries is None else retries, stats)
        host, repository, served_by = ref.host, ref.repository, served.host
    try:
        digest, manifest = _resolve(store, platform, source, choose)
        config = _config(store, manifest["config"], source)
        layers = tuple(Descriptor.from_json(x) for x in manifest["layers"])
    except (KeyError, TypeError, ValueError) as e:
        store.close()
        raise SourceError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from None
    except BaseException:
        store.close()
        raise
    return Image(source, digest, manifest, config, layers, store.read, store.close, host, repository, served_by,
                 store.read_range)


def _config(store: _Store, cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The image config (parsed) when it is JSON of a config's size, else {}
    (an artifact's config may be anything)."""
    if "json" not in str(cfg.get("mediaType", "json")) or int(cfg.get("size", 0)) >= MAX_CONFIG:
        return {}
    desc = Descriptor.from_json(cfg)
    return json_blob(store.blob(desc), desc.digest, name)


def json_blob(data: bytes, digest: str, what: str) -> dict[str, Any]:
    """A small blob (a manifest, a config) checked against ``digest`` and
    parsed as a JSON object; raises :class:`SourceError` naming ``what``."""
    check_digest(data, digest, what)
    return json_object(data, f"{what}: blob {digest[:19]}")
