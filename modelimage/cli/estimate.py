"""``estimate``: how long pulling a model image takes, and the other ways
to ship the same weights."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from ..config import REMOTE_SCHEMES
from ..errors import ModelImageError
from ..image import choose_platform, is_index
from ..job import Options, prepare
from ..layout import LayoutRef, read_layout
from ..registry.client import RegistryClient
from ..registry.reference import Reference
from ..units import format_seconds, format_size
from ._options import rate_callback, size_callback
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
def estimate(source: str, config: Path | None, max_layer_size: int | None, bandwidth: float | None, probe: bool,
             disk_dir: Path | None, engine: str, concurrency: int | None, insecure_registry: tuple[str, ...],
             as_json: bool) -> None:
    """Estimate how long pulling a model image takes, and compare it with
    the other ways to ship the same weights.

    SOURCE is a model folder or file, a NAME in modelimage.toml (estimated
    from its plan), an image REF in a registry, or an oci:DIR[:TAG] layout.
    The model counts what engines really do: parallel downloads, per-layer
    decompression, extraction (measured per engine), disk writes, and the
    disk space a pull takes.
    """
    from .. import estimate as est
    from .. import probes
    from ..units import format_rate

    specs, probe_url, client = _estimate_inputs(source, config, max_layer_size, insecure_registry)
    try:
        disk_bps, write_cache, cpus, sync_latency = None, 0, None, 0.0
        if probe:
            write_cache, cpus = probes.probe_write_cache(), probes.probe_cpus()
            where = disk_dir or next((d for d in (Path("/var/lib/containers"), Path("/var/lib/containerd"))
                                      if d.is_dir()), Path(tempfile.gettempdir()))
            disk_bps, sync_latency = probes.probe_disk(where), probes.probe_sync_latency(where)
            if probe_url:
                bandwidth = probes.probe_download(probe_url, transport=client.transport if client else None)
            elif bandwidth is None:
                raise click.UsageError("--probe measures a registry: give a REF, or pass --bandwidth")
    finally:
        if client is not None:
            client.close()
    links = {"measured" if probe and probe_url else "given": bandwidth} if bandwidth else dict(est.STANDARD_LINKS)
    latency = 0.0 if probe_url and _loopback(probe_url) else est.DEFAULT_LATENCY_S
    results = {name: est.estimate_pull(specs, bandwidth_bps=bps, engine=engine, disk_bps=disk_bps,
                                       write_cache_bytes=write_cache, cpus=cpus, concurrency=concurrency,
                                       latency_s=latency, sync_latency_s=sync_latency)
               for name, bps in links.items()}
    first_link, first = next(iter(results.items()))
    files = [s.tar_bytes for s in specs]
    options = est.storage_options(files, bandwidth_bps=first.bandwidth_bps, disk_bps=disk_bps, engine=engine,
                                  layers=specs, latency_s=latency)
    if as_json:
        emit_json({**first.to_json(), "link": first_link,
                   "links": {name: r.to_json() for name, r in results.items()},
                   "storage_options": [o.to_json() for o in options],
                   "layers": len(specs), "bytes": sum(s.size for s in specs)})
        return
    click.echo(f"{source}: {len(specs)} layers, {format_size(sum(s.size for s in specs))}, pulled by {engine}"
               + (f"; disk {format_rate(disk_bps)}" if disk_bps else ""))
    for name, r in results.items():
        phases = ", ".join(f"{k} {format_seconds(v)}" for k, v in r.phases.items() if v >= 0.0005)
        click.echo(f"  {name:<12} {format_seconds(r.total_seconds):>9}  ({phases}); "
                   f"{format_size(r.disk_bytes)} on disk")
    for note in first.notes:
        click.echo(f"  note: {note}")
    click.echo(f"  other ways to ship it, at {format_rate(first.bandwidth_bps)}:")
    for o in options:
        click.echo(f"    {format_seconds(o.ready_seconds):>9} to ready  {o.name}")


def _loopback(url: str) -> bool:
    from ..registry.reference import is_loopback

    return is_loopback(httpx_host(url))


def httpx_host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _estimate_inputs(source: str, config: Path | None, max_layer_size: int | None,
                     insecure: tuple[str, ...]) -> tuple[list[Any], str | None, RegistryClient | None]:
    """Layer specs of SOURCE, and where --probe can measure downloads."""
    from ..estimate import LayerSpec

    if source.startswith("oci:"):
        return _layer_specs_from_manifest(read_layout(LayoutRef.parse(source))[1]), None, None
    try:
        job = prepare(source, Options(config=config, max_layer_size=max_layer_size))
    except ModelImageError:
        if "/" not in source or Path(source).exists() or source.startswith(REMOTE_SCHEMES):
            raise
        ref = Reference.parse(source)
        client = RegistryClient(ref, insecure=frozenset(insecure))
        manifest = client.get_manifest(ref.repository, ref.ref).json()
        if is_index(manifest):
            manifest = client.get_manifest(ref.repository, choose_platform(manifest, None, source)["digest"]).json()
        layers = manifest.get("layers", [])
        biggest = max(layers, key=lambda d: int(d["size"]), default=None)
        url = client.url(f"/v2/{ref.repository}/blobs/{biggest['digest']}") if biggest else None
        return _layer_specs_from_manifest(manifest), url, client
    plan = job.plan()
    return [LayerSpec(layer.size) if plan.settings.compression == "none"
            else LayerSpec(int(layer.size * ASSUMED_RATIO), layer.size, plan.settings.compression)  # type: ignore
            for layer in plan.layers], None, None


LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
# weights barely compress (docs/benchmarks.md): unpacked size of a gzip/zstd
# layer whose tar size the manifest does not say
ASSUMED_RATIO = 0.93


def _layer_specs_from_manifest(manifest: dict) -> list[Any]:
    from ..estimate import LayerSpec

    specs = []
    for d in manifest.get("layers", []):
        comp = LAYER_COMPRESSION.get(d.get("mediaType", ""), "none")
        size = int(d["size"])
        specs.append(LayerSpec(size, size if comp == "none" else int(size / ASSUMED_RATIO), comp))  # type: ignore
    return specs
