"""How long does pulling a model image take? A measured model, per engine.

On a fast link the network is not what a pull waits for: the engine hashes
every byte (more than once), stores the blob, untars it into a layer and
commits it (docs/benchmarks.md, "Pull time per engine"). An estimate is a
small timeline simulation of what each engine does:

1. **fetch**: layers download ``concurrency`` at a time, in manifest order,
   sharing the link fairly; each stream is capped by what the engine
   verifies and stores per stream (``fetch_stream_bps``), all together by
   ``fetch_bps``. Each request first waits ``latency_s``.
2. **extract**: per layer, a fixed overhead + decompression + the engine's
   per-byte work at ``process_bps``, scheduled by the engine's
   ``pipeline``: ``"after_download"`` (every blob first: ``ctr pull``),
   ``"in_order"`` (layer *i* once it has arrived and layer *i-1* is done:
   podman, Docker) or ``"streaming"`` (extracted as bytes arrive).
3. **CPU**: with ``cpus`` given, the pull takes at least its CPU work
   (``cpu_s_per_byte``) spread over that many cores.
4. **disk**: engines do not fsync layer data, so writes go to the page
   cache; bytes beyond ``write_cache_bytes`` add their time at ``disk_bps``.
5. a fixed per-pull overhead and two request latencies (manifest, config).

The constants are measured on the project's machines
(``benchmarks/pull_calibration.py``) or cited (Docker). Bandwidth, disk,
write cache and cores are the caller's, best measured with the probes of
:mod:`modelimage.probes`. Everything here is pure: no I/O. Rates are parsed
and printed by :mod:`modelimage.units`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal

from .errors import ConfigError
from .units import format_rate, format_seconds, format_size

Compression = Literal["none", "gzip", "zstd"]
COMPRESSIONS: tuple[str, ...] = ("none", "gzip", "zstd")
Pipeline = Literal["after_download", "in_order", "streaming"]
PIPELINES: tuple[str, ...] = ("after_download", "in_order", "streaming")

MiB = 2**20
# Time to the first byte of one request: a registry in the same region
# (token reuse, one redirect to blob storage). Loopback is ~0: pass 0.
DEFAULT_LATENCY_S = 0.05

STANDARD_LINKS: Mapping[str, float] = MappingProxyType({
    "100 Mbit/s": 12.5e6,
    "1 Gbit/s": 125e6,
    "10 Gbit/s": 1.25e9,
})


# ------------------------------------------------------------------ inputs

@dataclass(frozen=True)
class LayerSpec:
    """One layer as a puller sees it.

    ``size`` is the blob as stored in the registry (compressed or not);
    ``unpacked`` the tar bytes after decompression (defaults to ``size``,
    right for plain tar layers); ``compression`` one of none, gzip, zstd.
    """

    size: int
    unpacked: int | None = None
    compression: Compression = "none"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"layer compression {self.compression!r}: use one of {', '.join(COMPRESSIONS)}")
        if self.unpacked is None:
            object.__setattr__(self, "unpacked", self.size)
        if self.size < 0 or self.tar_bytes < 0:
            raise ConfigError(f"layer sizes must not be negative (size={self.size}, unpacked={self.unpacked})")
        if self.compression == "none" and self.tar_bytes != self.size:
            raise ConfigError(f"an uncompressed layer unpacks to its own size ({self.size}), not {self.unpacked}")

    @property
    def tar_bytes(self) -> int:
        """``unpacked``, typed as an int."""
        return self.size if self.unpacked is None else self.unpacked


# A layer's compression by media type (OCI and Docker's schema 2).
LAYER_COMPRESSION: Mapping[str, Compression] = MappingProxyType({
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
})
# weights barely compress (docs/benchmarks.md): the unpacked size of a
# gzip/zstd layer whose tar size the manifest does not say is its size / 0.93
ASSUMED_RATIO = 0.93


def layer_specs_from_manifest(manifest: Mapping[str, Any]) -> list[LayerSpec]:
    """The layers of an image manifest (a parsed JSON object) as a puller
    sees them; unknown media types count as plain tar."""
    specs = []
    for d in manifest.get("layers", []):
        comp = LAYER_COMPRESSION.get(d.get("mediaType", ""), "none")
        size = int(d["size"])
        specs.append(LayerSpec(size, size if comp == "none" else int(size / ASSUMED_RATIO), comp))
    return specs


def layer_specs_from_plan(plan: Any) -> list[LayerSpec]:
    """The layers a :class:`~modelimage.plan.Plan` will build (``layer.size``
    is the tar's size; a compressed blob is assumed ASSUMED_RATIO of it)."""
    comp = plan.settings.compression
    return [LayerSpec(layer.size) if comp == "none" else LayerSpec(int(layer.size * ASSUMED_RATIO), layer.size, comp)
            for layer in plan.layers]


@dataclass(frozen=True)
class Engine:
    """What one container engine does when it pulls, and what that costs.

    - ``concurrency``: layer downloads at a time.
    - ``pipeline``: when layers are extracted (see the module docstring).
    - ``pull_overhead_s``: fixed cost per pull (process start, resolve,
      manifest, config, image commit).
    - ``layer_overhead_s``: fixed cost per layer (layer bookkeeping,
      directories, mounts).
    - ``fetch_stream_bps``: what one download stream can verify and store
      per second (hash + write of the blob); ``fetch_bps``: all streams
      together (the engine's CPU).
    - ``process_bps``: the extraction's per-byte work on the unpacked tar
      (untar, diffID hash, tar-split metadata, copies).
    - ``decompress_bps``: per codec, bytes of *output* per second.
    - ``cpu_s_per_byte``: CPU seconds the whole pull costs per image byte
      (all threads; ``getrusage`` of the pull). A pull cannot beat this
      work spread over the machine's cores.
    - ``stores_blob``: the blob is written to disk before extraction (a
      content store or a temp file), so every byte is written twice.
    - ``keeps_compressed``: the blob stays on disk next to the unpacked
      layer (containerd's content store).
    - ``syncs_per_pull``, ``syncs_per_layer``: ``fsync``/``fdatasync``
      calls the pull waits for (counted with strace); each costs the
      disk's sync latency (:func:`~modelimage.probes.probe_sync_latency`): nothing on a local
      SSD, milliseconds on a network disk.
    - ``source``: where the numbers come from ("measured: ...", "cited:
      ...", "model: ...").
    """

    name: str
    concurrency: int
    pipeline: Pipeline
    pull_overhead_s: float
    layer_overhead_s: float
    fetch_stream_bps: float
    fetch_bps: float
    process_bps: float
    decompress_bps: Mapping[str, float]
    cpu_s_per_byte: float
    stores_blob: bool
    keeps_compressed: bool
    source: str = ""
    syncs_per_pull: int = 0
    syncs_per_layer: int = 0

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"engine {self.name}: pipeline {self.pipeline!r} is not one of {', '.join(PIPELINES)}")
        if self.concurrency < 1:
            raise ConfigError(f"engine {self.name}: concurrency must be at least 1")
        if min(self.fetch_stream_bps, self.fetch_bps, self.process_bps) <= 0:
            raise ConfigError(f"engine {self.name}: rates must be positive")

    @property
    def extracts_in_order(self) -> bool:
        """Layers are extracted one at a time, in manifest order."""
        return self.pipeline in ("after_download", "in_order")

    @property
    def overlaps_download_and_extract(self) -> bool:
        return self.pipeline != "after_download"


