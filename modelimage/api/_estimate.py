"""``estimate``: how long pulling an image takes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..estimate import Estimate, Option
from ..job import Options, prepare
from ._common import PathLike

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

    from ..estimate import DEFAULT_LATENCY_S, STANDARD_LINKS, estimate_pull, storage_options
    from ..probes import probe_cpus, probe_disk, probe_download, probe_sync_latency, probe_write_cache

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
    from ..registry.reference import is_loopback

    return is_loopback(url.split("://", 1)[-1].split("/", 1)[0])


def _estimate_inputs(source: str, config: Path | None, max_layer_size: int | None,
                     insecure: frozenset[str]) -> tuple[list[Any], str | None, Any]:
    """Layer specs of SOURCE, and where a probe can measure downloads
    (a blob URL and the registry client that reads it)."""
    from ..config import REMOTE_SCHEMES
    from ..errors import ModelImageError
    from ..estimate import layer_specs_from_manifest, layer_specs_from_plan
    from ..image import choose_platform, is_index, open_image
    from ..layout import LayoutRef
    from ..registry.mirror import open_client
    from ..registry.reference import Reference, looks_like_path

    if LayoutRef.is_layout(source):  # the image a layout's reference means, through its indexes
        image = open_image(source)
        image.close()
        return layer_specs_from_manifest(image.manifest), None, None
    try:
        job = prepare(source, Options(config=config, max_layer_size=max_layer_size))
    except ModelImageError:
        if "/" not in source or Path(source).exists() or source.startswith(REMOTE_SCHEMES) \
                or looks_like_path(source):
            raise
        opened = open_client(Reference.parse(source), insecure=insecure)  # a mirror first, if configured
        client, ref = opened.client, opened.served
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
