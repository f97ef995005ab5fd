"""Each variant's pull time: ``estimate REF`` of an index of variants, or
``estimate NAME`` of an entry with variants (from each variant's plan).

The same pure model as every estimate (:func:`modelimage.estimate.estimate_pull`),
run once per variant on its layers, per link.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..estimate import DEFAULT_LATENCY_S, STANDARD_LINKS, Estimate, LayerSpec, estimate_pull
from ..layout import LayoutRef
from ..pulltime import basis_for, layer_specs_from_manifest, layer_specs_from_plan
from ..registry.reference import is_loopback
from .select import VariantFacts


@dataclass(frozen=True)
class VariantEstimate:
    """One variant's pull: its facts, its layers and the estimate per link
    (link name -> :class:`~modelimage.estimate.Estimate`, seconds and bytes)."""

    facts: VariantFacts
    layers: tuple[LayerSpec, ...]
    links: dict[str, Estimate]

    @property
    def bytes(self) -> int:
        """Bytes of its layers (what a pull fetches)."""
        return sum(s.size for s in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {**self.facts.to_json(), "layers": len(self.layers), "image_bytes": self.bytes,
                "links": {name: e.to_json() for name, e in self.links.items()}}


def variant_layers(source: str, *, config: Path | None = None, max_layer_size: int | None = None,
                   insecure: frozenset[str] = frozenset()) -> list[tuple[VariantFacts, list[LayerSpec]]] | None:
    """Each variant of ``source`` with its layers: a modelimage.toml entry
    with variants (planned, nothing read but headers), or an image index
    with variants (``HOST/REPO[:TAG]``, ``oci:DIR[:TAG]``: its manifests).
    None when ``source`` has no variants. Raises what reading raises."""
    from .build import has_variants

    if has_variants(source, config):
        from ..job import Options, prepare
        from .job import prepare_variants

        job = prepare(source, Options(config=config, max_layer_size=max_layer_size))
        return [(v.facts, layer_specs_from_plan(v.plan)) for v in prepare_variants(job, job.entry.variants)]
    from .resolve import is_image_reference, read_index

    if not is_image_reference(source, config):
        return None
    view = read_index(source, insecure=insecure)
    return [(v.facts, layer_specs_from_manifest(v.manifest)) for v in view.variants] or None


def estimate_variants(variants: list[tuple[VariantFacts, list[LayerSpec]]], *, source: str = "",
                      bandwidth: float | None = None, engine: str = "containerd", concurrency: int | None = None,
                      disk_bps: float | None = None) -> list[VariantEstimate]:
    """The pull of each variant over ``bandwidth`` bytes/s (default: the
    standard links, 100 Mbit/s to 10 Gbit/s) by ``engine``; a loopback
    registry has no request latency."""
    links: Mapping[str, float] = {"given": bandwidth} if bandwidth else STANDARD_LINKS
    host = source.split("/", 1)[0] if "/" in source and not LayoutRef.is_layout(source) else ""
    latency = 0.0 if host and is_loopback(host) else DEFAULT_LATENCY_S
    basis = basis_for(engine)  # this machine's calibration of the engine, else the built-in costs
    disk, cache = basis.disk({"disk_bps": disk_bps} if disk_bps else None)
    return [VariantEstimate(facts, tuple(specs), {
        name: estimate_pull(specs, bandwidth_bps=bps, engine=basis.engine, concurrency=concurrency,
                            disk_bps=disk, write_cache_bytes=cache, latency_s=latency, spread=basis.spread)
        for name, bps in links.items()})
        for facts, specs in variants]
