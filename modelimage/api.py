"""One function per command: what ``modelimage CMD`` does, callable from Python.

Each ``cli/`` command parses its options, calls the function of the same
name here and prints what it returns; the package root exports the same
functions (``modelimage.build(...)``, see :mod:`modelimage`). This is
go-containerregistry's ``crane``: a thin layer over the library modules
that does the wiring (which sink, which client, which limits), never
protocol or format work of its own.

Conventions of every function:

- ``source``: a model folder or weight file, ``hf://ORG/REPO[@REV]``,
  ``s3://BUCKET/PREFIX`` or the name of a ``[models.NAME]`` entry of
  ``modelimage.toml`` (``config``: its path; default ``./modelimage.toml``).
  Images are ``HOST/REPO[:TAG|@DIGEST]`` or ``oci:DIR[:TAG]``.
- Sizes are bytes (``int``), rates bytes per second (``float``), times
  seconds (``float``).
- ``progress``: None, or a function ``(total_bytes, label)`` returning a
  context manager that yields a callback taking byte counts (or None); the
  CLI passes a progress bar on stderr.
- Every failure a user can cause raises a
  :class:`~modelimage.errors.ModelImageError` subclass whose message says
  what to do (``ConfigError``, ``SourceError``, ``FormatError``,
  ``PlanError``/``LayerTooLarge``, ``OutputError``, registry errors,
  ``PullError``...). Nothing is printed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .build import BuildResult
from .errors import ConfigError
from .estimate import Estimate, Option
from .inspect import ModelInfo
from .job import Job, Options, prepare
from .limits import RegistryLimits
from .plan import Plan
from .pull import DEFAULT_CONCURRENCY as PULL_CONCURRENCY
from .pull import PullResult, VerifyResult
from .registry.push import DEFAULT_CONCURRENCY as PUSH_CONCURRENCY

if TYPE_CHECKING:
    from .variants.build import IndexResult

Progress = Callable[[int, str], AbstractContextManager[Callable[[int], None] | None]]
PathLike = str | os.PathLike


@contextmanager
def _no_progress(total: int, label: str) -> Iterator[None]:
    yield None


def _options(config: PathLike | None, include: Sequence[str], exclude: Sequence[str], name: str | None,
             **kw: Any) -> Options:
    return Options(config=Path(config) if config is not None else None, name=name, include=tuple(include),
                   exclude=tuple(exclude), **kw)


# ---------------------------------------------------------------- inspect, plan


def inspect(source: PathLike, *, config: PathLike | None = None, include: Sequence[str] = (),
            exclude: Sequence[str] = (), name: str | None = None) -> ModelInfo:
    """What a model is, from its headers only (never tensor data).

    Returns a :class:`~modelimage.inspect.ModelInfo`: ``format``, ``kind``,
    ``parameters`` (count), ``dtypes`` (parameters per dtype),
    ``quantization``, ``components``, ``bytes`` and ``files`` (sizes in
    bytes), ``vram_bytes`` (parameters x bytes per parameter x 1.25);
    ``to_json()`` is ``modelimage inspect --json``. Raises ``ConfigError``
    (no such file, folder or named model), ``FormatError`` (a header that
    does not parse: the message names the file)."""
    return prepare(str(source), _options(config, include, exclude, name)).model


@dataclass(frozen=True)
class Planned:
    """A plan, the job it was made for, and what the preflight said."""

    job: Job
    plan: Plan
    warnings: tuple[str, ...] = ()

    @property
    def model(self) -> ModelInfo:
        return self.job.model

    @property
    def registry(self) -> str | None:
        return self.job.registry

    @property
    def limits(self) -> RegistryLimits:
        return self.job.limits

    def to_json(self) -> dict[str, Any]:
        """``modelimage plan --json``."""
        return {**self.plan.to_json(), "registry": self.registry, "limits": self.limits.to_json(),
                "warnings": list(self.warnings)}


def plan(source: PathLike, *, max_layer_size: int | None = None, target: str | None = None,
         compression: str | None = None, registry: str | None = None, base: str | None = None,
         bandwidth: float | None = None, config: PathLike | None = None, include: Sequence[str] = (),
         exclude: Sequence[str] = (), name: str | None = None, insecure: Sequence[str] = ()) -> Planned:
    """How ``source`` will be split into layers, without writing anything.

    ``max_layer_size`` in bytes (default: 10 GB or the registry's limit);
    ``registry``: the host whose limits apply; ``base``: a base image whose
    layers count toward the layer limit; ``bandwidth`` (bytes/s of upload)
    warns about registry upload timeouts. Returns :class:`Planned`
    (``plan.layers``, each with ``size`` in bytes and its entries;
    ``plan.reshards``; ``warnings``). Raises ``LayerTooLarge``/``PlanError``
    when the registry (or any engine) would refuse the image."""
    job = prepare(str(source), _options(config, include, exclude, name, max_layer_size=max_layer_size,
                                        target=target, compression=compression, registry=registry, base=base,
                                        insecure=frozenset(insecure)))
    p = job.plan()
    return Planned(job, p, tuple(job.preflight(p, bandwidth)))


# ---------------------------------------------------------------- build, push


@dataclass(frozen=True)
class Built:
    """An image written to a layout or pushed to a registry."""

    result: BuildResult  # manifest and config descriptors, layers (with ``action`` and files)
    reference: str  # the pushed HOST/REPO@sha256:..., or the layout written (oci:DIR:TAG)
    tag: str | None = None  # the pushed HOST/REPO:TAG
    warnings: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """The manifest digest, ``sha256:...``."""
        return self.result.manifest.digest

    @property
    def size(self) -> int:
        """Bytes of manifest, config and layers."""
        return self.result.size

    def to_json(self) -> dict[str, Any]:
        """``modelimage build --json``."""
        return {**self.result.to_json(), **({"reference": self.reference, "tag": self.tag} if self.tag else {})}


def build(source: PathLike, output: str | None = None, *, push: str | bool | None = None, format: str = "image",
          base: str | None = None, platform: str | None = None, max_layer_size: int | None = None,
          target: str | None = None, compression: str | None = None, bandwidth: float | None = None,
          concurrency: int = PUSH_CONCURRENCY, config: PathLike | None = None, include: Sequence[str] = (),
          exclude: Sequence[str] = (), name: str | None = None, insecure: Sequence[str] = (),
          progress: Progress | None = None, on_warning: Callable[[str], None] | None = None,
          variants: Sequence[str] = ()) -> Built | IndexResult:
    """Build an image of ``source`` into ``output`` (``oci:DIR[:TAG]`` or
    ``oci-archive:FILE[:TAG]``; default ``oci:build/NAME``; without a TAG,
    the model's ``tag`` in modelimage.toml, else ``latest``), or push it
    to a registry (``push="HOST/REPO[:TAG]"``, or ``True`` for the model's
    ``image`` in modelimage.toml; without a TAG, the model's ``tag``),
    streaming each layer from the files.

    ``format``: ``image`` (tar layers under ``target``, default
    ``/models/NAME``), ``modelpack`` or ``docker-model`` (one raw file per
    layer). ``base``: an image to put the model on. ``platform``:
    ``OS/ARCH`` (default ``linux/amd64``). ``concurrency``: layers at once
    when pushing. The registry's limits are checked before anything is
    written or uploaded; their warnings go to ``on_warning`` as they come
    (and into ``Built.warnings``).

    A model with variants (``variants``: ``NAME=GLOB[,GLOB]`` each, or the
    entry's variant tables) becomes one image index, and the result an
    :class:`~modelimage.variants.build.IndexResult` (:func:`~modelimage.variants.build.build_variants`).

    Returns :class:`Built`. Raises ``ConfigError`` (bad options),
    ``LayerTooLarge``/``PlanError`` (limits), ``OutputError`` (cannot write),
    ``SourceError`` (a file changed while building), registry errors."""
    from .artifact import build_artifact
    from .build import build_image
    from .layout import LayoutRef, open_sink
    from .registry.reference import Reference

    if push not in (None, False) and output:
        raise ConfigError("use either an output (oci:DIR[:TAG]) or push, not both")
    if format != "image" and base:
        raise ConfigError(f"a base applies to the image format, not {format}")
    from .variants.build import build_variants, has_variants

    if variants or has_variants(str(source), config):
        return build_variants(str(source), _options(config, include, exclude, name, max_layer_size=max_layer_size,
                              target=target, compression=compression, platform=platform, base=base,
                              insecure=frozenset(insecure)), variants, output=output, push=push, format=format,
                              concurrency=concurrency, bandwidth=bandwidth, progress=progress, on_warning=on_warning)
    ref, text = None, ""
    if push not in (None, False):
        text = push if isinstance(push, str) and push else _configured_image(str(source), config)
        if not text:
            raise ConfigError("push needs a REF (or an `image` for this model in modelimage.toml)")
        ref = Reference.parse(text)
    job = prepare(str(source), _options(config, include, exclude, name, max_layer_size=max_layer_size,
                                        target=target, compression=compression, platform=platform,
                                        registry=ref.host if ref else None, base=base,
                                        insecure=frozenset(insecure)))
    if ref is not None and job.entry.tag and ref.digest is None and ":" not in text.rsplit("/", 1)[-1]:
        ref = dataclasses.replace(ref, tag=job.entry.tag)  # REF without a TAG: the model's tag
    p = job.plan()
    warnings = tuple(job.preflight(p, bandwidth, format))
    for w in warnings:
        (on_warning or (lambda _: None))(w)
    if ref is not None:
        sink: Any = _registry_sink(ref, job.limits, concurrency, insecure)
        reference = str(ref)
    else:
        layout = LayoutRef.parse(output or f"oci:build/{job.model.name}")
        if not layout.explicit_tag and job.entry.tag:  # oci:DIR without a TAG: the model's tag
            layout = dataclasses.replace(layout, tag=job.entry.tag)
        sink, reference = open_sink(layout), str(layout)
    with (progress or _no_progress)(p.total_size, f"{'pushing' if ref else 'building'} {job.model.name}") as advance:
        if format == "image":
            result = build_image(job.model, p, sink, settings=job.image_settings, reference=reference,
                                 progress=advance, concurrency=concurrency if ref else None, base=job.base)
        else:
            result = build_artifact(job.model, p, sink, format=format, settings=job.image_settings,  # type: ignore
                                    reference=reference, progress=advance, concurrency=concurrency if ref else None)
    if ref is None:
        return Built(result, reference, warnings=warnings)
    return Built(result, f"{ref.name}@{result.manifest.digest}", str(ref), warnings)


def _configured_image(source: str, config: PathLike | None) -> str | None:
    """The ``image`` of the modelimage.toml entry ``source`` names, if it names one."""
    from .config import load_config, resolve
    from .errors import ModelImageError

    try:
        entry = resolve(source, load_config(Path(config) if config is not None else None))
    except ModelImageError:
        return None
    return entry.image if entry.name else None


def _registry_sink(ref: Any, limits: RegistryLimits, concurrency: int, insecure: Sequence[str]) -> Any:
    from .registry.client import RegistryClient
    from .registry.push import PushSettings, RegistrySink

    return RegistrySink(ref, RegistryClient(ref, insecure=frozenset(insecure)),
                        settings=PushSettings(concurrency=concurrency,
                                              upload="auto" if limits.chunked_uploads else "monolithic"))


@dataclass(frozen=True)
class Pushed:
    """A layout pushed to a registry."""

    reference: str  # HOST/REPO@sha256:...
    digest: str  # the manifest's
    tag: str  # HOST/REPO:TAG
    blobs: tuple[dict[str, Any], ...] = field(default=())  # digest, size, action (uploaded, exists, mounted)
    layer_digests: frozenset[str] = frozenset()  # which blobs are layers (the rest: configs, manifests)
    manifest_size: int = 0

    @property
    def layers(self) -> tuple[dict[str, Any], ...]:
        """The layer blobs (of every image, for an index)."""
        return tuple(b for b in self.blobs if b["digest"] in self.layer_digests) or self.blobs

    @property
    def size(self) -> int:
        """Bytes of the manifest and every blob."""
        return self.manifest_size + sum(int(b["size"]) for b in self.blobs)

    def to_json(self) -> dict[str, Any]:
        """``modelimage push --json``."""
        return {"reference": self.reference, "digest": self.digest, "tag": self.tag, "layers": list(self.blobs)}


def push(layout: str, reference: str, *, concurrency: int = PUSH_CONCURRENCY, insecure: Sequence[str] = (),
         progress: Progress | None = None) -> Pushed:
    """Push the image of an OCI layout (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``) to ``reference``
    (``HOST/REPO[:TAG]``): blobs the registry has are skipped or mounted,
    uploads resume, the manifest goes last. The registry's limits are
    checked first. Returns :class:`Pushed`; raises ``ConfigError`` (not a
    layout), ``SourceError`` (unreadable layout), ``LayerTooLarge``/
    ``PlanError``, registry errors."""
    from .config import load_config
    from .layout import LayoutRef, read_layout
    from .limits import check, layer_facts, limits_for
    from .registry.push import push_layout
    from .registry.reference import Reference

    src = LayoutRef.parse(layout)
    ref = Reference.parse(reference)
    limits = limits_for(ref.host, load_config(None).registries)
    desc, manifest = read_layout(src)
    check(ref.host, limits, layer_facts(manifest), manifest_size=desc.size)
    sink = _registry_sink(ref, limits, concurrency, insecure)
    total = sum(int(d["size"]) for d in [manifest.get("config", {}), *manifest.get("layers", [])] if d)
    with (progress or _no_progress)(total, f"pushing {ref.repository}") as advance:
        pushed = push_layout(src, sink, advance)
    layers = frozenset(d["digest"] for d in manifest.get("layers", []))
    return Pushed(pushed.reference, pushed.digest, str(ref), tuple(pushed.blobs), layers, desc.size)


# ---------------------------------------------------------------- pull, verify


def pull(ref: str, dest: PathLike, *, include: Sequence[str] = (), path: str | None = None,
         platform: str | None = None, concurrency: int = PULL_CONCURRENCY, connections: int | None = None,
         insecure: Sequence[str] = (), progress: Progress | None = None, overwrite: bool = False) -> PullResult:
    """Put the model files of the image ``ref`` (``HOST/REPO[:TAG|@DIGEST]``
    or ``oci:DIR[:TAG]``) into ``dest``, each layer applied once its blob
    matched its digest; files modelimage did not write are left alone (a
    file of the image where one of them is stops the pull, unless
    ``overwrite``); an interrupted pull resumes. See
    :func:`modelimage.pull.pull` for the arguments, the result
    (:class:`~modelimage.pull.PullResult`: files, ``bytes``,
    ``bytes_fetched``, ``seconds``) and the errors."""
    from .pull import prepare_pull

    job = prepare_pull(ref, dest, path=path, include=include, platform=platform, concurrency=concurrency,
                       connections=connections, insecure=frozenset(insecure), overwrite=overwrite)
    with (progress or _no_progress)(job.total_bytes, f"pulling {ref}") as advance:
        return job.run(advance)


def verify(ref: str, dest: PathLike, *, include: Sequence[str] = (), path: str | None = None,
           platform: str | None = None, insecure: Sequence[str] = ()) -> VerifyResult:
    """Compare ``dest`` with the image ``ref``, re-hashing every file.
    Returns :class:`~modelimage.pull.VerifyResult` (``ok``, ``missing``,
    ``changed``, ``extra``, ``checked``); a difference is not an error here
    (the CLI exits 1 on it). Raises ``SourceError`` and registry errors."""
    from .pull import verify as verify_tree

    return verify_tree(ref, dest, include=include, path=path, platform=platform, insecure=frozenset(insecure))


# ---------------------------------------------------------------- estimate


class ProbeNeedsTarget(ConfigError):
    """``probe=True`` for a model (not an image in a registry) without a bandwidth."""


@dataclass(frozen=True)
class EstimateReport:
    """How long pulling an image takes, per link, and the other ways to ship it."""

    source: str
    engine: str
    layers: tuple[Any, ...]  # estimate.LayerSpec: size (bytes), tar_bytes, compression
    links: dict[str, Estimate]  # link name ("100 Mbit/s", "given", "measured") -> estimate
    storage_options: tuple[Option, ...]
    disk_bps: float | None = None  # measured with probe=True

    @property
    def first(self) -> Estimate:
        return next(iter(self.links.values()))

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.layers)

    def to_json(self) -> dict[str, Any]:
        """``modelimage estimate --json``."""
        link, first = next(iter(self.links.items()))
        return {**first.to_json(), "link": link, "links": {name: r.to_json() for name, r in self.links.items()},
                "storage_options": [o.to_json() for o in self.storage_options], "layers": len(self.layers),
                "bytes": self.bytes}


def estimate(source: PathLike, *, bandwidth: float | None = None, probe: bool = False,
             disk_dir: PathLike | None = None, engine: str = "containerd", concurrency: int | None = None,
             max_layer_size: int | None = None, config: PathLike | None = None,
             insecure: Sequence[str] = ()) -> EstimateReport:
    """Estimate pulling ``source`` (a model, planned; or an image REF or
    ``oci:DIR[:TAG]``) with ``engine`` (``containerd``, ``podman``,
    ``docker``, ``modelimage``) over ``bandwidth`` bytes/s (default: 100
    Mbit/s, 1 Gbit/s and 10 Gbit/s). ``probe=True`` measures the download
    speed from the registry and the disk at ``disk_dir``. Returns
    :class:`EstimateReport` (seconds and bytes on disk per link). Raises
    :class:`ProbeNeedsTarget` (``probe`` without a registry or a bandwidth), the
    errors of :func:`inspect` and registry errors."""
    import tempfile

    from .estimate import DEFAULT_LATENCY_S, STANDARD_LINKS, estimate_pull, storage_options
    from .probes import probe_cpus, probe_disk, probe_download, probe_sync_latency, probe_write_cache

    specs, probe_url, client = _estimate_inputs(str(source), Path(config) if config is not None else None,
                                                max_layer_size, frozenset(insecure))
    try:
        disk_bps, write_cache, cpus, sync_latency = None, 0, None, 0.0
        if probe:
            write_cache, cpus = probe_write_cache(), probe_cpus()
            where = disk_dir or next((d for d in (Path("/var/lib/containers"), Path("/var/lib/containerd"))
                                      if d.is_dir()), Path(tempfile.gettempdir()))
            disk_bps, sync_latency = probe_disk(where), probe_sync_latency(where)
            if probe_url:
                bandwidth = probe_download(probe_url, transport=client.transport if client else None)
            elif bandwidth is None:
                raise ProbeNeedsTarget("--probe measures a registry: give a REF, or pass --bandwidth")
    finally:
        if client is not None:
            client.close()
    links = {"measured" if probe and probe_url else "given": bandwidth} if bandwidth else dict(STANDARD_LINKS)
    latency = 0.0 if probe_url and _loopback(probe_url) else DEFAULT_LATENCY_S
    results = {name: estimate_pull(specs, bandwidth_bps=bps, engine=engine, disk_bps=disk_bps,
                                       write_cache_bytes=write_cache, cpus=cpus, concurrency=concurrency,
                                       latency_s=latency, sync_latency_s=sync_latency)
               for name, bps in links.items()}
    first = next(iter(results.values()))
    options = storage_options([s.tar_bytes for s in specs], bandwidth_bps=first.bandwidth_bps,
                                  disk_bps=disk_bps, engine=engine, layers=specs, latency_s=latency)
    return EstimateReport(str(source), engine, tuple(specs), results, tuple(options), disk_bps)


def _loopback(url: str) -> bool:
    from .registry.reference import is_loopback

    return is_loopback(url.split("://", 1)[-1].split("/", 1)[0])


def _estimate_inputs(source: str, config: Path | None, max_layer_size: int | None,
                     insecure: frozenset[str]) -> tuple[list[Any], str | None, Any]:
    """Layer specs of SOURCE, and where a probe can measure downloads
    (a blob URL and the registry client that reads it)."""
    from .config import REMOTE_SCHEMES
    from .errors import ModelImageError
    from .estimate import layer_specs_from_manifest, layer_specs_from_plan
    from .image import choose_platform, is_index, open_image
    from .layout import LayoutRef
    from .registry.client import RegistryClient
    from .registry.reference import Reference

    if LayoutRef.is_layout(source):  # the image a layout's reference means, through its indexes
        image = open_image(source)
        image.close()
        return layer_specs_from_manifest(image.manifest), None, None
    try:
        job = prepare(source, Options(config=config, max_layer_size=max_layer_size))
    except ModelImageError:
        if "/" not in source or Path(source).exists() or source.startswith(REMOTE_SCHEMES):
            raise
        ref = Reference.parse(source)
        client = RegistryClient(ref, insecure=insecure)
        try:
            manifest = client.get_manifest(ref.repository, ref.ref).json()
            if is_index(manifest):
                manifest = client.get_manifest(ref.repository,
                                               choose_platform(manifest, None, source)["digest"]).json()
        except BaseException:
            client.close()
            raise
        layers = manifest.get("layers", [])
        biggest = max(layers, key=lambda d: int(d["size"]), default=None)
        url = client.url(f"/v2/{ref.repository}/blobs/{biggest['digest']}") if biggest else None
        return layer_specs_from_manifest(manifest), url, client
    return layer_specs_from_plan(job.plan()), None, None
