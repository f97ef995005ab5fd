"""Weight sets: which files make one logical set of weights, what kind of
file each set is, and whether the programs that load it can read it split.

A weight set is a single safetensors or GGUF file, or every shard of an
upstream-sharded set (``model-0000k-of-0000n.safetensors`` with its
``model.safetensors.index.json`` and every other file that index names, such
as a ``model-mtp.safetensors`` prediction head; llama.cpp GGUF splits).
Headers are parsed here (never tensor data), through the format codecs.

Loaders and split files (checked against each loader's source; the plan
refuses to split a kind that cannot be read split):

======================  =====  ==================================================
kind                    split  who loads it, and how
======================  =====  ==================================================
``model`` safetensors   yes    transformers ``modeling_utils`` reads
                               ``*.safetensors.index.json`` and every shard
                               named in its ``weight_map``; diffusers the same;
                               vLLM loads every ``*.safetensors`` the index names
``model`` GGUF          yes    llama.cpp ``llama_model_loader`` opens the
                               ``-0000k-of-0000n.gguf`` files ``split.count``
                               announces, given the first
``peft-adapter``        no     PEFT ``utils/save_and_load.py`` ``load_peft_weights``
                               opens ``adapter_model.safetensors`` (or ``.bin``)
                               and nothing else; vLLM's LoRA loader the same
``gguf-lora``           no     llama.cpp ``src/llama-adapter.cpp``
                               ``llama_adapter_lora_init_impl``: one
                               ``gguf_init_from_file(path_lora)``; ``split.*``
                               keys are ignored, so the first split of a split
                               adapter applies part of it without an error
``mmproj``              no     llama.cpp ``tools/mtmd/clip.cpp``
                               ``clip_model_loader``: one ``gguf_init_from_file``
``diffusion-checkpoint``  no   diffusers ``single_file_utils``
                               ``load_single_file_checkpoint`` and ComfyUI
                               ``comfy.utils.load_torch_file`` read one file
                               (ComfyUI-GGUF one ``GGUFReader`` for GGUF ones)
======================  =====  ==================================================
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any, Literal, Protocol

from .content import Source, read_each
from .errors import FormatError, PlanError, SourceError
from .formats import safetensors as st

__all__ = [
    "LOADERS",
    "VARIANTS",
    "Adapter",
    "LoaderRule",
    "PathOwners",
    "WeightKind",
    "WeightSet",
    "collision",
    "counted_sets",
    "find_weight_sets",
    "index_name_for",
    "is_diffusion_checkpoint",
    "split_variant",
]

# diffusers/transformers variant files: name.fp16.safetensors,
# name.fp16-00001-of-00002.safetensors. Only these suffixes count as variants,
# so sd_xl_base_1.0.safetensors is not "sd_xl_base_1" in variant "0".
VARIANTS = ("fp16", "bf16", "fp32", "fp8", "ema", "non_ema", "non-ema", "int8", "int4")
# Single-file checkpoints (A1111/ComfyUI style) name their parts by prefix.
DIFFUSION_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.diffusion_model.", "denoiser"),
    ("first_stage_model.", "vae"),
    ("conditioner.", "text_encoder"),
    ("cond_stage_model.", "text_encoder"),
    ("text_encoders.", "text_encoder"),
)
# Flux/SD3-style denoiser-only checkpoints without prefixes
DENOISER_MARKERS = ("double_blocks.", "single_blocks.", "joint_blocks.", "input_blocks.", "transformer_blocks.")
DIFFUSION_GGUF_ARCHS = {"flux", "sd1", "sdxl", "sd3", "aura", "ltxv", "hyvid", "wan", "hidream", "cosmos", "lumina2"}
# PEFT's file names (peft/utils/constants.py)
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

WeightKind = Literal["model", "peft-adapter", "gguf-lora", "mmproj", "diffusion-checkpoint", "legacy-variant-shards"]
#: diffusers' deprecated variant shard names (diffusers#9253): NAME-00001-of-00002.fp16.safetensors
LEGACY_SHARD_RE = re.compile(
    r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.(?P<variant>" + "|".join(map(re.escape, VARIANTS))
    + r")\.safetensors$")


@dataclass(frozen=True)
class LoaderRule:
    """Whether the loaders of one kind of weight file read it split, and why."""

    kind: WeightKind
    what: str  # for messages: "PEFT adapters"
    splittable: bool
    loader: str  # the loader's source that says so


LOADERS: dict[str, LoaderRule] = {
    "model": LoaderRule("model", "models", True,
                        "transformers/diffusers read the shards an index names; llama.cpp reads gguf-split sets"),
    "peft-adapter": LoaderRule("peft-adapter", "PEFT adapters", False,
                               "PEFT load_peft_weights (peft/utils/save_and_load.py) opens adapter_model.safetensors "
                               "only"),
    "gguf-lora": LoaderRule("gguf-lora", "GGUF LoRA adapters", False,
                            "llama.cpp llama_adapter_lora_init (src/llama-adapter.cpp) reads one GGUF file and ignores "
                            "split.* keys"),
    "mmproj": LoaderRule("mmproj", "multimodal projectors (mmproj)", False,
                         "llama.cpp clip_model_loader (tools/mtmd/clip.cpp) reads one GGUF file"),
    "diffusion-checkpoint": LoaderRule("diffusion-checkpoint", "single-file diffusion checkpoints", False,
                                       "diffusers from_single_file and ComfyUI's checkpoint loaders read one file"),
    "legacy-variant-shards": LoaderRule(
        "legacy-variant-shards", "sets with diffusers' deprecated variant shard names (NAME-0000k-of-0000n.VARIANT"
        ".safetensors)", False,
        "resharding would rename files their index names, and diffusers versions read different names: "
        "diffusers#9253 deprecated these, accelerate#2946"),
}


class _File(Protocol):
    """What this module needs of a model's file (``inspect.SourceFile``)."""

    name: str
    path: Source

    @property
    def format(self) -> str | None: ...

    @property
    def directory(self) -> str: ...


