"""``build NAME`` for an entry with variants: every variant built, then one
OCI image index with one manifest per variant, and a tag per variant.

Into an OCI layout (``oci:DIR[:TAG]``) or a registry (``--push REF``). All
variants' layers go first, through one sink (a layer that several variants
share is streamed once: later variants find its blob there), then each
variant's manifest and tag, then the index and its tag, last: nothing is
tagged before every blob is stored, and a failure leaves no tag behind (a
new layout is removed whole).

Tags: with TAG ``latest`` (the default) each variant is tagged with its
name (``:q4_k_m``), as Ollama and Docker Model Runner users expect; with
another TAG, ``TAG-NAME`` (``:v1-q4_k_m``), so versions do not overwrite
each other's variants. The index's entries share one platform; engines
that pull the index by platform take the first, the default variant.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..artifact import build_artifact
from ..build import BuildResult, build_image, rfc3339
from ..cache import DigestCache
from ..config import load_config, resolve
from ..errors import ConfigError, ModelImageError, VariantError
from ..job import Options, prepare
from ..layout import LayoutRef, open_sink
from ..oci import (
    ANNOTATION_CREATED,
    ANNOTATION_PREFIX,
    ANNOTATION_TITLE,
    MEDIA_TYPE_INDEX,
    Descriptor,
    Index,
    canonical_json,
)
from ..registry.client import RegistryClient
from ..registry.push import PushSettings, RegistrySink
from ..registry.reference import Reference, is_tag
from ..sink import Sink
from ..tarstream import LayerResult, LayerStream
from .job import VariantJob, prepare_variants
from .select import VariantFacts
from .spec import VariantSpec, parse_option


def variant_tag(tag: str, name: str) -> str:
    """The tag of variant ``name`` when the index is tagged ``tag``:
    ``name`` for ``latest``, else ``tag-name``. Raises :class:`ConfigError`
    when that is not a valid tag (over 128 characters)."""
    out = name if tag == "latest" else f"{tag}-{name}"
    if not is_tag(out):
        raise ConfigError(f"tag {out!r} for variant {name} is not a valid tag (at most 128 characters); "
                          "use a shorter tag or variant name")
    return out


def variant_reference(image: str, name: str) -> str:
    """The reference of variant ``name`` of the index ``image``
    (``HOST/REPO:TAG``): the same repository, the variant's tag
    (:func:`variant_tag`). Raises :class:`ConfigError` for a reference
    pinned by digest (it names the index, whose default engines take)."""
    ref = Reference.parse(image)
    if ref.digest:
        raise ConfigError(f"{image}: name the index by its tag to pick a variant (a digest pins the index itself)")
    return str(replace(ref, tag=variant_tag(ref.tag or "latest", name)))


@dataclass(frozen=True)
class BuiltVariant:
    """One variant as written: its tag, its facts and its build result
    (manifest, config and layers with what was done to each)."""

    name: str
    tag: str
    facts: VariantFacts
    result: BuildResult

    def to_json(self) -> dict[str, Any]:
        return {**self.facts.to_json(), "tag": self.tag, "image_bytes": self.result.size,
                "layers": [layer.to_json() for layer in self.result.layers]}


@dataclass(frozen=True)
class IndexResult:
    """The index written: its descriptor, where it is (``oci:DIR:TAG`` or
    ``HOST/REPO:TAG``), its variants in index order (the first is the
    default), and ``pinned`` (``HOST/REPO@DIGEST`` after a push)."""

    index: Descriptor
    reference: str
    variants: tuple[BuiltVariant, ...]
    pinned: str | None = None

    @property
    def blobs(self) -> dict[str, int]:
        """Every distinct layer and config blob of the variants, with its size."""
        out: dict[str, int] = {}
        for v in self.variants:
            out[v.result.config.digest] = v.result.config.size
            for layer in v.result.layers:
                out[layer.descriptor.digest] = layer.descriptor.size
        return out

    @property
    def total_bytes(self) -> int:
        """What the variants would take as separate images (bytes)."""
        return sum(v.result.size for v in self.variants)

    @property
    def stored_bytes(self) -> int:
        """What they take in one index: each blob once, every manifest, the index (bytes)."""
        return sum(self.blobs.values()) + sum(v.result.manifest.size for v in self.variants) + self.index.size

    @property
    def saved_bytes(self) -> int:
        """Bytes not stored (or pushed) twice thanks to shared layers (>= 0)."""
        return max(0, self.total_bytes - self.stored_bytes + self.index.size)

    @property
    def shared_layers(self) -> int:
        """Layers that more than one variant holds."""
        seen: dict[str, int] = {}
        for v in self.variants:
            for layer in {x.descriptor.digest for x in v.result.layers}:
                seen[layer] = seen.get(layer, 0) + 1
        return sum(1 for n in seen.values() if n > 1)

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.pinned or self.reference, "tag": self.reference, "digest": self.index.digest,
                "mediaType": self.index.media_type, "size": self.index.size,
                "total_bytes": self.total_bytes, "stored_bytes": self.stored_bytes, "saved_bytes": self.saved_bytes,
                "shared_layers": self.shared_layers, "variants": [v.to_json() for v in self.variants]}


class _Held:
    """A sink whose manifest is held back (and which is not closed): every
    variant's blobs go in first, tags come last."""

    def __init__(self, sink: Sink):
        self.sink, self.parallel = sink, sink.parallel
        self.manifest: tuple[Descriptor, bytes] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        self.manifest = (manifest, data)

    def close(self) -> None:
        pass


