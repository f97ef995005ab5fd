"""The planner: files + limits -> an ordered list of size-bounded layers.

A pure function (no I/O): everything it needs (file sizes, parsed headers)
comes from :mod:`modelimage.inspect`. Rules:

* each weight file (or shard) gets a layer of its own, in path order, so a
  change to one file changes only its layers; small files (configs,
  tokenizer, docs) share layers at the end;
* every layer blob, as stored, is at most ``max_layer_size`` bytes (exact
  tar sizes are computed, and compression's worst case is allowed for);
* a weight set that does not fit is resharded the way upstream does it
  (safetensors ``-0000k-of-0000n`` shards + index, llama.cpp GGUF splits),
  at tensor boundaries, as streams of source byte ranges;
* the image stays within the engines' layer-depth limit (125 in all,
  counting a base image's layers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from .content import VirtualFile, stamped
from .errors import ConfigError, LayerTooLarge, PlanError
from .formats import safetensors as st
from .inspect import ModelInfo, SourceFile
from .tarstream import END_OF_ARCHIVE, Entry, header, layer_size, parent_dirs
from .units import format_size
from .weights import PathOwners, WeightSet, index_name_for

# moby layer/layer_store.go maxLayerDepth = 125 ("max depth exceeded");
# CRI-O fails above 128 (cri-o#6261). The whole image must stay under it.
MAX_LAYERS = 125
# The strictest per-layer limit among common registries: GHCR's 10 GB
# (docs.github.com, "Working with the Container registry"); ECR Public's
# 10,000 MiB is larger. So the default plan pushes anywhere.
DEFAULT_MAX_LAYER_SIZE = 10 * 10**9
# Non-weight files at least this big get a layer of their own too.
OWN_LAYER_MIN = 64 * 2**20


def _gguf():
    """modelimage.formats.gguf, imported on first use: it loads the gguf
    package and numpy (~0.12 s), which a model without GGUF files never needs."""
    from .formats import gguf

    return gguf


@dataclass(frozen=True)
class PlanSettings:
    max_layer_size: int = DEFAULT_MAX_LAYER_SIZE
    target: str = ""  # image path of the model root, e.g. "/models/llama"
    max_layers: int = MAX_LAYERS
    base_layers: int = 0
    mtime: int = 0
    compression: str = "none"

    @property
    def root(self) -> str:
        """``target`` as a relative tar path: ``models/llama``."""
        return normalize_target(self.target)


@dataclass(frozen=True)
class Layer:
    entries: tuple[Entry, ...]
    size: int  # exact size of the uncompressed tar
    kind: str  # "weights" or "files"

    @property
    def title(self) -> str:
        """What the layer holds, for annotations and history."""
        if len(self.entries) == 1:
            return PurePosixPath(self.entries[0].path).name
        return f"{len(self.entries)} files"

    @property
    def content_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "kind": self.kind,
            "files": ["/" + e.path for e in self.entries],
            "content_bytes": self.content_bytes,
        }


@dataclass(frozen=True)
class Reshard:
    """A weight set the plan rewrites into new shards."""

    sources: tuple[str, ...]
    outputs: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Plan:
    layers: tuple[Layer, ...]
    settings: PlanSettings
    reshards: tuple[Reshard, ...] = field(default=())

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def files(self) -> list[Entry]:
        return [e for layer in self.layers for e in layer.entries]

    def to_json(self) -> dict[str, Any]:
        return {
            "target": "/" + self.settings.root,
            "max_layer_size": self.settings.max_layer_size,
            "max_layers": self.settings.max_layers - self.settings.base_layers,
            "compression": self.settings.compression,
            "total_size": self.total_size,
            "layers": [layer.to_json() for layer in self.layers],
            "reshards": [
                {"from": list(r.sources), "to": list(r.outputs), "reason": r.reason} for r in self.reshards
            ],
        }


def normalize_target(target: str) -> str:
    parts = [p for p in PurePosixPath(target or "/").parts if p not in ("/", ".")]
    if any(p == ".." for p in parts):
        raise ConfigError(f"--target {target!r}: must not contain '..'")
    return "/".join(parts)


def blob_budget(max_layer_size: int, compression: str) -> int:
    """The largest uncompressed tar whose blob is surely <= max_layer_size.

    For gzip, zlib's deflateBound (worst case on incompressible weights)
    plus the 18-byte gzip framing.
    """
    if compression == "none":
        return max_layer_size
    n = max_layer_size - 18 - 13
    # deflateBound: n + (n >> 12) + (n >> 14) + (n >> 25) + 13  <= limit
    return max(0, int(n / (1 + 2**-12 + 2**-14 + 2**-25)) - 1)


def _fixed_overhead(path: str, mtime: int) -> int:
    """Bytes of a one-file layer that are not the file: parent directory
    headers, the file's header (sized for the biggest file), padding and the
    end-of-archive blocks."""
    dirs = sum(len(header(d, 0, directory=True, mtime=mtime)) for d in parent_dirs([path]))
    return dirs + len(header(path, 2**40, mtime=mtime)) + 511 + 1024


def _entry(root: str, vf: VirtualFile, stamps: dict | None = None) -> Entry:
    return Entry(f"{root}/{vf.name}" if root else vf.name, stamped(vf, stamps) if stamps else vf)


def _one_layer(entry: Entry, settings: PlanSettings) -> Layer:
    return Layer((entry,), layer_size([entry], settings.mtime), "weights")


def _reshard(w: WeightSet, model: ModelInfo, settings: PlanSettings, budget: int
             ) -> tuple[list[VirtualFile], list[str], Reshard]:
    """Split ``w`` into shards whose one-file layers fit ``budget``: the new
    files, the members kept as they are (files an index names outside the
    shard pattern that fit), and what was done."""
    if not w.rule.splittable:
        raise _cannot_split(w, model, settings, budget)
    ext = "gguf" if w.format == "gguf" else "safetensors"
    sample = "/".join(p for p in (settings.root, w.directory, f"{w.stem}-00001-of-00001.{ext}") if p)
    shard_max = budget - _fixed_overhead(sample, settings.mtime)
    kept = [m for m in w.extras if _whole_layer_size(model, m, settings) <= budget]
    resharded = [(m, h) for m, h in zip(w.members, w.headers, strict=True) if m not in kept]
    try:
        if w.format == "safetensors":
            keep = [h for m, h in zip(w.members, w.headers, strict=True) if m in kept]
            out = st.split([h for _, h in resharded], stem=w.stem, directory=w.directory, max_shard_size=shard_max,
                           index=w.index, keep=keep)
            # keep the index where transformers/diffusers look for it (variants included)
            wanted = w.index_file or "/".join(p for p in (w.directory, index_name_for(w.stem)) if p)
            out = [replace(vf, name=wanted) if vf.name.endswith(".index.json") else vf for vf in out]
        else:
            out = _gguf().split(list(w.headers), prefix=w.stem, directory=w.directory, max_shard_size=shard_max)
    except LayerTooLarge:
        biggest = max(w.tensors, key=lambda t: t.nbytes)
        if biggest.nbytes < shard_max // 2:  # not the tensor (e.g. GGUF metadata alone too big): keep the message
            raise
        member = next(m for m, h in zip(w.members, w.headers, strict=True) if biggest in h.tensors)
        raise LayerTooLarge(
            f"{member}: tensor {biggest.name} is {format_size(biggest.nbytes)} ({biggest.nbytes} bytes) and cannot "
            f"be split; layers are limited to {format_size(settings.max_layer_size)}; rerun with "
            f"--max-layer-size {_suggest(settings.max_layer_size - shard_max + biggest.nbytes + 2**20)}"
        ) from None
    largest = max(model.file(m).size for m, _ in resharded)
    reason = f"{largest} bytes in one file; layers are limited to {settings.max_layer_size}"
    sources = tuple(m for m, _ in resharded) + ((w.index_file,) if w.index_file else ())
    return out, kept, Reshard(sources, tuple(v.name for v in out), reason)


def _whole_layer_size(model: ModelInfo, name: str, settings: PlanSettings) -> int:
    f = model.file(name)
    return layer_size([_entry(settings.root, VirtualFile.whole(f.name, f.path, f.size))], settings.mtime)


def _cannot_split(w: WeightSet, model: ModelInfo, settings: PlanSettings, budget: int) -> LayerTooLarge:
    """A weight file whose loaders cannot read it split, over the limit: the
    error names it, its size and the smallest --max-layer-size that keeps it whole."""
    sizes = {m: _whole_layer_size(model, m, settings) for m in w.members}
    member = max((m for m in w.members if sizes[m] > budget), key=lambda m: sizes[m])
    f = model.file(member)
    rule = w.rule
    return LayerTooLarge(
        f"{member} is {format_size(f.size)} ({f.size} bytes), over the layer limit of "
        f"{format_size(settings.max_layer_size)}, and {rule.what} cannot be split ({rule.loader}); "
        f"rerun with --max-layer-size {_smallest(_limit_for(sizes[member], settings.compression))} or more "
        "to keep it whole in one layer"
    )


def _smallest(n: int) -> str:
    """The smallest whole number of MB (or bytes, below 1 MB) that is at least ``n`` bytes."""
    return f"{math.ceil(n / 10**6)}MB" if n >= 10**6 else str(n)


def make_plan(model: ModelInfo, settings: PlanSettings) -> Plan:
    """Plan the layers of ``model`` under ``settings``.

    Raises :class:`LayerTooLarge` when a file cannot fit (a tensor bigger
    than a layer, a kind of file its loaders cannot read split, a format
    that cannot be split safely) and :class:`PlanError` when two files would
    land on one path (two weight sets resharded to the same names) or the
    image needs too many layers. Every message names the files and the fix."""
    budget = blob_budget(settings.max_layer_size, settings.compression)
    root = settings.root
    stamps = {f.path: f.stamp for f in model.files}
    weight_layers: list[Layer] = []
    small: list[Entry] = []
    reshards: list[Reshard] = []
    handled: set[str] = set()
    owners = PathOwners()

    for w in model.weight_sets:
        entries = [_entry(root, VirtualFile.whole(m, model.file(m).path, model.file(m).size), stamps)
                   for m in w.members]
        if any(layer_size([e], settings.mtime) > budget for e in entries):
            shards, kept, r = _reshard(w, model, settings, budget)
            reshards.append(r)
            handled.update(r.sources)
            for vf in shards:
                owners.claim(vf.name, w, resharded=True)
                e = _entry(root, vf, stamps)
                if vf.name.endswith(".json"):
                    small.append(e)
                else:
                    layer = _one_layer(e, settings)
                    assert layer.size <= budget, (vf.name, layer.size, budget)
                    weight_layers.append(layer)
            for e in entries:
                if e.content.name in kept:
                    owners.claim(e.content.name, w)
                    handled.add(e.content.name)
                    weight_layers.append(_one_layer(e, settings))
        else:
            handled.update(w.members)
            for e in entries:
                owners.claim(e.content.name, w)
            weight_layers.extend(_one_layer(e, settings) for e in entries)

    for f in model.files:
        if f.name in handled:
            continue
        owners.claim(f.name, None)
        e = _entry(root, VirtualFile.whole(f.name, f.path, f.size), stamps)
        if f.is_weights or f.size >= OWN_LAYER_MIN:
            layer = _one_layer(e, settings)
            if layer.size > budget:
                raise _too_large(f, layer.size, settings)
            weight_layers.append(layer)
        else:
            small.append(e)

    weight_layers.sort(key=lambda layer: layer.entries[0].path)
    layers = weight_layers + _pack_small(sorted(small, key=lambda e: e.path), settings, budget)
    layers = _fit_layer_count(layers, settings, budget)
    return Plan(tuple(layers), settings, tuple(reshards))


def _too_large(f: SourceFile, size: int, settings: PlanSettings) -> LayerTooLarge:
    why = (
        f"{f.format} files cannot be split safely at tensor boundaries; convert it to safetensors"
        if f.is_weights else "it is not a weight file that can be split"
    )
    return LayerTooLarge(
        f"{f.name} is {format_size(f.size)} ({f.size} bytes), over the layer limit of "
        f"{format_size(settings.max_layer_size)} ({settings.max_layer_size} bytes); {why}, "
        f"or rerun with --max-layer-size {_suggest(_limit_for(size, settings.compression))}"
    )


def _limit_for(tar_size: int, compression: str) -> int:
    """The smallest max_layer_size whose :func:`blob_budget` holds a ``tar_size``-byte tar."""
    if compression == "none":
        return tar_size
    return math.ceil((tar_size + 1) * (1 + 2**-12 + 2**-14 + 2**-25)) + 18 + 13 + 1


def _suggest(n: int) -> str:
    """A round size at least ``n`` bytes, as --max-layer-size would take it."""
    for unit, div in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= div:
            return f"{math.ceil(n / div)}{unit}"
    return str(n)


def _pack_small(entries: Sequence[Entry], settings: PlanSettings, budget: int) -> list[Layer]:
    """Small files share layers, filled in path order. A tar's size is the
    sum of its parts (directory headers, each file's header, content and
    padding, the end blocks), so each file's cost is added as it comes:
    linear in the number of files (a prefix of thousands of files plans in
    well under a second)."""
    mtime = settings.mtime
    layers: list[Layer] = []
    current: list[Entry] = []
    dirs: set[str] = set()
    size = len(END_OF_ARCHIVE)

    def cost(e: Entry, have: set[str]) -> tuple[int, list[str]]:
        new = [d for d in parent_dirs([e.path]) if d not in have]
        return (sum(_header_size(d, 0, mtime, directory=True) for d in new)
                + _header_size(e.path, e.size, mtime) + -e.size % 512 + e.size), new

    for e in entries:
        add, new = cost(e, dirs)
        if current and size + add > budget:
            layers.append(Layer(tuple(current), size, "files"))  # the sum of its parts is the tar's size
            current, dirs, size = [], set(), len(END_OF_ARCHIVE)
            add, new = cost(e, dirs)
        current.append(e)
        dirs.update(new)
        size += add
        if size > budget:
            size = layer_size(current, settings.mtime)
            raise LayerTooLarge(
                f"{e.content.name} needs a {size}-byte layer, over the layer limit of "
                f"{settings.max_layer_size} bytes; rerun with --max-layer-size "
                f"{_suggest(_limit_for(size, settings.compression))}"
            )
    if current:
        layers.append(Layer(tuple(current), size, "files"))
    return layers


def _header_size(path: str, size: int, mtime: int, *, directory: bool = False) -> int:
    """Bytes of the tar header :func:`modelimage.tarstream.header` writes:
    one 512-byte ustar block for an ASCII name of at most 100 bytes (with
    the ``/`` of a folder), a size and mtime that fit its octal fields;
    otherwise a pax header too, built to be measured. Building every
    header took most of the time to plan 20,000 small files."""
    name = path + "/" if directory else path
    if name.isascii() and len(name) <= 100 and size < 8**11 and 0 <= mtime < 8**11:
        return 512
    return len(header(path, size, directory=directory, mtime=mtime))


def _fit_layer_count(layers: list[Layer], settings: PlanSettings, budget: int) -> list[Layer]:
    """Merge neighbouring layers while the image has too many: the smallest
    merge of two weight layers first, then any two neighbours."""
    allowed = settings.max_layers - settings.base_layers
    if allowed < 1:
        raise PlanError(
            f"the base image already has {settings.base_layers} layers; at most {settings.max_layers} fit in one image"
        )
    while len(layers) > allowed:
        best = None
        for same_kind_only in (True, False):
            for i in range(len(layers) - 1):
                a, b = layers[i], layers[i + 1]
                if same_kind_only and a.kind != b.kind:
                    continue
                merged = a.entries + b.entries
                size = layer_size(merged, settings.mtime)
                if size <= budget and (best is None or size < best[1]):
                    best = (i, size, merged)
            if best:
                break
        if best is None:
            raise PlanError(
                f"the model needs {len(layers)} layers but at most {allowed} fit "
                f"({settings.max_layers} per image"
                + (f", {settings.base_layers} used by the base" if settings.base_layers else "")
                + f"); rerun with --max-layer-size "
                f"{_suggest(_limit_for(_partition_size(layers, allowed), settings.compression))}"
            )
        i, size, merged = best
        kind = layers[i].kind if layers[i].kind == layers[i + 1].kind else "weights"
        layers[i : i + 2] = [Layer(merged, size, kind)]
    return layers


def _partition_size(layers: Sequence[Layer], groups: int) -> int:
    """The smallest size S such that the layers, kept in order, fall into at
    most ``groups`` runs each summing to <= S. A merged layer is never bigger
    than the sum of its parts, so a plan with this limit fits."""
    sizes = [layer.size for layer in layers]

    def runs(limit: int) -> int:
        n, acc = 1, 0
        for s in sizes:
            if acc + s > limit:
                n, acc = n + 1, 0
            acc += s
        return n

    lo, hi = max(sizes), sum(sizes)
    while lo < hi:
        mid = (lo + hi) // 2
        if runs(mid) <= groups:
            hi = mid
        else:
            lo = mid + 1
    return lo
