"""Printing for models with variants: ``build`` of an index, and the
variant lines ``pull``, ``inspect`` and ``estimate`` show."""

from __future__ import annotations

from typing import Any

import click

from ..units import format_count, format_size
from ..variants.build import IndexResult
from ..variants.select import VariantFacts
from ._output import emit_json, err


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
    err(summary(result))


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


def variant_line(v: VariantFacts) -> str:
    """``q8_0     Q8_0     2.23M params   2.45 MB  ~2.97 MB GPU``."""
    params = f"{format_count(v.parameters)} params" if v.parameters else "? params"
    gpu = f"~{format_size(v.vram_bytes)} GPU" if v.vram_bytes else "GPU memory unknown"
    return f"{v.name:<10} {v.quantization:<8} {params:>13}  {format_size(v.bytes):>9}  {gpu}"
