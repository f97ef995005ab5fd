"""What an index entry says about its variant, and which variant to take.

Annotations on each manifest descriptor of the index (strings, as the image
spec wants; keys under modelimage's ``dev.modelimage.`` prefix). No
registry-level convention exists for this: KitOps has an open request for
it (kitops-ml/kitops#1261), ModelPack (``config.format``, ``precision``,
``quantization``, ``paramSize``) and Docker Model Runner (``format``,
``quantization``, ``parameters``, ``size``) keep such facts in the model's
config blob, which a client must fetch per variant. The values follow
theirs: ``format`` in lower case (``gguf``, ``safetensors``), the
quantization label as llama.cpp names the file type (``Q4_K_M``, ``F16``).

==============================  ==========================================
``dev.modelimage.variant``      the variant's name, also its tag
``dev.modelimage.quantization`` ``Q4_K_M``, ``Q8_0``, ``F16``, ``BF16``, ...
``dev.modelimage.parameters``   parameter count (an integer)
``dev.modelimage.bytes``        bytes of the variant's files (what a pull writes)
``dev.modelimage.vram-bytes``   GPU-memory estimate in bytes (weights x 1.25)
``dev.modelimage.format``       ``gguf``, ``safetensors``, ...
==============================  ==========================================

The rule (:func:`select`), in this order:

1. ``--variant NAME``: the entry of that name (case-insensitive);
2. ``--gpu-memory SIZE``: among the variants whose GPU-memory estimate is at
   most SIZE, the one with the highest precision (GPU memory per parameter,
   i.e. bits per weight); between equal precisions (to 1/100 bit) the
   smaller variant (fewer bytes to pull), then the earlier entry. When none
   fits, an error names the smallest variant's need;
3. neither: the index's first entry, its default (what engines that pull the
   index by platform take too: every entry has the same platform, and they
   take the first match).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import VariantError
from ..inspect import VRAM_FACTOR, ModelInfo
from ..oci import ANNOTATION_PREFIX
from ..units import format_size

ANNOTATION_VARIANT = ANNOTATION_PREFIX + "variant"
ANNOTATION_QUANTIZATION = ANNOTATION_PREFIX + "quantization"
ANNOTATION_PARAMETERS = ANNOTATION_PREFIX + "parameters"
ANNOTATION_BYTES = ANNOTATION_PREFIX + "bytes"
ANNOTATION_VRAM = ANNOTATION_PREFIX + "vram-bytes"
ANNOTATION_FORMAT = ANNOTATION_PREFIX + "format"


@dataclass(frozen=True)
class VariantFacts:
    """One variant as selection sees it. ``bytes``: its files' bytes;
    ``vram_bytes``: the GPU-memory estimate (0 when unknown); ``digest``:
    its manifest, once built or when read from an index."""

    name: str
    quantization: str = "unknown"
    parameters: int = 0
    bytes: int = 0
    vram_bytes: int = 0
    format: str = "unknown"
    digest: str | None = None

    @property
    def bits_per_parameter(self) -> float | None:
        """The precision: weight bits per parameter, from the GPU-memory
        estimate (``vram = weight bytes x 1.25``); None without parameters."""
        if self.parameters <= 0 or self.vram_bytes <= 0:
            return None
        return 8 * self.vram_bytes / VRAM_FACTOR / self.parameters

    def annotations(self) -> dict[str, str]:
        """The index entry's annotations (see the module docstring)."""
        return {
            ANNOTATION_VARIANT: self.name,
            ANNOTATION_QUANTIZATION: self.quantization,
            ANNOTATION_PARAMETERS: str(self.parameters),
            ANNOTATION_BYTES: str(self.bytes),
            ANNOTATION_VRAM: str(self.vram_bytes),
            ANNOTATION_FORMAT: self.format,
        }

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "quantization": self.quantization, "parameters": self.parameters,
                "bytes": self.bytes, "vram_bytes": self.vram_bytes, "format": self.format,
                "bits_per_parameter": round(self.bits_per_parameter, 3) if self.bits_per_parameter else None,
                "digest": self.digest}

    def describe(self) -> str:
        """``q8_0 (Q8_0, ~14.4 MB GPU memory)``."""
        need = f"~{format_size(self.vram_bytes)} GPU memory" if self.vram_bytes else "GPU memory unknown"
        return f"{self.name} ({self.quantization}, {need})"