# Decompression, bytes of *tar* per second: what a gzip layer adds to a pull (podman decompresses twice,
# containerd once; docs/benchmarks.md). zstd: gzip x the ratio of CPython zlib to zstandard on weights.
_ZSTD_OVER_GZIP = 536 / 183

# podman 4.3.1, fitted by benchmarks/pull_calibration.py (docs/benchmarks.md). 6 downloads at a time
# (containers/image maxParallelDownloads); layers applied in order as they arrive (queueOrCommit).
_PODMAN = Engine(
    name="podman", concurrency=6, pipeline="in_order",
    pull_overhead_s=0.03, layer_overhead_s=0.12, fetch_stream_bps=107e6, fetch_bps=203e6, process_bps=444e6,
    decompress_bps=MappingProxyType({"gzip": 56e6, "zstd": 56e6 * _ZSTD_OVER_GZIP}), cpu_s_per_byte=11.91e-9,
    stores_blob=True, keeps_compressed=False,
    source="measured: podman 4.3.1, loopback registry, 2-core VM, 2026-11-25 (docs/benchmarks.md)",
    # strace -f -c of podman pull: 33 fsync+fdatasync for 1 layer, 139 for 8 (metadata, not layer data)
    syncs_per_pull=18, syncs_per_layer=15,
)

