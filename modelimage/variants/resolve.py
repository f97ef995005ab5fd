"""Variants read back from an image index, in a registry or an OCI layout.

:class:`Picker` is the choice ``pull`` and ``verify`` make when the
reference is an index (:func:`modelimage.image.open_image`'s ``choose``):
among the entries that carry ``dev.modelimage.variant`` (and run on the
platform asked for, or this machine's), the one the rule of :mod:`.select`
picks; an index without variants is chosen by platform as before.
:func:`read_index` reads an index and every variant's manifest, for
``inspect REF`` (sizes, GPU memory, shared layers) and ``estimate REF``
(each variant's layers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError, VariantError
from ..image import choose_platform, is_index, open_store, read_manifest, resolve
from ..layout import LayoutRef
from ..oci import Descriptor, Platform
from ..units import format_size
from .select import ANNOTATION_VARIANT, Choice, VariantFacts, facts_from_descriptor, select


def _entries(index: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in index.get("manifests") or [] if isinstance(m, dict) and isinstance(m.get("digest"), str)]


def on_platform(entries: list[dict[str, Any]], platform: str | None) -> list[dict[str, Any]]:
    """The entries for ``platform`` (exactly, after normalisation), or
    without one for this machine's platform and those it also runs, best
    first; when none runs here, all of them (model files do not run, and an
    index of variants usually has one platform). Entries without a
    platform always count."""
    def plat(e: dict[str, Any]) -> Platform | None:
        return Platform.from_json(e["platform"]) if isinstance(e.get("platform"), dict) else None

    want = Platform.parse(platform) if platform else Platform.host()
    for spec in (want.normalized(),) if platform else want.fallbacks():
        found = [e for e in entries if plat(e) is None or plat(e).satisfies(spec)]  # type: ignore[union-attr]
        if found:
            return found
    if platform:
        have = ", ".join(sorted({str(plat(e)) for e in entries}))
        raise VariantError(f"no {platform} variant in the index (it has: {have})")
    return entries


class Picker:
    """Chooses the entry of an index by the variant rule (:func:`.select.select`):
    ``name`` (``--variant``), ``gpu_memory`` in bytes (``--gpu-memory``), or
    the default first entry; ``platform`` as ``pull --platform``. After a
    pull has opened the image, :attr:`choice` is what was picked (None for
    an index without variants, or a single image) and :meth:`check` refuses
    a single image that does not match what was asked."""

    def __init__(self, source: str, *, name: str | None = None, gpu_memory: int | None = None,
                 platform: str | None = None):
        self.source, self.name, self.gpu_memory, self.platform = source, name, gpu_memory, platform
        self.choice: Choice | None = None
        if name is not None and gpu_memory is not None:
            raise VariantError("use either --variant or --gpu-memory, not both")

    def __call__(self, index: dict[str, Any]) -> dict[str, Any]:
        entries = _entries(index)
        variants = [e for e in entries if facts_from_descriptor(e) is not None]
        if not variants:
            if self.name is not None:
                raise VariantError(f"{self.source}: an index without variants (no {ANNOTATION_VARIANT} "
                                   "annotations); pull it without --variant")
            return choose_platform(index, self.platform, self.source)
        try:
            here = on_platform(variants, self.platform)
        except VariantError as e:
            raise VariantError(f"{self.source}: {e}") from None
        facts = [facts_from_descriptor(e) for e in here]
        self.choice = select(facts, name=self.name, gpu_memory=self.gpu_memory,  # type: ignore[arg-type]
                             source=self.source)
        return here[self.choice.index]

    def preflight(self, insecure: frozenset[str] | set[str] = frozenset()) -> Picker:
        """Before anything is written: with ``--variant`` or ``--gpu-memory``,
        a reference to a single image (not an index) must be the variant
        asked for, and fit the GPU memory given when it says what it needs
        (one manifest GET). Returns itself; raises :class:`VariantError`."""
        if self.name is None and self.gpu_memory is None:
            return self
        store = open_store(self.source, insecure=frozenset(insecure))
        try:
            top, manifest = read_manifest(store, None, self.source)
        finally:
            store.close()
        if is_index(manifest, top.media_type):
            return self  # the choice is made when the index is opened
        ann = manifest.get("annotations") or {}
        if self.name is not None and str(ann.get(ANNOTATION_VARIANT, "")).lower() != self.name.lower():
            raise VariantError(f"{self.source}: a single image, not an index of variants; --variant "
                               f"{self.name} does not apply (it is {ann.get(ANNOTATION_VARIANT) or 'no variant'})")
        need = facts_from_descriptor({"annotations": {**ann, ANNOTATION_VARIANT: "image"}})
        if self.gpu_memory is not None and need and need.vram_bytes > self.gpu_memory:
            raise VariantError(f"{self.source}: needs ~{format_size(need.vram_bytes)} of GPU memory, more than "
                               f"the {format_size(self.gpu_memory)} given")
        return self

    def say(self, to: Callable[[str], None] | None) -> None:
        """Tell ``to`` which variant was taken and why (when there was a choice)."""
        if to is not None and self.choice is not None:
            to(f"variant {self.choice.reason}")


@dataclass(frozen=True)
class VariantView:
    """One variant of an index: its facts, its manifest (parsed) and its
    entry's platform."""

    facts: VariantFacts
    manifest: dict[str, Any]
    platform: Platform | None

    @property
    def layers(self) -> list[dict[str, Any]]:
        return [d for d in self.manifest.get("layers") or [] if isinstance(d, dict)]

    @property
    def image_bytes(self) -> int:
        """Bytes a pull of this variant fetches: config and layers."""
        config = self.manifest.get("config") or {}
        return int(config.get("size", 0)) + sum(int(d.get("size", 0)) for d in self.layers)


