"""OCI image-spec data: media types, descriptors, manifests, configs, indexes.

Frozen dataclasses with one canonical JSON encoding each, so the same image
always serializes to the same bytes and therefore the same digest. No I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# https://github.com/opencontainers/image-spec/blob/main/media-types.md
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYOUT_VERSION = "1.0.0"

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


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] | None = None
    artifact_type: str | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform:
            d["platform"] = dict(self.platform)
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Descriptor":
        return cls(
            media_type=d["mediaType"],
            digest=d["digest"],
            size=int(d["size"]),
            annotations=dict(d.get("annotations") or {}),
            platform=d.get("platform"),
            artifact_type=d.get("artifactType"),
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
