"""How long does pulling a model image take? A model of each engine, fitted
to real pulls on the node (:mod:`modelimage.calibrate`).

On a fast link the network is not what a pull waits for: the engine hashes
every byte (more than once), stores the blob, untars it into a layer and
commits it (docs/benchmarks.md). So a pull costs, per engine, five
constants (:class:`Costs`), each with a physical meaning:

- ``pull_s``: seconds per pull, whatever its size: process start, resolve,
  manifest, config, committing the image;
- ``layer_s``: seconds per layer: its requests, bookkeeping, syncs, the
  snapshot or layer directory;
- ``byte_s``: seconds per byte of tar, the work every byte costs however
  the layers are split (untar, diffID hash, writing the files);
- ``stream_byte_s``: seconds per byte on the busiest download stream: what
  one stream fetches, verifies and stores per second (one chain of reads,
  hashes and writes); why one big layer pulls slower than several;
- ``gzip_byte_s``: seconds per byte of tar that a gzip layer adds
  (decompression; podman decompresses twice).

With the layers' tar bytes ``S``, their count ``n``, the gzip tar bytes
``G`` and ``B`` the bytes of the busiest of the engine's ``concurrency``
download streams (layers handed out in manifest order), the engine's work
is ``E = byte_s*S + stream_byte_s*B + gzip_byte_s*I`` (``I``: ``G`` for an
engine that inflates one layer at a time, less for one that inflates on
each download stream and has cores for them, :func:`inflate_bytes`) and a
pull takes

    pull_s + layer_s*n + max(E, L + tail) + disk

where ``L`` is the time the link needs for the blobs (a fluid simulation:
``concurrency`` transfers share the link, each waits ``latency_s`` first
and goes no faster than its ``connections`` TCP connections),
``tail`` the engine work left when the last byte arrives (the
every-byte work ``byte_s*S + gzip_byte_s*G``: none of it when extraction
streams, the last layer's share when layers are applied in order, all of
it when every blob is fetched first), and
``disk`` what the disk adds once the page cache is full
(:func:`writeback_seconds`: an engine that leaves its writes to the kernel
writes its first ``C`` bytes into the page cache, the rest at the pace the
kernel's writeback drains it, ``D``, both probed on the node by
:mod:`modelimage.probes`; an engine that syncs its own writes pays them in
its calibrated costs instead). On a loopback registry ``L`` is small and the pull is ``E``: that is
what a calibration measures, and :func:`modelimage.fit.fit` finds the
constants by least squares (none negative) on the medians of its pulls.

Without a calibration the built-in :data:`ENGINES` are used: fitted on the
project's 2-core VM, they are off by up to x0.6-x1.9 on other machines and
days (issues 17 and 21), so such an estimate comes with that range.
Everything here is pure: no I/O.
"""

from __future__ import annotations

