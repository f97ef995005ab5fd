"""Assemble an image from a plan: layers, config, manifest, into a sink.

A sink is anything that stores blobs and a tagged manifest: an OCI layout
directory, an oci-archive file, (later) a registry. Layers stream from the
source files (:class:`modelimage.tarstream.LayerStream`) straight into the
sink, hashed once on the way, several layers at once when the sink allows.
The digest cache lets an unchanged layer skip the files altogether when the
sink already has its blob.
"""

from __future__ import annotations

import json
import os
import platform as _platform
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, Protocol

from .base import BaseImage
from .cache import DigestCache
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
from .tarstream import FileDigest, LayerResult, LayerStream
from .units import format_size

LAYER_MEDIA_TYPES = {"none": MEDIA_TYPE_LAYER_TAR, "gzip": MEDIA_TYPE_LAYER_GZIP}
DEFAULT_PLATFORM = "linux/amd64"


class Sink(Protocol):
    """Where an image goes: an OCI layout, an oci-archive, a registry."""

    parallel: int  # how many layers it takes at once

    def has_blob(self, digest: str) -> bool: ...
    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]: ...
    def put_existing(self, desc: Descriptor, base: BaseImage) -> str: ...
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


def _layer_annotations(files: tuple[FileDigest, ...]) -> dict[str, str]:
    # Not org.opencontainers.image.title: ORAS clients take that as the name
    # of a file whose content IS the blob, and these blobs are tars.
    listing = [{"path": "/" + f.path, "size": f.size, "sha256": f.sha256} for f in files]
    return {ANNOTATION_FILES: json.dumps(listing, separators=(",", ":"), sort_keys=True)}


