"""How long does pulling a model image take? A measured model, per engine.

On a fast link the network is not what a pull waits for: on this project's
machines a ``podman pull`` of a 2 GiB image from a loopback registry takes
11-13 s while plain GETs of the same blobs take 0.7 s (docs/benchmarks.md).
The engine verifies every byte, stores it, untars it into a layer and
commits it, and that work has a measured cost per byte and per layer. So an
estimate here is a small timeline simulation of what each engine does:

1. **download**: layers are fetched ``concurrency`` at a time, in manifest
   order; the active transfers share the link fairly (each optionally capped
   by a per-connection rate, as a long-RTT TCP stream is); every request
   first waits ``latency_s``. Engines that store the blob before extracting
   it (all but a streaming puller) cannot download faster than the disk
   writes.
2. **extract**: per layer, a fixed overhead (layer bookkeeping, mounts,
   metadata) + decompression (none for plain tar) + the engine's own
   per-byte work (hashing, untar, tar-split metadata, copies) + writing the
   files to disk. When an engine extracts depends on its *pipeline*:
   ``"after_download"`` (every blob first, then the layers one by one),
   ``"in_order"`` (layer *i* as soon as it has arrived and layer *i-1* is
   done: Docker) or ``"streaming"`` (bytes are extracted as they arrive).
3. a fixed per-pull overhead (resolve the tag, manifest, config, commit the
   image) and two request latencies for manifest and config.

The per-engine constants are MEASURED where they could be (podman and
containerd on this project's machine, ``benchmarks/pull_calibration.py``;
results and the fit in docs/benchmarks.md, "Pull time per engine") and
cited where they could not (Docker's defaults). Bandwidth and disk speed
are the caller's, best measured with :func:`probe_download` and
:func:`probe_disk`.

Everything here except the two ``probe_*`` functions is pure: no I/O.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
# (token reuse, one redirect to blob storage). Loopback is ~0.
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
        if self.size < 0 or self.unpacked < 0:
            raise ConfigError(f"layer sizes must not be negative (size={self.size}, unpacked={self.unpacked})")
        if self.compression == "none" and self.unpacked != self.size:
            raise ConfigError(f"an uncompressed layer unpacks to its own size ({self.size}), not {self.unpacked}")

    @property
    def tar_bytes(self) -> int:
        assert self.unpacked is not None
        return self.unpacked


@dataclass(frozen=True)
class Engine:
    """What one container engine does when it pulls, and what that costs.

    - ``concurrency``: layer downloads at a time.
    - ``pipeline``: when layers are extracted (see the module docstring).
    - ``pull_overhead_s``: fixed cost per pull (resolve, manifest, config,
      image commit), measured.
    - ``layer_overhead_s``: fixed cost per layer (layer bookkeeping,
      directories, mounts), measured.
    - ``process_bps``: the engine's own per-byte work on the unpacked tar
      beyond writing it to disk (sha256 of blob and diffID, untar, tar-split,
      copies through the temp blob), measured.
    - ``decompress_bps``: per codec, bytes of *output* per second.
    - ``stores_blob``: the blob goes to disk before extraction (content
      store, temp file), so the download is disk-bound too and writes twice.
    - ``keeps_compressed``: the blob stays on disk next to the unpacked
      layer (containerd's content store).
    - ``source``: where the numbers come from.
    """

    name: str
    concurrency: int
    pipeline: Pipeline
    pull_overhead_s: float
    layer_overhead_s: float
    process_bps: float
    decompress_bps: Mapping[str, float]
    stores_blob: bool
    keeps_compressed: bool
    source: str = ""

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise ConfigError(f"engine {self.name}: pipeline {self.pipeline!r} is not one of {', '.join(PIPELINES)}")
        if self.concurrency < 1:
            raise ConfigError(f"engine {self.name}: concurrency must be at least 1")
        if self.process_bps <= 0:
            raise ConfigError(f"engine {self.name}: process_bps must be positive")

    @property
    def extracts_in_order(self) -> bool:
        """Layers are extracted one at a time, in manifest order."""
        return self.pipeline in ("after_download", "in_order")

    @property
    def overlaps_download_and_extract(self) -> bool:
        return self.pipeline != "after_download"


# Decompression, output bytes per second on one core of the project's
# machine (2-core AMD EPYC VM), 2026-11-25: zlib/zstd through Python on
# fp16 weights; see docs/benchmarks.md "Pull time per engine".
_DECOMPRESS_BPS: Mapping[str, float] = MappingProxyType({"none": math.inf, "gzip": 300e6, "zstd": 1000e6})

ENGINES: Mapping[str, Engine] = MappingProxyType({
    # podman 4.3.1 (containers/image 5.23, containers/storage overlay), measured
    # on the project's machine 2026-11-25 by benchmarks/pull_calibration.py.
    # 6 downloads at a time: containers/image copy/copy.go maxParallelDownloads
    # = uint(6) ("Let's follow Firefox").
    "podman": Engine(
        name="podman", concurrency=6, pipeline="after_download",
        pull_overhead_s=0.3, layer_overhead_s=0.05, process_bps=200e6,
        decompress_bps=_DECOMPRESS_BPS, stores_blob=True, keeps_compressed=False,
        source="measured: podman 4.3.1, loopback registry, 2026-11-25 (docs/benchmarks.md)",
    ),
    # containerd 1.6.20, ctr images pull, overlayfs snapshotter, measured on the
    # project's machine 2026-11-25. ctr 1.6 fetches every blob into the content
    # store, then unpacks (cmd/ctr/commands/images/pull.go: content.Fetch, then
    # image.Unpack); the blobs stay in the content store next to the snapshot
    # (containerd issue 4249: a 12 GB image needed 24 GB).
    "containerd": Engine(
        name="containerd", concurrency=3, pipeline="after_download",
        pull_overhead_s=0.3, layer_overhead_s=0.05, process_bps=150e6,
        decompress_bps=_DECOMPRESS_BPS, stores_blob=True, keeps_compressed=True,
        source="measured: containerd 1.6.20 ctr pull, loopback registry, 2026-11-25 (docs/benchmarks.md)",
    ),
    # Docker (moby) cannot run here (no daemon on the project's machines), so
    # its per-byte cost is podman's measured one: both hash the blob, keep a
    # temp file and untar it with Go's archive/tar. What differs is cited:
    # max-concurrent-downloads = 3 by default, layers extracted in order as
    # their downloads finish (moby distribution/xfer), temp blob deleted after.
    "docker": Engine(
        name="docker", concurrency=3, pipeline="in_order",
        pull_overhead_s=0.3, layer_overhead_s=0.05, process_bps=200e6,
        decompress_bps=_DECOMPRESS_BPS, stores_blob=True, keeps_compressed=False,
        source="cited: moby max-concurrent-downloads=3, in-order extraction; per-byte cost assumed = podman's",
    ),
    # modelimage pull (planned): parallel ranged GETs, each file streamed to
    # its place while its sha256 is checked; no temp blob, nothing kept twice.
    # Per-byte cost = Python hashlib sha256, 1.6 GB/s on one core here
    # (shared/ENVIRONMENT.md, "Hashing and disk").
    "modelimage": Engine(
        name="modelimage", concurrency=8, pipeline="streaming",
        pull_overhead_s=0.05, layer_overhead_s=0.0, process_bps=1.6e9,
        decompress_bps=_DECOMPRESS_BPS, stores_blob=False, keeps_compressed=False,
        source="model: streaming ranged GETs; sha256 1.6 GB/s measured 2026-11-25; not a measured pull",
    ),
})


def engine_named(name: str | Engine) -> Engine:
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

    ``phases`` are the seconds of work of each kind, summed over layers
    (``download`` is the wall time from the first request to the last
    byte). They overlap when the engine pipelines, so they add up to more
    than ``total_seconds`` then. ``disk_bytes`` is what stays on disk,
    ``peak_disk_bytes`` the most at any time (temp blobs before they are
    deleted).
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
    at a time. Transfers that are past their ``latency_s`` share
    ``bandwidth_bps`` equally, each at most ``stream_bps``. Pure fluid
    simulation: exact for these rules, event by event."""
    if bandwidth_bps <= 0:
        raise ConfigError("bandwidth must be positive")
    cap = math.inf if stream_bps is None else stream_bps
    n = len(sizes)
    done = [0.0] * n
    waiting = list(range(n))[::-1]  # pop() gives manifest order
    active: dict[int, list[float]] = {}  # index -> [starts_flowing_at, bytes_left]
    now = 0.0
    while waiting or active:
        while waiting and len(active) < concurrency:
            i = waiting.pop()
            active[i] = [now + latency_s, float(sizes[i])]
        flowing = [i for i, (t0, _) in active.items() if t0 <= now + 1e-12]
        rate = min(bandwidth_bps / len(flowing), cap) if flowing else 0.0
        # next event: a transfer finishes, or one starts flowing
        nxt = math.inf
        for i, (t0, left) in active.items():
            nxt = min(nxt, now + left / rate if i in flowing else t0)
        for i in flowing:
            active[i][1] -= rate * (nxt - now)
        now = nxt
        for i in [i for i, (t0, left) in active.items() if t0 <= now + 1e-12 and left <= 1e-6]:
            done[i] = now
            del active[i]
    return done


def estimate_pull(layers: Sequence[LayerSpec], *, bandwidth_bps: float, engine: str | Engine = "containerd",
                  disk_bps: float | None = None, concurrency: int | None = None,
                  stream_bps: float | None = None, latency_s: float = DEFAULT_LATENCY_S) -> Estimate:
    """Seconds until ``engine`` has pulled an image made of ``layers``.

    ``bandwidth_bps`` is the link (bytes/s); ``disk_bps`` the sustained
    write speed of the engine's storage (``None``: not a limit); ``concurrency``
    overrides the engine's downloads-at-a-time; ``stream_bps`` caps one
    connection; ``latency_s`` is each request's time to first byte.
    """
    eng = engine_named(engine)
    if bandwidth_bps <= 0 or (disk_bps is not None and disk_bps <= 0):
        raise ConfigError("bandwidth and disk speed must be positive")
    if latency_s < 0:
        raise ConfigError("latency must not be negative")
    conc = eng.concurrency if concurrency is None else concurrency
    if conc < 1:
        raise ConfigError("concurrency must be at least 1")
    disk = math.inf if disk_bps is None else disk_bps
    notes: list[str] = []

    # 1. downloads; an engine that stores the blob first cannot outrun its disk
    link = min(bandwidth_bps, disk) if eng.stores_blob else bandwidth_bps
    sizes = [layer.size for layer in layers]
    arrived = download_finish_times(sizes, bandwidth_bps=link, concurrency=conc,
                                    stream_bps=stream_bps, latency_s=latency_s)
    download_s = max(arrived, default=0.0)

    # 2. per-layer extraction work
    decompress = [0.0 if layer.compression == "none" else layer.tar_bytes / eng.decompress_bps[layer.compression]
                  for layer in layers]
    process = [layer.tar_bytes / eng.process_bps for layer in layers]
    write = [layer.tar_bytes / disk for layer in layers]
    work = [eng.layer_overhead_s + d + p + w for d, p, w in zip(decompress, process, write)]

    if eng.pipeline == "after_download":
        end = download_s + sum(work)
    elif eng.pipeline == "in_order":
        end = 0.0
        for t_arrived, w in zip(arrived, work):
            end = max(end, t_arrived) + w
    else:  # streaming: extraction keeps pace with the bytes, whichever is slower wins
        end = max(download_s, latency_s + sum(work)) if layers else 0.0
    fixed = eng.pull_overhead_s + 2 * latency_s  # manifest + config requests
    total = fixed + end

    unpacked = sum(layer.tar_bytes for layer in layers)
    stored = sum(sizes)
    disk_bytes = unpacked + (stored if eng.keeps_compressed else 0)
    peak = unpacked + (stored if eng.stores_blob else 0)

    if link < bandwidth_bps:
        notes.append(f"downloads are limited by the disk ({format_rate(disk)}), not the link")
    if sum(process) > download_s:
        notes.append(f"{eng.name} spends longer processing ({format_seconds(sum(process))}) than downloading "
                     f"({format_seconds(download_s)}): a faster link will not help much")
    if eng.keeps_compressed:
        notes.append(f"{eng.name} keeps each blob in its content store next to the unpacked layer "
                     f"({format_size(stored)} + {format_size(unpacked)})")
    if any(layer.compression != "none" for layer in layers):
        notes.append(f"decompression: {format_seconds(sum(decompress))} "
                     f"(weights barely compress: see docs/benchmarks.md)")
    if eng.source.startswith(("cited", "model")):
        notes.append(f"{eng.name} is not measured here: {eng.source}")

    phases = {
        "overhead": fixed + eng.layer_overhead_s * len(layers),
        "download": download_s,
        "decompress": sum(decompress),
        "process": sum(process),
        "disk_write": sum(write) if disk_bps is not None else 0.0,
    }
    return Estimate(total_seconds=total, phases=phases, disk_bytes=disk_bytes, peak_disk_bytes=peak,
                    engine=eng.name, bandwidth_bps=bandwidth_bps, disk_bps=disk_bps, notes=tuple(notes))


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
                    engine: str | Engine = "containerd", layers: Sequence[LayerSpec] | None = None,
                    connections: int = 8, part_size: int = 64 * MiB, stream_bps: float | None = None,
                    latency_s: float = DEFAULT_LATENCY_S) -> list[Option]:
    """The same model (``files``: the sizes of its files) delivered three
    ways, fastest to ready first:

    - **image layers**, pulled by ``engine`` (one plain tar layer per file
      unless ``layers`` gives the real plan);
    - **object storage at start-up**: ``connections`` parallel ranged GETs
      of ``part_size`` parts, written straight to local disk (an init
      container or the server's own loader);
    - **lazily loaded image** (SOCI, eStargz): the container starts after
      the metadata, but the server reads every weight before it serves, so
      ready is still bounded by the link.
    """
    eng = engine_named(engine)
    total = sum(files)
    if layers is None:
        layers = [LayerSpec(size) for size in files]
    disk = math.inf if disk_bps is None else disk_bps

    pulled = estimate_pull(layers, bandwidth_bps=bandwidth_bps, engine=eng, disk_bps=disk_bps,
                           stream_bps=stream_bps, latency_s=latency_s)
    image = Option(f"image layers ({eng.name} pull)", pulled.total_seconds, pulled.total_seconds,
                   pulled.disk_bytes, pulled.notes)

    parts = [min(part_size, size - off) for size in files for off in range(0, size, part_size)]
    got = download_finish_times(parts, bandwidth_bps=bandwidth_bps, concurrency=connections,
                                stream_bps=stream_bps, latency_s=latency_s)
    fetch_s = max(max(got, default=0.0), total / disk) + latency_s  # + a listing/HEAD request
    objects = Option(
        f"object storage at start-up ({connections} ranged GETs)", fetch_s, fetch_s, total,
        ("no engine work: bytes go straight to their files, so only the link and the disk count",
         "integrity is the loader's job (object ETags or a manifest of sha256s), and the weights live outside "
         "the image: versioning and access control are separate"),
    )

    # metadata: manifest, config, index/TOC, mount; then every byte on demand or by background prefetch
    first = eng.pull_overhead_s + 4 * latency_s
    read_link = bandwidth_bps if stream_bps is None else min(bandwidth_bps, connections * stream_bps)
    decompress = sum(0.0 if layer.compression == "none" else layer.tar_bytes / eng.decompress_bps[layer.compression]
                     for layer in layers)
    lazy_ready = first + max(total / read_link, total / disk) + decompress
    lazy = Option(
        "lazily loaded image (SOCI / eStargz)", lazy_ready, first, total,
        ("a lower bound: every weight is read before the server is ready, in chunks on demand, and the first "
         "read of each chunk waits a round trip",
         "needs the soci or stargz snapshotter on every node; SOCI leaves layers under 10 MB unindexed; "
         "eStargz layers are gzip (about 30 MB/s per core to build, docs/benchmarks.md)",
         "helps when a container needs only part of the image, not a server that loads all of its weights"),
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

    ``b``/``bit`` means bits and ``B``/``byte`` bytes; ``k M G T`` are powers
    of 1000, ``Ki Mi Gi Ti`` of 1024; ``/s`` or ``ps`` is required after a
    unit. A bare number is bytes per second. ``"1Gbps"`` -> 1.25e8,
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
    """Sustained write speed of the disk under ``directory``, in bytes/s:
    ``size`` bytes written and fsync'ed to a temporary file, which is then
    removed. Not pure: this is the probe."""
    directory = Path(directory)
    data = os.urandom(chunk)  # incompressible, in case the filesystem compresses
    fd, name = tempfile.mkstemp(prefix=".modelimage-disk-probe-", dir=directory)
    try:
        t = time.perf_counter()
        left = size
        while left > 0:
            n = min(left, chunk)
            left -= os.write(fd, memoryview(data)[:n])
        os.fsync(fd)
        elapsed = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(name)
    return size / max(elapsed, 1e-9)


def probe_download(url: str, *, client: httpx.Client | None = None, connections: int = 4,
                   max_bytes: int = 512 * MiB) -> float:
    """Bytes/s of ``connections`` parallel ranged GETs of one blob URL (e.g.
    ``http://HOST/v2/REPO/blobs/sha256:...``), reading at most ``max_bytes``
    of it in equal ranges. Pass a ``client`` that carries the registry's
    auth. (A server that ignores ``Range`` still gives a fair number: each
    connection reads its share of bytes from the start.) Not pure: this is
    the probe."""
    import httpx

    if connections < 1 or max_bytes < 1:
        raise ConfigError("probe_download needs at least one connection and one byte")
    own = client is None
    c = client or httpx.Client(timeout=httpx.Timeout(60.0), follow_redirects=True)
    try:
        head = c.head(url)
        head.raise_for_status()
        want = min(int(head.headers.get("content-length") or max_bytes), max_bytes)
        n = max(1, min(connections, want // MiB))
        bounds = [(want * k // n, want * (k + 1) // n - 1) for k in range(n)]
        got = [0] * n
        errors: list[BaseException] = []

        def fetch(k: int) -> None:
            lo, hi = bounds[k]
            try:
                with c.stream("GET", url, headers={"Range": f"bytes={lo}-{hi}"}) as r:
                    r.raise_for_status()
                    for chunk in r.iter_raw():  # as received: re-chunking to 1 MiB halves the speed
                        got[k] += len(chunk)
                        if got[k] >= hi - lo + 1:
                            break
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=fetch, args=(k,), daemon=True) for k in range(n)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - t
        if errors:
            raise errors[0]
        return sum(got) / max(elapsed, 1e-9)
    except httpx.HTTPError as e:
        raise ModelImageError(f"cannot measure the download speed of {url}: {e}") from e
    finally:
        if own:
            c.close()