class _Memo:
    """The digest cache, plus the layers this build stored: a layer that
    several variants share is streamed once even with the cache turned off
    (``MODELIMAGE_NO_CACHE=1``)."""

    def __init__(self, cache: DigestCache):
        self.cache, self.stored = cache, {}

    def key(self, stream: LayerStream, compression: str) -> str | None:
        return self.cache.key(stream, compression)

    def get(self, key: str | None, *, split_checked: bool = False) -> LayerResult | None:
        if key is not None and key in self.stored:
            result, checked = self.stored[key]
            return result if checked or not split_checked else None
        return self.cache.get(key, split_checked=split_checked)

    def put(self, key: str | None, result: LayerResult, *, split_checked: bool = False) -> None:
        if key is not None:
            self.stored[key] = (result, split_checked)
        self.cache.put(key, result, split_checked=split_checked)


@dataclass
class Target:
    """Where the index goes: ``sink(tag)`` opens a sink that tags ``tag``;
    ``where(tag)`` names it; ``tag`` is the index's tag."""

    sink: Callable[[str], Sink]
    where: Callable[[str], str]
    tag: str
    pinned: Callable[[str], str | None] = lambda digest: None
    concurrency: int | None = None


def layout_target(output: str) -> Target:
    """An OCI layout directory (``oci:DIR[:TAG]``); raises
    :class:`ConfigError` for an oci-archive, which holds one image."""
    ref = LayoutRef.parse(output)
    if ref.transport != "oci":
        raise ConfigError(f"{output}: variants go to an OCI layout folder (oci:DIR[:TAG]) or a registry (--push); "
                          "an oci-archive holds one image")
    return Target(lambda tag: open_sink(replace(ref, tag=tag)), lambda tag: str(replace(ref, tag=tag)), ref.tag)


def registry_target(ref: Reference, *, insecure: frozenset[str] = frozenset(), concurrency: int = 3,
                    chunked: bool = True) -> Target:
    """A registry repository; ``ref``'s tag tags the index."""
    if ref.digest or not ref.tag:
        raise ConfigError(f"{ref}: push variants to a tag (HOST/REPO:TAG), not a digest")
    client = RegistryClient(ref, insecure=insecure)
    settings = PushSettings(concurrency=concurrency, upload="auto" if chunked else "monolithic")

    def sink(tag: str) -> Sink:
        return RegistrySink(replace(ref, tag=tag), client, settings=settings)  # type: ignore[return-value]

    return Target(sink, lambda tag: str(replace(ref, tag=tag)), ref.tag, lambda d: f"{ref.name}@{d}", concurrency)


def build_index(variants: Sequence[VariantJob], target: Target, *, format: str = "image",
                progress: Callable[[int], None] | None = None) -> IndexResult:
    """Build every variant into ``target``, then tag each and write the
    index (see the module docstring). ``progress`` receives byte counts of
    every variant's layers (a shared layer counts once per variant, when it
    is found stored). Raises what building raises; nothing is tagged then."""
    if not variants:
        raise ConfigError("no variants to build")
    tags = [variant_tag(target.tag, v.name) for v in variants]
    main = target.sink(target.tag)
    held = _Held(main)
    memo = _Memo(DigestCache())
    built: list[BuiltVariant] = []
    manifests: list[bytes] = []
    try:
        for v, tag in zip(variants, tags, strict=True):
            job = v.job
            common: dict[str, Any] = dict(settings=job.image_settings, reference=target.where(tag), progress=progress,
                                          cache=memo, concurrency=target.concurrency)
            if format == "image":
                result = build_image(job.model, v.plan, held, base=job.base, **common)  # type: ignore[arg-type]
            else:
                result = build_artifact(job.model, v.plan, held, format=format, **common)  # type: ignore[arg-type]
            assert held.manifest is not None and held.manifest[0].digest == result.manifest.digest
            manifests.append(held.manifest[1])
            built.append(BuiltVariant(v.name, tag, replace(v.facts, digest=result.manifest.digest), result))
        index_desc, index_bytes = _index(built, variants[0])
        for b, data in zip(built, manifests, strict=True):
            target.sink(b.tag).put_manifest(b.result.manifest, data)
        main.put_manifest(index_desc, index_bytes)
    except BaseException:
        main.abort()
        raise
    main.close()
    return IndexResult(index_desc, target.where(target.tag), tuple(built), target.pinned(index_desc.digest))


