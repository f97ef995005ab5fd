"""``inspect`` and ``plan``: what a model is, and how it will be split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..inspect import ModelInfo
from ..job import Job, prepare
from ..limits import RegistryLimits
from ..plan import Plan
from ._common import PathLike, model_options

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
    return prepare(str(source), model_options(config, include, exclude, name)).model


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
    job = prepare(str(source), model_options(config, include, exclude, name, max_layer_size=max_layer_size,
                                        target=target, compression=compression, registry=registry, base=base,
                                        insecure=frozenset(insecure)))
    p = job.plan()
    return Planned(job, p, tuple(job.preflight(p, bandwidth)))
