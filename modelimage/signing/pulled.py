"""Signatures at pull time: ``pull --require-signature PUB`` and ``model.sig``.

:meth:`SignedPull.before` runs before the pull writes anything: with a key it is
:func:`~modelimage.signing.verify.verify_image` (signature by the key, made
for this manifest, the manifest's files are the signed ones), and the pull
then goes by the verified digest, so a tag moved in between cannot swap the
image. :meth:`SignedPull.after` checks every file the pull wrote (its sha256,
hashed while it streamed) against the signed digests, and writes the bundle
into DEST as ``model.sig``, the name the upstream ``model_signing`` CLI
looks for: ``python -m model_signing verify key DEST --signature
DEST/model.sig --public_key PUB`` then checks the folder on its own. A pull
without a key writes the newest attached signature, unverified, for the
same purpose. Only a whole-model pull (no ``--include``, no ``--path``)
gets a ``model.sig``: the signature describes the model's whole folder.

``DEST/model.sig`` is modelimage's only when it holds a statement that
records the image manifest it was made for (``predicate.modelimage``, which
modelimage's signatures carry): a ``model.sig`` of your own (``model_signing
sign`` of the folder, say) is never replaced, as pull treats every file it
did not write. With ``--require-signature`` that is said before anything is
written (``--overwrite`` replaces it); a plain pull leaves it and warns.
A ``model.sig`` modelimage wrote for another manifest is removed when the
image pulled now has no signature to put there: DEST never keeps another
image's signature next to this one's files.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ..durable import write_durably
from ..errors import ModelImageError, OutputError, PullConflict
from ..registry.keychain import Credentials
from . import oms
from .referrer import newest_first
from .remote import open_remote
from .verify import VerifiedImage, bundle_of, verify_image

if TYPE_CHECKING:
    from ..pull import PullResult

MAX_BUNDLE_BYTES = 4 << 20  # a bundle is KBs: a bigger model.sig is not one modelimage wrote


@dataclass(frozen=True)
class SignedPull:
    """A pull with its signature: :meth:`before` (before the pull writes
    anything), :attr:`source` (what to pull), :meth:`after` (when it is done)."""

    ref: str
    verified: VerifiedImage | None
    include: tuple[str, ...] = ()
    path: str | None = None
    platform: str | None = None
    insecure: frozenset[str] = frozenset()
    credentials: Credentials | None = None
    overwrite: bool = False

    @classmethod
    def before(cls, ref: str, key: str | os.PathLike | None, *, include: Sequence[str] = (), path: str | None = None,
               platform: str | None = None, insecure: Iterable[str] = (),
               credentials: Credentials | None = None, dest: str | os.PathLike | None = None,
               overwrite: bool = False) -> SignedPull:
        """With ``key`` (an EC public key, PEM): the verified signature of
        ``ref``; raises :class:`~modelimage.signing.verify.SignatureMissing`
        or :class:`~modelimage.signing.oms.SignatureInvalid`, one line,
        before anything is written. Without: nothing is checked. With a key
        and ``dest``, a ``DEST/model.sig`` modelimage did not write stops
        the pull here (:class:`~modelimage.errors.PullConflict`), unless
        ``overwrite``."""
        insecure = frozenset(insecure)
        whole = not include and path is None
        if key is not None and dest is not None and whole and not overwrite \
                and signature_owner(Path(dest) / oms.SIGNATURE_FILE) == "theirs":
            raise PullConflict(f"{Path(dest) / oms.SIGNATURE_FILE}: a signature file modelimage did not write is "
                               "there, where the pull puts the image's signature; move it away, or pass "
                               "--overwrite to replace it")
        verified = None if key is None else verify_image(ref, Path(key), platform=platform, insecure=insecure,
                                                          credentials=credentials)
        return cls(ref, verified, tuple(include), path, platform, insecure, credentials, overwrite)

    @property
    def source(self) -> str:
        """What to pull: the verified ``HOST/REPO@DIGEST`` (a tag moved in
        the meantime cannot swap the image), else the reference as given."""
        return self.verified.reference if self.verified is not None else self.ref

    def after(self, result: PullResult) -> PullResult:
        """Check the pulled files against the signature (when verified), then
        write ``DEST/model.sig`` for a whole-model pull. Returns ``result``."""
        whole = not self.include and self.path is None
        if self.verified is not None:
            check_pulled(self.verified.files, [(f.path, f.sha256) for f in result.files], self.ref, complete=whole)
        if any(f.path == oms.SIGNATURE_FILE for f in result.files):
            return result  # the image holds a model.sig of its own
        target = Path(result.dest) / oms.SIGNATURE_FILE
        owner = signature_owner(target)
        bundle = None
        if whole:
            # the signature of the manifest that was pulled (by digest): never the one the tag or the
            # platform's default entry names now (another variant, or a tag moved during the pull)
            bundle = self.verified.bundle if self.verified is not None else attached_bundle(
                at_digest(self.ref, result.digest), insecure=self.insecure, credentials=self.credentials)
        if bundle is not None:
            if owner == "theirs" and not self.overwrite:
                return dataclasses.replace(result, warnings=(*result.warnings, (
                    f"{target}: not written by modelimage, left as it is; the image's signature was not written "
                    "there (--overwrite replaces it)")))
            write_signature(result.dest, bundle)
        elif owner not in ("theirs", None) and owner != result.digest:
            _remove(target)  # another image's signature, next to this image's files
        return result


def check_pulled(signed: Mapping[str, str], pulled: Iterable[tuple[str, str | None]], source: str,
                 *, complete: bool) -> None:
    """Every pulled file (DEST-relative path, ``sha256:HEX``, or None when the
    pull could not say) must be signed with that digest; with ``complete``
    every signed file must have been pulled. Raises
    :class:`~modelimage.signing.oms.SignatureInvalid`, one line."""
    what = f"{source}: the pulled files do not match the signature"
    have: dict[str, str] = {}
    for rel, sha in pulled:
        if sha is None:
            raise oms.SignatureInvalid(f"{what}: {rel} came from a layer that does not list its files")
        have[rel] = sha
    oms.compare(signed if complete else {p: d for p, d in signed.items() if p in have}, have.items(), what)


def signature_owner(path: Path) -> str | None:
    """Who wrote the signature file ``path``: None when there is none;
    the manifest digest (``sha256:...``) a modelimage signature records;
    ``"theirs"`` for anything else (a folder signature of your own, a
    symlink, a file that is not a bundle)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return "theirs"
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BUNDLE_BYTES:
        return "theirs"
    try:
        statement = oms.bundle_statement(path.read_bytes())
    except OSError:
        return "theirs"
    predicate = (statement or {}).get("predicate") if isinstance(statement, dict) else None
    record = predicate.get("modelimage") if isinstance(predicate, dict) else None
    manifest = record.get("manifest") if isinstance(record, dict) else None
    return manifest if isinstance(manifest, str) and manifest.startswith("sha256:") else "theirs"


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OutputError(f"{path}: cannot remove the signature of the image pulled before ({e.strerror})") from None


