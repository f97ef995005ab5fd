"""Assemble an image from a plan: layers, config, manifest, into a sink.

A sink is anything that stores blobs and a tagged manifest: an OCI layout
directory, an oci-archive file, (later) a registry. Layers stream from the
source files through :func:`modelimage.tarstream.write_layer` straight into
the sink, hashed once on the way.
"""

from __future__ import annotations

import json
import os
import platform as _platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from .errors import ConfigError, LayerTooLarge
from .inspect import ModelInfo
from .oci import (
    ANNOTATION_CREATED,
    ANNOTATION_FILES,
    ANNOTATION_PREFIX,
    ANNOTATION_TITLE,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
)
from .plan import Layer, Plan
from .tarstream import FileDigest, write_layer
from .units import format_size

LAYER_MEDIA_TYPES = {"none": MEDIA_TYPE_LAYER_TAR, "gzip": MEDIA_TYPE_LAYER_GZIP}
DEFAULT_PLATFORM = "linux/amd64"


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...
    def commit(self, digest: str) -> None: ...
    def abort(self) -> None: ...


class Sink(Protocol):
    """Where an image goes."""

    def has_blob(self, digest: str) -> bool: ...
    def open_blob(self) -> BlobWriter: ...
    def put_blob(self, data: bytes, digest: str) -> None: ...
    def put_manifest(self, manifest: Descriptor, data: bytes) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org), or 0."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise ConfigError(f"SOURCE_DATE_EPOCH={raw!r}: must be a whole number of seconds since 1970")
    return int(raw)


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_platform(text: str) -> tuple[str, str, str | None]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def host_platform() -> str:
    machine = _platform.machine().lower()
    return "linux/" + {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7"}.get(machine, machine)


@dataclass(frozen=True)
class ImageSettings:
    platform: str = DEFAULT_PLATFORM
    epoch: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltLayer:
    descriptor: Descriptor
    diff_id: str
    files: tuple[FileDigest, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.descriptor.digest,
            "size": self.descriptor.size,
            "mediaType": self.descriptor.media_type,
            "diff_id": self.diff_id,
            "files": [{"path": "/" + f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }


@dataclass(frozen=True)
class BuildResult:
    manifest: Descriptor
    config: Descriptor
    layers: tuple[BuiltLayer, ...]
    reference: str

    @property
    def size(self) -> int:
        return self.manifest.size + self.config.size + sum(layer.descriptor.size for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.manifest.digest,
            "mediaType": self.manifest.media_type,
            "config": self.config.digest,
            "size": self.size,
            "layers": [layer.to_json() for layer in self.layers],
        }


def model_facts(model: ModelInfo, target: str) -> dict[str, str]:
    """What inspect knows, as labels/annotations (string values)."""
    facts = {
        ANNOTATION_TITLE: model.name,
        ANNOTATION_PREFIX + "name": model.name,
        ANNOTATION_PREFIX + "format": model.format,
        ANNOTATION_PREFIX + "kind": model.kind,
        ANNOTATION_PREFIX + "parameters": str(model.parameters),
        ANNOTATION_PREFIX + "quantization": model.quantization,
        ANNOTATION_PREFIX + "target": target,
        ANNOTATION_PREFIX + "vram-bytes": str(model.vram_bytes),
    }
    if model.architecture:
        facts[ANNOTATION_PREFIX + "architecture"] = model.architecture
    return facts


def _layer_annotations(layer: Layer, files: tuple[FileDigest, ...]) -> dict[str, str]:
    listing = [{"path": "/" + f.path, "size": f.size, "sha256": f.sha256} for f in files]
    return {
        ANNOTATION_TITLE: layer.title,
        ANNOTATION_FILES: json.dumps(listing, separators=(",", ":"), sort_keys=True),
    }


def build_image(
    model: ModelInfo,
    plan: Plan,
    sink: Sink,
    *,
    settings: ImageSettings,
    reference: str,
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Write every layer of ``plan``, then the config and manifest, into ``sink``."""
    compression = plan.settings.compression
    media_type = LAYER_MEDIA_TYPES[compression]
    os_name, arch, variant = parse_platform(settings.platform)
    created = rfc3339(settings.epoch)
    target = "/" + plan.settings.root
    try:
        built: list[BuiltLayer] = []
        for layer in plan.layers:
            w = sink.open_blob()
            try:
                res = write_layer(layer.entries, w, mtime=settings.epoch, compression=compression, progress=progress)
                if res.tar_size != layer.size:
                    raise AssertionError(f"layer {layer.title}: planned {layer.size} bytes, wrote {res.tar_size}")
                if res.size > plan.settings.max_layer_size:
                    raise LayerTooLarge(
                        f"layer {layer.title} is {format_size(res.size)} as stored, over the limit of "
                        f"{format_size(plan.settings.max_layer_size)}"
                    )
            except BaseException:
                w.abort()
                raise
            w.commit(res.digest)
            desc = Descriptor(media_type, res.digest, res.size, annotations=_layer_annotations(layer, res.files))
            built.append(BuiltLayer(desc, res.diff_id, res.files))

        facts = model_facts(model, target)
        labels = {**facts, **settings.labels}
        history = tuple(
            {"created": created, "created_by": f"modelimage build: {layer.title}", "comment": layer.kind}
            for layer in plan.layers
        )
        config = ImageConfig(
            architecture=arch, os=os_name, variant=variant, created=created,
            diff_ids=tuple(b.diff_id for b in built),
            container_config={"Labels": labels, "WorkingDir": target},
            history=history,
        )
        config_bytes = config.to_bytes()
        config_desc = Descriptor.of_bytes(MEDIA_TYPE_CONFIG, config_bytes)
        sink.put_blob(config_bytes, config_desc.digest)
        manifest = Manifest(
            config=config_desc,
            layers=tuple(b.descriptor for b in built),
            annotations={**labels, ANNOTATION_CREATED: created},
        )
        manifest_bytes = manifest.to_bytes()
        platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
        manifest_desc = Descriptor.of_bytes(MEDIA_TYPE_MANIFEST, manifest_bytes, platform=platform)
        sink.put_manifest(manifest_desc, manifest_bytes)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return BuildResult(manifest_desc, config_desc, tuple(built), reference)