ENGINES: Mapping[str, Engine] = MappingProxyType({
    "podman": _PODMAN,
    # containerd 1.6.20 `ctr images pull` (overlayfs), fitted the same way: every blob into the content
    # store, then unpack; CRI's max_concurrent_downloads = 3; blobs stay next to the snapshot (issue 4249).
    "containerd": Engine(
        name="containerd", concurrency=3, pipeline="after_download",
        pull_overhead_s=0.65, layer_overhead_s=0.0, fetch_stream_bps=120e6, fetch_bps=189e6, process_bps=355e6,
        decompress_bps=MappingProxyType({"gzip": 74e6, "zstd": 74e6 * _ZSTD_OVER_GZIP}), cpu_s_per_byte=12.25e-9,
        stores_blob=True, keeps_compressed=True,
        source="measured: containerd 1.6.20 ctr pull, loopback registry, 2-core VM, 2026-11-25 (docs/benchmarks.md)",
        # strace -f -c of the daemon during ctr pull: 49 fsync+fdatasync for 1 layer, 179 for 8
        syncs_per_pull=30, syncs_per_layer=19,
    ),
    # Docker (no daemon here): podman's per-byte costs (same Go verify + untar), gzip once as containerd;
    # cited: max-concurrent-downloads = 3, in-order extraction, temp blob deleted after.
    "docker": replace(
        _PODMAN, name="docker", concurrency=3,
        decompress_bps=MappingProxyType({"gzip": 74e6, "zstd": 74e6 * _ZSTD_OVER_GZIP}),
        source="cited: moby max-concurrent-downloads=3, in-order extraction; per-byte costs taken from podman",
        syncs_per_pull=0, syncs_per_layer=0,
    ),
    # modelimage pull: 3 blobs at once, each file written in place while the blob's sha256 is checked;
    # no temp blob. benchmarks/bench_pull.py (2.15 GB in 5 layers: 4.95 s); CPython zlib / zstandard.
    "modelimage": Engine(
        name="modelimage", concurrency=3, pipeline="streaming",
        pull_overhead_s=0.3, layer_overhead_s=0.0, fetch_stream_bps=600e6, fetch_bps=600e6, process_bps=480e6,
        decompress_bps=MappingProxyType({"gzip": 183e6, "zstd": 536e6}), cpu_s_per_byte=2.3e-9,
        stores_blob=False, keeps_compressed=False,
        source="measured: modelimage pull, loopback registry, 2026-11-25 (docs/benchmarks.md)",
    ),
})


def engine_named(name: str | Engine) -> Engine:
    """``ENGINES[name]``, or ``name`` itself when it is an :class:`Engine`."""
    if isinstance(name, Engine):
        return name
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}") from None


# ------------------------------------------------------------------ result

@dataclass(frozen=True)
class Estimate:
    """The estimated pull.

    ``phases`` are seconds of work of each kind: ``overhead`` the fixed
    per-pull and per-layer costs; ``download`` the wall time from the first
    blob request to the last byte stored; ``decompress`` and ``extract``
    summed over layers; ``cpu`` the floor all the CPU work sets on the given
    cores; ``disk`` the time the disk adds for the bytes the page cache
    cannot hold. Some overlap, so they can add up to more than
    ``total_seconds``.
    ``disk_bytes`` is what stays on disk, ``peak_disk_bytes`` the most at
    any time (temp blobs before they are deleted).
    """

    total_seconds: float
    phases: Mapping[str, float]
    disk_bytes: int
    peak_disk_bytes: int
    engine: str
    bandwidth_bps: float
    disk_bps: float | None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "total_seconds": round(self.total_seconds, 3),
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "disk_bytes": self.disk_bytes,
            "peak_disk_bytes": self.peak_disk_bytes,
            "bandwidth_bps": self.bandwidth_bps,
            "disk_bps": self.disk_bps,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        return (f"{self.engine}: {format_seconds(self.total_seconds)} at {format_rate(self.bandwidth_bps)}, "
                f"{format_size(self.disk_bytes)} on disk")


