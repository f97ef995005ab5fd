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
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ..errors import ModelImageError, OutputError
from ..registry.keychain import Credentials
from . import oms
from .referrer import newest_first
from .remote import open_remote
from .verify import VerifiedImage, bundle_of, verify_image

if TYPE_CHECKING:
    from ..pull import PullResult


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

    @classmethod
    def before(cls, ref: str, key: str | os.PathLike | None, *, include: Sequence[str] = (), path: str | None = None,
               platform: str | None = None, insecure: Iterable[str] = (),
               credentials: Credentials | None = None) -> SignedPull:
        """With ``key`` (an EC public key, PEM): the verified signature of
        ``ref``; raises :class:`~modelimage.signing.verify.SignatureMissing`
        or :class:`~modelimage.signing.oms.SignatureInvalid`, one line,
        before anything is written. Without: nothing is checked."""
        insecure = frozenset(insecure)
        verified = None if key is None else verify_image(ref, Path(key), platform=platform, insecure=insecure,
                                                          credentials=credentials)
        return cls(ref, verified, tuple(include), path, platform, insecure, credentials)

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
        if whole and not any(f.path == oms.SIGNATURE_FILE for f in result.files):
            bundle = self.verified.bundle if self.verified is not None else attached_bundle(
                self.ref, platform=self.platform, insecure=self.insecure, credentials=self.credentials)
            if bundle is not None:
                write_signature(result.dest, bundle)
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


def write_signature(dest: str | os.PathLike, bundle: bytes) -> Path:
    """``DEST/model.sig``, written atomically (temp file, fsync, rename)."""
    target = Path(dest) / oms.SIGNATURE_FILE
    try:
        fd, tmp = tempfile.mkstemp(prefix=".model.sig.", dir=Path(dest))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(bundle)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise OutputError(f"{target}: cannot write the signature ({e.strerror})") from None
    return target


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