@dataclass(frozen=True)
class Adapter:
    """What an adapter or projector file says about itself (None: it does not say)."""

    base_architecture: str | None = None  # the base model's architecture (llama.cpp name or transformers class)
    base_model: str | None = None  # PEFT's base_model_name_or_path
    rank: int | None = None  # LoRA rank r
    alpha: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in {"base_architecture": self.base_architecture, "base_model": self.base_model,
                                   "rank": self.rank, "alpha": self.alpha}.items() if v is not None}


@dataclass(frozen=True)
class WeightSet:
    """One logical weight file: a single safetensors/GGUF file or every
    shard of an upstream-sharded set, with its index when there is one.

    ``members`` are the set's files in load order: the ``-0000k-of-0000n``
    shards first, then other files the index names (``extras``)."""

    format: Literal["safetensors", "gguf"]
    directory: str
    stem: str  # "model", "unet/diffusion_pytorch_model" without directory; GGUF split prefix
    members: tuple[str, ...]  # file names (paths in the model root)
    headers: tuple[Any, ...]  # st.SafetensorsHeader | formats.gguf.GGUFHeader, same order
    index_file: str | None = None
    index: dict[str, Any] | None = None
    kind: WeightKind = "model"
    extras: tuple[str, ...] = ()  # members named by the index outside the shard pattern
    adapter: Adapter | None = None  # for adapters and projectors

    @property
    def tensors(self) -> Iterable[Any]:
        for h in self.headers:
            yield from h.tensors

    @property
    def variant(self) -> str | None:
        return split_variant(self.stem)[1] if self.format == "safetensors" else None

    @property
    def rule(self) -> LoaderRule:
        """Whether (and why) its loaders read it split."""
        return LOADERS[self.kind]


def _gguf():
    """modelimage.formats.gguf, imported on first use: it loads the gguf
    package and numpy (~0.12 s), which a model without GGUF files never needs."""
    from .formats import gguf

    return gguf


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def split_variant(stem: str) -> tuple[str, str | None]:
    """``("diffusion_pytorch_model", "fp16")`` for ``diffusion_pytorch_model.fp16``."""
    base, dot, variant = stem.rpartition(".")
    return (base, variant) if dot and base and variant in VARIANTS else (stem, None)


def index_name_for(stem: str) -> str:
    """The index file name transformers/diffusers use for a sharded ``stem``
    (variants: ``diffusion_pytorch_model.safetensors.index.fp16.json``)."""
    base, variant = split_variant(stem)
    return f"{base}.safetensors.index.{variant}.json" if variant else st.index_name(stem)


def is_diffusion_checkpoint(names: Iterable[str]) -> bool:
    """Tensor names of an A1111/ComfyUI single-file checkpoint (or a
    Flux/SD3 denoiser saved on its own)."""
    prefixes = tuple(p for p, _ in DIFFUSION_PREFIXES)
    return any(n.startswith(prefixes) or n.startswith(DENOISER_MARKERS[:3]) for n in names)


