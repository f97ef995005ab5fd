"""Assemble an image from a plan: layers, config, manifest, into a sink.

Layers stream from the source files (:class:`modelimage.tarstream.LayerStream`)
straight into the sink (:mod:`modelimage.sink`: an OCI layout, an
oci-archive, a registry), hashed once on the way, several layers at once
when the sink allows, then the config and the manifest. The digest cache
lets an unchanged layer skip the files altogether when the sink already has
its blob. On a base image (``--base``) the model's layers are appended to
the base's (:mod:`modelimage.mutate`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any

from . import filelist
from .cache import DigestCache
from .errors import ConfigError
from .image import Image
from .inspect import ModelInfo
from .mutate import append_config, base_layers
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
    Platform,
    canonical_json,
)
from .plan import Layer, Plan
from .sink import Assembled, Sink, copy_blob, left_behind, store_layer, write_layers_then_manifest
from .splitcheck import SplitChecks
from .tarstream import FileDigest, LayerStream

LAYER_MEDIA_TYPES = {"none": MEDIA_TYPE_LAYER_TAR, "gzip": MEDIA_TYPE_LAYER_GZIP}
DEFAULT_PLATFORM = "linux/amd64"


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
    action: str = "written"  # written | uploaded | exists | mounted

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.descriptor.digest,
            "size": self.descriptor.size,
            "mediaType": self.descriptor.media_type,
            "diff_id": self.diff_id,
            "action": self.action,
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


def _with_file_list(built: list[BuiltLayer], store: Callable[[LayerStream], BuiltLayer],
                    epoch: int) -> list[BuiltLayer]:
    """The layers as the manifest lists them: each with its files inline,
    or, when that would make the manifest too big, without, plus the
    file-list layer (:mod:`modelimage.filelist`) that ``store`` writes."""
    if not filelist.needs_layer([b.files for b in built]):
        return built
    bare = [replace(b, descriptor=replace(b.descriptor, annotations={
        k: v for k, v in b.descriptor.annotations.items() if k != ANNOTATION_FILES})) for b in built]
    return bare + [store(filelist.list_stream([(b.descriptor.digest, b.files) for b in built], epoch))]


def _store_file_list(stream: LayerStream, sink: Sink, cache: DigestCache, max_layer_size: int) -> BuiltLayer:
    result, action = store_layer(stream, sink, cache, compression="none", max_layer_size=max_layer_size,
                                 title="file list", progress=None)
    desc = Descriptor(MEDIA_TYPE_LAYER_TAR, result.digest, result.size,
                      annotations={filelist.ANNOTATION_FILELIST: str(filelist.VERSION)})
    return BuiltLayer(desc, result.diff_id, result.files, action)


def _put_layer(layer: Layer, stream: LayerStream, plan: Plan, sink: Sink, cache: DigestCache,
               progress: Callable[[int], None] | None) -> BuiltLayer:
    compression = plan.settings.compression
    if stream.size != layer.size:
        raise AssertionError(f"layer {layer.title}: planned {layer.size} bytes, stream has {stream.size}")
    result, action = store_layer(stream, sink, cache, compression=compression,
                                 max_layer_size=plan.settings.max_layer_size, title=layer.title, progress=progress)
    desc = Descriptor(LAYER_MEDIA_TYPES[compression], result.digest, result.size,
                      annotations=filelist.inline(result.files))
    return BuiltLayer(desc, result.diff_id, result.files, action)


def _assemble(model: ModelInfo, plan: Plan, built: list[BuiltLayer], settings: ImageSettings,
              base: Image | None) -> Assembled:
    """Config and manifest (bytes and descriptors) for the built layers."""
    created = rfc3339(settings.epoch)
    target = "/" + plan.settings.root
    labels = {**model_facts(model, target), **settings.labels}
    history = [
        {"created": created, "created_by": f"modelimage build: {layer.title}", "comment": layer.kind}
        for layer in plan.layers
    ] + [{"created": created, "created_by": "modelimage build: file list", "comment": "files"}
         for _ in built[len(plan.layers):]]
    diff_ids = [b.diff_id for b in built]
    layers = tuple(b.descriptor for b in built)
    if base is not None:
        config = append_config(base, labels=labels, history=history, diff_ids=diff_ids, created=created)
        platform = base.platform
        layers = base_layers(base) + layers
    else:
        platform = Platform.parse(settings.platform)
        config = ImageConfig(
            architecture=platform.architecture, os=platform.os, variant=platform.variant, created=created,
            diff_ids=tuple(diff_ids), container_config={"Labels": labels, "WorkingDir": target},
            history=tuple(history),
        ).to_json()
    config_bytes = canonical_json(config)
    config_desc = Descriptor.of_bytes(MEDIA_TYPE_CONFIG, config_bytes)
    manifest = Manifest(config=config_desc, layers=layers, annotations={**labels, ANNOTATION_CREATED: created})
    manifest_bytes = manifest.to_bytes()
    return config_bytes, config_desc, manifest_bytes, Descriptor.of_bytes(MEDIA_TYPE_MANIFEST, manifest_bytes,
                                                                          platform=platform)


def manifest_size(model: ModelInfo, plan: Plan, settings: ImageSettings, base: Image | None = None) -> int:
    """The size the manifest will have (digests are fixed-length, so
    placeholders give the exact size for uncompressed layers)."""
    zero = "sha256:" + "0" * 64
    dummy = [
        BuiltLayer(Descriptor(LAYER_MEDIA_TYPES[plan.settings.compression], zero, layer.size,
                              annotations=filelist.inline(files)), zero, files)
        for layer in plan.layers
        for files in [tuple(FileDigest(e.path, e.size, zero) for e in layer.entries)]
    ]
    listed = _with_file_list(dummy, lambda stream: BuiltLayer(Descriptor(
        MEDIA_TYPE_LAYER_TAR, zero, stream.size, annotations={filelist.ANNOTATION_FILELIST: str(filelist.VERSION)}),
        zero, ()), settings.epoch)
    return len(_assemble(model, plan, listed, settings, base)[2])


def build_image(
    model: ModelInfo,
    plan: Plan,
    sink: Sink,
    *,
    settings: ImageSettings,
    reference: str,
    progress: Callable[[int], None] | None = None,
    cache: DigestCache | None = None,
    concurrency: int | None = None,
    base: Image | None = None,
) -> BuildResult:
    """Write the base's layers (if any) and every layer of ``plan`` (several
    at once when the sink allows), then the config, then the manifest."""
    cache = cache or DigestCache()
    skip = len(base.layers) if base else 0
    jobs: list[Callable[[], Any]] = [partial(copy_blob, d, base, sink) for d in (base.layers if base else ())]
    streams = [LayerStream(layer.entries, settings.epoch) for layer in plan.layers]
    checks = SplitChecks.of(streams, [layer.title for layer in plan.layers])
    jobs += [partial(_put_layer, layer, stream, plan, sink, cache, progress)
             for layer, stream in zip(plan.layers, streams, strict=True)]
    listed: list[BuiltLayer] = []

    def assemble(done: list[Any]) -> Assembled:
        checks.verify(left_behind(sink))  # listed files spread over layers, whole, before anything names them
        store = partial(_store_file_list, sink=sink, cache=cache, max_layer_size=plan.settings.max_layer_size)
        listed[:] = _with_file_list(done[skip:], store, settings.epoch)
        return _assemble(model, plan, listed, settings, base)

    _, config_desc, manifest_desc = write_layers_then_manifest(sink, jobs, assemble, concurrency)
    return BuildResult(manifest_desc, config_desc, tuple(listed), reference)
