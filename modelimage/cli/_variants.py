"""Printing for models with variants: ``build`` of an index, and the
variant lines ``pull``, ``inspect`` and ``estimate`` show."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..units import format_count, format_seconds, format_size
from ._options import job_options
from ._output import emit_json, info

if TYPE_CHECKING:  # the variants modules load when a command meets variants (build: api.build decides)
    from ..variants.build import IndexResult
    from ..variants.select import VariantFacts


def variant_option(f: Any) -> Any:
    return click.option(
        "--variant", "variants", multiple=True, metavar="NAME=GLOB[,GLOB]",
        help="Build one variant per NAME, holding the files GLOB matches plus every file no variant's globs "
             "match (shared); repeatable, the first is the default. Writes one image index with a tag per "
             "variant (:NAME, or :TAG-NAME). Entries with [models.NAME.variants.*] tables need no --variant.")(f)


def report(result: IndexResult, as_json: bool) -> None:
    """``build`` of a model with variants: the index digest (or pinned
    reference) on stdout, the summary on stderr; or the JSON."""
    if as_json:
        emit_json(result.to_json())
        return
    click.echo(result.pinned or result.index.digest)
    info(summary(result))


def summary(result: IndexResult) -> str:
    """What was written: the index, each variant's line, the bytes shared layers saved."""
    verb = "pushed" if result.pinned else "wrote"
    lines = [f"{verb} {result.reference}: an index of {len(result.variants)} variants "
             f"({format_size(result.stored_bytes)} stored)"]
    for i, v in enumerate(result.variants):
        actions = ", ".join(sorted({layer.action for layer in v.result.layers}))
        lines.append(f"  {variant_line(v.facts)}  :{v.tag}  {v.result.manifest.digest[:19]}  "
                     f"({len(v.result.layers)} layers: {actions}){'  default' if i == 0 else ''}")
    if result.shared_layers:
        lines.append(f"  {result.shared_layers} shared layer{'s' if result.shared_layers > 1 else ''} stored once: "
                     f"{format_size(result.saved_bytes)} saved of {format_size(result.total_bytes)} as separate images")
    else:
        lines.append("  no layer shared between variants")
    return "\n".join(lines)


def variant_line(v: VariantFacts, image_bytes: int | None = None) -> str:
    """``q8_0     Q8_0     2.23M params   2.45 MB  ~2.97 MB GPU`` (with the
    image's bytes before the GPU memory when given)."""
    params = f"{format_count(v.parameters)} params" if v.parameters else "? params"
    gpu = f"~{format_size(v.vram_bytes)} GPU" if v.vram_bytes else "GPU memory unknown"
    image = f"{format_size(image_bytes):>9}  " if image_bytes is not None else ""
    return f"{v.name:<10} {v.quantization:<8} {params:>13}  {format_size(v.bytes):>9}  {image}{gpu}"


def inspect(source: str, as_json: bool, kw: dict[str, Any]) -> bool:
    """``inspect`` of an image REF (its variants, sizes, GPU memory, shared
    layers) or of an entry with variants (each variant's facts); False when
    ``source`` is neither (an ordinary model)."""
    from ..variants.build import has_variants
    from ..variants.job import inspect_variants
    from ..variants.resolve import is_image_reference, read_index

    config = kw.get("config")
    if has_variants(source, config):
        variants = inspect_variants(source, job_options(**kw))
        if as_json:
            emit_json({"model": source, "variants": [v.facts.to_json() for v in variants]})
            return True
        click.echo(f"{source}: {len(variants)} variants of one model, each built as its own image")
        for i, v in enumerate(variants):
            click.echo(f"  {variant_line(v.facts)}  {len(v.plan.layers)} layers{'  default' if i == 0 else ''}")
        return True
    if not is_image_reference(source, config):
        return False
    view = read_index(source)
    if not view.variants:  # one image: the whole report, its headers read by range (api.inspect)
        return False
    if as_json:
        emit_json(view.to_json())
        return True
    click.echo(f"{source}: an index of {len(view.variants)} variants ({view.digest[:19]}), "
               f"{format_size(view.stored_bytes)} stored")
    click.echo(f"  {'variant':<10} {'quant':<8} {'parameters':>13}  {'files':>9}  {'image':>9}  GPU memory")
    for i, v in enumerate(view.variants):
        click.echo(f"  {variant_line(v.facts, v.image_bytes)}{'  default' if i == 0 else ''}")
    shared = view.shared
    if shared:
        click.echo(f"  {len(shared)} layer{'s' if len(shared) > 1 else ''} ({format_size(sum(shared.values()))}) "
                   "shared between variants, stored once")
    click.echo("  pull one with --variant NAME, or --gpu-memory SIZE for the highest precision that fits")
    return True


def estimate(source: str, *, config: Path | None, max_layer_size: int | None, bandwidth: float | None,
             engine: str, concurrency: int | None, insecure: tuple[str, ...], as_json: bool) -> bool:
    """``estimate`` of something with variants: each variant's pull time
    per link; False when ``source`` has no variants."""
    from ..variants.estimate import estimate_variants, variant_layers

    found = variant_layers(source, config=config, max_layer_size=max_layer_size, insecure=frozenset(insecure))
    if found is None:
        return False
    rows = estimate_variants(found, source=source, bandwidth=bandwidth, engine=engine, concurrency=concurrency)
    if as_json:
        emit_json({"source": source, "engine": engine, "variants": [r.to_json() for r in rows]})
        return True
    links = list(rows[0].links)
    click.echo(f"{source}: {len(rows)} variants, pulled by {engine}")
    click.echo(f"  {'variant':<10} {'image':>9}  " + "  ".join(f"{name:>11}" for name in links) + "  on disk")
    for r in rows:
        click.echo(f"  {r.facts.name:<10} {format_size(r.bytes):>9}  "
                   + "  ".join(f"{format_seconds(e.total_seconds):>11}" for e in r.links.values())
                   + f"  {format_size(next(iter(r.links.values())).disk_bytes)}")
    return True
