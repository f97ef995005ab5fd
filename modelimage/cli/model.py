"""``inspect``, ``plan`` and ``example-model``: what a model is and how it
will be split into layers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import api
from ..errors import OutputError
from ..inspect import BYTES_PER_PARAM_AS, VRAM_FACTOR, ModelInfo
from ..units import format_count, format_size, plural
from . import _variants
from ._options import model_args, plan_options, rate_callback, source_options, transport_options
from ._output import describe_limits, emit_json, warn


@click.command()
@source_options
@click.option("--as", "as_precision", type=click.Choice(sorted(BYTES_PER_PARAM_AS)),
              help="Also estimate GPU memory if the weights were stored at this precision.")
@click.option("--platform", metavar="OS/ARCH", help="Which image of a multi-platform index (default: this machine's).")
@click.option("--insecure-registry", multiple=True, metavar="HOST",
              help="Talk plain HTTP to HOST (loopback hosts always are; TLS is verified everywhere else).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@transport_options
def inspect(source: str, as_precision: str | None, as_json: bool, platform: str | None,
            insecure_registry: tuple[str, ...], **kw: Any) -> None:
    """Show what a model is: format, parameters, dtypes, quantization,
    components and a GPU memory estimate. Reads headers only.

    SOURCE is a model folder (Hugging Face or diffusers layout), a single
    weight file, the name of a model in modelimage.toml, or an image:
    REF in a registry, oci:DIR[:TAG] or oci-archive:FILE[:TAG]. Of an image,
    only the manifest, the config and the headers of the weight files are
    read (ranged GETs into its layers), whatever its size; a note says how
    many bytes that took; an image in a registry lists the signatures and
    attestations attached to it too (not verified: see `verify --key`). An
    index of variants lists them, with their sizes and GPU memory.
    """
    from ..signing.describe import looks_like_registry_reference

    signed = None  # of an image in a registry: its signatures and attestations too
    if looks_like_registry_reference(source) and not Path(source).exists():
        from ..signing.describe import describe_image

        signed = describe_image(source, single=True)  # None for an index: its variants are listed below
    if signed is None and _variants.inspect(source, as_json, kw):
        return
    model = api.inspect(source, platform=platform, insecure=insecure_registry, **model_args(kw))
    if as_json:
        emit_json({**(signed.to_json() if signed else {}), **model.to_json(as_precision)})
        return
    click.echo(describe(model, as_precision))
    if signed is not None:
        from .sign import referrers_text

        click.echo(referrers_text(signed))


def describe(m: ModelInfo, as_precision: str | None) -> str:
    kind = m.kind.replace("-", " ")
    lines = [f"{m.name}  ({m.format}, {kind}{', ' + m.architecture if m.architecture else ''})"]
    dtypes = ", ".join(f"{k} {format_count(v)}" for k, v in m.dtypes.items())
    per_dtype = f"  [{dtypes}]" if dtypes else ""
    lines.append(f"  parameters    {format_count(m.parameters)} ({m.parameters:,}){per_dtype}")
    lines.append(f"  quantization  {m.quantization}")
    lines.append(f"  size          {format_size(m.bytes)} in {plural(len(m.files), 'file')}")
    if m.parameters:
        rule = f"parameters x {m.bytes_per_parameter:.3g} bytes x {VRAM_FACTOR}"
        lines.append(f"  GPU memory    ~{format_size(m.vram_bytes)}  ({rule})")
    elif m.vram_bytes:
        lines.append(f"  GPU memory    ~{format_size(m.vram_bytes)}  (weight files x {VRAM_FACTOR})")
    if as_precision:
        lines.append(f"  as {as_precision:<10} ~{format_size(m.vram_as(as_precision))}  "
                     f"(parameters x {BYTES_PER_PARAM_AS[as_precision]:g} bytes x {VRAM_FACTOR})")
    if m.components:
        lines.append("  components")
        for c in m.components:
            params = format_count(c.parameters) if c.parameters else "-"
            lines.append(f"    {c.name:<18} {params:>8}  {format_size(c.bytes):>9}"
                         + (f"  ({c.detail})" if c.detail else ""))
    lines.append("  files")
    for f in m.files:
        lines.append(f"    {format_size(f.size):>9}  {f.name}")
    lines += [f"  note: {n}" for n in m.notes]
    return "\n".join(lines)


@click.command()
@source_options
@plan_options
@click.option("--registry", metavar="HOST",
              help="Apply this registry's limits (see `modelimage limits`), as a push there would.")
@click.option("--bandwidth", callback=rate_callback, metavar="RATE",
              help="Upload bandwidth (e.g. 100Mbit/s) to warn about registry upload timeouts.")
@click.option("--base", metavar="REF", help="Base image (its layers count toward the 125-layer limit).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(source: str, as_json: bool, bandwidth: float | None, **kw: Any) -> None:
    """Show how a model will be split into layers, without writing anything.

    Weight files get layers of their own; small files share one. A weight
    set bigger than --max-layer-size is resharded at tensor boundaries the
    way upstream does (safetensors shards + index, llama.cpp GGUF splits).
    The plan is checked against the registry's limits (--registry) or, with
    none, those every engine has (4 MiB manifests, 125 layers).
    """
    planned = api.plan(source, bandwidth=bandwidth, **model_args(kw))
    if as_json:
        emit_json(planned.to_json())
    else:
        click.echo(describe_plan(planned))
        if planned.registry:
            click.echo(f"  fits {planned.registry} ({planned.limits.name}): {describe_limits(planned.limits)}")
    warn(list(planned.warnings))


def describe_plan(planned: api.Planned) -> str:
    p = planned.plan
    s = p.settings
    lines = [
        f"{planned.model.name}: {plural(len(p.layers), 'layer')}, {format_size(p.total_size)}, "
        f"each at most {format_size(s.max_layer_size)}, under /{s.root}"
    ]
    for i, layer in enumerate(p.layers, 1):
        names = [e.path.removeprefix(s.root + "/") for e in layer.entries]
        more = ", ..." if len(names) > 4 else ""
        shown = names[0] if len(names) == 1 else f"{plural(len(names), 'file')}: " + ", ".join(names[:4]) + more
        lines.append(f"  {i:>3}  {format_size(layer.size):>9}  {shown}")
    for r in p.reshards:
        lines.append(f"  reshard {', '.join(r.sources)}\n       -> {', '.join(r.outputs)}\n       ({r.reason})")
    return "\n".join(lines)


@click.command("example-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["llama", "gguf", "diffusers", "sd-single-file"]), default="llama",
              show_default=True, help="Which kind of model to write.")
@click.option("--shards", type=int, default=2, show_default=True, help="Safetensors shards (llama kind).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for the weights.")
def example_model(directory: Path, kind: str, shards: int, seed: int) -> None:
    """Write a small synthetic model (random weights, real file formats)
    for trying modelimage out: a llama-shaped Hugging Face checkpoint with
    sharded safetensors, the same model as a Q4_K_M GGUF, a diffusers
    pipeline, or a single-file Stable Diffusion checkpoint."""
    from .. import synth

    writers: dict[str, Callable[[], object]] = {
        "llama": lambda: synth.write_llama_safetensors(directory, shards=shards, seed=seed),
        "gguf": lambda: synth.write_llama_gguf(directory / "llama-demo-Q4_K_M.gguf", seed=seed),
        "diffusers": lambda: synth.write_diffusers(directory, seed=seed),
        "sd-single-file": lambda: synth.write_sd_single_file(directory / "sd-demo.safetensors", seed=seed),
    }
    created = [p for p in (directory, *directory.parents) if not p.exists()]  # ours to remove on failure
    try:
        writers[kind]()
    except BaseException as e:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":  # safetensors' own I/O error
            raise OutputError(f"{directory}: cannot write the example model "
                              f"({getattr(e, 'strerror', None) or e})") from None
        raise
    click.echo(str(directory))