import math
import os
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
# Time to the first byte of one request: a registry in the same region. Loopback is ~0: pass 0.
DEFAULT_LATENCY_S = 0.05
STANDARD_LINKS: Mapping[str, float] = MappingProxyType({
    "100 Mbit/s": 12.5e6,
    "1 Gbit/s": 125e6,
    "10 Gbit/s": 1.25e9,
})
# What the built-in constants may be off by on another machine or day: real pulls took from 0.6x to
# 1.9x the estimate (estimate/real 1.28-1.9 in issue 17, real/estimate up to 1.5 in docs/benchmarks.md).
BUILTIN_RANGE = (0.6, 1.9)
# zstd is not calibrated (engines' gzip is): it decompresses ~2.9x faster (CPython zlib 183 MB/s,
# zstandard 536 MB/s, on fp16 weights; docs/benchmarks.md).
ZSTD_OVER_GZIP = 536 / 183


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
class Costs:
    """An engine's pull costs (see the module docstring for each
    constant's meaning): seconds, seconds per layer, seconds per byte."""

    pull_s: float
    layer_s: float
    byte_s: float
    stream_byte_s: float
    gzip_byte_s: float

    def __post_init__(self) -> None:
        values = (self.pull_s, self.layer_s, self.byte_s, self.stream_byte_s, self.gzip_byte_s)
        if not all(math.isfinite(v) and v >= 0 for v in values):
            raise ConfigError(f"pull costs must be finite and not negative: {self}")

    def to_json(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class Engine:
    """One container engine: how it schedules a pull, and what it costs.

    ``concurrency``: layer downloads at a time; ``pipeline``: when layers
    are extracted (``after_download``, ``in_order``, ``streaming``);
    ``stores_blob``: the blob is written to disk before it is extracted;
    ``keeps_compressed``: it stays there next to the layer (containerd's
    content store); ``parallel_inflate``: it inflates the layers of its
    download streams at the same time, one CPU core each (modelimage pull;
    podman and containerd inflate one layer after another: on the 2-core
    VM a 1 GiB gzip image in 4 layers took the same decompression time as
    in 1 layer for them, 1.9x less for modelimage, 2026-11-30 quiet run in
    docs/benchmarks.md); ``syncs``: it makes its writes durable itself
    (fsync, modelimage pull), so dirty pages never pile up in the page cache
    and its disk writes are part of its calibrated costs; ``connections``:
    TCP connections one blob is read over (modelimage pull:
    :data:`~modelimage.registry.fetch.DEFAULT_CONNECTIONS` ranged GETs per
    blob from a remote registry, one streaming GET on loopback, where the
    link is no limit; podman and containerd: one GET per blob), so a capped
    connection (``stream_bps``) caps a blob at ``connections`` times that;
    ``source``: where the costs come from."""

    name: str
    concurrency: int
    pipeline: Pipeline
    costs: Costs
    stores_blob: bool
    keeps_compressed: bool
    source: str = ""
    parallel_inflate: bool = False
    syncs: bool = False
    connections: int = 1

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"engine {self.name}: pipeline {self.pipeline!r} is not one of {', '.join(PIPELINES)}")
        if self.concurrency < 1:
            raise ConfigError(f"engine {self.name}: concurrency must be at least 1")
        if self.connections < 1:
            raise ConfigError(f"engine {self.name}: connections must be at least 1")


# Built-in costs: the 5-constant fit of the pulls of 2026-11-25 on the project's 2-core VM (podman 4.3.1,
# containerd 1.6.20 `ctr pull`; 268 MB to 2.15 GB, 1-8 layers, and 512 MiB gzip; docs/benchmarks.md:
# within -22..+20 % of those pulls).
# podman: 6 downloads at a time (containers/image maxParallelDownloads), layers applied in order as they
# arrive. containerd: CRI's max_concurrent_downloads = 3; every blob into the content store, then
# unpack; blobs stay next to the snapshot. Docker (no daemon here): podman's costs, cited 3 downloads,
# gzip once. modelimage pull: 3 blobs at once, files written in place while hashed (bench_pull.py:
# 2.15 GB in 4.95 s after 0.3 s of start-up; CPython's zlib inflates fp16 weights at 183 MB/s); each blob
# is one download stream and one chain (registry.fetch reads it over 2 ranged connections, or one streaming
# GET on loopback, handed in order to one thread that hashes the blob, untars, hashes each file, writes and
# fsyncs it), so a 1-layer pull is one stream however big its layer (docs/benchmarks.md, pullperf).
# Per pull (process start, resolve, manifest, config, commit): the 2026-11-25 fit, on 268 MB and bigger,
# could not see it and left it at 0, so a 1 MiB image came out at 0.1 s (0.06-0.19 s) where podman pulled
# it from loopback in 0.64-1.07 s; the on-node calibrations of 2026-11-30 measured it (podman 0.49 and
# 0.69 s, containerd 0.22 s: docs/benchmarks.md, "Calibrated estimates"), the lower ones are used.
_PODMAN = Engine("podman", 6, "in_order", Costs(0.49, 0.009, 6.36e-9, 5.95e-9, 16.6e-9), stores_blob=True,
                 keeps_compressed=False, source="built-in: podman 4.3.1 on the project's 2-core VM, 2026-11-25")
