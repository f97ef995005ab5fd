"""``build`` and ``push``: an image into a layout, an archive or a registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..build import BuildResult
from ..errors import ConfigError
from ..job import prepare
from ..limits import RegistryLimits
from ..registry.push import DEFAULT_CONCURRENCY as PUSH_CONCURRENCY
from ._common import PathLike, Progress, model_options, no_progress

if TYPE_CHECKING:
    from ..variants.build import IndexResult


# ---------------------------------------------------------------- build, push


@dataclass(frozen=True)
class Built:
    """An image written to a layout or pushed to a registry."""

    result: BuildResult  # manifest and config descriptors, layers (with ``action`` and files)
    reference: str  # the pushed HOST/REPO@sha256:..., or the layout written (oci:DIR:TAG)
    tag: str | None = None  # the pushed HOST/REPO:TAG
    warnings: tuple[str, ...] = ()
    attached: Any = None  # signing.sign.SignResult: the signature and provenance referrers (sign=, provenance=)
    engine: str | None = None  # the container engine it was loaded into (docker-daemon:NAME[:TAG])

    @property
    def digest(self) -> str:
        """The manifest digest, ``sha256:...``."""
        return self.result.manifest.digest

    @property
    def size(self) -> int:
        """Bytes of manifest, config and layers."""
        return self.result.size

    def to_json(self) -> dict[str, Any]:
        """``modelimage build --json``."""
        return {**self.result.to_json(), **({"reference": self.reference, "tag": self.tag} if self.tag else {}),
                **({"attached": self.attached.to_json()} if self.attached is not None else {})}


def build(source: PathLike, output: str | None = None, *, push: str | bool | None = None, format: str = "image",
          base: str | None = None, platform: str | None = None, max_layer_size: int | None = None,
          target: str | None = None, compression: str | None = None, bandwidth: float | None = None,
          concurrency: int = PUSH_CONCURRENCY, config: PathLike | None = None, include: Sequence[str] = (),
          exclude: Sequence[str] = (), name: str | None = None, insecure: Sequence[str] = (),
          progress: Progress | None = None, on_warning: Callable[[str], None] | None = None,
          variants: Sequence[str] = (), sign: PathLike | None = None, provenance: bool = False) -> Built | IndexResult:
    """Build an image of ``source`` into ``output`` (``oci:DIR[:TAG]``,
    ``oci-archive:FILE[:TAG]``, or ``docker-daemon:NAME[:TAG]``: loaded into
    the container engine ``DOCKER_HOST`` names, streaming, see
    :mod:`modelimage.daemon`; default ``oci:build/NAME``; without a TAG,
    the model's ``tag`` in modelimage.toml, else ``latest``), or push it
    to a registry (``push="HOST/REPO[:TAG]"``, or ``True`` for the model's
    ``image`` in modelimage.toml; without a TAG, the model's ``tag``),
    streaming each layer from the files.

    ``format``: ``image`` (tar layers under ``target``, default
    ``/models/NAME``), ``modelpack`` or ``docker-model`` (one raw file per
    layer). ``base``: an image to put the model on. ``platform``:
    ``OS/ARCH`` (default ``linux/amd64``). ``concurrency``: layers at once
    when pushing. The registry's limits are checked before anything is
    written or uploaded; their warnings go to ``on_warning`` as they come
    (and into ``Built.warnings``). ``sign``: an EC private key (PEM) to
    sign the pushed image with, and its SLSA provenance; ``provenance``:
    attach the provenance even without a key
    (:func:`modelimage.signing.attest.attest_build`).

    A model with variants (``variants``: ``NAME=GLOB[,GLOB]`` each, or the
    entry's variant tables) becomes one image index, and the result an
    :class:`~modelimage.variants.build.IndexResult` (:func:`~modelimage.variants.build.build_variants`).

    Returns :class:`Built`. Raises ``ConfigError`` (bad options),
    ``LayerTooLarge``/``PlanError`` (limits), ``OutputError`` (cannot write),
    ``SourceError`` (a file changed while building), registry errors."""
    from ..artifact import build_artifact
    from ..build import build_image
    from ..daemon import DaemonRef, DaemonSink, where
    from ..layout import LayoutRef, open_sink
    from ..registry.reference import Reference

    if push not in (None, False) and output:
        raise ConfigError("use either an output (oci:DIR[:TAG]) or push, not both")
    if format != "image" and base:
        raise ConfigError(f"a base applies to the image format, not {format}")
    from ..signing.attest import attest_build, check_attest
    from ..variants.build import build_variants, has_variants

    # refused before anything is written: no push, a key that cannot sign, variants
    check_attest(sign, provenance, pushing=push not in (None, False), variants=variants, source=source, config=config)
    if variants or has_variants(str(source), config):
        return build_variants(str(source), model_options(config, include, exclude, name, max_layer_size=max_layer_size,
                              target=target, compression=compression, platform=platform, base=base,
                              insecure=frozenset(insecure)), variants, output=output, push=push, format=format,
                              concurrency=concurrency, bandwidth=bandwidth, progress=progress, on_warning=on_warning)
    daemon = DaemonRef.parse(output) if output and DaemonRef.is_daemon(output) else None
    if daemon is not None and format != "image":
        raise ConfigError(f"docker-daemon: loads images, not {format} artifacts")
    ref, text = None, ""
    if push not in (None, False):
        text = push if isinstance(push, str) and push else _configured_image(str(source), config)
        if not text:
            raise ConfigError("push needs a REF (or an `image` for this model in modelimage.toml)")
        ref = Reference.parse(text)
    job = prepare(str(source), model_options(config, include, exclude, name, max_layer_size=max_layer_size,
                                        target=target, compression=compression, platform=platform,
                                        registry=ref.host if ref else None, base=base,
                                        insecure=frozenset(insecure)))
    if ref is not None and job.entry.tag and ref.digest is None and ":" not in text.rsplit("/", 1)[-1]:
        ref = dataclasses.replace(ref, tag=job.entry.tag)  # REF without a TAG: the model's tag
    p = job.plan()
    warnings = tuple(job.preflight(p, bandwidth, format))
    for w in warnings:
        (on_warning or (lambda _: None))(w)
    if ref is not None:
        sink: Any = _registry_sink(ref, job.limits, concurrency, insecure)
        reference = str(ref)
    elif daemon is not None:
        if not daemon.explicit_tag and job.entry.tag:
            daemon = dataclasses.replace(daemon, tag=job.entry.tag)
        sink, reference = DaemonSink(daemon), f"docker-daemon:{daemon}"
    else:
        layout = LayoutRef.parse(output or f"oci:build/{job.model.name}")
        if not layout.explicit_tag and job.entry.tag:  # oci:DIR without a TAG: the model's tag
            layout = dataclasses.replace(layout, tag=job.entry.tag)
        sink, reference = open_sink(layout), str(layout)
    try:
        with (progress or no_progress)(p.total_size, f"{'pushing' if ref else 'building'} {job.model.name}") as advance:
            if format == "image":
                result = build_image(job.model, p, sink, settings=job.image_settings, reference=reference,
                                     progress=advance, concurrency=concurrency if ref else None, base=job.base)
            else:
                result = build_artifact(job.model, p, sink, format=format, settings=job.image_settings,  # type: ignore
                                        reference=reference, progress=advance,
                                        concurrency=concurrency if ref else None)
    except BaseException:  # Ctrl-C before the layers began too: the sink undoes what it made (again is harmless)
        sink.abort()
        raise
    if daemon is not None:
        return Built(result, reference, warnings=warnings, engine=where())
    if ref is None:
        return Built(result, reference, warnings=warnings)
    attached = attest_build(job, result, ref.name, format, key=sign, provenance=provenance, insecure=insecure)
    return Built(result, f"{ref.name}@{result.manifest.digest}", str(ref), warnings, attached)


def _configured_image(source: str, config: PathLike | None) -> str | None:
    """The ``image`` of the modelimage.toml entry ``source`` names, if it names one."""
    from ..config import load_config, resolve
    from ..errors import ModelImageError

    try:
        entry = resolve(source, load_config(Path(config) if config is not None else None))
    except ModelImageError:
        return None
    return entry.image if entry.name else None


def _registry_sink(ref: Any, limits: RegistryLimits, concurrency: int, insecure: Sequence[str]) -> Any:
    from ..registry.client import RegistryClient
    from ..registry.push import PushSettings, RegistrySink

    return RegistrySink(ref, RegistryClient(ref, insecure=frozenset(insecure)),
                        settings=PushSettings(concurrency=concurrency,
                                              upload="auto" if limits.chunked_uploads else "monolithic"))


@dataclass(frozen=True)
class Pushed:
    """A layout pushed to a registry."""

    reference: str  # HOST/REPO@sha256:...
    digest: str  # the manifest's
    tag: str  # HOST/REPO:TAG
    blobs: tuple[dict[str, Any], ...] = field(default=())  # digest, size, action (uploaded, exists, mounted)
    layer_digests: frozenset[str] = frozenset()  # which blobs are layers (the rest: configs, manifests)
    manifest_size: int = 0

    @property
    def layers(self) -> tuple[dict[str, Any], ...]:
        """The layer blobs (of every image, for an index)."""
        return tuple(b for b in self.blobs if b["digest"] in self.layer_digests) or self.blobs

    @property
    def size(self) -> int:
        """Bytes of the manifest and every blob."""
        return self.manifest_size + sum(int(b["size"]) for b in self.blobs)

    def to_json(self) -> dict[str, Any]:
        """``modelimage push --json``."""
        return {"reference": self.reference, "digest": self.digest, "tag": self.tag, "layers": list(self.blobs)}


def push(layout: str, reference: str, *, concurrency: int = PUSH_CONCURRENCY, insecure: Sequence[str] = (),
         progress: Progress | None = None) -> Pushed:
    """Push the image of an OCI layout (``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``) to ``reference``
    (``HOST/REPO[:TAG]``): blobs the registry has are skipped or mounted,
    uploads resume, the manifest goes last; ``concurrency`` blobs upload at
    once. The registry's limits are checked first. Returns :class:`Pushed`
    (``digest``, ``tag``, and ``blobs``: each blob's digest, size in bytes
    and action: uploaded, exists, mounted); raises ``ConfigError`` (not a
    layout), ``SourceError`` (unreadable layout), ``LayerTooLarge``/
    ``PlanError``, registry errors."""
    from ..config import load_registries
    from ..layout import LayoutRef, read_layout
    from ..limits import check, layer_facts, limits_for
    from ..registry.push import push_layout
    from ..registry.reference import Reference

    src = LayoutRef.parse(layout)
    ref = Reference.parse(reference)
    limits = limits_for(ref.host, load_registries(None).registries)
    desc, manifest = read_layout(src)
    check(ref.host, limits, layer_facts(manifest), manifest_size=desc.size)
    sink = _registry_sink(ref, limits, concurrency, insecure)
    total = sum(int(d["size"]) for d in [manifest.get("config", {}), *manifest.get("layers", [])] if d)
    with (progress or no_progress)(total, f"pushing {ref.repository}") as advance:
        pushed = push_layout(src, sink, advance)
    layers = frozenset(d["digest"] for d in manifest.get("layers", []))
    return Pushed(pushed.reference, pushed.digest, str(ref), tuple(pushed.blobs), layers, desc.size)