# ------------------------------------------------------------------ model

def download_finish_times(sizes: Sequence[int], *, bandwidth_bps: float, concurrency: int,
                          stream_bps: float | None = None, latency_s: float = 0.0) -> list[float]:
    """When each transfer ends, fetching ``sizes`` in order, ``concurrency``
    at a time. Transfers past their ``latency_s`` share ``bandwidth_bps``
    equally, each at most ``stream_bps``. A fluid simulation, exact for
    these rules, one event (a transfer starts flowing or ends) at a time."""
    if bandwidth_bps <= 0 or (stream_bps is not None and stream_bps <= 0):
        raise ConfigError("bandwidth must be positive")
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    cap = math.inf if stream_bps is None else stream_bps
    done = [0.0] * len(sizes)
    waiting = list(range(len(sizes)))[::-1]  # pop() gives manifest order
    active: dict[int, list[float]] = {}  # index -> [flows from, bytes left]
    now = 0.0
    while waiting or active:
        while waiting and len(active) < concurrency:
            i = waiting.pop()
            active[i] = [now + latency_s, float(sizes[i])]
        flowing = [i for i, (t0, _) in active.items() if t0 <= now]
        rate = min(bandwidth_bps / len(flowing), cap) if flowing else 0.0
        nxt = min(now + active[i][1] / rate if i in flowing else active[i][0] for i in active)
        for i in flowing:
            active[i][1] -= rate * (nxt - now)
        now = nxt
        for i in [i for i, (t0, left) in active.items() if t0 <= now and left <= 1e-6 * (1 + sizes[i])]:
            done[i] = now
            del active[i]
    return done


