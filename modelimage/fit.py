"""An engine's pull costs fitted to real pulls on this machine (pure: the
pulls are measured by :mod:`modelimage.calibrate`).

A calibration times pulls of a few images (sizes, layer counts, plain and
gzip) on a loopback registry, where the link costs nothing, so each image's
median time is the engine's ``pull_s + layer_s*n + byte_s*S +
stream_byte_s*B + gzip_byte_s*G`` (:mod:`modelimage.estimate`): linear in
the five costs. :func:`fit` solves for them by least squares.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError
from .estimate import Costs, Engine, LayerSpec, busiest_stream_bytes, engine_named, estimate_pull, inflate_bytes


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
        no pulls, a time that is not a positive number of seconds."""
        seconds = tuple(_number(s, "seconds") for s in d["seconds"])
        if not seconds or not all(s > 0 for s in seconds):
            raise ValueError(f"a sample's seconds are {list(d['seconds'])!r}, not pull times")
        return cls(tuple(LayerSpec(int(a), int(b), c) for a, b, c in d["layers"]), seconds)


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
    cores, memory, disk, engine version, date), with the pulls."""

    engine: str
    costs: Costs
    samples: tuple[Sample, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)

    def engine_model(self) -> Engine:
        """The built-in engine with these costs."""
        return replace(engine_named(self.engine), costs=self.costs,
                       source=f"calibrated on this machine ({self.facts.get('date', '?')}, "
                              f"{self.facts.get('engine_version', self.engine)})")

    def errors(self) -> list[float]:
        """Per sample: estimate / median pull - 1."""
        eng = self.engine_model()
        return [estimate_pull(s.layers, bandwidth_bps=math.inf, engine=eng, latency_s=0,
                                  cores=self.facts.get("cpus")).total_seconds / s.median - 1
                for s in self.samples]

    def pull_ratios(self) -> list[float]:
        """Every single calibration pull over its image's estimate: how far
        one real pull on this node strayed from the fitted costs, the fit's
        miss and the node's own pull-to-pull variation (other work on the
        machine only ever slows a pull down) together."""
        eng = self.engine_model()
        return [t / estimate_pull(s.layers, bandwidth_bps=math.inf, engine=eng, latency_s=0,
                                  cores=self.facts.get("cpus")).total_seconds
                for s in self.samples for t in s.seconds]

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
        samples = tuple(Sample.from_json(s) for s in d["samples"])
        if not samples:
            raise ValueError("it holds no calibration pulls")
        return cls(str(d["engine"]), Costs(*values), samples, dict(d.get("facts", {})))


def fit(engine: str, samples: Sequence[Sample], *, facts: Mapping[str, Any] | None = None) -> Calibration:
    """The costs of ``engine`` from real pulls (``samples``): least squares
    on each image's median time, in relative terms (a 10 % miss on a small
    image counts as much as on a big one), no cost below zero. Without
    gzip samples the built-in gzip cost stays. Raises ``ConfigError`` with
    fewer than three images."""
    import numpy as np

    eng = engine_named(engine)
    if len(samples) < 3:
        raise ConfigError("fitting needs pulls of at least three different images")
    cores = (facts or {}).get("cpus")
    x = np.array([features(s.layers, eng.concurrency, inflate_bytes(eng, s.layers, cores)) for s in samples])
    y = np.array([s.median for s in samples])
    coef = _nonnegative_lstsq(x / y[:, None], np.ones(len(samples)))
    if not x[:, 4].any():
        coef[4] = eng.costs.gzip_byte_s
    return Calibration(eng.name, Costs(*(float(v) for v in coef)), tuple(samples), dict(facts or {}))
