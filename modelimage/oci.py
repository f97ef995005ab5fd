"""OCI image-spec data: media types, descriptors, manifests, configs,
indexes, platforms.

Frozen dataclasses with one canonical JSON encoding each, so the same image
always serializes to the same bytes and therefore the same digest. No I/O.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .errors import ConfigError

# https://github.com/opencontainers/image-spec/blob/main/media-types.md
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
LAYOUT_VERSION = "1.0.0"
# Docker's image manifest v2 schema 2 and manifest list
# (distribution/distribution docs/spec/manifest-v2-2.md), which registries,
# podman (--format v2s2) and skopeo still write
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
INDEX_MEDIA_TYPES = (MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_LIST)
MANIFEST_MEDIA_TYPES = (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST)
# The most bytes a manifest or index may have when read, from a registry or a
# layout. The distribution spec asks for at least 4 MB (distribution-spec PR
# 293; distribution v3 and containerd stop there); lenient for images other
# tools wrote, bounded so a server cannot make a reader hold gigabytes.
MAX_MANIFEST_BYTES = 64 << 20
# The same bytes under their OCI names (image-spec media-types.md,
# "Compatibility Matrix"): what a Docker layer is called in an OCI manifest.
DOCKER_TO_OCI = {
    MEDIA_TYPE_DOCKER_LAYER: MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_DOCKER_LAYER_GZIP: MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_FOREIGN: MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP,
    MEDIA_TYPE_DOCKER_CONFIG: MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST: MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_DOCKER_LIST: MEDIA_TYPE_INDEX,
}

LayerCompression = Literal["none", "gzip", "zstd"]
# THE table of image layer media types and how their blobs are compressed
# (image-spec media-types.md; the nondistributable ones are deprecated but
# still read; Docker's schema 2 layers and its foreign layer, which is gzip)
LAYER_COMPRESSION: Mapping[str, LayerCompression] = MappingProxyType({
    MEDIA_TYPE_LAYER_TAR: "none",
    MEDIA_TYPE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_LAYER_ZSTD: "zstd",
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE: "none",
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    MEDIA_TYPE_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    MEDIA_TYPE_DOCKER_LAYER: "none",
    MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
    MEDIA_TYPE_DOCKER_LAYER_FOREIGN: "gzip",
})
IMAGE_LAYER_TYPES = frozenset(LAYER_COMPRESSION)  # what a container image's manifest may list as a layer


def layer_compression(media_type: str) -> LayerCompression:
    """How a layer blob of ``media_type`` is compressed: the image layer
    types by :data:`LAYER_COMPRESSION`; any other type by its structured
    suffix (``+gzip``/``.gzip``, ``+zstd``/``.zstd``: ModelPack's
    ``application/vnd.cncf.model.weight.v1.tar+gzip``); else ``"none"``
    (plain tars, raw file layers)."""
    known = LAYER_COMPRESSION.get(media_type)
    if known is not None:
        return known
    for suffix, kind in (("gzip", "gzip"), ("zstd", "zstd")):
        if media_type.endswith(("+" + suffix, "." + suffix)):
            return kind  # type: ignore[return-value]
    return "none"


ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"
# modelimage's own keys (labels on the config, annotations on manifest/layers)
ANNOTATION_PREFIX = "dev.modelimage."
ANNOTATION_FILES = ANNOTATION_PREFIX + "files"


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding used for every blob modelimage writes."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def _set_only(d: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """``d`` and those ``optional`` fields that are set: the spec's JSON
    omits empty optional fields (``omitempty``)."""
    d.update((k, v) for k, v in optional.items() if v)
    return d


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_PLATFORM_RE = re.compile(r"^([A-Za-z0-9_.-]+)(?:\(([^()]*)\))?/([A-Za-z0-9_.-]+)(?:/([A-Za-z0-9_.-]+))?$")


@dataclass(frozen=True)
class Platform:
    """Where an image runs: ``os``, ``architecture``, ``variant`` (the
    image spec's ``platform`` object and config fields; ``os.version`` and
    ``os.features`` kept as read).

    Written ``OS/ARCH[/VARIANT]`` (``linux/arm64/v8``), optionally with an
    OS version ``windows(10.0.17763)/amd64`` as containerd writes it.
    Values are compared after :meth:`normalized` (containerd
    ``platforms.Normalize``): ``aarch64`` is ``arm64`` and its ``v8``
    variant the default one, ``x86_64`` is ``amd64``, ``armhf`` is
    ``arm/v7``.
    """

    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        os_ = f"{self.os}({self.os_version})" if self.os_version else self.os
        return "/".join(p for p in (os_, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> "Platform":
        """``OS/ARCH[/VARIANT]`` as written; raises :class:`ConfigError`."""
        m = _PLATFORM_RE.match(text.strip())
        if not m:
            raise ConfigError(f"platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")
        os_, version, arch, variant = m.groups()
        return cls(os_, arch, variant or None, version or None)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Platform":
        """The spec's ``platform`` object (or an image config's fields)."""
        features = d.get("os.features") or ()
        return cls(str(d.get("os") or ""), str(d.get("architecture") or ""), d.get("variant") or None,
                   d.get("os.version") or None, tuple(str(f) for f in features if isinstance(f, str)))

    def to_json(self) -> dict[str, Any]:
        return _set_only({"architecture": self.architecture, "os": self.os}, variant=self.variant,
                         **{"os.version": self.os_version, "os.features": list(self.os_features)})

    @classmethod
    def host(cls) -> "Platform":
        """This machine's platform for containers: ``linux`` (images run in a
        Linux VM on macOS and Windows too) and the CPU architecture in Go's
        names (``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``,
        ``armv7l`` -> ``arm/v7``, ``i686`` -> ``386``)."""
        machine = _platform.machine().lower()
        if m := re.match(r"^armv(\d)", machine):
            return cls("linux", "arm", f"v{m.group(1)}")
        if re.fullmatch(r"i[3-6]86", machine):
            return cls("linux", "386")
        return cls("linux", machine or "amd64").normalized()

    def normalized(self) -> "Platform":
        """containerd's normalisation (``platforms/database.go``
        ``normalizeArch``): lower case, Go architecture names, default
        variants dropped (``arm64/v8`` -> ``arm64``, ``amd64/v1`` ->
        ``amd64``), ``arm`` without a variant is ``arm/v7``."""
        os_ = self.os.lower()
        os_ = "darwin" if os_ == "macos" else os_
        arch, variant = self.architecture.lower(), (self.variant or "").lower()
        if arch == "i386":
            arch, variant = "386", ""
        elif arch in ("x86_64", "x86-64", "amd64"):
            arch, variant = "amd64", "" if variant == "v1" else variant
        elif arch in ("aarch64", "arm64"):
            arch = "arm64"
            variant = {"8": "", "v8": "", "v8.0": "", "9": "v9", "9.0": "v9", "v9.0": "v9"}.get(variant, variant)
        elif arch == "armhf":
            arch, variant = "arm", "v7"
        elif arch == "armel":
            arch, variant = "arm", "v6"
        elif arch == "arm":
            variant = {"": "v7", "7": "v7", "5": "v5", "6": "v6", "8": "v8"}.get(variant, variant)
        return Platform(os_, arch, variant or None, self.os_version, self.os_features)

    def satisfies(self, spec: "Platform") -> bool:
        """Whether an image of this platform is what ``spec`` asks for: equal
        OS, architecture and variant after normalisation (containerd
        ``platforms.OnlyStrict``), and ``spec``'s OS version and features
        where it names them (go-containerregistry ``Platform.Satisfies``)."""
        have, want = self.normalized(), spec.normalized()
        return (have.os == want.os and have.architecture == want.architecture and have.variant == want.variant
                and (not want.os_version or have.os_version == want.os_version)
                and set(want.os_features) <= set(have.os_features))

    def fallbacks(self) -> tuple["Platform", ...]:
        """The platforms a machine of this one also runs, best first
        (containerd ``platforms.Only``): itself, then ``arm64`` -> ``arm/v8``
        ... ``arm/v5``, ``arm/vN`` -> the older ``arm`` variants, ``amd64/vN``
        -> the older ``amd64`` levels, then ``386``."""
        p = self.normalized()
        level = int(p.variant[1:]) if p.variant and re.fullmatch(r"v\d+", p.variant) else None

        def same_os(arch: str, n: int) -> Platform:
            variant = None if (arch, n) in (("amd64", 1), ("386", 0)) else f"v{n}"
            return Platform(p.os, arch, variant, p.os_version)

        out = [p]
        if p.architecture == "amd64":
            out += [same_os("amd64", n) for n in range((level or 1) - 1, 0, -1)] + [same_os("386", 0)]
        elif p.architecture == "arm" and level:
            out += [same_os("arm", n) for n in range(level - 1, 4, -1)]
        elif p.architecture == "arm64" and p.variant is None:
            out += [same_os("arm", n) for n in range(8, 4, -1)]
        return tuple(out)


def select_platform(candidates: list[Platform | None], want: Platform, *, compatible: bool = True) -> int | None:
    """The position of the candidate best matching ``want``: an exact match
    (after normalisation) first, then, with ``compatible``, the platforms
    ``want`` also runs (:meth:`Platform.fallbacks`), in that order. None
    when nothing matches."""
    order = want.fallbacks() if compatible else (want.normalized(),)
    for spec in order:
        for i, c in enumerate(candidates):
            if c is not None and c.satisfies(spec):
                return i
    return None


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None
    urls: tuple[str, ...] = ()  # where a non-distributable (foreign) layer is fetched from

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    def to_json(self) -> dict[str, Any]:
        return _set_only({"mediaType": self.media_type, "digest": self.digest, "size": self.size},
                         annotations=dict(self.annotations), platform=self.platform and self.platform.to_json(),
                         artifactType=self.artifact_type, urls=list(self.urls))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Descriptor":
        return cls(
            media_type=d["mediaType"],
            digest=d["digest"],
            size=int(d["size"]),
            annotations=dict(d.get("annotations") or {}),
            platform=Platform.from_json(d["platform"]) if isinstance(d.get("platform"), dict) else None,
            artifact_type=d.get("artifactType"),
            urls=tuple(u for u in d.get("urls") or () if isinstance(u, str)),
        )

    @classmethod
    def of_bytes(cls, media_type: str, data: bytes, **kw: Any) -> "Descriptor":
        return cls(media_type, sha256_digest(data), len(data), **kw)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config modelimage sets.

    ``created`` is fixed (``SOURCE_DATE_EPOCH`` or the epoch) so configs are
    reproducible. ``container_config`` holds Env/Entrypoint/Labels/...
    as in the image spec's ``config`` object.
    """

    architecture: str
    os: str
    diff_ids: tuple[str, ...]
    created: str
    container_config: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    variant: str | None = None

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "architecture": self.architecture,
            "os": self.os,
            "created": self.created,
            "config": self.container_config,
            "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
            "history": list(self.history),
        }
        if self.variant:
            d["variant"] = self.variant
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    media_type: str = MEDIA_TYPE_MANIFEST

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())


@dataclass(frozen=True)
class Index:
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [m.to_json() for m in self.manifests],
        }
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d

    def to_bytes(self) -> bytes:
        # index.json is read by people too: indent it (it is not content-addressed)
        return (json.dumps(self.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Index":
        return cls(
            manifests=tuple(Descriptor.from_json(m) for m in d.get("manifests", [])),
            annotations=dict(d.get("annotations") or {}),
        )
