"""Provenance facts of a finished build, and attaching them with the
signature: what ``build --push --sign KEY`` / ``--provenance`` call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # the rest loads when a build signs or attests: most builds do neither
    from ..build import BuildResult
    from ..job import Job
    from .provenance import BuildFacts
    from .sign import SignResult


def build_facts(job: Job, result: BuildResult, fmt: str) -> BuildFacts:
    """What the build of ``job`` that gave ``result`` knew, for SLSA
    provenance: the source as given and as resolved, the settings, every
    file with the sha256 recorded while its layer was written (and, for
    ``s3://`` objects, their URI and ETag)."""
    from ..content import is_remote
    from .provenance import BuildFacts, SourceFile, github_invocation

    root = job.plan_settings.root.strip("/")
    by_name = {f.name: f for f in job.model.files}
    files = []
    for layer in result.layers:
        for f in layer.files:
            name = f.path[len(root) + 1:] if root and f.path.startswith(root + "/") else f.path
            src = by_name.get(name)
            remote = src is not None and is_remote(src.path)
            files.append(SourceFile(name, f.sha256, str(src.path) if remote else None,
                                    getattr(src.path, "etag", None) if remote else None))
    s = job.plan_settings
    params: dict[str, Any] = {
        "format": fmt, "target": "/" + s.root, "maxLayerSize": s.max_layer_size, "compression": s.compression,
        "platform": job.image_settings.platform, "include": list(job.entry.include),
        "exclude": list(job.entry.exclude), "base": getattr(job.base, "name", None),
    }
    source = job.entry.source if isinstance(job.entry.source, str) else str(job.entry.source)
    revision = job.source.revision if job.source is not None else None
    return BuildFacts(source, _version(), params, sorted(files, key=lambda f: f.path), revision,
                      job.image_settings.epoch, github_invocation(os.environ))


def check_attest(key: str | os.PathLike | None, provenance: bool, *, pushing: bool, variants: Sequence[str] = (),
                 source: str | os.PathLike = "", config: str | os.PathLike | None = None) -> None:
    """Refuse ``build --sign``/``--provenance`` before anything is built:
    without ``--push`` (referrers live in a registry), for a model with
    variants (an index: sign each variant's image), or with a key that
    cannot sign. Nothing to check when neither is asked for. Raises
    :class:`~modelimage.errors.ConfigError` or
    :class:`~modelimage.signing.oms.SigningError`."""
    if key is None and not provenance:
        return
    if not pushing:
        raise ConfigError("--sign and --provenance attach to the pushed image (OCI referrers live in the "
                          "registry): add --push REF, or sign later with: modelimage sign REF --key KEY")
    from ..variants.build import has_variants

    if variants or has_variants(str(source), Path(config) if config is not None else None):
        raise ConfigError("--sign/--provenance sign one image: sign each variant's pushed image with "
                          "modelimage sign HOST/REPO@DIGEST --key KEY")
    if key is not None:
        from .oms import load_private_key

        load_private_key(key)


def attest_build(job: Job, result: BuildResult, name: str, fmt: str, *, key: str | os.PathLike | None,
                 provenance: bool = False, insecure: Sequence[str] = ()) -> SignResult | None:
    """After ``build --push`` to ``name`` (``HOST/REPO``): sign the pushed
    image (``result``'s manifest) with ``key`` (an EC private key, PEM) when
    given, and attach its SLSA provenance (:func:`build_facts`), signed with
    the same key when one is given, a bare in-toto statement otherwise
    (``provenance`` alone). None when neither is asked for."""
    if key is None and not provenance:
        return None
    from .sign import sign_image  # only a signed build loads the registry client (httpx)

    pinned = f"{name}@{result.manifest.digest}"
    return sign_image(pinned, key, provenance=build_facts(job, result, fmt), insecure=frozenset(insecure))


def _version() -> str:
    """modelimage's version, as installed (the package root is not imported
    from here: it imports the API, which imports this module)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelimage")
    except PackageNotFoundError:
        return "unknown"
