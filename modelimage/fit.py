"""An engine's pull costs fitted to real pulls on this machine (pure: the
pulls are measured by :mod:`modelimage.calibrate`).

A calibration times pulls of a few images (sizes, layer counts, plain and
gzip) on a loopback registry, where the link costs nothing, so each image's
median time is the engine's ``pull_s + layer_s*n + byte_s*S +
stream_byte_s*B + gzip_byte_s*G`` (:mod:`modelimage.estimate`): linear in
the five costs. :func:`fit` solves for them by least squares.

For an engine that leaves its writes to the kernel (podman, containerd), a
calibration also pulls one image that writes more than the page cache
takes (:attr:`Calibration.write_cache_bytes`): past that, the writes go at
the pace the disk drains them, which :func:`fit` solves for from that
image's time once the five costs are known (:attr:`Calibration.writeback_bps`,
the ``disk_bps`` of :func:`modelimage.estimate.writeback_seconds`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError
from .estimate import (
    Costs,
    Engine,
    LayerSpec,
    busiest_stream_bytes,
    engine_named,
    estimate_pull,
    inflate_bytes,
    written_bytes,
)

PAST_CACHE = 256 * 2**20  # bytes: an image writing this much past the page cache times the disk, not the costs


@dataclass(frozen=True)
class Sample:
    """Real pulls of one image: its ``layers`` and each pull's wall ``seconds``."""

    layers: tuple[LayerSpec, ...]
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_json(self) -> dict[str, Any]:
        return {"layers": [[s.size, s.tar_bytes, s.compression] for s in self.layers],
                "seconds": list(self.seconds)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Sample:
        """Raises ``ValueError`` for anything :meth:`to_json` does not write:
        no pulls, a time that is not a pull's (:data:`PULL_SECONDS`), no
        layers, a layer :class:`~modelimage.estimate.LayerSpec` refuses."""
        seconds = tuple(_number(s, "seconds") for s in d["seconds"])
        if not seconds or not all(PULL_SECONDS[0] <= s <= PULL_SECONDS[1] for s in seconds):
            raise ValueError(f"a sample's seconds are {list(d['seconds'])!r}, not pull times")
        if not d["layers"]:
            raise ValueError("a sample has no layers")
        try:
            layers = tuple(LayerSpec(int(a), int(b), c) for a, b, c in d["layers"])
        except ConfigError as e:  # a negative size, an unknown compression
            raise ValueError(str(e)) from None
        return cls(layers, seconds)


# What a stored calibration may hold (a hand-edited or damaged file gets the "not a calibration" line,
# not an estimate of 10**300 s): a pull takes 1 ms to a day; a per-pull or per-layer cost at most an
# hour; a per-byte cost at most 1 ms (a 1 kB/s engine).
PULL_SECONDS = (1e-3, 86400.0)
MAX_COSTS = (3600.0, 3600.0, 1e-3, 1e-3, 1e-3)


def _number(value: Any, what: str) -> float:
    """A JSON number as a finite float; ``ValueError`` for anything else
    (a string, a boolean, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is {value!r}, not a finite number")
    return float(value)


def features(layers: Sequence[LayerSpec], concurrency: int, inflate: float | None = None) -> list[float]:
    """What each cost multiplies, in :class:`Costs` order: 1 pull, layers,
    tar bytes, bytes of the busiest stream, and the bytes of inflating at
    one core's pace (``inflate``: :func:`modelimage.estimate.inflate_bytes`;
    default the gzip tar bytes, inflated one layer after another)."""
    if inflate is None:
        inflate = float(sum(s.tar_bytes for s in layers if s.compression == "gzip"))
    return [1.0, float(len(layers)), float(sum(s.tar_bytes for s in layers)),
            busiest_stream_bytes([s.size for s in layers], concurrency), inflate]


def _nonnegative_lstsq(x: Any, y: Any) -> Any:
    """Least squares with no coefficient below zero: a column whose
    coefficient comes out negative (noise, or a cost the data cannot see)
    is dropped and the rest refitted."""
    import numpy as np

    active = [j for j in range(x.shape[1]) if np.any(x[:, j])]
    while True:
        coef = np.zeros(x.shape[1])
        coef[active] = np.linalg.lstsq(x[:, active], y, rcond=None)[0]
        worst = min(active, key=lambda j: coef[j], default=None)
        if worst is None or coef[worst] >= 0:
            return coef
        active.remove(worst)


@dataclass(frozen=True)
class Calibration:
    """An engine's costs fitted to real pulls on one machine (``facts``:
    cores, memory, disk, engine version, date), with the pulls.

    ``write_cache_bytes``: what the page cache took before writes slowed to
    the disk's pace when the pulls ran (:func:`modelimage.probes.probe_write_cache`;
    0: not known); ``writeback_bps`` (bytes/s): that pace, as the engine's
    own pulls past it met it (None: no calibration pull wrote past the
    cache, or none was slowed by it)."""

    engine: str
    costs: Costs
    samples: tuple[Sample, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)
    write_cache_bytes: int = 0
    writeback_bps: float | None = None

    def engine_model(self, here: Mapping[str, Any] | None = None) -> Engine:
        """The built-in engine with these costs. ``here``: this machine's
        facts (:func:`modelimage.pullers.host_facts`); when its ``node``
        is not the calibrated one's, the source names the node it was
        calibrated on instead of "this machine"."""
        node = self.facts.get("node")
        where = ("this machine" if here is None or node is None or here.get("node") == node
                 else f"node {node} (same cores and memory as this one)")
        return replace(engine_named(self.engine), costs=self.costs,
                       source=f"calibrated on {where} ({self.facts.get('date', '?')}, "
                              f"{self.facts.get('engine_version', self.engine)})")

    def estimated(self, sample: Sample) -> float:
        """Seconds the fit gives ``sample``'s image on the loopback registry
        it was pulled from (the disk past the page cache included)."""
        return estimate_pull(sample.layers, bandwidth_bps=math.inf, engine=self.engine_model(), latency_s=0,
                             disk_bps=self.writeback_bps, write_cache_bytes=self.write_cache_bytes,
                             cores=self.facts.get("cpus")).total_seconds

    def differences(self, here: Mapping[str, Any]) -> list[str]:
        """How the machine it was calibrated on differs from ``here``
        (:func:`modelimage.pullers.host_facts`, with ``engine_version_number``:
        the installed engine's, :func:`modelimage.pullers.installed_version`)
        in what sets an engine's costs: the core count, the memory (more
        than 5 % apart; it sets the page cache a pull writes into), the
        engine's version number (a new release pulls differently; both
        sides' as :func:`modelimage.pullers.version_number` reads them: the
        calibration's recorded by :func:`modelimage.pullers.machine_facts`,
        or by :func:`modelimage.calibrate.load` for one stored before it
        was). Empty when they match, or when the calibration or ``here``
        does not record them."""
        out = []
        then, now = self.facts.get("engine_version_number"), here.get("engine_version_number")
        if then and isinstance(now, str) and now != then:
            out.append(f"{self.engine} {then}, this one has {now}")
        cpus, mem = self.facts.get("cpus"), self.facts.get("memory_bytes")
        if isinstance(cpus, int) and isinstance(here.get("cpus"), int) and cpus != here["cpus"]:
            out.append(f"{cpus} cores, this one {here['cpus']}")
        other = here.get("memory_bytes")
        if isinstance(mem, (int, float)) and isinstance(other, (int, float)) and mem > 0 and other > 0 \
                and abs(mem / other - 1) > 0.05:
            out.append(f"{mem / 2**30:.1f} GiB of memory, this one {other / 2**30:.1f} GiB")
        return out

    def errors(self) -> list[float]:
        """Per sample: estimate / median pull - 1."""
        return [self.estimated(s) / s.median - 1 for s in self.samples]

    def pull_ratios(self) -> list[float]:
        """Every single calibration pull over its image's estimate: how far
        one real pull on this node strayed from the fitted costs, the fit's
        miss and the node's own pull-to-pull variation (other work on the
        machine only ever slows a pull down) together."""
        return [t / self.estimated(s) for s in self.samples for t in s.seconds]

    @property
    def spread(self) -> tuple[float, float]:
        """The range an estimate from it is good to, as factors of the total:
        the lowest and highest :meth:`pull_ratios`, at least ±5 %. On a
        quiet node that is the fit's own error; on a shared one it widens by
        what the other work did to single pulls while calibrating (on the
        project's loaded 2-core VM the same image pulled 1.3x-2.5x slower
        minutes apart: docs/benchmarks.md), which is what a pull there later
        can take."""
        ratios = self.pull_ratios() or [1.0]
        return (min(0.95, *ratios), max(1.05, *ratios))

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "costs": self.costs.to_json(), "facts": dict(self.facts),
                "write_cache_bytes": self.write_cache_bytes, "writeback_bps": self.writeback_bps,
                "samples": [s.to_json() for s in self.samples],
                "errors": [round(e, 4) for e in self.errors()]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Calibration:
        """What :meth:`to_json` wrote. Raises ``KeyError``, ``TypeError`` or
        ``ValueError`` for anything else (a cost that is not a finite,
        non-negative number, no samples, a sample without pull times)."""
        names = ("pull_s", "layer_s", "byte_s", "stream_byte_s", "gzip_byte_s")
        values = [_number(d["costs"][k], k) for k in names]
        if any(v < 0 for v in values):
            raise ValueError(f"{names[next(i for i, v in enumerate(values) if v < 0)]} is negative")
        for name, v, top in zip(names, values, MAX_COSTS):
            if v > top:
                raise ValueError(f"{name} is {v:g}, more than any engine takes ({top:g})")
        samples = tuple(Sample.from_json(s) for s in d["samples"])
        if not samples:
            raise ValueError("it holds no calibration pulls")
        cache = _number(d.get("write_cache_bytes", 0), "write_cache_bytes")  # absent: written before 2026-11-30
        pace = d.get("writeback_bps")
        pace = None if pace is None else _number(pace, "writeback_bps")
        if cache < 0 or (pace is not None and pace <= 0):
            raise ValueError("write_cache_bytes is negative" if cache < 0 else "writeback_bps is not positive")
        facts = dict(d.get("facts", {}))
        cpus = facts.get("cpus")
        if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
            raise ValueError(f"its cpus fact is {cpus!r}, not a core count")
        return cls(str(d["engine"]), Costs(*values), samples, facts, int(cache), pace)


def past_cache(engine: Engine, sample: Sample, write_cache_bytes: int) -> bool:
    """Whether ``sample``'s pulls wrote :data:`PAST_CACHE` or more past the
    page cache, so the disk set their pace (never for an engine that
    syncs: its disk writes are part of its costs)."""
    return (not engine.syncs and write_cache_bytes > 0
            and written_bytes(engine, sample.layers) >= write_cache_bytes + PAST_CACHE)


SIZES_APART = 1.5  # the biggest calibration image at least this times the smallest


def separable(images: Iterable[tuple[int, int]]) -> bool:
    """Whether pulls of images of these ``(bytes, layer count)`` let a fit
    tell the per-pull, per-layer and per-byte costs apart: at least two
    layer counts, and sizes at least :data:`SIZES_APART` apart (one size
    in 1, 2 and 3 layers, whose tars differ by their headers only, fitted
    71 s/GB and no per-pull cost in one calibration, 0 s/GB and 0.31 s a
    pull in the next; with sizes closer than that, the per-byte cost is
    the difference of two times each pull's own ±5-10 % drowns)."""
    shapes = list(images)
    sizes = [size for size, _ in shapes]
    return (len({n for _, n in shapes}) >= 2 and min(sizes, default=0) > 0
            and max(sizes) >= SIZES_APART * min(sizes))


def fit(engine: str, samples: Sequence[Sample], *, facts: Mapping[str, Any] | None = None,
        write_cache_bytes: int = 0) -> Calibration:
    """The costs of ``engine`` from real pulls (``samples``): least squares
    on each image's median time, in relative terms (a 10 % miss on a small
    image counts as much as on a big one), no cost below zero. Without
    gzip samples the built-in gzip cost stays.

    Images that wrote past the page cache (``write_cache_bytes``, bytes;
    :func:`past_cache`) are left out of that fit; from them, the pace past
    the cache: with the costs known, an image's median ``T`` is ``fixed +
    max(body, body*C/W + (W-C)/pace)`` (:func:`modelimage.estimate.writeback_seconds`;
    ``W`` written, ``C`` the cache), solved for ``pace`` and the images'
    paces combined as bytes past the cache over the seconds past it. When
    those pulls took no longer than the costs alone say, the disk was no
    limit (it adds under 1 %): ``writeback_bps`` None. Raises ``ConfigError`` with fewer than
    three images within the cache, or when they are not :func:`separable`."""
    import numpy as np

    eng = engine_named(engine)
    within = [s for s in samples if not past_cache(eng, s, write_cache_bytes)]
    if len(within) < 3 or not separable((sum(x.tar_bytes for x in s.layers), len(s.layers)) for s in within):
        raise ConfigError("fitting needs pulls of at least three different images within the page cache, "
                          "of at least two sizes and two layer counts")
    cores = (facts or {}).get("cpus")
    x = np.array([features(s.layers, eng.concurrency, inflate_bytes(eng, s.layers, cores)) for s in within])
    y = np.array([s.median for s in within])
    coef = _nonnegative_lstsq(x / y[:, None], np.ones(len(within)))
    if not x[:, 4].any():
        coef[4] = eng.costs.gzip_byte_s
    costs = Costs(*(float(v) for v in coef))
    cal = Calibration(eng.name, costs, tuple(samples), dict(facts or {}), write_cache_bytes)
    past, seconds = 0, 0.0
    for s in samples:
        if past_cache(eng, s, write_cache_bytes):
            est = estimate_pull(s.layers, bandwidth_bps=math.inf, engine=cal.engine_model(), latency_s=0,
                                cores=cores)
            body = est.total_seconds - est.phases["fixed"]
            w = written_bytes(eng, s.layers)
            past += w - write_cache_bytes
            seconds += max(0.0, s.median - est.phases["fixed"] - body * write_cache_bytes / w)
    if past and seconds:
        pace = past / seconds
        within_pace = Calibration(eng.name, costs, tuple(samples), dict(facts or {}), write_cache_bytes, pace)
        # the disk slowed those pulls only if the pace makes them slower than the costs alone (by 1 % or more)
        if any(within_pace.estimated(s) > 1.01 * cal.estimated(s)
               for s in samples if past_cache(eng, s, write_cache_bytes)):
            return within_pace
    return cal