def write_signature(dest: str | os.PathLike, bundle: bytes) -> Path:
    """``DEST/model.sig``, written atomically and durably
    (:func:`modelimage.durable.write_durably`). Raises :class:`OutputError`."""
    target = Path(dest) / oms.SIGNATURE_FILE
    try:
        write_durably(target, bundle)
    except OSError as e:
        raise OutputError(f"{target}: cannot write the signature ({e.strerror})") from None
    return target


def at_digest(source: str, digest: str) -> str:
    """``HOST/REPO@DIGEST`` for a registry ``source`` (its tag or digest
    replaced); a layout (``oci:``, ``oci-archive:``) as it is."""
    if source.startswith(("oci:", "oci-archive:")) or not digest:
        return source
    from ..registry.reference import Reference

    return Reference.parse(source).with_digest(digest).pinned()


def attached_bundle(source: str, *, platform: str | None = None, insecure: frozenset[str] = frozenset(),
                    credentials: Credentials | None = None) -> bytes | None:
    """The newest OMS signature bundle attached to ``source``, NOT verified
    (``model_signing verify`` checks it later); None when there is none, or
    the registry cannot say (a pull never fails for that)."""
    if source.startswith(("oci:", "oci-archive:")):
        return None
    try:
        with open_remote(source, platform=platform, insecure=insecure, credentials=credentials,
                         mirrors=True) as remote:
            for sig in newest_first([r for r in remote.referrers() if r.kind == "signature" and r.signed]):
                return bundle_of(remote, sig)
    except (ModelImageError, httpx.HTTPError):
        return None
    return None
