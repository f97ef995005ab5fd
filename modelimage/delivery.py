"""Other ways to get the same model onto a node, side by side with the
image pull (:mod:`modelimage.estimate`): ``modelimage estimate``'s
"other ways to ship it". Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .estimate import (
    DEFAULT_LATENCY_S,
    Engine,
    LayerSpec,
    MiB,
    download_finish_times,
    engine_named,
    estimate_pull,
    writeback_seconds,
)


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
                    write_cache_bytes: int = 0, engine: str | Engine = "containerd",
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

    pulled = estimate_pull(layers, bandwidth_bps=bandwidth_bps, engine=eng, disk_bps=disk_bps,
                           write_cache_bytes=write_cache_bytes, stream_bps=stream_bps,
                           latency_s=latency_s)
    image = Option(f"image layers ({eng.name} pull)", pulled.total_seconds, pulled.total_seconds,
                   pulled.disk_bytes, pulled.notes)

    parts = [min(part_size, size - off) for size in files for off in range(0, size, part_size)]
    got = download_finish_times(parts, bandwidth_bps=bandwidth_bps, concurrency=connections,
                                stream_bps=stream_bps, latency_s=latency_s)
    fetch_s = latency_s + writeback_seconds(max(got, default=0.0), total, write_cache_bytes, disk_bps)
    objects = Option(
        f"object storage at start-up ({connections} ranged GETs)", fetch_s, fetch_s, total,
        ("no engine work: bytes go straight to their files, so only the link and the disk count",
         "integrity is the loader's job (a manifest of sha256s, or object checksums), and the weights live "
         "outside the image: versions and access control are managed separately"),
    )

    # metadata first (manifest, config, index/TOC, mount), then every byte on demand or by prefetch
    first = eng.costs.pull_s + 4 * latency_s
    read_link = bandwidth_bps if stream_bps is None else min(bandwidth_bps, connections * stream_bps)
    decompress = pulled.phases["decompress"]
    lazy_ready = first + writeback_seconds(total / read_link + decompress, total, write_cache_bytes, disk_bps)
    lazy = Option(
        "lazily loaded image (SOCI / eStargz)", lazy_ready, first, total,
        ("a lower bound: every weight is read before the server is ready, in chunks on demand, and the first "
         "read of each chunk waits a round trip",
         "needs the soci or stargz snapshotter on every node; SOCI leaves layers under 10 MB unindexed; "
         "eStargz layers are gzip (about 30 MB/s per core to build, docs/benchmarks.md)",
         "pays off when a container reads only part of its image, not for a server that loads all its weights"),
    )
    return sorted([image, objects, lazy], key=lambda o: o.ready_seconds)
