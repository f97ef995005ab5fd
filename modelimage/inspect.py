"""What is this model? Weight sets, parameters, dtypes, components, VRAM.

Describes the files a source listed (:mod:`modelimage.sources`: a local
folder, ``s3://``; ``hf://`` becomes a local folder). Reads only headers
(safetensors JSON headers, GGUF metadata and tensor infos) and small JSON
configs; never tensor data, never the network.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from .content import is_remote
from .errors import FormatError
from .formats import WEIGHT_SUFFIXES
from .formats import safetensors as st
from .sources.files import RemoteFolder, SourceFile
from .sources.local import list_files
from .weights import (
    DIFFUSION_GGUF_ARCHS,
    DIFFUSION_PREFIXES,
    WeightSet,
    counted_sets,
    find_weight_sets,
    is_diffusion_checkpoint,
)

TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "spiece.model",
    "sentencepiece.bpe.model", "sentencepiece.model", "chat_template.jinja", "chat_template.json",
}
# Rule of thumb from the model-serving literature: weights x 1.25 for
# activations, KV cache and runtime overhead at modest context lengths.
VRAM_FACTOR = 1.25
BYTES_PER_PARAM_AS: dict[str, float] = {
    "f32": 4, "f16": 2, "bf16": 2, "fp8": 1, "q8": 1, "q6": 0.75, "q5": 0.625, "q4": 0.5, "q3": 0.375, "q2": 0.25,
}
GGUF_INTEGER_TYPES = {"I8", "I16", "I32", "I64"}
DIFFUSERS_FOLDERS = {
    "unet": "denoiser", "transformer": "denoiser", "prior": "denoiser", "decoder": "denoiser",
    "vae": "vae", "vqvae": "vae", "movq": "vae",
}
EMBEDDING_RE = re.compile(
    r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|position_embeddings|token_type_embeddings"
    r"|tok_embeddings|token_embd|embed_positions|shared|embeddings)(\.|$)"
)
# GPTQ/AWQ pack several low-bit weights into one int32
PACKED_QUANT_METHODS = {"gptq", "awq"}
QUANT_AUX_SUFFIXES = (".qzeros", ".scales", ".g_idx")

Kind = Literal["language-model", "diffusion", "embedding", "adapter", "unknown"]
# weight sets that go with a model rather than being one (weights.WeightKind)
ATTACHED_KINDS = ("peft-adapter", "gguf-lora", "mmproj")


@dataclass(frozen=True)
class Component:
    """One part of the model: ``parameters`` (elements), ``bytes`` of
    weights. Adapters and projectors name their ``file`` and what the file
    says of the model they go with (``architecture``, ``base_model``) and,
    for LoRA adapters, the ``rank``."""

    name: str
    parameters: int
    bytes: int
    file: str | None = None
    architecture: str | None = None
    base_model: str | None = None
    rank: int | None = None

    @property
    def detail(self) -> str:
        """``llama, rank 8, demo-lora.gguf`` for messages; "" for model parts."""
        bits = [self.architecture or self.base_model or "", f"rank {self.rank}" if self.rank else "", self.file or ""]
        return ", ".join(b for b in bits if b)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "parameters": self.parameters, "bytes": self.bytes}
        for key in ("file", "architecture", "base_model", "rank"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


@dataclass(frozen=True)
class ModelInfo:
    """Everything inspect knows about a model."""

    name: str
    root: Path | RemoteFolder
    files: tuple[SourceFile, ...]
    weight_sets: tuple[WeightSet, ...]
    format: str
    kind: Kind
    architecture: str | None
    quantization: str
    parameters: int
    weight_bytes: int  # bytes of the counted weight tensors (or weight files when none parse)
    dtypes: dict[str, int]
    components: tuple[Component, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_per_parameter(self) -> float:
        return self.weight_bytes / self.parameters if self.parameters else 0.0

    @property
    def vram_bytes(self) -> int:
        """GPU memory ~ parameters x bytes per parameter x 1.25 (= weight bytes x 1.25)."""
        return int(self.weight_bytes * VRAM_FACTOR)

    def vram_as(self, precision: str) -> int:
        return int(self.parameters * BYTES_PER_PARAM_AS[precision] * VRAM_FACTOR)

    def file(self, name: str) -> SourceFile:
        return next(f for f in self.files if f.name == name)

    def to_json(self, as_precision: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "kind": self.kind,
            "architecture": self.architecture,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "weight_bytes": self.weight_bytes,
            "bytes_per_parameter": round(self.bytes_per_parameter, 4),
            "dtypes": dict(self.dtypes),
            "quantization": self.quantization,
            "components": [c.to_json() for c in self.components],
            "vram_bytes": self.vram_bytes,
            "files": [{"path": f.name, "bytes": f.size, "format": f.format} for f in self.files],
            "weight_sets": [
                {"format": w.format, "files": list(w.members), "index": w.index_file} for w in self.weight_sets
            ],
            "notes": list(self.notes),
        }
        if as_precision:
            d["vram_as"] = {"precision": as_precision, "bytes": self.vram_as(as_precision)}
        return d


# ---------------------------------------------------------------- facts


def _read_json(f: SourceFile) -> dict[str, Any]:
    try:
        obj = json.loads(f.path.read_bytes())
    except (OSError, ValueError) as e:
        raise FormatError(f.path, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise FormatError(f.path, "not a JSON object")
    return obj


def _config(files: Sequence[SourceFile], directory: str = "") -> dict[str, Any]:
    for f in files:
        if f.name == (f"{directory}/config.json" if directory else "config.json"):
            return _read_json(f)
    return {}


def _quant_config(files: Sequence[SourceFile], read: dict[str, dict[str, Any]]) -> tuple[str | None, int | None]:
    """quant_method and bits from config.json's quantization_config
    (``read``: files already read, by name: not asked of a remote source twice)."""
    for f in files:
        if f.name.rpartition("/")[2] in ("config.json", "quantize_config.json", "quant_config.json"):
            cfg = read[f.name] if f.name in read else _read_json(f)
            q = cfg.get("quantization_config", cfg if "quant_method" in cfg or "bits" in cfg else None)
            if isinstance(q, dict):
                method = str(q.get("quant_method") or ("gptq" if "bits" in q else "")).lower() or None
                bnb_bits = 4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit") else None
                bits = q.get("bits") or q.get("w_bit") or bnb_bits
                return method, int(bits) if isinstance(bits, int) else None
    return None, None


def _quant_label(method: str, bits: int | None) -> str:
    names = {"gptq": "GPTQ", "awq": "AWQ", "bitsandbytes": "BNB", "fp8": "FP8", "exl2": "EXL2", "aqlm": "AQLM"}
    label = names.get(method, method.upper())
    return f"{label}-{bits}bit" if bits and method != "fp8" else label


@dataclass
class _Tally:
    """Accumulates parameters/bytes per dtype and per component."""

    dtypes: Counter = field(default_factory=Counter)
    params: Counter = field(default_factory=Counter)
    nbytes: Counter = field(default_factory=Counter)

    def add(self, component: str, dtype: str, params: int, nbytes: int) -> None:
        self.dtypes[dtype] += params
        self.params[component] += params
        self.nbytes[component] += nbytes


def _component_for_tensor(name: str, default: str, diffusion_file: bool) -> str:
    if diffusion_file:
        for prefix, comp in DIFFUSION_PREFIXES:
            if name.startswith(prefix):
                return comp
        return "denoiser"
    return "embedding" if EMBEDDING_RE.search(name) else default


def inspect_model(source: Path | RemoteFolder, *, name: str | None = None, include: Sequence[str] = (),
                  exclude: Sequence[str] = ()) -> ModelInfo:
    """Inspect a model directory, a single weight file, or a remote folder
    (whose headers are read by range, never its tensor data)."""
    root: Path | RemoteFolder
    if is_remote(source):
        files = source.list_files(include, exclude)
        root = source
    else:
        source = Path(source)
        files = list_files(source, include, exclude)
        root = source.parent if source.is_file() else source
    sets = find_weight_sets(files)
    counted, notes = counted_sets(sets)
    config = _config(files)
    method, bits = _quant_config(files, {"config.json": config})

    diffusers = any(f.name == "model_index.json" for f in files) or any(
        f.directory.split("/")[0] in DIFFUSERS_FOLDERS for f in files if f.is_weights)
    architecture = None
    if diffusers:
        mi = next((f for f in files if f.name == "model_index.json"), None)
        architecture = _read_json(mi).get("_class_name") if mi else None
    elif isinstance(config.get("architectures"), list) and config["architectures"]:
        architecture = str(config["architectures"][0])

    tally = _Tally()
    gguf_types: Counter = Counter()
    kind: Kind = "diffusion" if diffusers else "unknown"
    file_type: str | None = None
    extra: list[Component] = []  # adapters and projectors
    for w in counted:
        if w.kind in ATTACHED_KINDS:
            extra.append(_attached(w, tally, method, bits))
            continue
        if w.format == "gguf":
            h0 = w.headers[0]
            architecture = architecture or h0.architecture
            file_type = file_type or h0.file_type_name
            diffusion = (h0.architecture or "") in DIFFUSION_GGUF_ARCHS
            kind = "diffusion" if diffusion else "language-model"
            default = "denoiser" if diffusion else "token-prediction"
            tok = sum(h.tokenizer_bytes for h in w.headers)
            if tok:
                tally.add("tokenizer", "", 0, tok)
                tally.dtypes.pop("", None)
            for t in w.tensors:
                if t.type_name in GGUF_INTEGER_TYPES:
                    continue
                comp = default if diffusion else ("embedding" if t.name.startswith("token_embd") else default)
                tally.add(comp, t.type_name, t.parameter_count, t.nbytes)
                gguf_types[t.type_name] += t.parameter_count
            continue
        top = w.directory.split("/")[0] if w.directory else ""
        names = [t.name for t in w.tensors]
        diffusion_file = not diffusers and is_diffusion_checkpoint(names)
        if diffusion_file:
            kind = "diffusion"
        if diffusers and top:
            comp_default = DIFFUSERS_FOLDERS.get(top, top)
        else:
            comp_default = None
        for t in w.tensors:
            params, dtype = _tensor_params(t, method, bits)
            if not params:
                continue
            if comp_default:
                comp = comp_default
            else:
                comp = _component_for_tensor(t.name, "__default__", diffusion_file)
            tally.add(comp, dtype, params, t.nbytes)

    if kind == "unknown" and extra and not any(w.kind not in ATTACHED_KINDS for w in counted):
        kind = "adapter"
        architecture = architecture or next((c.architecture for c in extra if c.architecture), None)
    if kind == "unknown":
        kind = _kind_from_config(config, files)
    default_name = {"language-model": "token-prediction", "embedding": "encoder"}.get(kind, "weights")
    if "__default__" in tally.params:
        tally.params[default_name] += tally.params.pop("__default__")
        tally.nbytes[default_name] += tally.nbytes.pop("__default__")

    # tokenizer files (and diffusers tokenizer*/ folders)
    for f in files:
        top = f.directory.split("/")[0] if f.directory else ""
        tokenizer_folder = top.startswith("tokenizer")
        tokenizer_file = (PurePosixPath(f.name).name in TOKENIZER_FILES
                          and not top.startswith(("text_encoder", "unet", "vae")))
        if tokenizer_folder or tokenizer_file:
            tally.nbytes["tokenizer"] += f.size

    parameters = sum(tally.dtypes.values())
    weight_bytes = sum(b for c, b in tally.nbytes.items() if c != "tokenizer") + sum(c.bytes for c in extra)
    if not parameters:
        weight_bytes = sum(f.size for f in files if f.is_weights)
        if weight_bytes:
            notes.append("no safetensors or GGUF weights: parameters unknown, GPU memory estimated from file sizes")

    if method:
        quantization = _quant_label(method, bits)
    elif file_type:
        quantization = file_type
    elif tally.dtypes:
        quantization = max(sorted(tally.dtypes.items()), key=lambda kv: kv[1])[0]
    else:
        quantization = "unknown"

    formats = Counter(f.format for f in files if f.format)
    if {"gguf", "safetensors"} <= {w.format for w in counted}:
        fmt = "mixed"
    elif counted:
        fmt = counted[0].format if len({w.format for w in counted}) == 1 else "mixed"
    elif formats:
        fmt = formats.most_common(1)[0][0]
    else:
        fmt = "none"

    comps = sorted(
        (Component(c, tally.params.get(c, 0), tally.nbytes[c]) for c in tally.nbytes if tally.nbytes[c]),
        key=_component_order,
    ) + extra
    return ModelInfo(
        name=name or _default_name(source),
        root=root,
        files=tuple(files),
        weight_sets=tuple(sets),
        format=fmt,
        kind=kind,
        architecture=architecture,
        quantization=quantization,
        parameters=parameters,
        weight_bytes=weight_bytes,
        dtypes=dict(sorted(tally.dtypes.items(), key=lambda kv: (-kv[1], kv[0]))),
        components=tuple(comps),
        notes=tuple(notes),
    )


def _attached(w: WeightSet, tally: _Tally, method: str | None, bits: int | None) -> Component:
    """An adapter's or projector's component: its parameters count (they are
    in GPU memory beside the model's), with what its file says of the base."""
    params = nbytes = 0
    for t in w.tensors:
        if w.format == "gguf":
            if t.type_name in GGUF_INTEGER_TYPES:
                continue
            p, dtype = t.parameter_count, t.type_name
        else:
            p, dtype = _tensor_params(t, method, bits)
        if p:
            tally.dtypes[dtype] += p
        params += p
        nbytes += t.nbytes
    a = w.adapter
    return Component("projector" if w.kind == "mmproj" else "adapter", params, nbytes, file=w.members[0],
                     architecture=a.base_architecture if a else None, base_model=a.base_model if a else None,
                     rank=a.rank if a else None)


_ORDER = ("tokenizer", "embedding", "token-prediction", "encoder", "text_encoder", "denoiser", "vae")


def _component_order(c: Component) -> tuple[int, str]:
    """Pipeline order: tokenizer, embedding/text encoders, denoiser, VAE, others."""
    rank = next((i for i, p in enumerate(_ORDER) if c.name == p or c.name.startswith(p + "_")), len(_ORDER))
    return rank, c.name


def _tensor_params(t: Any, method: str | None, bits: int | None) -> tuple[int, str]:
    """(parameters, dtype label) a safetensors tensor contributes."""
    if t.dtype in st.FLOAT_DTYPES:
        if method in PACKED_QUANT_METHODS and t.name.endswith(QUANT_AUX_SUFFIXES):
            return 0, t.dtype
        return t.parameter_count, t.dtype
    if method in PACKED_QUANT_METHODS and t.name.endswith(".qweight") and bits:
        return t.parameter_count * (st.DTYPE_BITS[t.dtype] // bits), f"INT{bits}"
    if method in ("bitsandbytes", "quanto", "torchao", "compressed-tensors") and t.dtype in ("I8", "U8"):
        return t.parameter_count * (2 if bits == 4 else 1), f"INT{bits or 8}"
    return 0, t.dtype


def _kind_from_config(config: dict[str, Any], files: Sequence[SourceFile]) -> Kind:
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs):
        return "language-model"
    if any(f.name == "modules.json" for f in files) or any(a.endswith(("Model", "ForMaskedLM")) for a in archs):
        return "embedding"
    return "unknown"


def _default_name(source: Path | RemoteFolder) -> str:
    if is_remote(source):
        base = source.name
        base = base.rsplit(".", 1)[0] if PurePosixPath(base).suffix.lower() in WEIGHT_SUFFIXES else base
    else:
        p = source.resolve()
        base = p.stem if p.is_file() else p.name
    return safe_name(base)


def safe_name(text: str) -> str:
    """``text`` as a model name: lowercase letters, digits and . _ -."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "model"