def store_layer(stream: LayerStream, sink: Sink, cache: DigestCache, *, compression: str, max_layer_size: int,
                title: str, progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
    """One layer stream (tar or raw) into the sink: skipped when the cache
    knows its digest and the sink already has that blob; otherwise streamed
    from the files. Returns the digests and what was done."""
    key = cache.key(stream, compression)
    known = cache.get(key)
    if known is not None and known.tar_size != stream.size:
        known = None
    if known is not None and sink.has_blob(known.digest):
        result, action = known, "mounted" if known.digest in getattr(sink, "mounted", ()) else "exists"
        if progress is not None:
            progress(stream.size)
    else:
        result, action = sink.put_layer(stream, compression=compression, known=known, progress=progress)
        cache.put(key, result)
    if result.size > max_layer_size:
        raise LayerTooLarge(
            f"layer {title} is {format_size(result.size)} as stored, over the limit of "
            f"{format_size(max_layer_size)}"
        )
    return result, action


def _put_layer(layer: Layer, plan: Plan, sink: Sink, cache: DigestCache, epoch: int,
               progress: Callable[[int], None] | None) -> BuiltLayer:
    compression = plan.settings.compression
    stream = LayerStream(layer.entries, epoch)
    if stream.size != layer.size:
        raise AssertionError(f"layer {layer.title}: planned {layer.size} bytes, stream has {stream.size}")
    result, action = store_layer(stream, sink, cache, compression=compression,
                                 max_layer_size=plan.settings.max_layer_size, title=layer.title, progress=progress)
    desc = Descriptor(LAYER_MEDIA_TYPES[compression], result.digest, result.size,
                      annotations=_layer_annotations(result.files))
    return BuiltLayer(desc, result.diff_id, result.files, action)


def _assemble(model: ModelInfo, plan: Plan, built: list[BuiltLayer], settings: ImageSettings,
              base: BaseImage | None) -> tuple[bytes, Descriptor, bytes, Descriptor]:
    """Config and manifest (bytes and descriptors) for the built layers."""
    created = rfc3339(settings.epoch)
    target = "/" + plan.settings.root
    labels = {**model_facts(model, target), **settings.labels}
    history = [
        {"created": created, "created_by": f"modelimage build: {layer.title}", "comment": layer.kind}
        for layer in plan.layers
    ]
    if base is not None:
        bc = base.config
        os_name, arch, variant = bc.get("os", "linux"), bc.get("architecture", "amd64"), bc.get("variant")
        container = dict(bc.get("config") or {})
        container["Labels"] = {**(container.get("Labels") or {}), **labels}
        diff_ids = list((bc.get("rootfs") or {}).get("diff_ids", []))
        history = list(bc.get("history") or []) + history
        base_layers = list(base.layers)
    else:
        os_name, arch, variant = parse_platform(settings.platform)
        container = {"Labels": labels, "WorkingDir": target}
        diff_ids, base_layers = [], []
    config = ImageConfig(
        architecture=arch, os=os_name, variant=variant, created=created,
        diff_ids=tuple(diff_ids + [b.diff_id for b in built]),
        container_config=container, history=tuple(history),
    )
    config_bytes = config.to_bytes()
    config_desc = Descriptor.of_bytes(MEDIA_TYPE_CONFIG, config_bytes)
    manifest = Manifest(
        config=config_desc,
        layers=tuple(base_layers + [b.descriptor for b in built]),
        annotations={**labels, ANNOTATION_CREATED: created},
    )
    manifest_bytes = manifest.to_bytes()
    platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
    return config_bytes, config_desc, manifest_bytes, Descriptor.of_bytes(MEDIA_TYPE_MANIFEST, manifest_bytes,
                                                                          platform=platform)


def manifest_size(model: ModelInfo, plan: Plan, settings: ImageSettings, base: BaseImage | None = None) -> int:
    """The size the manifest will have (digests are fixed-length, so
    placeholders give the exact size for uncompressed layers)."""
    zero = "sha256:" + "0" * 64
    dummy = [
        BuiltLayer(Descriptor(LAYER_MEDIA_TYPES[plan.settings.compression], zero, layer.size,
                              annotations=_layer_annotations(tuple(FileDigest(e.path, e.size, zero)
                                                                   for e in layer.entries))), zero, ())
        for layer in plan.layers
    ]
    return len(_assemble(model, plan, dummy, settings, base)[2])


def _put_base_layer(desc: Descriptor, base: BaseImage, sink: Sink) -> str:
    return "exists" if sink.has_blob(desc.digest) else sink.put_existing(desc, base)


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
    base: BaseImage | None = None,
) -> BuildResult:
    """Write the base's layers (if any) and every layer of ``plan`` (several
    at once when the sink allows), then the config, then the manifest."""
    cache = cache or DigestCache()
    workers = max(1, min(concurrency or sink.parallel, sink.parallel, len(plan.layers) or 1))
    skip = len(base.layers) if base else 0
    jobs: list[Callable[[], Any]] = [partial(_put_base_layer, d, base, sink) for d in (base.layers if base else ())]
    jobs += [partial(_put_layer, layer, plan, sink, cache, settings.epoch, progress) for layer in plan.layers]
    done, config_desc, manifest_desc = write_layers_then_manifest(
        sink, jobs, lambda done: _assemble(model, plan, done[skip:], settings, base), workers)
    return BuildResult(manifest_desc, config_desc, tuple(done[skip:]), reference)


def write_layers_then_manifest(
    sink: Sink,
    jobs: Sequence[Callable[[], Any]],
    assemble: Callable[[list[Any]], tuple[bytes, Descriptor, bytes, Descriptor]],
    workers: int,
) -> tuple[list[Any], Descriptor, Descriptor]:
    """Run the layer jobs (``workers`` at once), then store the config and
    the manifest that ``assemble`` makes of their results. On any failure
    the sink undoes what it can (and nothing is tagged); on success it is
    closed. Returns the job results and the config and manifest descriptors."""
    try:
        stop = threading.Event()

        def guarded(job: Callable[[], Any]) -> Any:
            if stop.is_set():  # another layer failed: do not start this one
                return None
            try:
                return job()
            except BaseException:
                stop.set()
                raise

        with ThreadPoolExecutor(workers, thread_name_prefix="layer") as pool:
            futures = [pool.submit(guarded, job) for job in jobs]
            # stop at the first failure: layers not started yet never start
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in finished and f.exception() is not None), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                raise failed.exception()  # type: ignore[misc]
            done = [f.result() for f in futures]
        config_bytes, config_desc, manifest_bytes, manifest_desc = assemble(done)
        sink.put_blob(config_bytes, config_desc.digest)
        sink.put_manifest(manifest_desc, manifest_bytes)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return done, config_desc, manifest_desc
