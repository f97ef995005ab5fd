"""``inspect`` and ``plan``: what a model is, and how it will be split."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ModelImageError, SourceError
from ..inspect import ModelInfo
from ..job import Job, prepare
from ..layout import LayoutRef
from ..limits import RegistryLimits
from ..plan import Plan
from ._common import PathLike, model_options

# ---------------------------------------------------------------- inspect, plan


def inspect(source: PathLike, *, config: PathLike | None = None, include: Sequence[str] = (),
            exclude: Sequence[str] = (), name: str | None = None, platform: str | None = None,
            insecure: Sequence[str] = ()) -> ModelInfo:
    """What a model is, from its headers only (never tensor data).

    ``source`` is a model (folder, weight file, ``hf://``, ``s3://``, a
    modelimage.toml name) or an image (``HOST/REPO[:TAG|@DIGEST]``,
    ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``; ``platform`` picks one of
    an index): an image's files are listed from its layers and their
    headers read with ranged GETs (:mod:`modelimage.sources.image`); a note
    says how many bytes that took.

    Returns a :class:`~modelimage.inspect.ModelInfo`: ``format``, ``kind``,
    ``parameters`` (count), ``dtypes`` (parameters per dtype),
    ``quantization``, ``components``, ``bytes`` and ``files`` (sizes in
    bytes), ``vram_bytes`` (parameters x bytes per parameter x 1.25);
    ``to_json()`` is ``modelimage inspect --json``. Raises ``SourceError``
    (no such file, folder, named model or image), ``FormatError`` (a header
    that does not parse: the message names the file), registry errors."""
    text = str(source)
    if not LayoutRef.is_layout(text):
        try:
            return prepare(text, model_options(config, include, exclude, name)).model
        except SourceError as e:
            if not _maybe_image(text):
                raise
            model_error = e
    else:
        model_error = None
    try:
        return inspect_image(text, include=include, exclude=exclude, name=name, platform=platform,
                             insecure=insecure)
    except ModelImageError as e:
        if model_error is None or _names_a_registry(text):
            raise
        raise SourceError(f"{model_error}; as an image: {e}") from None


def inspect_image(ref: str, *, include: Sequence[str] = (), exclude: Sequence[str] = (), name: str | None = None,
                  platform: str | None = None, insecure: Sequence[str] = ()) -> ModelInfo:
    """:func:`inspect` of an image: its config, manifest and the headers of
    its model files, read by range (see :mod:`modelimage.sources.image`)."""
    from ..image import open_image
    from ..inspect import inspect_model
    from ..registry.pieces import FetchStats
    from ..sources.image import ImageFolder
    from ..units import format_size

    stats = FetchStats()
    image = open_image(ref, platform=platform, insecure=frozenset(insecure), stats=stats)
    try:
        folder = ImageFolder(image, stats)
        model = inspect_model(folder, name=name or folder.name, include=include, exclude=exclude)
    finally:
        image.close()
    where = "fetched from the registry" if image.host else "read from the layout"
    note = (f"{format_size(folder.fetched)} {where} to inspect {format_size(folder.total)} of layers "
            "(headers only, by range)")
    return dataclasses.replace(model, notes=(*model.notes, note))


def _maybe_image(text: str) -> bool:
    """Whether a SOURCE that is no file, folder or named model may be an
    image reference (HOST/REPO... or ORG/REPO, not a path, not a URL)."""
    from ..config import REMOTE_SCHEMES
    from ..registry.reference import FOREIGN_TRANSPORTS, looks_like_path

    return (("/" in text and not looks_like_path(text) and not text.startswith(REMOTE_SCHEMES))
            or text.partition(":")[0] in FOREIGN_TRANSPORTS)  # docker-archive:FILE: its own error


def _names_a_registry(text: str) -> bool:
    """``HOST[:PORT]/...``: the first part names a registry host (docker's rule, reference.names_host)."""
    from ..registry.reference import FOREIGN_TRANSPORTS, names_host

    first = text.split("/", 1)[0]
    if text.partition(":")[0] in FOREIGN_TRANSPORTS:  # docker-archive:FILE: the reference's own error says what to do
        return True
    return names_host(first)


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
