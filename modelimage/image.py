"""Existing images, read: from a registry (``HOST/REPO[:TAG|@DIGEST]``) or
an OCI layout (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, read by
:mod:`modelimage.layout`).

THE one place that goes from a reference to an image manifest: where it is
(:func:`open_store`: a layout, or a registry repository through its
mirrors, :mod:`modelimage.registry.store`), its manifests read checked
against the digest and size asked for and at most
:data:`~modelimage.oci.MAX_MANIFEST_BYTES` (:func:`read_manifest`), its
indexes followed, nested ones too, to the entry for the platform
(:func:`choose_platform`) or the one a caller's rule picks (``choose``:
variants) (:func:`resolve`), its config read (:func:`open_image`). Base
images for ``build --base``, ``pull``/``verify``, ``estimate REF``,
``inspect REF``'s variants and signing all read images here. Docker schema 2
manifests and manifest lists read like their OCI counterparts. Blobs stream
from registries over several ranged connections, in place from layouts,
and are verified by whoever consumes them (:meth:`Image.fetch` verifies as
it goes). Go-containerregistry's ``remote.Get``/``layout`` ``Image`` split,
in one small type.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .errors import SourceError
from .layout import LayoutReader, LayoutRef, open_layout
from .layout.read import check_digest, json_object
from .oci import ANNOTATION_PREFIX, INDEX_MEDIA_TYPES, MEDIA_TYPE_MANIFEST, Descriptor, Platform, select_platform
from .registry.keychain import Credentials
from .registry.pieces import FetchStats

if TYPE_CHECKING:
    from .registry.client import RegistryClient
    from .registry.mirror import Opened
    from .registry.reference import Reference

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
    media_type: str = ""  # the manifest's, as the registry served it or its index listed it
    size: int = 0  # the manifest's bytes
    from_index: bool = False  # the reference named an index; this is the entry chosen in it
    client: RegistryClient | None = None  # what it is read through (None: a layout); closed by ``close``
    served: Reference | None = None  # the reference ``client`` reads (a mirror's, or the registry's)

    @property
    def descriptor(self) -> Descriptor:
        """The manifest's descriptor: what referrers point at and signatures sign."""
        media_type = self.media_type or str(self.manifest.get("mediaType") or "") or MEDIA_TYPE_MANIFEST
        return Descriptor(media_type, self.digest, self.size)

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


class Store(Protocol):
    """Where an image's manifests and blobs are (a registry repository, a
    layout): :func:`open_store`. Manifests come checked against the digest
    and size asked for, at most :data:`~modelimage.oci.MAX_MANIFEST_BYTES`."""

    client: RegistryClient | None  # a registry's (None: a layout)
    served: Reference | None  # what ``client`` reads: a mirror's reference, or the registry's

    def top(self) -> tuple[Descriptor, bytes]: ...  # what the reference names, and its bytes (verified)
    def manifest(self, desc: Descriptor) -> bytes: ...  # a manifest or index by digest (verified)
    def blob(self, desc: Descriptor) -> bytes: ...  # a small blob (a config), not verified yet
    def read(self, desc: Descriptor, start: int) -> Iterator[memoryview]: ...
    def read_range(self, desc: Descriptor, offset: int, length: int) -> bytes: ...
    def close(self) -> None: ...


class _LayoutStore:
    client = served = None

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


def read_manifest(store: Store, desc: Descriptor | None, name: str) -> tuple[Descriptor, dict[str, Any]]:
    """The manifest or index ``desc`` names (None: what the reference
    names), parsed, with its descriptor. Raises :class:`SourceError` naming
    ``name`` (and the registry's errors)."""
    if desc is None:
        desc, data = store.top()
    else:
        data = store.manifest(desc)
    return desc, json_object(data, f"{name}: manifest {desc.digest[:19]}")