def estimate_pull(layers: Sequence[LayerSpec], *, bandwidth_bps: float, engine: str | Engine = "containerd",
                  disk_bps: float | None = None, write_cache_bytes: int = 0, cpus: float | None = None,
                  concurrency: int | None = None, stream_bps: float | None = None,
                  latency_s: float = DEFAULT_LATENCY_S, sync_latency_s: float = 0.0) -> Estimate:
    """Seconds until ``engine`` has pulled an image made of ``layers``.

    - ``bandwidth_bps``: the link, bytes/s (:func:`~modelimage.units.parse_rate`,
      :data:`STANDARD_LINKS`, :func:`~modelimage.probes.probe_download`);
    - ``disk_bps``: sustained write speed of the engine's storage
      (:func:`~modelimage.probes.probe_disk`); ``None``: never a limit;
    - ``write_cache_bytes``: bytes the page cache absorbs before the disk
      speed matters (0, the default, is right for models larger than the
      node's free memory; :func:`~modelimage.probes.probe_write_cache` reads this machine's);
    - ``cpus``: cores the engine can use (``os.cpu_count()`` on an idle
      machine, :func:`~modelimage.probes.probe_cpus` on a shared one); ``None``: CPU is never
      the limit, right for big nodes;
    - ``concurrency``: overrides the engine's downloads at a time;
    - ``stream_bps``: caps one connection (a long-RTT TCP stream);
    - ``latency_s``: each request's time to first byte (0 on loopback);
    - ``sync_latency_s``: one ``fdatasync`` on the engine's disk
      (:func:`~modelimage.probes.probe_sync_latency`); 0: syncs are free.
    """
    eng = engine_named(engine)
    if bandwidth_bps <= 0 or (disk_bps is not None and disk_bps <= 0):
        raise ConfigError("bandwidth and disk speed must be positive")
    if latency_s < 0 or write_cache_bytes < 0 or sync_latency_s < 0:
        raise ConfigError("latency and write cache must not be negative")
    if cpus is not None and cpus <= 0:
        raise ConfigError("cpus must be positive")
    conc = eng.concurrency if concurrency is None else concurrency

    # 1. fetch: the link, what each stream can verify and store, the engine's CPU
    link = min(bandwidth_bps, eng.fetch_bps)
    per_stream = eng.fetch_stream_bps if stream_bps is None else min(stream_bps, eng.fetch_stream_bps)
    sizes = [layer.size for layer in layers]
    arrived = download_finish_times(sizes, bandwidth_bps=link, concurrency=conc, stream_bps=per_stream,
                                    latency_s=latency_s)
    download_s = max(arrived, default=0.0)

    # 2. extract, per layer
    decompress = [0.0 if layer.compression == "none" else layer.tar_bytes / eng.decompress_bps[layer.compression]
                  for layer in layers]
    layer_fixed = eng.layer_overhead_s + eng.syncs_per_layer * sync_latency_s
    extract = [layer_fixed + layer.tar_bytes / eng.process_bps for layer in layers]
    work = [d + e for d, e in zip(decompress, extract)]
    if eng.pipeline == "after_download":
        end = download_s + sum(work)
    elif eng.pipeline == "in_order":
        end = 0.0
        for t_arrived, w in zip(arrived, work):
            end = max(end, t_arrived) + w
    else:  # streaming: extraction keeps pace with the bytes; the slower of the two wins
        end = max(download_s, latency_s + sum(work)) if layers else 0.0

    # 3. CPU: all of the engine's work spread over the cores is a floor
    unpacked = sum(layer.tar_bytes for layer in layers)
    cpu_work = unpacked * eng.cpu_s_per_byte + sum(decompress)
    cpu_s = 0.0 if cpus is None else cpu_work / cpus

    # 4. disk: writes land in the page cache; what does not fit there waits for the disk, on top
    # (on the project's 2-core VM the writeback slowed the pull rather than overlapping it)
    stored = sum(sizes)
    written = unpacked + (stored if eng.stores_blob else 0)
    over = max(0, written - write_cache_bytes)
    disk_s = 0.0 if disk_bps is None else over / disk_bps

    # 5. fixed costs
    fixed = eng.pull_overhead_s + 2 * latency_s + eng.syncs_per_pull * sync_latency_s  # + manifest, config
    total = fixed + max(end, cpu_s) + disk_s

    notes: list[str] = []
    if cpu_s > end:
        cores = f"{cpus:g} core" + ("" if cpus == 1 else "s")
        notes.append(f"{eng.name} is CPU-bound here: {format_seconds(cpu_work)} of CPU work on {cores}")
    if disk_s:
        notes.append(f"the disk adds {format_seconds(disk_s)}: {format_size(written)} written, {format_size(over)} "
                     f"of it beyond the page cache, at {format_rate(disk_bps or 0)}")
    elif layers and link < bandwidth_bps:
        notes.append(f"{eng.name} cannot verify and store faster than {format_rate(link)}: "
                     "a faster link will not make this pull faster")
    if eng.keeps_compressed:
        notes.append(f"{eng.name} keeps each blob in its content store next to the unpacked layer "
                     f"({format_size(stored)} + {format_size(unpacked)})")
    if any(decompress):
        notes.append(f"decompression adds {format_seconds(sum(decompress))}; weights barely compress "
                     "(docs/benchmarks.md)")
    if not eng.source.startswith("measured"):
        notes.append(f"{eng.name} is not measured on this project's machines ({eng.source})")

    phases = {
        "overhead": fixed + layer_fixed * len(layers),
        "download": download_s,
        "decompress": sum(decompress),
        "extract": sum(layer.tar_bytes / eng.process_bps for layer in layers),
        "cpu": cpu_s,
        "disk": disk_s,
    }
    return Estimate(total_seconds=total, phases=phases, disk_bytes=unpacked + (stored if eng.keeps_compressed else 0),
                    peak_disk_bytes=written, engine=eng.name, bandwidth_bps=bandwidth_bps, disk_bps=disk_bps,
                    notes=tuple(notes))


# ------------------------------------------------------------------ alternatives