def find_weight_sets(files: Sequence[_File]) -> list[WeightSet]:
    """Group safetensors and GGUF files into logical weight sets, parse their
    headers and tell their kind. Missing shards (or files an index names)
    are an :class:`SourceError`; a bad header a :class:`FormatError`."""
    by_name = {f.name: f for f in files}
    groups: dict[tuple[str, str, str, int], dict[int, _File]] = {}
    singles: list[tuple[str, _File]] = []
    for f in files:
        fmt = f.format
        if fmt not in ("safetensors", "gguf"):
            continue
        base = PurePosixPath(f.name).name
        legacy = LEGACY_SHARD_RE.match(base) if fmt == "safetensors" else None
        m = legacy or (st.SHARD_RE if fmt == "safetensors" else _gguf().SPLIT_RE).match(base)
        if m:
            # all patterns: (stem|prefix)-(k)-of-(n)[.variant].ext
            stem, k, n = m.group(1), int(m.group(2)), int(m.group(3))
            if legacy:
                stem = f"{stem}.{legacy['variant']}"
            groups.setdefault((fmt, f.directory, stem, n), {})[k] = f
        else:
            singles.append((fmt, f))

    sets: list[WeightSet] = []
    claimed: set[str] = set()
    for (fmt, directory, stem, n), members in sorted(groups.items()):
        first = PurePosixPath(next(iter(members.values())).name).name
        legacy = fmt == "safetensors" and bool(LEGACY_SHARD_RE.match(first))
        for k in range(1, n + 1):
            if k not in members:
                name = (st.shard_name(stem, k, n) if fmt == "safetensors" else _gguf().split_name(stem, k, n))
                if legacy:
                    base_stem, _, variant = stem.rpartition(".")
                    name = f"{base_stem}-{k:05d}-of-{n:05d}.{variant}.safetensors"
                raise SourceError(f"{_join(directory, name)}: missing (shard {k} of {n} of {_join(directory, stem)})")
        ordered = [members[k] for k in range(1, n + 1)]
        index_file, index, extras = None, None, []
        if fmt == "safetensors":
            shard_names = {PurePosixPath(f.name).name for f in ordered}
            index_file, index = _find_index(by_name, directory, stem)
            if index is not None and not shard_names & set(st.index_shards(index)):
                index_file, index = None, None  # it names another set's shards (this one is stray)
            if index is not None:
                for shard in st.index_shards(index):
                    path = _join(directory, shard)
                    if path not in by_name:
                        raise SourceError(f"{path}: missing (named by {index_file})")
                    if shard in shard_names:
                        continue
                    if st.SHARD_RE.match(shard):
                        raise SourceError(f"{index_file}: names {shard} beside {ordered[0].name}: shards of two "
                                          "sets in one index; remove the stale ones")
                    extras.append(by_name[path])
        claimed.update(f.name for f in ordered + extras)
        w = _weight_set(fmt, directory, stem, ordered + extras, index_file, index, tuple(f.name for f in extras),
                        by_name)
        sets.append(replace(w, kind="legacy-variant-shards") if legacy and w.kind == "model" else w)
    for fmt, f in singles:
        if f.name in claimed:  # an extra file of a sharded set's index
            continue
        stem = PurePosixPath(f.name).name.rsplit(".", 1)[0]
        sets.append(_weight_set(fmt, f.directory, stem, [f], None, None, (), by_name))
    sets.sort(key=lambda w: w.members[0])
    return sets


def _find_index(by_name: dict[str, _File], directory: str, stem: str) -> tuple[str | None, dict | None]:
    base, variant = split_variant(stem)
    legacy = (f"{base}.safetensors.{variant}.index.json",) if variant else ()  # diffusers before #9253
    for cand in (index_name_for(stem), st.index_name(stem), *legacy):
        path = _join(directory, cand)
        if path in by_name:
            return path, st.read_index(by_name[path].path)
    return None, None


def _weight_set(fmt: str, directory: str, stem: str, files: list[_File], index_file: str | None,
                index: dict | None, extras: tuple[str, ...], by_name: dict[str, _File]) -> WeightSet:
    reader = st.read_header if fmt == "safetensors" else _gguf().read_header
    headers = read_each(reader, [f.path for f in files])
    kind, adapter = _kind(fmt, directory, stem, headers, len(files) == 1 and index is None, by_name)
    return WeightSet(fmt, directory, stem, tuple(f.name for f in files), headers,  # type: ignore[arg-type]
                     index_file, index, kind, extras, adapter)


def _kind(fmt: str, directory: str, stem: str, headers: tuple[Any, ...], single: bool,
          by_name: dict[str, _File]) -> tuple[WeightKind, Adapter | None]:
    if fmt == "gguf":
        meta = headers[0].metadata
        gtype = meta.get("general.type")
        arch = headers[0].architecture
        if gtype == "adapter":
            return "gguf-lora", _gguf_lora(headers)
        if gtype == "mmproj" or arch == "clip" or "mmproj" in stem.lower():
            projector = meta.get("clip.projector_type")
            return "mmproj", Adapter(base_architecture=projector if isinstance(projector, str) else None)
        if arch in DIFFUSION_GGUF_ARCHS:
            return "diffusion-checkpoint", None
        return "model", None
    config = by_name.get(_join(directory, PEFT_CONFIG))
    if config is not None and split_variant(stem)[0].startswith("adapter_model"):
        return "peft-adapter", _peft(config, headers)
    if single and is_diffusion_checkpoint(t.name for t in headers[0].tensors):
        return "diffusion-checkpoint", None
    return "model", None


