"""The ``modelimage`` command: parse options, call the library, print.

Results (digests, JSON) go to stdout so scripts compose; progress and
messages go to stderr. Every :class:`ModelImageError` becomes one line and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx

from . import __version__
from .artifact import FORMATS, build_artifact
from .build import build_image
from .config import REMOTE_SCHEMES, ModelEntry, load_config, resolve
from .errors import ModelImageError
from .image import choose_platform, is_index
from .inspect import BYTES_PER_PARAM_AS, VRAM_FACTOR, ModelInfo
from .job import Job, Options, prepare
from .layout import LayoutRef, open_sink, read_layout
from .limits import KNOWN, LayerFacts, RegistryLimits, check, limits_for
from .oci import ANNOTATION_TITLE, Descriptor
from .plan import Plan
from .registry.auth import Credentials, store_credentials
from .registry.client import RegistryClient
from .registry.push import DEFAULT_CONCURRENCY, PushSettings, RegistrySink, push_layout
from .registry.reference import Reference
from .tarstream import COMPRESSIONS
from .units import format_count, format_seconds, format_size, parse_size


def _parsed(parse: Callable[..., Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that reads an option with one of our parsers
    (sizes, rates), turning its error into click's usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value, what=f"--{(param.name or '').replace('_', '-')}")
        except ModelImageError as e:
            raise click.BadParameter(str(e).split(": ", 1)[-1]) from None

    return callback


def _parse_rate(value: str, what: str) -> float:
    from .units import parse_rate

    return parse_rate(value, what=what)


_size = _parsed(parse_size)
_rate = _parsed(_parse_rate)


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
        registry=kw.get("registry"), base=kw.get("base"), insecure=frozenset(kw.get("insecure_registry") or ()),
    )


def registry_options(f: Callable) -> Callable:
    """Options of every command that talks to a registry."""
    for deco in reversed([
        click.option("--insecure-registry", multiple=True, metavar="HOST",
                     help="Talk plain HTTP to HOST (loopback hosts always are; TLS is verified everywhere else)."),
        click.option("--concurrency", type=click.IntRange(1, 32), default=DEFAULT_CONCURRENCY, show_default=True,
                     help="Layers uploaded at once."),
    ]):
        f = deco(f)
    return f


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        _err(f"warning: {w}")


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
@click.option("--registry", metavar="HOST",
              help="Apply this registry's limits (see `modelimage limits`), as a push there would.")
@click.option("--bandwidth", callback=_rate, metavar="RATE",
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
    job = prepare(source, _options(**kw))
    p = job.plan()
    warnings = job.preflight(p, bandwidth)
    if as_json:
        _emit_json({**p.to_json(), "registry": job.registry, "limits": job.limits.to_json(), "warnings": warnings})
    else:
        click.echo(_describe_plan(job, p))
        if job.registry:
            click.echo(f"  fits {job.registry} ({job.limits.name}): {_describe_limits(job.limits)}")
    _warn(warnings)


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
@click.option("--push", "push_ref", is_flag=False, flag_value="", default=None, metavar="[REF]",
              help="Push to a registry instead, streaming each layer from the files "
                   "(REF defaults to the model's `image` in modelimage.toml).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="image", show_default=True,
              help="image: a runnable OCI image (tar layers under --target); modelpack: a CNCF ModelPack "
                   "artifact; docker-model: a Docker Model Runner artifact (one raw file per layer).")
@click.option("--base", metavar="REF", help="Put the model on top of this image (REF or oci:DIR[:TAG]).")
@click.option("--platform", metavar="OS/ARCH", help="Platform recorded in the image config (default: linux/amd64).")
@click.option("--bandwidth", callback=_rate, metavar="RATE",
              help="Upload bandwidth (e.g. 100Mbit/s), to warn when a layer outlasts a registry's upload timeout.")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print the result (digest, layers, files) as JSON.")
def build(source: str, output: str | None, push_ref: str | None, as_json: bool, concurrency: int,
          bandwidth: float | None, fmt: str, **kw: Any) -> None:
    """Build an OCI image of a model, without a Docker daemon.

    Layers are deterministic tars (sorted entries, uid/gid 0, fixed modes,
    mtime from SOURCE_DATE_EPOCH or 0): the same files always give the same
    manifest digest, which is printed on stdout (with --push: the pushed
    HOST/REPO@DIGEST). Registry limits are checked before anything is
    written or uploaded.
    """
    if push_ref is not None and output:
        raise click.UsageError("use either -o/--output or --push, not both")
    ref = None
    if push_ref is not None:
        entry = prepare_entry(source, kw.get("config"))
        text = push_ref or (entry.image if entry else None)
        if not text:
            raise click.UsageError("--push needs a REF (or an `image` for this model in modelimage.toml)")
        ref = Reference.parse(text)
        kw["registry"] = ref.host
    if fmt != "image" and kw.get("base"):
        raise click.UsageError(f"--base applies to --format image, not {fmt}")
    job = prepare(source, _options(**kw))
    p = job.plan()
    _warn(job.preflight(p, bandwidth, fmt))
    if ref is not None:
        sink: Any = RegistrySink(ref, RegistryClient(ref, insecure=frozenset(kw.get("insecure_registry") or ())),
                                 settings=PushSettings(concurrency=concurrency,
                                                       upload="auto" if job.limits.chunked_uploads else "monolithic"))
        reference = str(ref)
    else:
        layout = LayoutRef.parse(output or f"oci:build/{job.model.name}:{job.entry.tag or 'latest'}")
        sink, reference = open_sink(layout), str(layout)
    with _progress(p.total_size, f"{'pushing' if ref else 'building'} {job.model.name}") as progress:
        if fmt == "image":
            result = build_image(job.model, p, sink, settings=job.image_settings, reference=reference,
                                 progress=progress, concurrency=concurrency if ref else None, base=job.base)
        else:
            result = build_artifact(job.model, p, sink, format=fmt, settings=job.image_settings,  # type: ignore
                                    reference=reference, progress=progress, concurrency=concurrency if ref else None)
    pinned = f"{ref.name}@{result.manifest.digest}" if ref else None
    if as_json:
        _emit_json({**result.to_json(), **({"reference": pinned, "tag": str(ref)} if ref else {})})
        return
    click.echo(pinned or result.manifest.digest)
    actions = Counter(layer.action for layer in result.layers)
    done = ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
    _err(f"{'pushed ' + str(ref) if ref else 'wrote ' + reference} ({len(result.layers)} layers: {done}; "
         f"{format_size(result.size)})")


def prepare_entry(source: str, config: Path | None) -> ModelEntry | None:
    """The modelimage.toml entry SOURCE names, if it names one."""
    try:
        entry = resolve(source, load_config(config))
    except ModelImageError:
        return None
    return entry if entry.name else None


@cli.command()
@click.argument("layout", metavar="oci:DIR[:TAG]")
@click.argument("reference", metavar="REF")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="Print digest, reference and blobs as JSON.")
def push(layout: str, reference: str, concurrency: int, insecure_registry: tuple[str, ...], as_json: bool) -> None:
    """Push an image from an OCI layout to a registry.

    Blobs the registry already has are skipped (or mounted from another
    repository we pushed them to); uploads resume where the registry says
    they stopped. Prints HOST/REPO@DIGEST.
    """
    src = LayoutRef.parse(layout)
    if src.transport != "oci":
        raise click.UsageError("push reads an oci:DIR[:TAG] layout")
    ref = Reference.parse(reference)
    limits = limits_for(ref.host, load_config(None).registries)
    desc, manifest = read_layout(src)
    _check_layout(desc, manifest, ref, limits)
    sink = RegistrySink(ref, RegistryClient(ref, insecure=frozenset(insecure_registry)),
                        settings=PushSettings(concurrency=concurrency,
                                              upload="auto" if limits.chunked_uploads else "monolithic"))
    total = sum(int(d["size"]) for d in [manifest.get("config", {}), *manifest.get("layers", [])] if d)
    with _progress(total, f"pushing {ref.repository}") as progress:
        pushed = push_layout(src.path, src.tag, sink, progress)
    if as_json:
        _emit_json({"reference": pushed.reference, "digest": pushed.digest, "tag": str(ref),
                    "layers": list(pushed.blobs)})
        return
    click.echo(pushed.reference)
    actions = Counter(b["action"] for b in pushed.blobs)
    _err(f"pushed {ref} (" + ", ".join(f"{n} {a}" for a, n in sorted(actions.items())) + ")")


def _check_layout(desc: Descriptor, manifest: dict, ref: Reference, limits: RegistryLimits) -> None:
    layers = manifest.get("layers", [])
    check(ref.host, limits, [LayerFacts(d.get("annotations", {}).get(ANNOTATION_TITLE, d["digest"][:19]),
                                        int(d["size"])) for d in layers],
          manifest_size=desc.size)


def _describe_limits(limits: RegistryLimits) -> str:
    parts = [f"layers up to {format_size(limits.max_layer_size)}" if limits.max_layer_size else "no known layer limit",
             f"manifests up to {format_size(limits.max_manifest_size)}", f"at most {limits.max_layers} layers"]
    if limits.upload_timeout:
        parts.append(f"uploads cut after {format_seconds(limits.upload_timeout)}")
    if not limits.chunked_uploads:
        parts.append("monolithic uploads only")
    return ", ".join(parts)


@cli.command("limits")
@click.argument("host", required=False)
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [registries.\"HOST\"] overrides (default: ./modelimage.toml).")
@click.option("--json", "as_json", is_flag=True, help="Print the limits as JSON.")
def limits_command(host: str | None, config: Path | None, as_json: bool) -> None:
    """Show what a registry accepts (layer and manifest size, layer count,
    upload timeout, chunked uploads) and where each number comes from.
    Without HOST, every registry modelimage knows."""
    overrides = load_config(config).registries
    if host:
        table = [(host, limits_for(host, overrides))]
    else:
        table = [(patterns[0], limits_for(patterns[0], overrides)) for patterns, _ in KNOWN]
        table += [(h, limits_for(h, overrides)) for h in overrides]
    if as_json:
        _emit_json([{"host": h, **lim.to_json()} for h, lim in table] if not host else {"host": host,
                                                                                         **table[0][1].to_json()})
        return
    for h, lim in table:
        click.echo(f"{h}  ({lim.name})\n  {_describe_limits(lim)}\n  source: {lim.source}")


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
    from .estimate import LayerSpec

    specs = []
    for d in manifest.get("layers", []):
        comp = LAYER_COMPRESSION.get(d.get("mediaType", ""), "none")
        size = int(d["size"])
        specs.append(LayerSpec(size, size if comp == "none" else int(size / ASSUMED_RATIO), comp))  # type: ignore
    return specs


@cli.command()
@click.argument("source")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml).")
@click.option("--max-layer-size", callback=_size, metavar="SIZE", help="Plan with this layer size (SOURCE/NAME).")
@click.option("--bandwidth", callback=_rate, metavar="RATE",
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
    from . import estimate as est
    from . import probes
    from .units import format_rate

    specs, probe_url, client = _estimate_inputs(source, config, max_layer_size, insecure_registry)
    try:
        disk_bps, write_cache, cpus, sync_latency = None, 0, None, 0.0
        if probe:
            write_cache, cpus = probes.probe_write_cache(), probes.probe_cpus()
            where = disk_dir or next((d for d in (Path("/var/lib/containers"), Path("/var/lib/containerd"))
                                      if d.is_dir()), Path(tempfile.gettempdir()))
            disk_bps, sync_latency = probes.probe_disk(where), probes.probe_sync_latency(where)
            if probe_url:
                bandwidth = probes.probe_download(probe_url, client=client.http if client else None)
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
        _emit_json({**first.to_json(), "link": first_link,
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
    from .registry.reference import is_loopback

    return is_loopback(httpx_host(url))


def httpx_host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _estimate_inputs(source: str, config: Path | None, max_layer_size: int | None,
                     insecure: tuple[str, ...]) -> tuple[list[Any], str | None, RegistryClient | None]:
    """Layer specs of SOURCE, and where --probe can measure downloads."""
    from .estimate import LayerSpec

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


@cli.command()
@click.argument("host")
@click.option("-u", "--username", required=True, help="User name.")
@click.option("--password-stdin", is_flag=True, help="Read the password (or token) from standard input.")
def login(host: str, username: str, password_stdin: bool) -> None:
    """Store registry credentials where docker keeps them (the configured
    credential helper, else ~/.docker/config.json or $DOCKER_CONFIG), after
    checking them against the registry."""
    if password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True)
    else:
        raise click.UsageError("use --password-stdin to pass a password without a terminal")
    if not password:
        raise click.UsageError("the password is empty")
    ref = Reference(host, "library/x")
    client = RegistryClient(ref, credentials=Credentials(username, password))
    try:
        client.ping()
    finally:
        client.close()
    where = store_credentials(host, username, password)
    _err(f"login succeeded for {username} at {host}; credentials stored in {where}")


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


# ---------------------------------------------------------------- render
# `modelimage render KIND SOURCE|NAME`: Dockerfiles, a GitHub workflow, a
# Makefile include and Kubernetes manifests, from templates/ (modelimage.render).

from . import render as _render  # noqa: E402


def _render_help() -> str:
    kinds = "\n".join(f"  {kind:<20} {text}" for kind, text in _render.KINDS.items())
    return (
        "Render a file other tools read, from the model's plan.\n\n"
        f"\b\nKIND is one of:\n{kinds}\n\n"
        "SOURCE is a model folder, a weight file, or the name of a model in modelimage.toml "
        "(dockerfile, dockerfile-consumer and k8s inspect and plan it; github-action passes it to the "
        "action; makefile makes it the default MODEL). The output goes to stdout, or atomically to -o FILE.\n\n"
        "\b\n"
        "modelimage render dockerfile llama -o Dockerfile   then: docker build -f Dockerfile ./llama\n"
        "modelimage render dockerfile llama --no-link       for podman 4.3 and buildah < 1.32\n"
        "modelimage render k8s llama --image ghcr.io/acme/llama:v1 --fallback init-container\n"
        "modelimage render makefile -o modelimage.mk"
    )


@cli.command("render", help=_render_help(), short_help="Render a Dockerfile, workflow, Makefile or k8s manifest.")
@click.argument("kind", type=click.Choice(list(_render.KINDS)), metavar="KIND")
@click.argument("source", required=False, metavar="[SOURCE|NAME]")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write to FILE (atomically: a temporary file renamed into place) instead of stdout.")
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="modelimage.toml with [models.NAME] entries (default: ./modelimage.toml).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching GLOB (repeatable). A glob without '/' matches file names anywhere.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out files matching GLOB (repeatable).")
@click.option("--name", help="Model name (default: the entry name or the folder name).")
@plan_options
@click.option("--registry", metavar="HOST", help="Plan within this registry's limits (see `modelimage limits`).")
@click.option("--no-link", is_flag=True,
              help="dockerfile, dockerfile-consumer: plain COPY instead of COPY --link "
                   "(podman 4.3 and buildah before 1.32 reject --link).")
@click.option("--image", metavar="REF",
              help="The model image (dockerfile-consumer, k8s) or where the workflow pushes (github-action); "
                   "default: the model's `image` in modelimage.toml.")
@click.option("--serve-image", metavar="IMAGE", default=_render.DEFAULT_SERVE_IMAGE, show_default=True,
              help="k8s, dockerfile-consumer: the inference server's image.")
@click.option("--port", type=click.IntRange(1, 65535), default=_render.DEFAULT_SERVE_PORT, show_default=True,
              help="k8s: the server's port.")
@click.option("--gpus", type=click.IntRange(0, 64), default=1, show_default=True,
              help="k8s: nvidia.com/gpu the server asks for (0: none).")
@click.option("--fallback", type=click.Choice(_render.FALLBACKS),
              help="k8s: for clusters without image volumes (before 1.33): init containers copy the model "
                   "into an emptyDir.")
@click.option("--copier-image", metavar="IMAGE", default=_render.DEFAULT_COPIER_IMAGE, show_default=True,
              help="k8s --fallback init-container: an image with a statically linked /bin/busybox, copied in "
                   "to run the copy inside the FROM-scratch model image.")
@click.option("--action", metavar="OWNER/REPO@REF", default=_render.DEFAULT_ACTION, show_default=True,
              help="github-action: modelimage's action.")
def render_command(kind: str, source: str | None, output: Path | None, no_link: bool, image: str | None,
                   serve_image: str, port: int, gpus: int, fallback: str | None, copier_image: str, action: str,
                   **kw: Any) -> None:
    settings = _render.RenderSettings(link=not no_link, image=image, serve_image=serve_image, port=port,
                                      gpus=gpus, fallback=fallback, copier_image=copier_image, action=action)
    if source is None and kind != "makefile":
        raise click.UsageError(f"render {kind} needs a SOURCE or NAME")
    rendered = _render.render_model(kind, source, _options(**kw), settings)
    _warn(list(rendered.warnings))
    if output is None:
        click.echo(rendered.text, nl=False)
    else:
        _render.write_atomic(output, rendered.text)
        _err(f"wrote {output}")


# ---------------------------------------------------------------- end of render


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="modelimage", standalone_mode=False)
    except ModelImageError as e:
        _err(f"error: {e}")
        return e.exit_code
    except httpx.TransportError as e:  # a network failure outside the retried paths (login, estimate...)
        from .registry.client import network_message

        host = e.request.url.host if getattr(e, "_request", None) is not None else "registry"
        _err(f"error: {network_message(host, e)}")
        return 1
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


from . import cli_pull  # noqa: E402,F401  (registers pull and verify)

if __name__ == "__main__":
    sys.exit(main())
