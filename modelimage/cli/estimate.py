"""``estimate``: how long pulling a model image takes, and the other ways
to ship the same weights."""

from __future__ import annotations

from pathlib import Path

import click

from .. import api
from ..api import ProbeNeedsTarget
from ..units import format_rate, format_seconds, format_size, plural
from . import _variants
from ._options import rate_callback, size_callback, transport_options
from ._output import emit_json


@click.command()
@click.argument("source")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml).")
@click.option("--max-layer-size", callback=size_callback, metavar="SIZE",
              help="Plan with this layer size (SOURCE/NAME).")
@click.option("--bandwidth", callback=rate_callback, metavar="RATE",
              help="The puller's link, e.g. 1Gbit/s (default: 100 Mbit/s, 1 Gbit/s and 10 Gbit/s).")
@click.option("--probe", is_flag=True,
              help="Measure the download speed from the registry (REF) and this machine's disk, and use them.")
@click.option("--disk-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --probe measures the disk (default: the engine's storage if it exists, else /tmp).")
@click.option("--engine", type=click.Choice(["podman", "containerd", "docker", "modelimage"]), default="containerd",
              show_default=True, help="Who pulls: containerd (Kubernetes nodes), podman, docker, modelimage pull.")
@click.option("--concurrency", type=click.IntRange(1, 64), help="Downloads at a time (default: the engine's).")
@click.option("--insecure-registry", multiple=True, metavar="HOST", help="Plain HTTP to HOST.")
@click.option("--json", "as_json", is_flag=True, help="Print total_seconds, phases and the alternatives as JSON.")
@transport_options
def estimate(source: str, config: Path | None, max_layer_size: int | None, bandwidth: float | None, probe: bool,
             disk_dir: Path | None, engine: str, concurrency: int | None, insecure_registry: tuple[str, ...],
             as_json: bool) -> None:
    """Estimate how long pulling a model image takes, and compare it with
    the other ways to ship the same weights.

    SOURCE is a model folder or file, a NAME in modelimage.toml (estimated
    from its plan), an image REF in a registry, or an oci:DIR[:TAG] layout.
    The model counts what engines really do: parallel downloads, per-layer
    decompression, extraction (measured per engine), disk writes, and the
    disk space a pull takes. A model or image with variants gets each
    variant's pull time.
    """
    if not probe and _variants.estimate(source, config=config, max_layer_size=max_layer_size, bandwidth=bandwidth,
                                        engine=engine, concurrency=concurrency, insecure=insecure_registry,
                                        as_json=as_json):
        return
    try:
        report = api.estimate(source, bandwidth=bandwidth, probe=probe, disk_dir=disk_dir, engine=engine,
                              concurrency=concurrency, max_layer_size=max_layer_size, config=config,
                              insecure=insecure_registry)
    except ProbeNeedsTarget as e:
        raise click.UsageError(str(e)) from None
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"{source}: {plural(len(report.layers), 'layer')}, {format_size(report.bytes)}, pulled by {engine}"
               + (f"; disk {format_rate(report.disk_bps)}" if report.disk_bps else ""))
    for name, r in report.links.items():
        phases = ", ".join(f"{k} {format_seconds(v)}" for k, v in r.phases.items() if v >= 0.0005)
        click.echo(f"  {name:<12} {format_seconds(r.total_seconds):>9}  ({phases}); "
                   f"{format_size(r.disk_bytes)} on disk")
    for note in report.first.notes:
        click.echo(f"  note: {note}")
    click.echo(f"  other ways to ship it, at {format_rate(report.first.bandwidth_bps)}:")
    for o in report.storage_options:
        click.echo(f"    {format_seconds(o.ready_seconds):>9} to ready  {o.name}")
