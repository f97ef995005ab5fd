"""The model-artifact specs modelimage writes: CNCF ModelPack and Docker
Model Runner's model-spec. Their media types and annotations, which file
of a model is which kind of layer, and their config documents. No I/O.

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
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from .build import BuiltLayer, rfc3339
from .formats import WEIGHT_SUFFIXES
from .inspect import ModelInfo
from .oci import canonical_json
from .plan import OWN_LAYER_MIN
from .tarstream import FILE_MODE

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
# A multimodal projector: what Model Runner reads (pkg/distribution/types/config.go
# MediaTypeMultimodalProjector; spec.md names it application/vnd.docker.ai.gguf.v3.mmproj)
DOCKER_MMPROJ = "application/vnd.docker.ai.mmproj"
# A GGUF LoRA adapter (docker/model-spec spec.md)
DOCKER_LORA = "application/vnd.docker.ai.gguf.v3.lora"
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


def file_metadata(name: str, size: int, epoch: int) -> str:
    """The ``org.cncf.model.file.metadata+json`` value: fixed owner, mode and
    mtime (the build's ``SOURCE_DATE_EPOCH``), so it never depends on the
    machine the files were on."""
    return canonical_json({
        "name": PurePosixPath(name).name, "mode": FILE_MODE, "uid": 0, "gid": 0, "size": size,
        "mtime": rfc3339(epoch), "typeflag": TYPEFLAG_REGULAR,
    }).decode()


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
    """The model's GGUF headers (not its projector's or adapters')."""
    return [h for w in model.weight_sets if w.format == "gguf" and w.kind == "model" for h in w.headers]


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
    if any(w.kind == "mmproj" for w in model.weight_sets):  # a vision projector: images in (config.go Modality)
        config["capabilities"] = {"inputTypes": ["text", "image"], "outputTypes": ["text"]}
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
    (w,) = [w for w in model.weight_sets if w.kind == "model"]
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