@dataclass(frozen=True)
class Option:
    """One way to get the same model onto a node.

    ``ready_seconds``: until every weight byte is local and readable (what
    a model server waits for before it serves). ``first_byte_seconds``:
    until the container can start and read anything at all.
    """

    name: str
    ready_seconds: float
    first_byte_seconds: float
    disk_bytes: int
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ready_seconds": round(self.ready_seconds, 3),
                "first_byte_seconds": round(self.first_byte_seconds, 3),
                "disk_bytes": self.disk_bytes, "notes": list(self.notes)}


def storage_options(files: Sequence[int], *, bandwidth_bps: float, disk_bps: float | None = None,
                    write_cache_bytes: int = 0, cpus: float | None = None, engine: str | Engine = "containerd",
                    layers: Sequence[LayerSpec] | None = None, connections: int = 8, part_size: int = 64 * MiB,
                    stream_bps: float | None = None, latency_s: float = DEFAULT_LATENCY_S) -> list[Option]:
    """The same model (``files``: the sizes of its files) delivered three
    ways, fastest to ready first:

    - **image layers**, pulled by ``engine`` (one plain tar layer per file
      unless ``layers`` gives the real plan);
    - **object storage at start-up**: ``connections`` parallel ranged GETs
      of ``part_size`` parts, written straight to local disk (an init
      container or the server's own loader): no engine work, one write;
    - **lazily loaded image** (SOCI, eStargz): the container starts after
      the metadata, but a server reads every weight before it serves, so
      ready is still bounded by the link (a lower bound: see its notes).

    The other arguments mean what they mean for :func:`estimate_pull`.
    """
    eng = engine_named(engine)
    if connections < 1 or part_size < 1:
        raise ConfigError("storage_options needs at least one connection and a positive part size")
    total = sum(files)
    if layers is None:
        layers = [LayerSpec(size) for size in files]

    def disk_s(written: int) -> float:
        return 0.0 if disk_bps is None else max(0, written - write_cache_bytes) / disk_bps

    pulled = estimate_pull(layers, bandwidth_bps=bandwidth_bps, engine=eng, disk_bps=disk_bps,
                           write_cache_bytes=write_cache_bytes, cpus=cpus, stream_bps=stream_bps,
                           latency_s=latency_s)
    image = Option(f"image layers ({eng.name} pull)", pulled.total_seconds, pulled.total_seconds,
                   pulled.disk_bytes, pulled.notes)

    parts = [min(part_size, size - off) for size in files for off in range(0, size, part_size)]
    got = download_finish_times(parts, bandwidth_bps=bandwidth_bps, concurrency=connections,
                                stream_bps=stream_bps, latency_s=latency_s)
    fetch_s = latency_s + max(max(got, default=0.0), disk_s(total))  # + one listing request
    objects = Option(
        f"object storage at start-up ({connections} ranged GETs)", fetch_s, fetch_s, total,
        ("no engine work: bytes go straight to their files, so only the link and the disk count",
         "integrity is the loader's job (a manifest of sha256s, or object checksums), and the weights live "
         "outside the image: versions and access control are managed separately"),
    )

    # metadata first (manifest, config, index/TOC, mount), then every byte on demand or by prefetch
    first = eng.pull_overhead_s + 4 * latency_s
    read_link = bandwidth_bps if stream_bps is None else min(bandwidth_bps, connections * stream_bps)
    decompress = sum(0.0 if layer.compression == "none" else layer.tar_bytes / eng.decompress_bps[layer.compression]
                     for layer in layers)
    lazy_ready = first + max(total / read_link + decompress, disk_s(total))
    lazy = Option(
        "lazily loaded image (SOCI / eStargz)", lazy_ready, first, total,
        ("a lower bound: every weight is read before the server is ready, in chunks on demand, and the first "
         "read of each chunk waits a round trip",
         "needs the soci or stargz snapshotter on every node; SOCI leaves layers under 10 MB unindexed; "
         "eStargz layers are gzip (about 30 MB/s per core to build, docs/benchmarks.md)",
         "pays off when a container reads only part of its image, not for a server that loads all its weights"),
    )
    return sorted([image, objects, lazy], key=lambda o: o.ready_seconds)
