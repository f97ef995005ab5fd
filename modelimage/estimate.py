"""How long does pulling a model image take? A measured model, per engine.

On a fast link the network is not what a pull waits for: on this project's
machines ``podman pull`` of a 1 GiB image from a loopback registry takes
7-10 s while plain GETs of the same blobs take 0.6 s (docs/benchmarks.md,
"Pull time per engine"). The engine hashes every byte (more than once),
stores the blob, untars it into a layer and commits it; that work has a
measured cost per byte, per stream and per layer. So an estimate here is a
small timeline simulation of what each engine does:

1. **fetch**: layers are downloaded ``concurrency`` at a time, in manifest
   order. The active transfers share the link fairly; each is also capped
   by what the engine can verify and store per stream
   (``fetch_stream_bps``: one goroutine chain hashing and writing), and all
   together by ``fetch_bps``. Each request first waits ``latency_s``.
2. **extract**: per layer, a fixed overhead + decompression (none for plain
   tar) + the engine's per-byte work (untar, diffID hash, tar-split) at
   ``process_bps``. When depends on the engine's ``pipeline``:
   ``"after_download"`` (every blob first, then the layers one by one:
   ``ctr pull`` 1.6), ``"in_order"`` (layer *i* as soon as it has arrived
   and layer *i-1* is done: Docker, and podman 4.3 — a 16 MiB first layer
   was applied 0.3 s into a pull whose other layers took 6 s) or
   ``"streaming"`` (bytes are extracted as they arrive).
3. **CPU**: with ``cpus`` given, the pull takes at least its measured CPU
   work (``cpu_s_per_byte``) spread over that many cores. On the 2-core VM
   the fetch and the extraction compete for the same cores, and this floor
   is what a fast link runs into.
4. **disk**: engines do not fsync layer data (podman 4.3: 137 fdatasync
   calls in a 1 GiB pull, all metadata; strace, 2026-11-25), so writes go
   to the page cache. Bytes beyond ``write_cache_bytes`` (what the cache
   takes before background writeback starts: :func:`probe_write_cache`)
   add their time at ``disk_bps`` on top: on the 2-core VM, pulls that went
   past it slowed down rather than overlapping the writeback.
5. a fixed per-pull overhead (start-up, resolve, manifest, config, image
   commit) and two request latencies for manifest and config.

The per-engine constants are MEASURED where they could be (podman and
containerd on this project's machine, ``benchmarks/pull_calibration.py``;
results, the fit and how well it predicts other sizes in docs/benchmarks.md)
and cited where they could not (Docker: no daemon here). Bandwidth, disk
speed, write cache and cores are the caller's, best measured with
:func:`probe_download`, :func:`probe_disk`, :func:`probe_write_cache` and
:func:`probe_cpus`.

Everything here except the ``probe_*`` functions is pure: no I/O.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError, ModelImageError
from .units import format_seconds, format_size

if TYPE_CHECKING:  # httpx is only needed by probe_download
    import httpx

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
      disk's sync latency (:func:`probe_sync_latency`): nothing on a local
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


# Decompression, bytes of *tar* per second. Inside the engines it was
# measured as what a gzip layer adds to the pull (512 MiB of fp16-like
# weights, level 6, one layer, vs the same tar uncompressed; 2026-11-25):
# podman 56 MB/s (it decompresses twice: while fetching, for the diffID, and
# again while applying), containerd 74 MB/s (once, while unpacking). zstd
# was not measured inside an engine: it is taken as gzip x 2.9, the ratio of
# CPython's zlib (183 MB/s) to the zstandard package (536 MB/s) on the same
# weights, same day.
_ZSTD_OVER_GZIP = 536 / 183

# podman 4.3.1 (containers/image 5.23, containers/storage overlay), measured
# on the project's machine (2-core VM) 2026-11-25 by
# benchmarks/pull_calibration.py, fitted on 256 MiB and 1 GiB images in 1,
# 4 and 8 layers; docs/benchmarks.md has the fit and its check on 2 GiB.
# 6 downloads at a time: containers/image copy/copy.go maxParallelDownloads
# = uint(6). Layers are applied in order as soon as they and the ones
# before them have arrived (storage destination's queueOrCommit; seen here:
# a 16 MiB first layer was applied 0.3 s into the pull).
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
    # containerd 1.6.20 `ctr images pull`, overlayfs snapshotter, measured and
    # fitted the same way. ctr 1.6 fetches every blob into the content store,
    # then unpacks (cmd/ctr/commands/images/pull.go: content.Fetch, then
    # Unpack), with no download limit; the CRI plugin that kubelet drives
    # defaults to max_concurrent_downloads = 3, used here. The blobs stay in the
    # content store next to the snapshot (containerd issue 4249: a 12 GB image
    # needed 24 GB of disk).
    "containerd": Engine(
        name="containerd", concurrency=3, pipeline="after_download",
        pull_overhead_s=0.65, layer_overhead_s=0.0, fetch_stream_bps=120e6, fetch_bps=189e6, process_bps=355e6,
        decompress_bps=MappingProxyType({"gzip": 74e6, "zstd": 74e6 * _ZSTD_OVER_GZIP}), cpu_s_per_byte=12.25e-9,
        stores_blob=True, keeps_compressed=True,
        source="measured: containerd 1.6.20 ctr pull, loopback registry, 2-core VM, 2026-11-25 (docs/benchmarks.md)",
        # strace -f -c of the daemon during ctr pull: 49 fsync+fdatasync for 1 layer, 179 for 8
        syncs_per_pull=30, syncs_per_layer=19,
    ),
    # Docker (moby) cannot run here (no daemon on the project's machines), so
    # its per-byte costs are podman's measured ones (both verify the blob into
    # a temp file and untar it with Go's archive/tar) and it decompresses once,
    # as containerd does. What differs is cited: max-concurrent-downloads = 3
    # by default, layers extracted in order as their downloads finish, the
    # temp blob deleted after. Its syncs were not counted (0).
    "docker": replace(
        _PODMAN, name="docker", concurrency=3,
        decompress_bps=MappingProxyType({"gzip": 74e6, "zstd": 74e6 * _ZSTD_OVER_GZIP}),
        source="cited: moby max-concurrent-downloads=3, in-order extraction; per-byte costs taken from podman",
        syncs_per_pull=0, syncs_per_layer=0,
    ),
    # modelimage pull: 3 blobs at once (one streaming GET each on loopback,
    # ranged GETs elsewhere), each file written to its place while the blob's
    # sha256 is checked; no temp blob, nothing kept twice. Measured end to end
    # (benchmarks/bench_pull.py, 2026-11-25, 2-core VM, loopback registry,
    # 2.15 GB in 5 layers): 4.95 s median (434 MB/s), about 2.3 ns of CPU per
    # byte (hash, page-cache writes, HTTP) on cores it shares with the
    # registry, 0.3 s of start-up; curl GETs of the same blobs: 606 MB/s. The
    # estimate vs-pull test measured 1.07 GB in 1.97-2.47 s (this model: 2.53 s).
    # CPython zlib 183 MB/s and zstandard 536 MB/s decompressing fp16 weights.
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

    - ``bandwidth_bps``: the link, bytes/s (:func:`parse_rate`,
      :data:`STANDARD_LINKS`, :func:`probe_download`);
    - ``disk_bps``: sustained write speed of the engine's storage
      (:func:`probe_disk`); ``None``: never a limit;
    - ``write_cache_bytes``: bytes the page cache absorbs before the disk
      speed matters (0, the default, is right for models larger than the
      node's free memory; :func:`probe_write_cache` reads this machine's);
    - ``cpus``: cores the engine can use (``os.cpu_count()`` on an idle
      machine, :func:`probe_cpus` on a shared one); ``None``: CPU is never
      the limit, right for big nodes;
    - ``concurrency``: overrides the engine's downloads at a time;
    - ``stream_bps``: caps one connection (a long-RTT TCP stream);
    - ``latency_s``: each request's time to first byte (0 on loopback);
    - ``sync_latency_s``: one ``fdatasync`` on the engine's disk
      (:func:`probe_sync_latency`); 0: syncs are free.
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


# ------------------------------------------------------------------ rates

_RATE_RE = re.compile(
    r"""^\s*(?P<num>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*
        (?:(?P<prefix>[kKmMgGtT])(?P<binary>i?))?
        (?P<base>bits?|Bits?|BITS?|b|B|bytes?|Bytes?|BYTES?)?
        \s*(?P<per>/\s*s(?:ec)?|ps)?\s*$""",
    re.VERBOSE,
)
_PREFIX = {"k": 3, "m": 6, "g": 9, "t": 12}
_EXAMPLES = "examples: 100Mbit/s, 1Gbps, 200MB/s, 1.5GiB/s, 125000000 (bytes/s)"


def parse_rate(text: str | int | float, *, what: str = "rate") -> float:
    """A transfer rate in bytes per second.

    ``b``/``bit`` means bits and ``B``/``byte`` bytes, as links are sold
    (unlike :func:`modelimage.units.parse_size`, where ``b`` is a byte);
    ``k M G T`` are powers of 1000 whatever their case, ``Ki Mi Gi Ti`` of
    1024; ``/s`` or ``ps`` is required after a unit, so a size is not taken
    for a rate. A bare number is bytes per second. ``"1Gbps"`` -> 1.25e8,
    ``"200MB/s"`` -> 2e8, ``"1.5GiB/s"`` -> 1610612736.0.
    """
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise ConfigError(f"{what}: cannot read {text!r} as a rate ({_EXAMPLES})")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _RATE_RE.match(text)
        if not m:
            raise ConfigError(f"{what}: cannot read {text!r} as a rate ({_EXAMPLES})")
        prefix, base, per = m.group("prefix"), m.group("base"), m.group("per")
        if (prefix or base) and not base:
            raise ConfigError(f"{what}: {text!r} does not say bits or bytes; write e.g. "
                              f"{m.group('num')}{prefix}{m.group('binary')}bit/s or {m.group('num')}{prefix}"
                              f"{m.group('binary')}B/s")
        if base and not per:
            raise ConfigError(f"{what}: {text!r} is a size, not a rate; write {text.strip()}/s")
        if per and not base:
            raise ConfigError(f"{what}: cannot read {text!r} as a rate ({_EXAMPLES})")
        value = float(m.group("num"))
        if prefix:
            value *= 1024 ** " kmgt".index(prefix.lower()) if m.group("binary") else 10 ** _PREFIX[prefix.lower()]
        if base == "b" or (base and base.lower().startswith("bit")):
            value /= 8
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what}: {text!r} must be a positive rate")
    return value


def format_rate(bps: float) -> str:
    """Bytes per second for people, with the bit rate links are sold in:
    ``125 MB/s (1 Gbit/s)``."""
    if math.isinf(bps):
        return "unlimited"
    bits = bps * 8
    for div, unit in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= div:
            return f"{format_size(bps)}/s ({bits / div:.3g} {unit})"
    return f"{format_size(bps)}/s ({bits:.0f} bit/s)"


# ------------------------------------------------------------------ probes (I/O)

def probe_disk(directory: str | os.PathLike, size: int = 256 * MiB, *, chunk: int = 8 * MiB) -> float:
    """Write speed of the disk under ``directory``, in bytes/s: ``size``
    bytes written and fsync'ed to a temporary file, which is then removed.
    Not pure: this is the probe. On a VM whose disk the host caches, the
    answer can jump between runs (240-1570 MB/s within minutes on the
    project's machines, docs/benchmarks.md)."""
    if size < 1 or chunk < 1:
        raise ConfigError("probe_disk needs a positive size")
    data = os.urandom(chunk)  # incompressible, in case the filesystem compresses
    try:
        fd, name = tempfile.mkstemp(prefix=".modelimage-disk-probe-", dir=Path(directory))
    except OSError as e:
        raise ModelImageError(f"cannot measure the disk under {directory}: {e}") from e
    try:
        t = time.perf_counter()
        left = size
        while left > 0:
            left -= os.write(fd, memoryview(data)[: min(left, chunk)])
        os.fsync(fd)
        elapsed = time.perf_counter() - t
    except OSError as e:
        raise ModelImageError(f"cannot measure the disk under {directory}: {e}") from e
    finally:
        os.close(fd)
        os.unlink(name)
    return size / max(elapsed, 1e-9)


def probe_download(url: str, *, client: httpx.Client | None = None, connections: int = 4,
                   max_bytes: int = 512 * MiB) -> float:
    """Bytes/s of ``connections`` parallel ranged GETs of one blob URL (e.g.
    ``http://HOST/v2/REPO/blobs/sha256:...``), reading at most ``max_bytes``
    of it in equal ranges. Not pure: this is the probe.

    ``client`` (httpx, default a fresh one) makes the first ranged request,
    so registry auth (pass a client that carries it) and redirects to blob
    storage work as they do for a puller. The bulk ranges are then read with
    ``http.client`` from the URL and credentials that request ended with:
    httpx's pure-Python reads top out at 0.5-0.9 GB/s here, below loopback
    (http.client ``readinto``: 1.2 GB/s on one connection, 1.45 GB/s on
    four; 2026-11-25). A server that ignores ``Range`` still gives a fair
    number: each connection reads its share of bytes from the start.
    """
    import http.client
    import ssl

    import httpx

    if connections < 1 or max_bytes < 1:
        raise ConfigError("probe_download needs at least one connection and one byte")
    own = client is None
    c = client or httpx.Client(timeout=httpx.Timeout(60.0), follow_redirects=True)
    try:
        first = c.get(url, headers={"Range": "bytes=0-0"})
        first.raise_for_status()
        total = _content_range_total(first.headers.get("content-range")) or len(first.content) or max_bytes
        final = first.url
        carry = {k: v for k, v in first.request.headers.items() if k.lower() in ("authorization", "cookie")}
    except httpx.HTTPError as e:
        raise ModelImageError(f"cannot measure the download speed of {url}: {e}") from e
    finally:
        if own:
            c.close()

    want = min(total, max_bytes)
    n = max(1, min(connections, want // MiB))
    bounds = [(want * k // n, want * (k + 1) // n - 1) for k in range(n)]
    got = [0] * n
    errors: list[BaseException] = []
    target = final.raw_path.decode("ascii")
    port = final.port or (443 if final.scheme == "https" else 80)

    def fetch(k: int) -> None:
        lo, hi = bounds[k]
        if final.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                final.host, port, timeout=60, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(final.host, port, timeout=60)
        try:
            conn.request("GET", target, headers={**carry, "Range": f"bytes={lo}-{hi}"})
            r = conn.getresponse()
            if r.status not in (200, 206):
                raise ModelImageError(f"cannot measure the download speed of {url}: HTTP {r.status} {r.reason}")
            buf = memoryview(bytearray(MiB))
            goal = hi - lo + 1
            while got[k] < goal:
                m = r.readinto(buf[: min(MiB, goal - got[k])])
                if not m:
                    break
                got[k] += m
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=fetch, args=(k,), daemon=True) for k in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if errors:
        e = errors[0]
        if isinstance(e, ModelImageError):
            raise e
        raise ModelImageError(f"cannot measure the download speed of {url}: {e}") from e
    return sum(got) / max(elapsed, 1e-9)


def _content_range_total(value: str | None) -> int | None:
    """``bytes 0-0/1234`` -> 1234."""
    m = re.match(r"^\s*bytes\s+\S+/([0-9]+)\s*$", value or "")
    return int(m.group(1)) if m else None


def probe_sync_latency(directory: str | os.PathLike, count: int = 15) -> float:
    """Seconds one ``fdatasync`` of a small write takes on the disk under
    ``directory`` (the median of ``count``): what each of an engine's
    metadata syncs costs. ~0.2-0.4 ms on the project's VM; network disks
    take milliseconds. Not pure: this is the probe."""
    import statistics

    try:
        fd, name = tempfile.mkstemp(prefix=".modelimage-sync-probe-", dir=Path(directory))
    except OSError as e:
        raise ModelImageError(f"cannot measure the disk under {directory}: {e}") from e
    times = []
    try:
        block = os.urandom(4096)
        for _ in range(max(1, count)):
            os.write(fd, block)
            t = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    except OSError as e:
        raise ModelImageError(f"cannot measure the disk under {directory}: {e}") from e
    finally:
        os.close(fd)
        os.unlink(name)
    return statistics.median(times)


# One core of the machine the engines were calibrated on (2-core AMD EPYC VM,
# SHA-NI): CPython's hashlib sha256 of 1 MiB blocks, 2026-11-25.
REFERENCE_CORE_SHA256_BPS = 1.55e9


def probe_cpus(seconds: float = 1.0) -> float:
    """Cores this process can get right now, counted in cores of the machine
    the engines were calibrated on: sha256 rounds done by one thread per core
    (hashlib releases the GIL) against :data:`REFERENCE_CORE_SHA256_BPS`.
    An idle 2-core calibration VM answers ~2; with another job keeping one
    core busy, ~1.3 (the scheduler's fair share); a machine whose cores hash
    half as fast (no SHA extensions, a busy host stealing cycles) answers
    half as many. Pass it as ``cpus``: the engines' CPU work per byte was
    measured on those cores. Not pure: this is a probe, and contention
    changes from second to second."""
    import hashlib

    n = os.cpu_count() or 1
    block = os.urandom(MiB)
    counts = [0] * n
    stop = time.perf_counter() + seconds

    def spin(k: int) -> None:
        while time.perf_counter() < stop:
            hashlib.sha256(block)
            counts[k] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=spin, args=(k,), daemon=True) for k in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rate = sum(counts) * MiB / max(time.perf_counter() - started, 1e-9)
    return max(0.05, rate / REFERENCE_CORE_SHA256_BPS)


def probe_write_cache() -> int:
    """Bytes the page cache can take right now before writes slow to the
    disk's pace: the kernel's background writeback threshold
    (``vm.dirty_background_bytes``, or ``vm.dirty_background_ratio`` percent
    of available memory) minus what is already dirty or under writeback.

    Why the background threshold and not ``vm.dirty_ratio``: pulling 2 GiB
    here (2-core VM, 24 GiB), Dirty climbed to ~2.2 GB (10 %) and stayed
    there while the flusher threads wrote back; the extraction ran 2-3x
    slower from then on, long before writers are throttled at 20 %
    (/proc/meminfo sampled every 0.5 s, 2026-11-25). 0 where /proc does not
    say (not Linux). Not pure: this is a probe.
    """
    try:
        background = int(Path("/proc/sys/vm/dirty_background_bytes").read_text())
        ratio = int(Path("/proc/sys/vm/dirty_background_ratio").read_text())
        meminfo = Path("/proc/meminfo").read_text()
    except (OSError, ValueError):
        return 0

    def kib(field: str) -> int:
        m = re.search(rf"^{field}:\s+([0-9]+) kB", meminfo, re.M)
        return int(m.group(1)) * 1024 if m else 0

    threshold = background or kib("MemAvailable") * ratio // 100
    return max(0, threshold - kib("Dirty") - kib("Writeback"))