ENGINES: Mapping[str, Engine] = MappingProxyType({
    "podman": _PODMAN,
    "containerd": Engine("containerd", 3, "after_download", Costs(0.22, 0.066, 6.26e-9, 5.93e-9, 13.2e-9),
                         stores_blob=True, keeps_compressed=True,
                         source="built-in: containerd 1.6.20 ctr pull on the project's 2-core VM, 2026-11-25"),
    "docker": replace(_PODMAN, name="docker", concurrency=3, costs=replace(_PODMAN.costs, gzip_byte_s=13.2e-9),
                      source="built-in: podman's costs with moby's 3 downloads at a time (no Docker daemon measured)"),
    "modelimage": Engine("modelimage", 3, "streaming", Costs(0.3, 0.0, 2.16e-9, 0.0, 5.5e-9), stores_blob=False,
                         keeps_compressed=False, source="built-in: modelimage pull on the project's 2-core VM, "
                         "2026-11-25", parallel_inflate=True, syncs=True, connections=2),
})


def engine_named(name: str | Engine) -> Engine:
    """``ENGINES[name]``, or ``name`` itself when it is an :class:`Engine`."""
    if isinstance(name, Engine):
        return name
    try:
        return ENGINES[name]
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}: use one of {', '.join(ENGINES)}") from None


def inflate_bytes(engine: Engine, layers: Sequence[LayerSpec], cores: int | None = None,
                  concurrency: int | None = None) -> float:
    """How long ``engine`` spends inflating ``layers``, in bytes at one
    core's pace (times ``gzip_byte_s`` gives seconds): the gzip tar bytes
    (zstd ones count ``1 / ZSTD_OVER_GZIP``), one layer after another; for a
    ``parallel_inflate`` engine its download streams (``concurrency``,
    default the engine's) inflate the compressed layers in manifest order,
    one each, sharing the node's CPU ``cores`` (default: this machine's), a
    stream getting at most one core: 4 equal layers on 3 streams and 2
    cores take 2.5 layers' time (the 4th runs alone), 8 take 4 (quiet run 5
    of 2026-11-30: 4-layer gzip pulls 7-21 % slower than 8-layer ones,
    docs/benchmarks.md). A fluid simulation (:func:`download_finish_times`
    with the cores as the bandwidth). 0.0 when no layer is compressed."""
    work = [layer.tar_bytes * (1.0 if layer.compression == "gzip" else 1 / ZSTD_OVER_GZIP)
            for layer in layers if layer.compression != "none"]
    if not engine.parallel_inflate:
        return sum(work)
    cores = cores if cores is not None else (os.cpu_count() or 1)
    streams = engine.concurrency if concurrency is None else concurrency
    return max(download_finish_times(work, bandwidth_bps=float(max(1, cores)), concurrency=streams,
                                     stream_bps=1.0), default=0.0)


# ------------------------------------------------------------------ schedule

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


def busiest_stream_bytes(sizes: Sequence[int], concurrency: int) -> float:
    """Bytes the busiest of ``concurrency`` download streams carries when
    ``sizes`` are handed out in order, each to the first free stream."""
    return max(download_finish_times(sizes, bandwidth_bps=math.inf, concurrency=concurrency, stream_bps=1.0),
               default=0.0)


def written_bytes(engine: Engine, layers: Sequence[LayerSpec]) -> int:
    """Bytes ``engine`` writes pulling ``layers``: the unpacked tar bytes,
    and the blobs too when it stores them first (podman, containerd)."""
    return sum(s.tar_bytes for s in layers) + (sum(s.size for s in layers) if engine.stores_blob else 0)