def _gguf_lora(headers: tuple[Any, ...]) -> Adapter:
    """llama.cpp's converter (convert_lora_to_gguf.py) writes ``general.type
    = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha`` and
    ``blk.N.*.weight.lora_a``/``lora_b`` pairs; lora_a's ggml shape is
    ``[n_in, r]`` (llama-adapter.cpp checks ``a->ne[1] == b->ne[0]``)."""
    h = headers[0]
    alpha = h.metadata.get("adapter.lora.alpha")
    ranks = {t.shape[1] for h in headers for t in h.tensors if t.name.endswith(".lora_a") and len(t.shape) >= 2}
    return Adapter(base_architecture=h.architecture, rank=ranks.pop() if len(ranks) == 1 else None,
                   alpha=float(alpha) if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None)


def _peft(config: _File, headers: tuple[Any, ...]) -> Adapter:
    """adapter_config.json: ``r``, ``lora_alpha``, ``base_model_name_or_path``
    (peft ``LoraConfig``); the rank from lora_A's shape ``[r, in]`` when the
    config does not say it."""
    try:
        raw = config.path.read_bytes()
        cfg = json.loads(raw)
    except (OSError, ValueError) as e:
        raise FormatError(config.path, f"not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise FormatError(config.path, "not a JSON object")
    rank = cfg.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool):
        ranks = {t.shape[0] for h in headers for t in h.tensors if ".lora_A." in t.name and len(t.shape) == 2}
        rank = ranks.pop() if len(ranks) == 1 else None
    alpha = cfg.get("lora_alpha")
    base = cfg.get("base_model_name_or_path")
    return Adapter(base_architecture=None, base_model=base if isinstance(base, str) and base else None, rank=rank,
                   alpha=float(alpha) if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None)


def counted_sets(sets: Sequence[WeightSet]) -> tuple[list[WeightSet], list[str]]:
    """Drop alternative variants (``x.fp16.safetensors`` beside
    ``x.safetensors``) from the parameter count: they are the same weights."""
    by_base: dict[tuple[str, str, str], list[WeightSet]] = {}
    for w in sets:
        base = split_variant(w.stem)[0] if w.format == "safetensors" else w.stem
        by_base.setdefault((w.format, w.directory, base), []).append(w)
    kept, notes = [], []
    for (_, _, base), group in by_base.items():
        group.sort(key=lambda w: (w.stem != base, w.stem))
        kept.append(group[0])
        for other in group[1:]:
            notes.append(f"{other.members[0]}: variant of {group[0].members[0]}, not counted twice")
    kept.sort(key=lambda w: w.members[0])
    return kept, notes


class PathOwners:
    """Which weight set (or plain file) each planned path comes from: a path
    planned twice is an error naming both (never two tar entries, or two
    artifact layers, for one path)."""

    def __init__(self) -> None:
        self.owner: dict[str, tuple[WeightSet | None, bool]] = {}

    def claim(self, path: str, w: WeightSet | None, *, resharded: bool = False) -> None:
        if path in self.owner:
            raise collision(path, self.owner[path], (w, resharded))
        self.owner[path] = (w, resharded)


def collision(path: str, a: tuple[WeightSet | None, bool], b: tuple[WeightSet | None, bool]) -> PlanError:
    """The error for two planned files on one ``path`` (each from a weight
    set, resharded or not, or a plain file when the set is None)."""
    def what(o: tuple[WeightSet | None, bool]) -> str:
        w, resharded = o
        if w is None:
            return f"the file {path}"
        names = w.members[0] + (f" (+{len(w.members) - 1} more shards)" if len(w.members) > 1 else "")
        names += f" with {w.index_file}" if w.index_file else ""
        return names + (", resharded," if resharded else "")

    sets = [o[0] for o in (a, b) if o[0] is not None]
    fix = "; keep one with --exclude"
    if len(sets) == 2 and all(w.format == "safetensors" for w in sets) and sorted(
            len(w.members) > 1 for w in sets) == [False, True]:
        single = next(w for w in sets if len(w.members) == 1).members[0]
        sharded = next(w for w in sets if len(w.members) > 1)
        fix = (f"; they are two copies of one model: transformers loads {single} when both are there, diffusers "
               f"{sharded.index_file or 'the shards'}; keep one with --exclude '{single}', or --exclude the shards "
               f"and their index")
    return PlanError(f"{path}: {what(a)} and {what(b)} would both be written there (two weight sets in one "
                     f"folder collide){fix}")
