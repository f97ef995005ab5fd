"""Model artifacts: a model's files as a CNCF ModelPack or a Docker Model
Runner OCI artifact instead of a container image (``build --format``).

Both are OCI image manifests whose layers are the model's files themselves,
uncompressed, one file per layer ("raw" layers, :meth:`LayerStream.raw`): a
layer's blob digest is the file's sha256, so a file dedupes across tags,
formats and every tool that hashes files (modctl, ``docker model package``,
ORAS). The planner still decides which files there are: oversize
safetensors/GGUF are resharded the upstream way and every blob stays under
``--max-layer-size``. Only the packaging differs from an image.

``modelpack`` (github.com/modelpack/model-spec, ``specs-go/v1``
mediatype.go, annotations.go, config.go; ``schema/config-schema.json``):

* manifest ``artifactType`` ``application/vnd.cncf.model.manifest.v1+json``,
  config ``application/vnd.cncf.model.config.v1+json`` = ``{descriptor,
  config, modelfs: {type: "layers", diffIds}}`` with what inspect knows;
* weights ``...weight.v1.raw``, configs and tokenizer files
  ``...weight.config.v1.raw``, README/LICENSE/docs ``...doc.v1.raw``, code
  ``...code.v1.raw``, data files ``...dataset.v1.raw``; weights first (shards
  in order), then the rest by path;
* every layer: ``org.cncf.model.filepath`` (path in the model),
  ``org.cncf.model.file.metadata+json`` (fixed mode/uid/gid/mtime, so the
  manifest is reproducible), ``org.cncf.model.file.mediatype.untested``
  ("true" when the media type was only guessed from the size), and
  ``org.opencontainers.image.title`` so ORAS clients pull layers as files.

  Raw, not ``...v1.tar``: the spec offers both; raw keeps digest = file
  sha256 (shared with modctl/Docker-built artifacts), one file per layer
  needs no archive, and a tar layer would only help mounting as a Kubernetes
  image volume, which wants ``application/vnd.oci.image.layer.v1.tar``
  layers anyway: ``--format image`` builds that.

``docker-model`` (github.com/docker/model-spec spec.md and config.md; the
reader is docker/model-runner ``pkg/distribution``):

* plain OCI image manifest, config
  ``application/vnd.docker.ai.model.config.v0.1+json``;
* GGUF files ``application/vnd.docker.ai.gguf.v3``, safetensors
  ``application/vnd.docker.ai.safetensors`` (shards: consecutive layers in
  order), LICENSE/NOTICE/COPYING ``application/vnd.docker.ai.license``,
  ``*.jinja`` ``application/vnd.docker.ai.chat.template.jinja``, every other
  file in ONE ``application/vnd.docker.ai.vllm.config.tar`` (as
  ``docker model package --safetensors-dir`` does; Model Runner extracts it
  into the model folder);
* one flat GGUF or safetensors weight set only: Model Runner renames the
  weights ``model.gguf``/``model-0000k-of-0000n.gguf`` (same for
  safetensors) when it unpacks them (``internal/bundle/unpack.go``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import PurePosixPath
from typing import Any, Literal

from .build import BuildResult, BuiltLayer, ImageSettings, rfc3339
from .cache import DigestCache
from .content import VirtualFile
from .errors import ConfigError, LayerTooLarge, PlanError
from .formats import safetensors as st
from .inspect import WEIGHT_SUFFIXES, ModelInfo
from .oci import (
    ANNOTATION_CREATED,
    ANNOTATION_TITLE,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
)
from .plan import OWN_LAYER_MIN, Plan
from .sink import Sink, store_layer, write_layers_then_manifest
from .tarstream import FILE_MODE, Entry, LayerStream
from .units import format_size

FORMATS: tuple[str, ...] = ("image", "modelpack", "docker-model")
ArtifactFormat = Literal["modelpack", "docker-model"]

# ---------------------------------------------------------------- ModelPack
# modelpack/model-spec specs-go/v1/mediatype.go
MODELPACK_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MODELPACK_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MODELPACK_DOC = "application/vnd.cncf.model.doc.v1.raw"
MODELPACK_CODE = "application/vnd.cncf.model.code.v1.raw"
MODELPACK_DATASET = "application/vnd.cncf.model.dataset.v1.raw"
# modelpack/model-spec specs-go/v1/annotations.go
ANNOTATION_FILEPATH = "org.cncf.model.filepath"
ANNOTATION_FILE_METADATA = "org.cncf.model.file.metadata+json"
ANNOTATION_MEDIATYPE_UNTESTED = "org.cncf.model.file.mediatype.untested"
# FileMetadata.Typeflag is a Go byte filled from tar.Header.Typeflag:
# tar.TypeReg = '0' = 48 for a regular file.
TYPEFLAG_REGULAR = ord("0")

# ---------------------------------------------------------------- Docker
# docker/model-spec spec.md ("Media Types"); config.md
DOCKER_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
DOCKER_GGUF = "application/vnd.docker.ai.gguf.v3"
DOCKER_SAFETENSORS = "application/vnd.docker.ai.safetensors"
DOCKER_CONFIG_TAR = "application/vnd.docker.ai.vllm.config.tar"
DOCKER_LICENSE = "application/vnd.docker.ai.license"
DOCKER_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
DOCKER_CONFIG_TAR_TITLE = "config.tar"
# docker/model-runner pkg/distribution/files/classify.go: LicensePatterns
_LICENSE_WORDS = ("license", "licence", "copying", "notice")

# ---------------------------------------------------------------- classifying files
_DOC_PREFIXES = ("readme", "license", "licence", "copying", "notice", "authors", "changelog", "citation",
                 "use_policy", "model_card", "modelcard")
_DOC_SUFFIXES = {".md", ".rst", ".adoc", ".pdf", ".html", ".htm", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
_CODE_SUFFIXES = {".py", ".pyi", ".ipynb", ".sh", ".bash", ".js", ".mjs", ".ts", ".go", ".rs", ".c", ".cc", ".cpp",
                  ".cxx", ".h", ".hpp", ".cu", ".cuh", ".java", ".kt", ".scala", ".rb", ".lua", ".r", ".jl", ".swift"}
_DATASET_SUFFIXES = {".csv", ".tsv", ".jsonl", ".parquet", ".arrow", ".feather", ".avro", ".tfrecord"}
_CONFIG_SUFFIXES = {".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".txt", ".model", ".vocab", ".tiktoken",
                    ".jinja", ".spm", ".bpe"}


def modelpack_media_type(name: str, size: int) -> tuple[str, bool]:
    """The ModelPack layer media type of the file ``name`` (path in the
    model) and whether the type is known rather than guessed: unknown files
    count as weights from 64 MiB (as the image planner gives them a layer
    of their own), as configuration below."""
    base = PurePosixPath(name).name.lower()
    suffix = PurePosixPath(base).suffix
    if suffix in WEIGHT_SUFFIXES:
        return MODELPACK_WEIGHT, True
    if base.startswith(_DOC_PREFIXES) or suffix in _DOC_SUFFIXES:
        return MODELPACK_DOC, True
    if suffix in _CODE_SUFFIXES:
        return MODELPACK_CODE, True
    if suffix in _DATASET_SUFFIXES:
        return MODELPACK_DATASET, True
    if suffix in _CONFIG_SUFFIXES:
        return MODELPACK_WEIGHT_CONFIG, True
    return (MODELPACK_WEIGHT if size >= OWN_LAYER_MIN else MODELPACK_WEIGHT_CONFIG), False


def docker_media_type(name: str) -> str:
    """The Docker model-spec layer media type of ``name``; DOCKER_CONFIG_TAR
    for files that go into the configuration archive."""
    base = PurePosixPath(name).name.lower()
    suffix = PurePosixPath(base).suffix
    if suffix == ".gguf":
        return DOCKER_GGUF
    if suffix == ".safetensors":
        return DOCKER_SAFETENSORS
    if suffix == ".jinja":
        return DOCKER_CHAT_TEMPLATE
    if any(word in base for word in _LICENSE_WORDS):
        return DOCKER_LICENSE
    return DOCKER_CONFIG_TAR


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


def file_metadata(name: str, size: int, epoch: int) -> str:
    """The ``org.cncf.model.file.metadata+json`` value: fixed owner, mode and
    mtime (the build's ``SOURCE_DATE_EPOCH``), so it never depends on the
    machine the files were on."""
    return canonical_json({
        "name": PurePosixPath(name).name, "mode": FILE_MODE, "uid": 0, "gid": 0, "size": size,
        "mtime": rfc3339(epoch), "typeflag": TYPEFLAG_REGULAR,
    }).decode()


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
    by_type: dict[str, list[VirtualFile]] = {}
    for vf in files:
        by_type.setdefault(docker_media_type(vf.name), []).append(vf)
    weights = by_type.get(DOCKER_GGUF, []) + by_type.get(DOCKER_SAFETENSORS, [])
    layers = [_raw_layer(vf, docker_media_type(vf.name), epoch) for vf in weights]
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
    if not model.weight_sets:
        raise ConfigError(f"{model.name} has no GGUF or safetensors weights for a docker-model artifact; {advice}")
    if len(model.weight_sets) > 1:
        a, b = model.weight_sets[0].members[0], model.weight_sets[1].members[0]
        raise ConfigError(
            f"a docker-model artifact holds one model, and {model.name} has several weight sets ({a}, {b}, ...): "
            f"keep one with --include/--exclude, {advice}"
        )
    (w,) = model.weight_sets
    if w.format == "gguf":
        old = [h for h in w.headers if h.version != 3]
        if old:
            raise ConfigError(
                f"{old[0].path.name} is GGUF version {old[0].version}; {DOCKER_GGUF} layers are GGUF version 3: "
                f"convert it with a current llama.cpp, {advice}"
            )
    weights = [vf.name for vf in files if PurePosixPath(vf.name).suffix.lower() in (".gguf", ".safetensors")]
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


# ---------------------------------------------------------------- configs


def param_size(parameters: int) -> str | None:
    """ModelPack ``paramSize``: ``<count><scale-prefix>``, at most one
    decimal (docs/config.md): 8_030_000_000 -> ``8B``, 1_705_216 -> ``1.7M``."""
    for letter, scale in (("Q", 10**15), ("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        value = round(parameters / scale, 1)
        if value >= 1:
            return f"{value:g}{letter}"
    return None


def parameter_label(parameters: int) -> str | None:
    """Docker's ``parameters`` (docker/model-spec config.md: ``"1.10 B"``)."""
    for letter, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if parameters >= scale:
            return f"{parameters / scale:.2f} {letter}"
    return str(parameters) if parameters else None


_FLOATS = {"F64": "fp64", "F32": "fp32", "F16": "fp16", "BF16": "bf16", "F8_E4M3": "fp8", "F8_E5M2": "fp8",
           "F8_E8M0": "fp8", "I8": "int8", "U8": "uint8", "I16": "int16", "I32": "int32"}
_QUANT_BITS = re.compile(r"^(?:INT|I?Q|TQ)(\d)")


def precision(dtypes: dict[str, int]) -> str | None:
    """ModelPack ``precision`` (``fp16``, ``bf16``, ``int8``, ``mixed``): the
    type of at least 95 % of the parameters; GGUF block quants by their
    integer width (``Q8_0`` -> ``int8``)."""
    total = sum(dtypes.values())
    if not total:
        return None
    dtype, count = max(sorted(dtypes.items()), key=lambda kv: kv[1])
    if count < 0.95 * total:
        return "mixed"
    if dtype in _FLOATS:
        return _FLOATS[dtype]
    m = _QUANT_BITS.match(dtype)
    return f"int{m.group(1)}" if m else dtype.lower()


def quantization(model: ModelInfo) -> str | None:
    """inspect's quantization label unless it only names a float dtype."""
    q = model.quantization
    return None if q in _FLOATS or q == "unknown" else q


def _gguf_headers(model: ModelInfo) -> list[Any]:
    return [h for w in model.weight_sets if w.format == "gguf" for h in w.headers]


def modelpack_config(model: ModelInfo, diff_ids: Sequence[str], epoch: int) -> dict[str, Any]:
    """The ``application/vnd.cncf.model.config.v1+json`` document, field
    names as in specs-go/v1/config.go (and schema/config-schema.json)."""
    descriptor: dict[str, Any] = {"createdAt": rfc3339(epoch), "name": model.name}
    meta = _gguf_headers(model)[0].metadata if _gguf_headers(model) else {}
    if isinstance(meta.get("general.version"), str) and meta["general.version"]:
        descriptor["version"] = meta["general.version"]
    if isinstance(meta.get("general.license"), str) and meta["general.license"]:
        descriptor["licenses"] = [meta["general.license"]]  # GGUF: an SPDX expression, as ModelPack wants
    config = {
        "architecture": model.architecture,
        "format": model.format if model.format != "none" else None,
        "paramSize": param_size(model.parameters),
        "precision": precision(model.dtypes),
        "quantization": quantization(model),
    }
    return {
        "descriptor": descriptor,
        "config": {k: v for k, v in config.items() if v},
        "modelfs": {"type": "layers", "diffIds": list(diff_ids)},
    }


def _gguf_metadata(header: Any) -> dict[str, str]:
    """GGUF key/values as strings (Model Runner reads a string map), without
    the tokenizer (large arrays) and the split keys (which resharding changes)."""
    out: dict[str, str] = {}
    for key, value in header.metadata.items():
        if key.startswith(("tokenizer.", "split.")):
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | float | str):
            out[key] = str(value)
    return out