def writeback_seconds(seconds: float, written: int, cache_bytes: int, writeback_bps: float | None) -> float:
    """How long work of ``seconds`` that writes ``written`` bytes at an
    even pace takes when the page cache takes ``cache_bytes`` of dirty data
    and every byte past that goes at ``writeback_bps`` (bytes/s), the pace
    the kernel's writeback drains it (:func:`modelimage.probes.probe_writeback`):
    ``max(seconds, seconds * cache_bytes / written + (written - cache_bytes) / writeback_bps)``.
    ``writeback_bps=None``: the disk is never the limit. The kernel starts
    writing back at the background threshold and, on the project's VM, the
    writer slowed to that pace from there on (/proc/meminfo sampled while
    pulling 2 GiB, 2026-11-25; podman's 2 GiB pulls of 2026-11-30 implied
    140-170 MB/s past it, docs/benchmarks.md)."""
    if writeback_bps is None or written <= cache_bytes:
        return seconds
    return max(seconds, seconds * cache_bytes / written + (written - cache_bytes) / writeback_bps)


# ------------------------------------------------------------------ estimate

@dataclass(frozen=True)
class Estimate:
    """The estimated pull: ``total_seconds`` and the range ``low_seconds``
    .. ``high_seconds`` it is good to (as far as the calibration's single
    pulls strayed, or :data:`BUILTIN_RANGE` without one).

    ``phases`` (seconds): ``fixed`` the per-pull and per-layer costs;
    ``engine`` the engine's per-byte work, of which ``decompress``; ``link``
    the blobs' transfer at ``bandwidth_bps``; ``disk`` what the disk adds
    for bytes the page cache cannot hold. ``bound`` says what decides:
    ``"link"``, ``"engine"`` (its per-byte work), or ``"overhead"`` (the
    per-pull and per-layer costs outweigh both: a small image).
    ``disk_bytes`` stays on disk, ``peak_disk_bytes`` is the most at any
    time. ``source`` says where the costs come from.
    """

    total_seconds: float
    low_seconds: float
    high_seconds: float
    phases: Mapping[str, float]
    bound: str
    disk_bytes: int
    peak_disk_bytes: int
    engine: str
    bandwidth_bps: float
    disk_bps: float | None
    source: str
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "total_seconds": round(self.total_seconds, 3),
            "range_seconds": [round(self.low_seconds, 3), round(self.high_seconds, 3)],
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "bound": self.bound,
            "disk_bytes": self.disk_bytes,
            "peak_disk_bytes": self.peak_disk_bytes,
            "bandwidth_bps": self.bandwidth_bps,
            "disk_bps": self.disk_bps,
            "source": self.source,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        return (f"{self.engine}: {format_seconds(self.total_seconds)} ({format_seconds(self.low_seconds)}-"
                f"{format_seconds(self.high_seconds)}) at {format_rate(self.bandwidth_bps)}, "
                f"{format_size(self.disk_bytes)} on disk")