def _index(built: Sequence[BuiltVariant], first: VariantJob) -> tuple[Descriptor, bytes]:
    """The image index: one entry per variant, in order, each with its
    platform and the annotations selection reads (:mod:`.select`)."""
    entries = tuple(
        Descriptor(b.result.manifest.media_type, b.result.manifest.digest, b.result.manifest.size,
                   annotations=b.facts.annotations(), platform=b.result.manifest.platform,
                   artifact_type=b.result.manifest.artifact_type)
        for b in built)
    model = first.job.model
    annotations = {ANNOTATION_TITLE: model.name, ANNOTATION_PREFIX + "name": model.name,
                   ANNOTATION_CREATED: rfc3339(first.job.image_settings.epoch)}
    data = canonical_json(Index(entries, annotations).to_json())
    return Descriptor.of_bytes(MEDIA_TYPE_INDEX, data), data


def has_variants(source: str, config: str | os.PathLike | None = None) -> bool:
    """Whether ``source`` names a modelimage.toml entry with variant tables."""
    try:
        return bool(resolve(source, load_config(Path(config) if config is not None else None)).variants)
    except ModelImageError:
        return False


def build_variants(source: str, options: Options, variants: Sequence[str | VariantSpec] = (), *,
                   output: str | None = None, push: str | bool | None = None, format: str = "image",
                   concurrency: int = 3, bandwidth: float | None = None, progress: Progress = None,
                   on_warning: Callable[[str], None] | None = None) -> IndexResult:
    """``modelimage build SOURCE|NAME`` for a model with variants:
    ``variants`` (``--variant NAME=GLOB[,GLOB]`` texts or specs), else the
    entry's ``[models.NAME.variants.*]`` tables.

    ``output``: ``oci:DIR[:TAG]`` (default ``oci:build/NAME:TAG``, TAG the
    entry's ``tag`` or ``latest``); ``push``: a REF to push to instead
    (``True``: the entry's ``image``). ``progress``: ``(total bytes,
    label) -> context manager`` yielding a byte-count callback (or None).
    Every variant's plan is checked against the limits (``on_warning`` gets
    the warnings, prefixed with the variant) before anything is written.
    Returns an :class:`IndexResult`; raises
    :class:`~modelimage.errors.VariantError`,
    :class:`~modelimage.errors.ConfigError` and whatever building raises."""
    ref = None
    if push not in (None, False):
        entry = resolve(source, load_config(options.config))
        text = push if isinstance(push, str) and push else entry.image
        if not text:
            raise ConfigError("push needs a REF (or an `image` for this model in modelimage.toml)")
        ref = Reference.parse(text)
        options = replace(options, registry=ref.host)
    target = layout_target(output) if ref is None and output else None  # a bad output fails before any work
    job = prepare(source, options)
    specs = tuple(v for v in variants if isinstance(v, VariantSpec)) + parse_option(
        [v for v in variants if isinstance(v, str)])
    specs = specs or job.entry.variants
    if not specs:
        raise VariantError(f"{source}: no variants: add [models.NAME.variants.VARIANT] tables to modelimage.toml "
                           "or pass --variant NAME=GLOB")
    prepared = prepare_variants(job, specs)
    for v in prepared:
        for w in (*v.notes, *(f"{v.name}: {w}" for w in v.job.preflight(v.plan, bandwidth, format))):
            (on_warning or (lambda _: None))(w)
    if ref is not None:
        target = registry_target(ref, insecure=options.insecure, concurrency=concurrency,
                                 chunked=job.limits.chunked_uploads)
    elif target is None:
        target = layout_target(f"oci:build/{job.model.name}:{job.entry.tag or 'latest'}")
    total = sum(v.plan.total_size for v in prepared)
    with (progress or _no_progress)(total, f"{'pushing' if ref else 'building'} {job.model.name}") as advance:
        return build_index(prepared, target, format=format, progress=advance)


Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None] | None]] | None


@contextmanager
def _no_progress(total: int, label: str) -> Iterator[None]:
    yield None
