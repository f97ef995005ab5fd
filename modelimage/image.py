"""Existing images, read: from a registry (``HOST/REPO[:TAG|@DIGEST]``) or
an OCI layout (``oci:DIR[:TAG]``).

One place resolves a reference to an image manifest (choosing the platform
from an index), reads its config, and streams its blobs: base images for
``build --base``, ``pull``/``verify``, ``estimate REF``. Blobs stream over
several ranged connections from registries (:class:`BlobReader`) and are
verified by whoever consumes them (:func:`fetch` verifies as it goes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import SourceError
from .oci import ANNOTATION_PREFIX, INDEX_MEDIA_TYPES, Descriptor, Platform, select_platform
from .registry.fetch import DEFAULT_CONNECTIONS, DEFAULT_RETRIES, BlobReader, FetchStats
from .registry.keychain import Credentials

ANNOTATION_TARGET = ANNOTATION_PREFIX + "target"
READ_CHUNK = 4 << 20


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


def json_blob(data: bytes, digest: str, what: str) -> dict[str, Any]:
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise SourceError(f"{what}: blob {digest[:19]} does not match its digest")
    try:
        return json.loads(data)
    except ValueError as e:
        raise SourceError(f"{what}: blob {digest[:19]} is not JSON ({e})") from None


def default_connections(host: str) -> int:
    """Connections per blob for a registry: one streaming GET on loopback
    (no latency to hide, and each extra ranged request costs the registry
    CPU: 2.15 GB pulled in 3.3-3.9 s that way against 4.3-5.9 s over two
    ranged connections, 2-core VM, 2026-11-25), else
    :data:`~modelimage.registry.fetch.DEFAULT_CONNECTIONS` ranged GETs."""
    from .registry.reference import is_loopback

    return 1 if is_loopback(host) else DEFAULT_CONNECTIONS


def open_image(source: str, *, platform: str | None = None, insecure: frozenset[str] = frozenset(),
               credentials: Credentials | None = None, connections: int | None = None,
               retries: int = DEFAULT_RETRIES, stats: FetchStats | None = None) -> Image:
    """Resolve ``source`` (a registry reference or ``oci:DIR[:TAG]``) to one image manifest.
    ``connections`` per blob: None picks :func:`default_connections` for its host."""
    stats = stats if stats is not None else FetchStats()
    if source.startswith("oci:"):
        return _open_layout(source, platform, stats)
    from .registry.client import RegistryClient
    from .registry.reference import Reference

    ref = Reference.parse(source)
    if connections is None:
        connections = default_connections(ref.host)
    client = RegistryClient(ref, insecure=insecure, credentials=credentials)
    try:
        m = client.get_manifest(ref.repository, ref.ref)
        manifest, digest = m.json(), m.digest
        if is_index(manifest, m.media_type):
            chosen = choose_platform(manifest, platform, source)
            m = client.get_manifest(ref.repository, chosen["digest"])
            manifest, digest = m.json(), m.digest
        if "layers" not in manifest or "config" not in manifest:
            raise SourceError(f"{source}: not an image manifest (schema 1 manifests are not supported)")
        cfg = manifest["config"]
        config = json_blob(client.get_blob(ref.repository, cfg["digest"]), cfg["digest"], source) \
            if "json" in cfg.get("mediaType", "json") and int(cfg.get("size", 0)) < (4 << 20) else {}
    except BaseException:
        client.close()
        raise

    def read(desc: Descriptor, start: int) -> Iterator[memoryview]:
        return BlobReader(client, ref.repository, desc.digest, desc.size, connections=connections,
                          retries=retries, stats=stats).chunks(start)

    return Image(source, digest, manifest, config if isinstance(config, dict) else {},
                 tuple(Descriptor.from_json(x) for x in manifest["layers"]), read, client.close,
                 ref.host, ref.repository)


def _open_layout(source: str, platform: str | None, stats: FetchStats) -> Image:
    from .layout import LayoutRef, read_layout

    ref = LayoutRef.parse(source)
    if ref.transport != "oci":
        raise SourceError(f"{source}: only registries and oci:DIR[:TAG] layouts can be read")
    desc, manifest = read_layout(ref)
    blobs = ref.path / "blobs" / "sha256"

    def blob(digest: str) -> bytes:
        try:
            return (blobs / digest.split(":", 1)[1]).read_bytes()
        except OSError as e:
            raise SourceError(f"{source}: blob {digest[:19]} is missing ({e.strerror})") from None

    digest = desc.digest
    if is_index(manifest, desc.media_type):
        chosen = choose_platform(manifest, platform, source)
        digest = chosen["digest"]
        manifest = json_blob(blob(digest), digest, source)
    if "layers" not in manifest or "config" not in manifest:
        raise SourceError(f"{source}: not an image manifest")
    cfg = manifest["config"]
    config = json_blob(blob(cfg["digest"]), cfg["digest"], source) if "json" in cfg.get("mediaType", "json") else {}

    def read(d: Descriptor, start: int) -> Iterator[memoryview]:
        try:
            f = open(blobs / d.hex, "rb", buffering=0)
        except OSError as e:
            raise SourceError(f"{source}: blob {d.digest[:19]} is missing ({e.strerror})") from None
        with f:
            f.seek(start)
            buf = bytearray(READ_CHUNK)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    return
                stats.add(n)
                yield view[:n]

    return Image(source, digest, manifest, config, tuple(Descriptor.from_json(x) for x in manifest["layers"]),
                 read, lambda: None)