def docker_config(model: ModelInfo, layers: Sequence[BuiltLayer], epoch: int) -> dict[str, Any]:
    """The ``application/vnd.docker.ai.model.config.v0.1+json`` document.

    ``config.{format, format_version, gguf, safetensors, size}`` and
    ``files[{diffID, type}]`` as docker/model-spec config.md defines them
    (``size``: bytes of the weight files); ``config.{quantization,
    parameters, architecture}``, ``descriptor.created`` and ``rootfs`` as
    Model Runner writes and reads them (pkg/distribution/types/config.go).
    Not ``descriptor.createdAt``: Model Runner takes a config that has it for
    a ModelPack one (modelpack.IsModelPackConfig)."""
    (w,) = model.weight_sets
    weights = [b for b in layers if b.descriptor.media_type in (DOCKER_GGUF, DOCKER_SAFETENSORS)]
    config: dict[str, Any] = {
        "format": w.format,
        "quantization": model.quantization,
        "parameters": parameter_label(model.parameters),
        "architecture": model.architecture,
        "size": str(sum(b.descriptor.size for b in weights)),
    }
    if w.format == "gguf":
        config["format_version"] = str(w.headers[0].version)
        config["gguf"] = _gguf_metadata(w.headers[0])
    else:
        config["safetensors"] = {**w.headers[0].metadata, "tensor_count": str(sum(1 for _ in w.tensors))}
    diff_ids = [b.diff_id for b in layers]
    return {
        "config": {k: v for k, v in config.items() if v},
        "descriptor": {"created": rfc3339(epoch)},
        "files": [{"diffID": b.diff_id, "type": b.descriptor.media_type} for b in layers],
        # Model Runner's own builder writes type "rootfs" (builder.go, internal/gguf/create.go)
        "rootfs": {"type": "rootfs", "diff_ids": diff_ids},
    }


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


