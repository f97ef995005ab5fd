"""``estimate``: how long pulling a model image takes on this node, the
other ways to ship the same weights, and ``--calibrate`` to measure the
engine here first."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import api
from ..api import ProbeNeedsTarget
from ..units import format_rate, format_seconds, format_size, parse_size, plural
from . import _variants
from ._options import rate_callback, size_callback, transport_options
from ._output import emit_json, err

ENGINE_CHOICES = ["podman", "containerd", "docker", "modelimage"]


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [parse_size(v.strip(), what="--calibrate-sizes") for v in value.split(",")]
    except Exception as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from None


def _counts(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        counts = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: layer counts, e.g. 1,4") from None
    if min(counts) < 1:
        raise click.BadParameter("layer counts must be at least 1")
    return counts


@click.command()
@click.argument("source", required=False)
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="containerd", show_default=True,
              help="Who pulls: containerd (Kubernetes nodes), podman, docker, modelimage pull.")
@click.option("--bandwidth", callback=rate_callback, metavar="RATE",
              help="The puller's link, e.g. 1Gbit/s (default: 100 Mbit/s, 1 Gbit/s and 10 Gbit/s).")
@click.option("--probe", is_flag=True,
              help="Measure what can be measured without the engine: the link from the registry (REF), the "
                   "page cache's room for dirty data, and, when the pull writes more than that, the pace the "
                   "disk takes writes past it (seconds of writes under --disk-dir, removed after).")
@click.option("--disk-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --probe measures the disk (default: the engine's storage if it exists, else /tmp).")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Downloads at a time (default: the engine's).")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml).")
@click.option("--max-layer-size", callback=size_callback, metavar="SIZE",
              help="Plan with this layer size (SOURCE/NAME).")
@click.option("--insecure-registry", multiple=True, metavar="HOST", help="Plain HTTP to HOST.")
@click.option("--calibrate", is_flag=True,
              help="Instead of estimating: time real pulls of small generated images with --engine on this "
                   "node, fit its costs and store them; later estimates for that engine use them.")
@click.option("--registry", metavar="HOST[:PORT]",
              help="With --calibrate: push the images there (default: a docker-registry started on loopback).")
@click.option("--calibrate-sizes", callback=_sizes, metavar="SIZE,SIZE",
              help="With --calibrate: image sizes (default: 128MiB,1GiB).")
@click.option("--calibrate-layers", callback=_counts, metavar="N,N",
              help="With --calibrate: layer counts (default: 1,4).")
@click.option("--calibrate-disk/--no-calibrate-disk", default=True, show_default=True,
              help="With --calibrate, for podman, containerd and docker: also pull one image that writes 1 GiB "
                   "more than the page cache takes, to time the disk past it as the engine meets it (a few "
                   "GiB of pulls; estimates of big pulls use that pace).")
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="With --calibrate: pulls of each image (the fit takes the median).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate (or the calibration) as JSON.")
@transport_options
def estimate(source: str | None, engine: str, bandwidth: float | None, probe: bool, disk_dir: Path | None,
             concurrency: int | None, config: Path | None, max_layer_size: int | None,
             insecure_registry: tuple[str, ...], calibrate: bool, registry: str | None,
             calibrate_sizes: list[int] | None, calibrate_layers: list[int] | None, calibrate_disk: bool, repeat: int,
             as_json: bool) -> None:
    """Estimate how long pulling a model image takes, and compare it with
    the other ways to ship the same weights.

    SOURCE is a model folder or file, a NAME in modelimage.toml (estimated
    from its plan), an image REF in a registry, or an oci:DIR[:TAG] layout.

    The estimate uses this node's calibration of the engine when one is
    stored (`estimate --calibrate --engine E` makes it: a few minutes of
    real pulls), else built-in constants measured elsewhere, shown with the
    range they may be off by. A model or image with variants gets each
    variant's pull time.
    """
    if calibrate:
        if source:
            raise click.UsageError("--calibrate measures the engine, not a SOURCE: run it without one")
        _calibrate(engine, registry, calibrate_sizes, calibrate_layers, repeat, as_json, calibrate_disk)
        return
    if not source:
        raise click.UsageError("give a SOURCE (model folder, NAME, image REF or oci:DIR), or --calibrate")
    if not probe and _variants.estimate(source, config=config, max_layer_size=max_layer_size, bandwidth=bandwidth,
                                        engine=engine, concurrency=concurrency, insecure=insecure_registry,
                                        as_json=as_json):
        return
    try:
        report = api.estimate(source, engine=engine, bandwidth=bandwidth, probe=probe, disk_dir=disk_dir,
                              concurrency=concurrency, config=config, max_layer_size=max_layer_size,
                              insecure=insecure_registry)
    except ProbeNeedsTarget as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        emit_json(report.to_json())
        return
    layers = report.layers
    click.echo(f"{source}: {plural(len(layers), 'layer')}, {format_size(report.bytes)}, pulled by {engine}")
    click.echo(f"  costs: {report.basis.label}")
    if report.measured:
        click.echo("  measured: " + ", ".join(
            f"{label} {fmt(report.measured[key])}" for key, label, fmt in (
                ("link_bps", "link", format_rate), ("disk_bps", "disk past the page cache", format_rate),
                ("write_cache_bytes", "page cache takes", format_size)) if key in report.measured))
    for name, e in report.links.items():
        shown = {k: v for k, v in e.phases.items() if v >= 0.05 * e.total_seconds and k != "decompress"}
        click.echo(f"  {name:<10} {format_seconds(e.total_seconds):>8}  ({format_seconds(e.low_seconds)} to "
                   f"{format_seconds(e.high_seconds)}; " + ", ".join(f"{k} {format_seconds(v)}"
                                                                     for k, v in shown.items())
                   + f"; {e.bound}-bound)")
    first = next(iter(report.links.values()))
    click.echo(f"  on disk: {format_size(first.disk_bytes)} (at most {format_size(first.peak_disk_bytes)} "
               "during the pull)")
    for note in first.notes:
        click.echo(f"  note: {note}")
    click.echo(f"  other ways to ship it, at {format_rate(first.bandwidth_bps)}:")
    for o in report.options:
        click.echo(f"    {format_seconds(o.ready_seconds):>8} to ready  {o.name}")


def _calibrate(engine: str, registry: str | None, sizes: list[int] | None, layers: list[int] | None,
               repeat: int, as_json: bool, disk: bool = True) -> None:
    from .. import calibrate
    from ..fit import past_cache

    progress = err if sys.stderr.isatty() else None
    cal = calibrate.calibrate(engine, registry=registry, sizes=sizes or calibrate.DEFAULT_SIZES,
                              layers=layers or calibrate.DEFAULT_LAYERS, repeat=repeat, progress=progress,
                              disk=disk, warn=lambda msg: err(f"warning: {msg}"))
    path = calibrate.path_for(engine)
    if as_json:
        lo, hi = cal.spread  # what the text says as "the range x.. to x..": factors of an estimate's total
        emit_json({**cal.to_json(), "range": [round(lo, 4), round(hi, 4)], "stored": str(path)})
        return
    f, c = cal.facts, cal.costs
    mem = f"{format_size(f['memory_bytes'])} memory, " if f.get("memory_bytes") else ""
    click.echo(f"{engine} ({f.get('engine_version')}) on {f.get('node')}: {f.get('cpus')} cores, {mem}"
               f"{format_size(f.get('storage_disk_bytes', 0))} disk at {f.get('storage')}; "
               f"load {f.get('load_average')} -> {f.get('load_average_after')}")
    for value, what in ((f"{c.pull_s:.3f} s", "per pull: start, resolve, manifest, config, commit"),
                        (f"{c.layer_s:.3f} s", "per layer: requests, bookkeeping, syncs, snapshot"),
                        (f"{c.byte_s * 1e9:.2f} s/GB", "every byte: untar, diffID hash, writes"),
                        (f"{c.stream_byte_s * 1e9:.2f} s/GB", "the busiest download stream: fetch, verify, store"),
                        (f"{c.gzip_byte_s * 1e9:.2f} s/GB", "gzip layers: decompression, per tar byte")):
        click.echo(f"  {value:>12}  {what}")
    if cal.writeback_bps:
        click.echo(f"  {format_rate(cal.writeback_bps):>12}  writes past the page cache "
                   f"({format_size(cal.write_cache_bytes)} here): the disk, as the pulls met it")
    elif cal.write_cache_bytes and any(past_cache(cal.engine_model(), s, cal.write_cache_bytes) for s in cal.samples):
        click.echo(f"  {'no limit':>12}  writes past the page cache ({format_size(cal.write_cache_bytes)}): "
                   "the pull past it was no slower than the costs above")
    click.echo("  how well the fit reproduces the calibration pulls:")
    for s, e in zip(cal.samples, cal.errors()):
        kind = "gzip" if s.layers and s.layers[0].compression == "gzip" else "plain"
        size = format_size(sum(x.tar_bytes for x in s.layers))
        click.echo(f"    {size:>8} {plural(len(s.layers), 'layer'):<9} {kind:<5} "
                   f"median {s.median:6.2f} s ({', '.join(f'{t:.2f}' for t in s.seconds)}): {e * 100:+.0f} %")
    lo, hi = cal.spread
    click.echo(f"  estimates from it come with the range x{lo:.2f} to x{hi:.2f}: as far as its single pulls "
               "strayed from the fit (at least ±5 %)")
    click.echo(f"stored: {path}")