def estimate_pull(layers: Sequence[LayerSpec], *, bandwidth_bps: float, engine: str | Engine = "containerd",
                  disk_bps: float | None = None, write_cache_bytes: int = 0, concurrency: int | None = None,
                  stream_bps: float | None = None, latency_s: float = DEFAULT_LATENCY_S,
                  spread: tuple[float, float] = BUILTIN_RANGE, cores: int | None = None) -> Estimate:
    """Seconds until ``engine`` (a name in :data:`ENGINES`, or a calibrated
    :class:`Engine`: :meth:`modelimage.fit.Calibration.engine_model`) has pulled ``layers``.

    - ``bandwidth_bps``: the link, bytes/s (``math.inf``: not a limit);
    - ``disk_bps``: the pace of writes to the engine's storage once the
      page cache is full (:func:`modelimage.probes.probe_writeback`);
      ``None``: never a limit; ``write_cache_bytes``: dirty bytes the page
      cache takes before that (:func:`modelimage.probes.probe_write_cache`);
      see :func:`writeback_seconds`. Not used for an engine that ``syncs``;
    - ``concurrency``: overrides the engine's downloads at a time;
    - ``stream_bps``: caps one connection (a long-RTT TCP stream); a blob
      read over the engine's ``connections`` goes that many times faster;
    - ``latency_s``: each request's time to first byte (0 on loopback);
    - ``spread``: the range, as factors of the total;
    - ``cores``: the node's CPU cores, for engines that inflate layers in
      parallel (default: this machine's).

    Raises ``ConfigError`` on negative or zero rates.
    """
    eng = engine_named(engine)
    c = eng.costs
    if bandwidth_bps <= 0 or (disk_bps is not None and disk_bps <= 0):
        raise ConfigError("bandwidth and disk speed must be positive")
    if latency_s < 0 or write_cache_bytes < 0:
        raise ConfigError("latency and write cache must not be negative")
    conc = eng.concurrency if concurrency is None else concurrency
    sizes = [layer.size for layer in layers]
    tar = sum(layer.tar_bytes for layer in layers)

    # the engine's work, which a loopback calibration measures
    decompress = c.gzip_byte_s * inflate_bytes(eng, layers, cores, conc)
    engine_s = c.byte_s * tar + c.stream_byte_s * busiest_stream_bytes(sizes, conc) + decompress
    # the link, and the engine work still left when its last byte arrives
    link_s = 0.0
    if layers and math.isfinite(bandwidth_bps):
        link_s = max(download_finish_times(sizes, bandwidth_bps=bandwidth_bps, concurrency=conc,
                                           stream_bps=None if stream_bps is None else stream_bps * eng.connections,
                                           latency_s=latency_s))
    every_byte_s = c.byte_s * tar + decompress  # untar, hash, decompress: after each blob has arrived
    tail = {"streaming": 0.0, "after_download": every_byte_s,
            "in_order": every_byte_s * layers[-1].tar_bytes / tar if tar else 0.0}[eng.pipeline]
    # the disk, once the page cache is full (podman and containerd do not fsync layer data)
    written = written_bytes(eng, layers)
    body = max(engine_s, link_s + tail)
    disk_s = 0.0 if eng.syncs else writeback_seconds(body, written, write_cache_bytes, disk_bps) - body
    fixed = c.pull_s + c.layer_s * len(layers) + 2 * latency_s  # + manifest and config requests
    total = fixed + body + disk_s

    bound = "link" if link_s + tail > engine_s else "engine"
    if fixed > max(link_s + tail, engine_s):
        bound = "overhead"
    notes: list[str] = []
    if bound == "overhead":
        notes.append(f"most of it is {eng.name}'s cost per pull and per layer ({format_seconds(fixed)}): "
                     "a faster link or disk will not make this pull much faster")
    elif bound == "engine" and link_s:
        notes.append(f"{eng.name} is the limit, not the link: a faster link will not make this pull faster")
    if disk_s:
        notes.append(f"the disk adds {format_seconds(disk_s)}: {format_size(written)} written, "
                     f"{format_size(written - write_cache_bytes)} of it past what the page cache takes "
                     f"({format_size(write_cache_bytes)}), at the {format_rate(disk_bps or 0)} writeback drains")
    if eng.keeps_compressed:
        notes.append(f"{eng.name} keeps each blob next to the unpacked layer "
                     f"({format_size(sum(sizes))} + {format_size(tar)})")
    if decompress:
        notes.append(f"decompression adds {format_seconds(decompress)}; weights barely compress (docs/benchmarks.md)")
    phases = {"fixed": fixed, "engine": engine_s, "decompress": decompress, "link": link_s, "disk": disk_s}
    return Estimate(total_seconds=total, low_seconds=total * spread[0], high_seconds=total * spread[1],
                    phases=phases, bound=bound, disk_bytes=tar + (sum(sizes) if eng.keeps_compressed else 0),
                    peak_disk_bytes=written, engine=eng.name, bandwidth_bps=bandwidth_bps, disk_bps=disk_bps,
                    source=eng.source, notes=tuple(notes))