@dataclass(frozen=True)
class IndexView:
    """An image (index) read back: its digest and variants (none for an
    image or index without variants)."""

    source: str
    digest: str
    media_type: str
    variants: tuple[VariantView, ...]
    annotations: dict[str, Any]

    @property
    def shared(self) -> dict[str, int]:
        """Layers more than one variant holds: digest -> size."""
        count: dict[str, int] = {}
        size: dict[str, int] = {}
        for v in self.variants:
            for d in {x["digest"]: x for x in v.layers}.values():
                count[d["digest"]] = count.get(d["digest"], 0) + 1
                size[d["digest"]] = int(d.get("size", 0))
        return {d: size[d] for d, n in count.items() if n > 1}

    @property
    def stored_bytes(self) -> int:
        """Every distinct blob of the variants once (layers and configs)."""
        blobs: dict[str, int] = {}
        for v in self.variants:
            for d in [v.manifest.get("config") or {}, *v.layers]:
                if "digest" in d:
                    blobs[d["digest"]] = int(d.get("size", 0))
        return sum(blobs.values())

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.source, "digest": self.digest, "mediaType": self.media_type,
                "stored_bytes": self.stored_bytes, "shared_layers": len(self.shared),
                "shared_bytes": sum(self.shared.values()),
                "variants": [{**v.facts.to_json(), "image_bytes": v.image_bytes,
                              "platform": str(v.platform) if v.platform else None} for v in self.variants]}


def is_image_reference(source: str, config: Path | None = None) -> bool:
    """Whether ``source`` names an image (``oci:DIR[:TAG]``, ``HOST/REPO...``)
    rather than a model: not a local path, not ``hf://``/``s3://``, not a
    modelimage.toml entry."""
    if LayoutRef.is_layout(source):
        return True
    if "/" not in source or source.startswith(("hf://", "s3://")) or Path(source).exists():
        return False
    from ..config import model_names
    from ..errors import ModelImageError
    from ..registry.reference import Reference

    try:
        if source in model_names(config):  # the names only: a broken entry of another model does not decide
            return False
        Reference.parse(source)
    except ModelImageError:
        return False
    return True


def read_index(source: str, *, insecure: frozenset[str] = frozenset()) -> IndexView:
    """Read ``source`` (``HOST/REPO[:TAG|@DIGEST]``, ``oci:DIR[:TAG]``,
    ``oci-archive:FILE[:TAG]``) through :mod:`modelimage.image`: for an
    index, each variant's entry and image manifest (an entry that is itself
    an index, one per platform, followed to this machine's platform).
    Raises :class:`~modelimage.errors.SourceError` and registry errors."""
    store = open_store(source, insecure=insecure)
    try:
        top, manifest = read_manifest(store, None, source)
        media_type = top.media_type or str(manifest.get("mediaType", ""))
        views = []
        if is_index(manifest, media_type):
            for e in _entries(manifest):
                facts = facts_from_descriptor(e)
                if facts is None:
                    continue
                try:
                    desc = Descriptor.from_json(e)
                except (KeyError, TypeError, ValueError) as err:
                    raise SourceError(f"{source}: index {top.digest[:19]} has a malformed entry ({err})") from None
                views.append(VariantView(facts, resolve(store, source, start=desc)[1], desc.platform))
        return IndexView(source, top.digest, media_type, tuple(views), dict(manifest.get("annotations") or {}))
    finally:
        store.close()