def resolve(store: Store, name: str, *, platform: str | Platform | None = None, choose: Chooser | None = None,
            start: Descriptor | None = None) -> tuple[Descriptor, dict[str, Any], bool]:
    """(descriptor, parsed manifest, whether an index was followed) of the
    image manifest ``start`` (None: what the reference names) means: its
    indexes followed down, nested ones too, to the entry ``choose`` picks
    (default: :func:`choose_platform` for ``platform``). Docker manifest
    lists and schema 2 manifests read like their OCI counterparts. Raises
    :class:`SourceError` naming ``name``."""
    desc, manifest = read_manifest(store, start, name)
    followed = False
    for _ in range(MAX_NESTING):
        if not is_index(manifest, desc.media_type):
            break
        entry = choose(manifest) if choose else choose_platform(manifest, platform, name)
        try:
            child = Descriptor.from_json(entry)
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"{name}: index {desc.digest[:19]} has a malformed entry ({e})") from None
        desc, manifest = read_manifest(store, child, name)
        followed = True
    else:
        raise SourceError(f"{name}: indexes nested more than {MAX_NESTING} deep")
    if not isinstance(manifest.get("layers"), list) or not isinstance(manifest.get("config"), dict):
        raise SourceError(f"{name}: not an image manifest (schema 1 manifests are not supported)")
    return desc, manifest, followed


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


def open_store(source: str, *, insecure: frozenset[str] = frozenset(), credentials: Credentials | None = None,
               connections: int | None = None, retries: int | None = None, stats: FetchStats | None = None,
               opened: Opened | None = None) -> Store:
    """Where ``source`` (a registry reference, ``oci:DIR[:TAG]`` or
    ``oci-archive:FILE[:TAG]``) is read from. A registry image is read
    through its host's mirrors when configured
    (:func:`modelimage.registry.mirror.open_client`), or through
    ``opened`` (a client the caller opened). ``connections`` per blob: None
    picks :func:`default_connections` for its host; ``retries`` per blob
    read: None is :data:`~modelimage.registry.fetch.DEFAULT_RETRIES`. Only
    registry images load :mod:`modelimage.registry.fetch` (and httpx). Close it."""
    stats = stats if stats is not None else FetchStats()
    if LayoutRef.is_layout(source):
        return _LayoutStore(open_layout(LayoutRef.parse(source)), stats)
    from .registry.fetch import DEFAULT_RETRIES
    from .registry.mirror import open_client
    from .registry.reference import Reference, looks_like_path
    from .registry.store import RegistryStore

    if looks_like_path(source):
        raise not_an_image(source)
    if opened is None:
        opened = open_client(Reference.parse(source), insecure=insecure, credentials=credentials)
    served = opened.served
    return RegistryStore(source, opened.client, served,
                         default_connections(served.host) if connections is None else connections,
                         DEFAULT_RETRIES if retries is None else retries, stats)


def open_image(source: str, *, platform: str | Platform | None = None, insecure: frozenset[str] = frozenset(),
               credentials: Credentials | None = None, connections: int | None = None,
               retries: int | None = None, stats: FetchStats | None = None, choose: Chooser | None = None,
               opened: Opened | None = None) -> Image:
    """Resolve ``source`` (a registry reference, ``oci:DIR[:TAG]`` or
    ``oci-archive:FILE[:TAG]``; :func:`open_store`) to one image manifest
    (:func:`resolve`), for ``platform`` (:func:`choose_platform`), or the
    entry of an index ``choose`` picks (``variants.resolve.Picker``), and
    read its config. ``Image.served_by`` says which host answered (a
    mirror, or the registry). Raises :class:`SourceError` (and the
    registry's errors) naming ``source``."""
    store = open_store(source, insecure=insecure, credentials=credentials, connections=connections,
                       retries=retries, stats=stats, opened=opened)
    try:
        desc, manifest, from_index = resolve(store, source, platform=platform, choose=choose)
        layers = layer_descriptors(manifest, source)
        config = _config(store, manifest["config"], source)
    except (KeyError, TypeError, ValueError) as e:
        store.close()
        raise SourceError(f"{source}: malformed manifest ({type(e).__name__}: {e})") from None
    except BaseException:
        store.close()
        raise
    host = repository = served_by = None
    if store.served is not None:
        from .registry.reference import Reference

        ref = Reference.parse(source)
        host, repository, served_by = ref.host, ref.repository, store.served.host
    return Image(source, desc.digest, manifest, config, layers, store.read, store.close, host, repository, served_by,
                 store.read_range, desc.media_type, desc.size, from_index, store.client, store.served)


def layer_descriptors(manifest: dict[str, Any], name: str) -> tuple[Descriptor, ...]:
    """The layers of an image manifest (parsed, from :func:`resolve`);
    raises :class:`SourceError` naming ``name`` for a malformed one."""
    try:
        return tuple(Descriptor.from_json(x) for x in manifest["layers"])
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{name}: malformed manifest ({type(e).__name__}: {e})") from None


def _config(store: Store, cfg: dict[str, Any], name: str) -> dict[str, Any]:
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