def facts_of(model: ModelInfo, name: str) -> VariantFacts:
    """What inspect knows about a variant's files, as selection needs it."""
    return VariantFacts(name, model.quantization, model.parameters, model.bytes, model.vram_bytes, model.format)


def _int(value: Any) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        return 0
    return max(n, 0)


def facts_from_descriptor(desc: Mapping[str, Any]) -> VariantFacts | None:
    """The variant an index entry (a descriptor as parsed JSON) describes,
    or None when it carries no ``dev.modelimage.variant``. Values that do
    not parse count as unknown (0), never as an error: the index may be
    someone else's."""
    ann = desc.get("annotations") or {}
    name = ann.get(ANNOTATION_VARIANT) if isinstance(ann, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    text = {k: v if isinstance(v, str) else "" for k, v in ann.items()}
    return VariantFacts(
        name=name,
        quantization=text.get(ANNOTATION_QUANTIZATION) or "unknown",
        parameters=_int(text.get(ANNOTATION_PARAMETERS, "")),
        bytes=_int(text.get(ANNOTATION_BYTES, "")),
        vram_bytes=_int(text.get(ANNOTATION_VRAM, "")),
        format=text.get(ANNOTATION_FORMAT) or "unknown",
        digest=desc.get("digest") if isinstance(desc.get("digest"), str) else None,
    )


@dataclass(frozen=True)
class Choice:
    """The variant taken: its position in the list given, and why (one line)."""

    index: int
    variant: VariantFacts
    reason: str


def _precision_key(v: VariantFacts, by_bits: bool) -> float:
    if by_bits:
        return round(v.bits_per_parameter or 0.0, 2)
    return float(v.vram_bytes)


def select(variants: Sequence[VariantFacts], *, name: str | None = None, gpu_memory: int | None = None,
           source: str = "the image") -> Choice:
    """Pick a variant by the rule in the module docstring. ``gpu_memory`` in
    bytes. Raises :class:`VariantError` (one line) when ``name`` is not
    there, when nothing fits ``gpu_memory`` (naming the smallest variant's
    need), or when both are given."""
    if not variants:
        raise VariantError(f"{source}: has no variants")
    if name is not None and gpu_memory is not None:
        raise VariantError("use either --variant or --gpu-memory, not both")
    names = ", ".join(v.name for v in variants)
    if name is not None:
        for i, v in enumerate(variants):
            if v.name.lower() == name.strip().lower():
                return Choice(i, v, f"{v.describe()}: asked for by name")
        raise VariantError(f"{source}: no variant {name!r} (it has: {names})")
    if gpu_memory is None:
        return Choice(0, variants[0], f"{variants[0].describe()}: the default (first) variant of {len(variants)}; "
                                      "choose with --variant NAME or --gpu-memory SIZE")
    known = [(i, v) for i, v in enumerate(variants) if v.vram_bytes > 0]
    if not known:
        raise VariantError(f"{source}: no variant says how much GPU memory it needs; choose one with --variant "
                           f"({names})")
    fits = [(i, v) for i, v in known if v.vram_bytes <= gpu_memory]
    if not fits:
        i, smallest = min(known, key=lambda iv: (iv[1].vram_bytes, iv[0]))
        raise VariantError(f"{source}: no variant fits {format_size(gpu_memory)} of GPU memory; the smallest, "
                           f"{smallest.name} ({smallest.quantization}), needs ~{format_size(smallest.vram_bytes)}")
    by_bits = all(v.bits_per_parameter for _, v in fits)
    i, best = min(fits, key=lambda iv: (-_precision_key(iv[1], by_bits), iv[1].bytes, iv[0]))
    higher = [v for _, v in known if v.vram_bytes > gpu_memory]
    nxt = min(higher, key=lambda v: v.vram_bytes, default=None)
    why = f"{best.describe()}: the highest precision that fits {format_size(gpu_memory)} of GPU memory"
    if nxt is not None:
        why += f" ({nxt.name} needs ~{format_size(nxt.vram_bytes)})"
    skipped = [v.name for j, v in enumerate(variants) if v.vram_bytes == 0]
    if skipped:
        why += f"; {', '.join(skipped)} left out: GPU memory unknown"
    return Choice(i, best, why)
