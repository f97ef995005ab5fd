"""``pull`` and ``verify``: the model files of an image, on disk."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import ConfigError
from ..pull import DEFAULT_CONCURRENCY as PULL_CONCURRENCY
from ..pull import PullResult, VerifyResult
from ._common import PathLike, Progress, no_progress

# ---------------------------------------------------------------- pull, verify


def pull(ref: str, dest: PathLike, *, include: Sequence[str] = (), path: str | None = None,
         platform: str | None = None, concurrency: int = PULL_CONCURRENCY, connections: int | None = None,
         insecure: Sequence[str] = (), progress: Progress | None = None, overwrite: bool = False,
         variant: str | None = None, gpu_memory: int | None = None,
         on_variant: Callable[[str], None] | None = None, require_signature: PathLike | None = None) -> PullResult:
    """Put the model files of the image ``ref`` (``HOST/REPO[:TAG|@DIGEST]``
    or ``oci:DIR[:TAG]``) into ``dest``, each layer applied once its blob
    matched its digest; files modelimage did not write are left alone (a
    file of the image where one of them is stops the pull, unless
    ``overwrite``); an interrupted pull resumes. See
    :func:`modelimage.pull.pull` for the arguments, the result
    (:class:`~modelimage.pull.PullResult`: files, ``bytes``,
    ``bytes_fetched``, ``seconds``) and the errors.

    Of an index of variants, ``variant`` (a name) or ``gpu_memory`` (bytes:
    the highest precision that fits) picks one, by the rule of
    :mod:`modelimage.variants.select` (default: the first entry);
    ``on_variant`` receives the line saying which and why. Raises
    :class:`~modelimage.errors.VariantError` (no such variant, none fits,
    a single image that is not the one asked for) before DEST is touched.

    ``require_signature``: an EC public key (PEM); the image's OpenSSF Model
    Signing signature is checked before anything is written (else
    ``SignatureMissing``/``SignatureInvalid``), the pull goes by the
    verified digest and every pulled file is checked against the signed
    digests. A whole-model pull writes the image's signature, if any, as
    ``DEST/model.sig`` (:mod:`modelimage.signing.pulled`)."""
    from ..pull import prepare_pull
    from ..signing.pulled import SignedPull
    from ..variants.resolve import Picker

    if require_signature is not None and (variant is not None or gpu_memory is not None):
        raise ConfigError("--require-signature checks one image: pull the variant by its HOST/REPO@sha256:...")
    pick = Picker(ref, name=variant, gpu_memory=gpu_memory, platform=platform).preflight(frozenset(insecure))
    signed = SignedPull.before(ref, require_signature, include=include, path=path, platform=platform, insecure=insecure,
                               dest=dest, overwrite=overwrite)
    job = prepare_pull(signed.source, dest, path=path, include=include, platform=platform, concurrency=concurrency,
                       connections=connections, insecure=frozenset(insecure), overwrite=overwrite, choose=pick)
    pick.say(on_variant)
    with (progress or no_progress)(job.total_bytes, f"pulling {ref}") as advance:
        return signed.after(job.run(advance))


def verify(ref: str, dest: PathLike, *, include: Sequence[str] = (), path: str | None = None,
           platform: str | None = None, insecure: Sequence[str] = (), variant: str | None = None,
           gpu_memory: int | None = None) -> VerifyResult:
    """Compare ``dest`` with the image ``ref``, re-hashing every file.
    Returns :class:`~modelimage.pull.VerifyResult` (``ok``, ``missing``,
    ``changed``, ``extra``, ``checked``); a difference is not an error here
    (the CLI exits 1 on it). ``variant``/``gpu_memory``: which variant of an
    index, as for :func:`pull`. Raises ``SourceError`` and registry errors."""
    from ..pull import verify as verify_tree
    from ..variants.resolve import Picker

    return verify_tree(ref, dest, include=include, path=path, platform=platform, insecure=frozenset(insecure),
                       choose=Picker(ref, name=variant, gpu_memory=gpu_memory, platform=platform))
