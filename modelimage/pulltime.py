"""How long pulling a model or image takes on this node: ``modelimage
estimate`` (and the build summary) in one function.

:func:`estimate_source` reads what would be pulled (a model's plan, an
image in a registry or an OCI layout), takes the engine's stored
calibration (:mod:`modelimage.calibrate`) or else the built-in constants,
measures with ``probe`` what can be measured without the engine (the link
from the registry, the disk), and runs the model (:mod:`modelimage.estimate`)
for each link and for the other ways to ship the same weights.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import estimate as est
from .delivery import Option, storage_options
from .errors import ConfigError, ModelImageError
from .estimate import Engine, Estimate, LayerSpec
from .oci import layer_compression
from .units import format_rate

# weights barely compress (docs/benchmarks.md): the unpacked size of a
# gzip/zstd layer whose tar size the manifest does not say is its size / 0.93
ASSUMED_RATIO = 0.93


def layer_specs_from_manifest(manifest: Mapping[str, Any]) -> list[LayerSpec]:
    """The layers of an image manifest (a parsed JSON object) as a puller
    sees them, compressed as :func:`modelimage.oci.layer_compression` says
    (the one media-type table; other types count as plain)."""
    specs = []
    for d in manifest.get("layers", []):
        comp = layer_compression(d.get("mediaType", ""))
        size = int(d["size"])
        specs.append(LayerSpec(size, size if comp == "none" else int(size / ASSUMED_RATIO), comp))
    return specs


def layer_specs_from_plan(plan: Any) -> list[LayerSpec]:
    """The layers a :class:`~modelimage.plan.Plan` will build (``layer.size``
    is the tar's size; a compressed blob is assumed ASSUMED_RATIO of it)."""
    comp = plan.settings.compression
    return [LayerSpec(layer.size) if comp == "none" else LayerSpec(int(layer.size * ASSUMED_RATIO), layer.size, comp)
            for layer in plan.layers]


class ProbeNeedsTarget(ConfigError):
    """``probe=True`` for a model (not an image in a registry) without a bandwidth."""


@dataclass(frozen=True)
class Basis:
    """Which costs an estimate uses: the engine model, the range it is good
    to (factors of the total), whether it was calibrated here, and a line
    saying so."""

    engine: Engine
    spread: tuple[float, float]
    calibrated: bool
    label: str
    writeback_bps: float | None = None  # the disk past the page cache, as the calibration's pulls met it

    def disk(self, measured: Mapping[str, float] | None = None) -> tuple[float | None, int]:
        """``(disk_bps, write_cache_bytes)`` for :func:`modelimage.estimate.estimate_pull`:
        what ``--probe`` measured (``measured``), else the calibration's
        pace past the page cache with what the cache takes now
        (:func:`modelimage.probes.probe_write_cache`: no I/O), else
        ``(None, 0)``: the disk is not a limit."""
        measured = measured or {}
        disk = measured.get("disk_bps") or self.writeback_bps
        if "write_cache_bytes" in measured:
            return disk, int(measured["write_cache_bytes"])
        if disk is None or self.engine.syncs:
            return None, 0
        from .probes import probe_write_cache

        return disk, probe_write_cache()


def basis_for(engine: str) -> Basis:
    """The stored calibration of ``engine`` when there is one made on a
    machine like this one (same core count, memory within 5 %, the same
    engine version when both are known:
    :meth:`modelimage.fit.Calibration.differences`; a calibration copied
    from another node of the same shape is used, and says which node),
    else the built-in constants with
    :data:`modelimage.estimate.BUILTIN_RANGE`, the label saying why.
    Raises ``ModelImageError`` when a stored calibration cannot be read."""
    from . import calibrate, pullers

    model = est.engine_named(engine)
    cal = calibrate.load(model.name)
    here = pullers.host_facts()
    differences = []
    if cal is not None:
        differences = cal.differences({**here, "engine_version_number": pullers.installed_version(model.name)})
    if cal is None or differences:
        lo, hi = est.BUILTIN_RANGE
        why = "not calibrated here" if cal is None else (
            f"the stored calibration ({calibrate.path_for(model.name)}) is of another machine or engine "
            f"(node {cal.facts.get('node', '?')}: {'; '.join(differences)}), so it is not used")
        return Basis(model, est.BUILTIN_RANGE, False,
                     f"built-in constants, {why} (real pulls ran x{lo:g} to x{hi:g} of such "
                     f"estimates on other machines; `modelimage estimate --calibrate --engine {model.name}` "
                     "measures this one)")
    errors = cal.errors()
    worst = max((abs(e) for e in errors), default=0.0)
    lo, hi = cal.spread
    disk = (f"; writes past the page cache at {format_rate(cal.writeback_bps)}, as its pulls met them"
            if cal.writeback_bps else "")
    eng = cal.engine_model(here)
    return Basis(eng, cal.spread, True,
                 f"{eng.source}; reproduces its {len(errors)} calibration images within "
                 f"±{worst * 100:.0f} %; range x{lo:.2f} to x{hi:.2f}, as far as its single pulls strayed{disk}",
                 cal.writeback_bps)


@dataclass(frozen=True)
class Report:
    """``modelimage estimate``'s answer: per link label (``1 Gbit/s``, or
    ``measured``/``given``), the :class:`~modelimage.estimate.Estimate`;
    the storage options at the first link; ``measured`` what ``--probe``
    measured (``link_bps``, ``disk_bps``, ``write_cache_bytes``)."""

    source: str
    layers: tuple[LayerSpec, ...]
    basis: Basis
    links: dict[str, Estimate]
    options: list[Option]
    measured: dict[str, float] = field(default_factory=dict)

    @property
    def first(self) -> Estimate:
        """The estimate at the first link (the measured or given one, else 100 Mbit/s)."""
        return next(iter(self.links.values()))

    @property
    def bytes(self) -> int:
        """What is downloaded: the blobs' sizes, summed."""
        return sum(s.size for s in self.layers)

    def to_json(self) -> dict[str, Any]:
        first_link, first = next(iter(self.links.items()))
        return {**first.to_json(), "link": first_link, "calibrated": self.basis.calibrated,
                "basis": self.basis.label, "measured": self.measured,
                "links": {name: e.to_json() for name, e in self.links.items()},
                "storage_options": [o.to_json() for o in self.options],
                "layers": len(self.layers), "bytes": self.bytes}


def estimate_source(source: str, *, engine: str = "containerd", bandwidth_bps: float | None = None,
                    probe: bool = False, disk_dir: Path | None = None, concurrency: int | None = None,
                    config: Path | None = None, max_layer_size: int | None = None,
                    insecure: tuple[str, ...] = ()) -> Report:
    """Estimate how long ``engine`` takes to pull ``source`` (a model
    folder or file, a NAME in modelimage.toml, an image REF, an
    ``oci:DIR[:TAG]`` layout or ``oci-archive:FILE[:TAG]``).

    ``bandwidth_bps`` (bytes/s): the link; default the
    :data:`~modelimage.estimate.STANDARD_LINKS`. ``probe``: measure the link
    from the registry (REF only) and the disk under ``disk_dir`` (default:
    the engine's storage if it exists, else the temporary directory).
    Raises ``ConfigError`` for ``probe`` without a registry or a bandwidth,
    ``ModelImageError`` when the source cannot be read."""
    from . import probes

    basis = basis_for(engine)
    layers, probe_url, store = layers_of(source, config, max_layer_size, insecure)
    measured: dict[str, float] = {}
    registry_url = store.client.url("/v2/") if store is not None and store.client is not None else None
    try:
        if probe:
            if probe_url is None and bandwidth_bps is None:
                raise ProbeNeedsTarget(
                    f"--probe times a download of the image's biggest layer, and {source} has no layer bytes: "
                    "pass --bandwidth" if registry_url else
                    "--probe measures the link from a registry: give an image REF, or pass --bandwidth")
            where = disk_dir or next((d for d in (Path("/var/lib/containers"), Path("/var/lib/containerd"))
                                      if d.is_dir()), Path(tempfile.gettempdir()))
            measured.update(probe_disk(layers, basis.engine, where, calibrated=basis.writeback_bps is not None))
            if probe_url:
                measured["link_bps"] = bandwidth_bps = probes.probe_download(
                    probe_url, transport=store.client.transport if store and store.client else None)
    finally:
        if store is not None:
            store.close()
    if bandwidth_bps:
        links = {"measured" if "link_bps" in measured else "given": bandwidth_bps}
    else:
        links = dict(est.STANDARD_LINKS)
    latency = 0.0 if registry_url and _loopback(registry_url) else est.DEFAULT_LATENCY_S  # the pull's requests
    disk, cache = basis.disk(measured)
    results = {name: est.estimate_pull(layers, bandwidth_bps=bps, engine=basis.engine, disk_bps=disk,
                                       write_cache_bytes=cache, concurrency=concurrency, latency_s=latency,
                                       spread=basis.spread)
               for name, bps in links.items()}
    first = next(iter(results.values()))
    options = storage_options([s.tar_bytes for s in layers], bandwidth_bps=first.bandwidth_bps, disk_bps=disk,
                                  write_cache_bytes=cache, engine=basis.engine, layers=layers, latency_s=latency)
    return Report(source, tuple(layers), basis, results, options, measured)


def probe_disk(layers: list[LayerSpec], engine: Engine, where: Path, *, calibrated: bool = False) -> dict[str, float]:
    """What ``--probe`` measures of the disk under ``where`` for ``engine``
    pulling ``layers``: always the page cache's room for dirty data
    (``write_cache_bytes``, :func:`~modelimage.probes.probe_write_cache`, no
    I/O); the pace past it (``disk_bps``,
    :func:`~modelimage.probes.probe_writeback`: what the pull writes past
    the cache, at most as much again, with the cores kept busy; seconds)
    only when the pull would write more than that and the engine leaves
    its writes to the kernel: otherwise the disk cannot change the estimate;
    and not when the engine's calibration timed it (``calibrated``: its own
    pulls met the pace a probe only guesses). Raises ``ModelImageError``
    when the disk cannot be measured."""
    from . import probes

    cache = probes.probe_write_cache()
    written = est.estimate_pull(layers, bandwidth_bps=math.inf, engine=engine).peak_disk_bytes
    if engine.syncs or written <= cache or calibrated:
        return {"write_cache_bytes": cache}
    beyond = min(max(written - cache, 64 * est.MiB), max(cache, 64 * est.MiB))  # what the pull writes past it, at
    # most as much again (the kernel throttles writers by the time dirty data is twice its background threshold)
    return {"write_cache_bytes": cache, "disk_bps": probes.probe_writeback(where, cache_bytes=cache, beyond=beyond)}


def _loopback(url: str) -> bool:
    from .registry.reference import is_loopback

    return is_loopback(url.split("://", 1)[-1].split("/", 1)[0])


def layers_of(source: str, config: Path | None = None, max_layer_size: int | None = None,
              insecure: tuple[str, ...] = ()) -> tuple[list[LayerSpec], str | None, Any]:
    """The layers ``source`` pulls as, the URL of its biggest blob when it
    is in a registry and holds bytes (for the link probe), and where it is
    read from there (:func:`modelimage.image.open_store`; the caller closes
    it; None for a model or a layout)."""
    from .config import REMOTE_SCHEMES
    from .job import Options, prepare
    from .layout import LayoutRef
    from .registry.reference import FOREIGN_TRANSPORTS, Reference, looks_like_path

    if LayoutRef.is_layout(source):  # oci:DIR[:TAG] or oci-archive:FILE[:TAG], through its indexes
        return _image(source, insecure)
    try:
        job = prepare(source, Options(config=config, max_layer_size=max_layer_size))
    except ModelImageError:
        if source.partition(":")[0] in FOREIGN_TRANSPORTS:  # docker-archive:FILE: the reference says what to do
            Reference.parse(source)
        if "/" not in source or Path(source).exists() or source.startswith(REMOTE_SCHEMES) \
                or looks_like_path(source):
            raise
        return _image(source, insecure)
    return layer_specs_from_plan(job.plan()), None, None


def _image(source: str, insecure: tuple[str, ...]) -> tuple[list[LayerSpec], str | None, Any]:
    """The layers of the image manifest ``source`` resolves to for this
    machine (:func:`modelimage.image.resolve`; its config is not read)."""
    from .image import layer_descriptors, open_store, resolve

    store = open_store(source, insecure=frozenset(insecure))  # a registry's mirror first, if configured
    try:
        manifest = resolve(store, source)[1]
        biggest = max(layer_descriptors(manifest, source), key=lambda d: d.size, default=None)
    except BaseException:
        store.close()
        raise
    if store.client is None or store.served is None:  # a layout: nothing to probe
        store.close()
        return layer_specs_from_manifest(manifest), None, None
    if biggest is None or biggest.size == 0:  # in a registry, with no layer bytes to time the link with
        return layer_specs_from_manifest(manifest), None, store
    return layer_specs_from_manifest(manifest), store.client.url(f"/v2/{store.served.repository}/blobs/"
                                                                 f"{biggest.digest}"), store