def build_artifact(
    model: ModelInfo,
    plan: Plan,
    sink: Sink,
    *,
    format: ArtifactFormat,
    settings: ImageSettings,
    reference: str,
    progress: Callable[[int], None] | None = None,
    cache: DigestCache | None = None,
    concurrency: int | None = None,
) -> BuildResult:
    """Write ``model`` as a ``format`` artifact into ``sink`` (an OCI layout,
    an oci-archive, a registry): every layer (several at once when the sink
    allows), then the config, then the manifest. The same files give the
    same manifest digest. ``progress`` receives the bytes of each layer as
    they stream (:func:`artifact_size` is the total)."""
    layers = plan_artifact(model, plan, format, epoch=settings.epoch)
    cache = cache or DigestCache()
    workers = max(1, min(concurrency or sink.parallel, sink.parallel, len(layers) or 1))
    jobs = [partial(_put, layer, sink, cache, plan.settings.max_layer_size, progress) for layer in layers]
    built, config_desc, manifest_desc = write_layers_then_manifest(
        sink, jobs, lambda done: _assemble(model, format, done, settings), workers)
    return BuildResult(manifest_desc, config_desc, tuple(built), reference)


def artifact_size(layers: Sequence[ArtifactLayer]) -> int:
    """Bytes the layers stream (for a progress bar's total)."""
    return sum(layer.stream.size for layer in layers)

