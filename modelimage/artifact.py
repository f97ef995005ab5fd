"""Model artifacts: a model's files as a CNCF ModelPack or a Docker Model
Runner OCI artifact instead of a container image (``build --format``).

Both are OCI image manifests whose layers are the model's files themselves,
uncompressed, one file per layer ("raw" layers, :meth:`LayerStream.raw`): a
layer's blob digest is the file's sha256, so a file dedupes across tags,
formats and every tool that hashes files (modctl, ``docker model package``,
ORAS). The planner still decides which files there are: oversize
safetensors/GGUF are resharded the upstream way and every blob stays under
``--max-layer-size``. Only the packaging differs from an image.

The specs themselves (media types, which file is which, the config
documents) are in :mod:`modelimage.modelspec`; this module plans the
layers, checks them against the limits and what the readers load, and
writes the artifact through a sink.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import PurePosixPath
from typing import Any, Literal

from .build import BuildResult, BuiltLayer, ImageSettings, rfc3339
from .cache import DigestCache
from .content import VirtualFile
from .errors import ConfigError, LayerTooLarge, PlanError
from .formats import WEIGHT_SUFFIXES
from .formats import safetensors as st
from .inspect import ModelInfo
from .modelspec import (
    ANNOTATION_FILE_METADATA,
    ANNOTATION_FILEPATH,
    ANNOTATION_MEDIATYPE_UNTESTED,
    DOCKER_CHAT_TEMPLATE,
    DOCKER_CONFIG,
    DOCKER_CONFIG_TAR,
    DOCKER_CONFIG_TAR_TITLE,
    DOCKER_GGUF,
    DOCKER_LICENSE,
    DOCKER_LORA,
    DOCKER_MMPROJ,
    DOCKER_SAFETENSORS,
    MODELPACK_ARTIFACT_TYPE,
    MODELPACK_CONFIG,
    MODELPACK_WEIGHT,
    docker_config,
    docker_media_type,
    file_metadata,
    modelpack_config,
    modelpack_media_type,
)
from .oci import (
    ANNOTATION_CREATED,
    ANNOTATION_TITLE,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
)
from .plan import Plan
from .sink import Assembled, Sink, left_behind, store_layer, write_layers_then_manifest
from .splitcheck import SplitChecks
from .tarstream import Entry, LayerStream
from .units import format_size

FORMATS: tuple[str, ...] = ("image", "modelpack", "docker-model")
ArtifactFormat = Literal["modelpack", "docker-model"]

# ---------------------------------------------------------------- layers


@dataclass(frozen=True)
class ArtifactLayer:
    """One planned layer of an artifact: its bytes, media type, annotations."""

    stream: LayerStream
    media_type: str
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.annotations.get(ANNOTATION_TITLE) or self.stream.entries[0].path

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(e.path for e in self.stream.entries)


def _raw_layer(vf: VirtualFile, media_type: str, epoch: int, tested: bool = True) -> ArtifactLayer:
    return ArtifactLayer(LayerStream.raw(vf.name, vf), media_type, {
        ANNOTATION_TITLE: vf.name,  # the path in the model: equal to the file name at the top level
        ANNOTATION_FILEPATH: vf.name,
        ANNOTATION_FILE_METADATA: file_metadata(vf.name, vf.size, epoch),
        ANNOTATION_MEDIATYPE_UNTESTED: "false" if tested else "true",
    })


def _is_weights(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in WEIGHT_SUFFIXES


def plan_artifact(model: ModelInfo, plan: Plan, format: ArtifactFormat, *, epoch: int = 0) -> tuple[ArtifactLayer, ...]:
    """The layers of ``model`` as a ``format`` artifact, from the files of
    ``plan`` (resharded where the plan reshards), checked against the limits
    before anything is read or written. No I/O."""
    if format not in ("modelpack", "docker-model"):
        raise ConfigError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if plan.settings.compression != "none":
        raise ConfigError(
            f"--format {format} stores every file uncompressed, as the spec asks; "
            f"drop --compression {plan.settings.compression} (or set compression = \"none\")"
        )
    files = sorted((e.content for e in plan.files), key=lambda vf: vf.name)
    if format == "modelpack":
        layers = _modelpack_layers(files, epoch)
    else:
        layers = _docker_layers(model, plan, files, epoch)
    _check_limits(layers, plan, format)
    return tuple(layers)


def _modelpack_layers(files: Sequence[VirtualFile], epoch: int) -> list[ArtifactLayer]:
    typed = [(vf, *modelpack_media_type(vf.name, vf.size)) for vf in files]
    weights = [_raw_layer(vf, mt, epoch, tested) for vf, mt, tested in typed if mt == MODELPACK_WEIGHT]
    rest = [_raw_layer(vf, mt, epoch, tested) for vf, mt, tested in typed if mt != MODELPACK_WEIGHT]
    return weights + rest


def _docker_layers(model: ModelInfo, plan: Plan, files: Sequence[VirtualFile], epoch: int) -> list[ArtifactLayer]:
    _check_docker_model(model, plan, files)
    attached = {w.members[0]: DOCKER_MMPROJ if w.kind == "mmproj" else DOCKER_LORA
                for w in model.weight_sets if w.kind in ("mmproj", "gguf-lora")}
    by_type: dict[str, list[VirtualFile]] = {}
    for vf in files:
        by_type.setdefault(attached.get(vf.name) or docker_media_type(vf.name), []).append(vf)
    # the model's weights, then its projector and adapters, each in a layer of its own type
    layers = [_raw_layer(vf, mt, epoch) for mt in (DOCKER_GGUF, DOCKER_SAFETENSORS, DOCKER_MMPROJ, DOCKER_LORA)
              for vf in by_type.get(mt, [])]
    configs = by_type.get(DOCKER_CONFIG_TAR, [])
    if configs:
        stream = LayerStream([Entry(vf.name, vf) for vf in configs], epoch)
        if stream.size > plan.settings.max_layer_size:
            raise LayerTooLarge(
                f"the {len(configs)} configuration files make a {format_size(stream.size)} ({stream.size} bytes) "
                f"{DOCKER_CONFIG_TAR} layer, over the layer limit of {format_size(plan.settings.max_layer_size)}; "
                f"rerun with --max-layer-size {stream.size} or more, or --exclude the big ones"
            )
        layers.append(ArtifactLayer(stream, DOCKER_CONFIG_TAR, {ANNOTATION_TITLE: DOCKER_CONFIG_TAR_TITLE}))
    layers += [_raw_layer(vf, DOCKER_LICENSE, epoch) for vf in by_type.get(DOCKER_LICENSE, [])]
    layers += [_raw_layer(vf, DOCKER_CHAT_TEMPLATE, epoch) for vf in by_type.get(DOCKER_CHAT_TEMPLATE, [])]
    return layers


def _check_docker_model(model: ModelInfo, plan: Plan, files: Sequence[VirtualFile]) -> None:
    """What Docker Model Runner can load: one flat GGUF or safetensors set."""
    advice = "or use --format modelpack"
    for f in model.files:
        if f.is_weights and f.format not in ("gguf", "safetensors"):
            raise ConfigError(
                f"{f.name} holds {f.format} weights; docker-model artifacts carry only GGUF or safetensors "
                f"(docker/model-spec); rerun with --exclude '{f.name}', {advice}"
            )
    peft = [w for w in model.weight_sets if w.kind == "peft-adapter"]
    if peft:
        raise ConfigError(f"{peft[0].members[0]} is a PEFT adapter, and docker/model-spec has a layer type for GGUF "
                          f"LoRA adapters only; convert it with llama.cpp's convert_lora_to_gguf.py, {advice}")
    projectors = [w.members[0] for w in model.weight_sets if w.kind == "mmproj"]
    if len(projectors) > 1:  # docker/model-runner internal/bundle/parse.go: "only 1 is supported"
        raise ConfigError(f"{projectors[0]}, {projectors[1]}: Docker Model Runner loads one multimodal projector; "
                          f"keep one with --exclude, {advice}")
    main = [w for w in model.weight_sets if w.kind == "model"]
    if not main:
        raise ConfigError(f"{model.name} has no GGUF or safetensors model for a docker-model artifact; {advice}")
    if len(main) > 1:
        a, b = main[0].members[0], main[1].members[0]
        raise ConfigError(
            f"a docker-model artifact holds one model, and {model.name} has several weight sets ({a}, {b}, ...): "
            f"keep one with --include/--exclude, {advice}"
        )
    (w,) = main
    if w.format == "gguf":
        old = [h for h in w.headers if h.version != 3]
        if old:
            raise ConfigError(
                f"{old[0].path.name} is GGUF version {old[0].version}; {DOCKER_GGUF} layers are GGUF version 3: "
                f"convert it with a current llama.cpp, {advice}"
            )
    attached = {w.members[0] for w in model.weight_sets if w.kind != "model"}
    weights = [vf.name for vf in files
               if PurePosixPath(vf.name).suffix.lower() in (".gguf", ".safetensors") and vf.name not in attached]
    nested = [n for n in weights if "/" in n]
    if nested:
        raise ConfigError(
            f"{nested[0]}: Docker Model Runner only loads weights at the top of the model folder; {advice}"
        )
    if w.format == "safetensors" and len(weights) > 1:
        # Model Runner renames the shards model-0000k-of-0000n.safetensors in layer order
        # (docker/model-runner internal/bundle/unpack.go); the index must name them so.
        expected = [st.shard_name("model", k, len(weights)) for k in range(1, len(weights) + 1)]
        if weights != expected:
            raise ConfigError(
                f"{weights[0]}: Docker Model Runner renames safetensors shards to {expected[0]} and so on, "
                f"which the index would not match; rename the shards to model-0000k-of-0000n.safetensors, {advice}"
            )


def _check_limits(layers: Sequence[ArtifactLayer], plan: Plan, format: str) -> None:
    limit = plan.settings.max_layer_size
    for layer in layers:
        if layer.stream.size > limit:  # the plan sized tars, a raw file is smaller: a bug if this fires
            raise LayerTooLarge(f"{layer.title} is {layer.stream.size} bytes, over the layer limit of {limit}")
    allowed = plan.settings.max_layers - plan.settings.base_layers
    if len(layers) > allowed:
        shards = sum(len(r.outputs) for r in plan.reshards)
        raise PlanError(
            f"--format {format} stores one file per layer: {len(layers)} layers, but at most {allowed} fit in one "
            f"manifest (engines stop at {plan.settings.max_layers}); --exclude files you do not need"
            + (f", or raise --max-layer-size ({shards} files are shards of resharded weights)" if shards else "")
            + ", or use --format image, which packs small files together"
        )


def _assemble(model: ModelInfo, format: ArtifactFormat, built: Sequence[BuiltLayer],
              settings: ImageSettings) -> tuple[bytes, Descriptor, bytes, Descriptor]:
    if format == "modelpack":
        config = modelpack_config(model, [b.diff_id for b in built], settings.epoch)
        config_type, artifact_type = MODELPACK_CONFIG, MODELPACK_ARTIFACT_TYPE
    else:
        config = docker_config(model, built, settings.epoch)
        config_type, artifact_type = DOCKER_CONFIG, None
    config_bytes = canonical_json(config)
    config_desc = Descriptor.of_bytes(config_type, config_bytes)
    manifest = Manifest(
        config=config_desc,
        layers=tuple(b.descriptor for b in built),
        annotations={**settings.labels, ANNOTATION_CREATED: rfc3339(settings.epoch)},
        artifact_type=artifact_type,
    )
    manifest_bytes = manifest.to_bytes()
    return config_bytes, config_desc, manifest_bytes, Descriptor.of_bytes(
        MEDIA_TYPE_MANIFEST, manifest_bytes, artifact_type=artifact_type)


def artifact_manifest_size(model: ModelInfo, plan: Plan, format: ArtifactFormat, settings: ImageSettings) -> int:
    """The exact size the manifest will have (digests are fixed-length)."""
    zero = "sha256:" + "0" * 64
    dummy = [BuiltLayer(Descriptor(layer.media_type, zero, layer.stream.size, annotations=layer.annotations), zero, ())
             for layer in plan_artifact(model, plan, format, epoch=settings.epoch)]
    return len(_assemble(model, format, dummy, settings)[2])


# ---------------------------------------------------------------- building


def _put(layer: ArtifactLayer, sink: Sink, cache: DigestCache, max_layer_size: int,
         progress: Callable[[int], None] | None) -> BuiltLayer:
    result, action = store_layer(layer.stream, sink, cache, compression="none", max_layer_size=max_layer_size,
                                 title=layer.title, progress=progress)
    desc = Descriptor(layer.media_type, result.digest, result.size, annotations=layer.annotations)
    return BuiltLayer(desc, result.diff_id, result.files, action)


def build_artifact(model: ModelInfo, plan: Plan, sink: Sink, *, format: ArtifactFormat, settings: ImageSettings,
                   reference: str, progress: Callable[[int], None] | None = None, cache: DigestCache | None = None,
                   concurrency: int | None = None) -> BuildResult:
    """Write ``model`` as a ``format`` artifact into ``sink`` (an OCI layout,
    an oci-archive, a registry): every layer (several at once when the sink
    allows), then the config, then the manifest. The same files give the
    same manifest digest. ``progress`` receives the bytes of each layer as
    they stream (:func:`artifact_size` is the total)."""
    layers = plan_artifact(model, plan, format, epoch=settings.epoch)
    cache = cache or DigestCache()
    checks = SplitChecks.of([layer.stream for layer in layers], [layer.title for layer in layers])
    jobs = [partial(_put, layer, sink, cache, plan.settings.max_layer_size, progress) for layer in layers]

    def assemble(done: list[Any]) -> Assembled:
        checks.verify(left_behind(sink))  # listed files spread over layers, whole, before anything names them
        return _assemble(model, format, done, settings)

    built, config_desc, manifest_desc = write_layers_then_manifest(sink, jobs, assemble, concurrency)
    return BuildResult(manifest_desc, config_desc, tuple(built), reference)


def artifact_size(layers: Sequence[ArtifactLayer]) -> int:
    """Bytes the layers stream (for a progress bar's total)."""
    return sum(layer.stream.size for layer in layers)

