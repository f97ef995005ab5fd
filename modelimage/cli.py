"""The ``modelimage`` command: parse options, call the library, print.

Results (digests, JSON) go to stdout so scripts compose; progress and
messages go to stderr. Every :class:`ModelImageError` becomes one line and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from . import __version__
from .build import build_image
from .errors import ModelImageError
from .inspect import BYTES_PER_PARAM_AS, VRAM_FACTOR, ModelInfo
from .job import Job, Options, prepare
from .layout import LayoutRef, open_sink
from .plan import Plan
from .tarstream import COMPRESSIONS
from .units import format_count, format_size, parse_size


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value, what=f"--{param.name.replace('_', '-')}")  # type: ignore[union-attr]
    except ModelImageError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


def _emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def source_options(f: Callable) -> Callable:
    """Options shared by every command that reads a model."""
    for deco in reversed([
        click.argument("source"),
        click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
                     help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml)."),
        click.option("--include", multiple=True, metavar="GLOB",
                     help="Only files matching GLOB (repeatable). A glob without '/' matches file names anywhere."),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files matching GLOB (repeatable)."),
        click.option("--name", help="Model name (default: the entry name or the folder name)."),
    ]):
        f = deco(f)
    return f


def plan_options(f: Callable) -> Callable:
    for deco in reversed([
        click.option("--max-layer-size", callback=_size, metavar="SIZE",
                     help="Largest layer blob, e.g. 500MB, 2GiB or bytes "
                          "(default: 10GB, which every common registry accepts)."),
        click.option("--target", metavar="PATH", help="Where the model lands in the image (default: /models/NAME)."),
        click.option("--compression", type=click.Choice(COMPRESSIONS),
                     help="Layer compression (default: none; weights barely compress)."),
    ]):
        f = deco(f)
    return f


def _options(**kw: Any) -> Options:
    return Options(
        config=kw.get("config"), name=kw.get("name"), include=tuple(kw.get("include") or ()),
        exclude=tuple(kw.get("exclude") or ()), target=kw.get("target"),
        max_layer_size=kw.get("max_layer_size"), platform=kw.get("platform"), compression=kw.get("compression"),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="modelimage")
def cli() -> None:
    """Pack model weights into deterministic, size-bounded OCI images.

    \b
    modelimage inspect ./llama            what is this model?
    modelimage plan ./llama --max-layer-size 2GB
    modelimage build ./llama -o oci:out/llama:latest
    modelimage build llama-8b-q4          a [models.llama-8b-q4] entry of ./modelimage.toml
    """


# ---------------------------------------------------------------- inspect


@cli.command()
@source_options
@click.option("--as", "as_precision", type=click.Choice(sorted(BYTES_PER_PARAM_AS)),
              help="Also estimate GPU memory if the weights were stored at this precision.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(source: str, as_precision: str | None, as_json: bool, **kw: Any) -> None:
    """Show what a model is: format, parameters, dtypes, quantization,
    components and a GPU memory estimate. Reads headers only.

    SOURCE is a model folder (Hugging Face or diffusers layout), a single
    weight file, or the name of a model in modelimage.toml.
    """
    job = prepare(source, _options(**kw))
    if as_json:
        _emit_json(job.model.to_json(as_precision))
    else:
        click.echo(_describe(job.model, as_precision))


def _describe(m: ModelInfo, as_precision: str | None) -> str:
    kind = m.kind.replace("-", " ")
    lines = [f"{m.name}  ({m.format}, {kind}{', ' + m.architecture if m.architecture else ''})"]
    dtypes = ", ".join(f"{k} {format_count(v)}" for k, v in m.dtypes.items())
    per_dtype = f"  [{dtypes}]" if dtypes else ""
    lines.append(f"  parameters    {format_count(m.parameters)} ({m.parameters:,}){per_dtype}")
    lines.append(f"  quantization  {m.quantization}")
    lines.append(f"  size          {format_size(m.bytes)} in {len(m.files)} file{'' if len(m.files) == 1 else 's'}")
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
            lines.append(f"    {c.name:<18} {params:>8}  {format_size(c.bytes):>9}")
    lines.append("  files")
    for f in m.files:
        lines.append(f"    {format_size(f.size):>9}  {f.name}")
    lines += [f"  note: {n}" for n in m.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------- plan


@cli.command()
@source_options
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(source: str, as_json: bool, **kw: Any) -> None:
    """Show how a model will be split into layers, without writing anything.

    Weight files get layers of their own; small files share one. A weight
    set bigger than --max-layer-size is resharded at tensor boundaries the
    way upstream does (safetensors shards + index, llama.cpp GGUF splits).
    """
    job = prepare(source, _options(**kw))
    p = job.plan()
    if as_json:
        _emit_json(p.to_json())
    else:
        click.echo(_describe_plan(job, p))


def _describe_plan(job: Job, p: Plan) -> str:
    s = p.settings
    lines = [
        f"{job.model.name}: {len(p.layers)} layers, {format_size(p.total_size)}, "
        f"each at most {format_size(s.max_layer_size)}, under /{s.root}"
    ]
    for i, layer in enumerate(p.layers, 1):
        names = [e.path.removeprefix(s.root + "/") for e in layer.entries]
        more = ", ..." if len(names) > 4 else ""
        shown = names[0] if len(names) == 1 else f"{len(names)} files: " + ", ".join(names[:4]) + more
        lines.append(f"  {i:>3}  {format_size(layer.size):>9}  {shown}")
    for r in p.reshards:
        lines.append(f"  reshard {', '.join(r.sources)}\n       -> {', '.join(r.outputs)}\n       ({r.reason})")
    return "\n".join(lines)


# ---------------------------------------------------------------- build


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A byte progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@cli.command()
@source_options
@plan_options
@click.option("-o", "--output", metavar="oci:DIR[:TAG]",
              help="Where to write: oci:DIR[:TAG] (an OCI layout folder) or oci-archive:FILE[:TAG] "
                   "(default: oci:build/NAME:latest).")
@click.option("--platform", metavar="OS/ARCH", help="Platform recorded in the image config (default: linux/amd64).")
@click.option("--json", "as_json", is_flag=True, help="Print the result (digest, layers, files) as JSON.")
def build(source: str, output: str | None, as_json: bool, **kw: Any) -> None:
    """Build an OCI image of a model, without a Docker daemon.

    Layers are deterministic tars (sorted entries, uid/gid 0, fixed modes,
    mtime from SOURCE_DATE_EPOCH or 0): the same files always give the same
    manifest digest, which is printed on stdout.
    """
    job = prepare(source, _options(**kw))
    p = job.plan()
    ref = LayoutRef.parse(output or f"oci:build/{job.model.name}:{job.entry.tag or 'latest'}")
    sink = open_sink(ref)
    with _progress(p.total_size, f"building {job.model.name}") as progress:
        result = build_image(job.model, p, sink, settings=job.image_settings, reference=str(ref), progress=progress)
    if as_json:
        _emit_json(result.to_json())
        return
    click.echo(result.manifest.digest)
    _err(f"wrote {ref} ({len(result.layers)} layers, {format_size(result.size)})")


# ---------------------------------------------------------------- example-model


@cli.command("example-model")
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
    from . import synth

    if kind == "llama":
        synth.write_llama_safetensors(directory, shards=shards, seed=seed)
    elif kind == "gguf":
        synth.write_llama_gguf(directory / "llama-demo-Q4_K_M.gguf", seed=seed)
    elif kind == "diffusers":
        synth.write_diffusers(directory, seed=seed)
    else:
        synth.write_sd_single_file(directory / "sd-demo.safetensors", seed=seed)
    click.echo(str(directory))


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="modelimage", standalone_mode=False)
    except ModelImageError as e:
        _err(f"error: {e}")
        return e.exit_code
    except click.exceptions.Abort:
        _err("aborted")
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
