"""``modelimage verify REF --key PUB`` and ``pull --require-signature``:
is the image signed with this key, and are its files the signed ones?

Reads the manifest, the config, the referrers list and the small bundles
it points at: never a layer. Checks, in order:

1. an OMS signature is attached (else :class:`SignatureMissing`);
2. one of them verifies with the public key (else :class:`SignatureInvalid`
   "does not verify");
3. it was made for this manifest (modelimage records the manifest digest
   in the statement; a signature copied onto another manifest, or a tag
   moved to a re-pushed manifest, fails here or at 1);
4. the manifest's file digests (recorded at build time) are exactly the
   signed ones: no file added, missing or changed.

Signed SLSA provenance attached with the same key is checked too (its
subject must be this manifest) and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..errors import ModelImageError
from ..registry.keychain import Credentials
from ..registry.transport import network_message
from . import oms
from .files import image_files
from .referrer import Referrer, newest_first
from .remote import Remote, open_remote


class SignatureMissing(ModelImageError):
    """No OMS signature is attached to the image."""


@dataclass(frozen=True)
class VerifiedImage:
    """A verified signature: the image (``reference`` pinned by digest), the
    signed files (path -> ``sha256:HEX``), the bundle bytes (what ``pull``
    writes as ``model.sig``), provenance checks, and what the check cost
    (response bytes, requests, and the layers read: none, or the file-list
    layer of an image with too many files for its manifest)."""

    reference: str
    digest: str
    name: str
    files: dict[str, str]
    bundle: bytes
    signature: Referrer
    provenance: list[dict[str, Any]] = field(default_factory=list)
    bytes_fetched: int = 0
    requests: int = 0
    layers_read: tuple[str, ...] = ()  # digests: only ever the file-list layer (many files), never a weight

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest, "verified": True, "name": self.name,
                "files": [{"path": p, "sha256": d} for p, d in sorted(self.files.items())],
                "signature": self.signature.to_json(), "provenance": self.provenance,
                "bytesFetched": self.bytes_fetched, "requests": self.requests, "layersRead": list(self.layers_read)}


def verify_image(source: str, key: str | Path, *, platform: str | None = None,
                 insecure: frozenset[str] = frozenset(), credentials: Credentials | None = None) -> VerifiedImage:
    """Check the image ``source`` against the EC public key at ``key``
    (see the module docstring). Raises :class:`SignatureMissing`,
    :class:`~modelimage.signing.oms.SignatureInvalid`, or another
    :class:`~modelimage.errors.ModelImageError`: one line each."""
    oms.load_public_key(key)  # a bad key fails before any request
    with open_remote(source, platform=platform, insecure=insecure, credentials=credentials, mirrors=True) as remote:
        try:
            return _verify(remote, source, key)
        except httpx.HTTPError as e:
            raise ModelImageError(network_message((remote.served or remote.ref).host, e)) from None


def _verify(remote: Remote, source: str, key: str | Path) -> VerifiedImage:
    files = {f.path: f.sha256 for f in image_files(remote.image)}
    referrers = remote.referrers()
    signatures = newest_first([r for r in referrers if r.kind == "signature" and r.signed])
    if not signatures:
        raise SignatureMissing(f"{source}: no signature is attached to {remote.subject.digest[:19]}... "
                               f"(sign it with: modelimage sign {source} --key KEY)")
    failures: list[str] = []
    mismatch: oms.SignatureInvalid | None = None
    for sig in signatures:
        what = f"{source}: signature {sig.descriptor.digest[:19]}"
        try:
            bundle = bundle_of(remote, sig)
            statement = oms.verify_files(bundle, key, what)
        except (oms.SignatureInvalid, ModelImageError) as e:
            failures.append(str(e))
            continue
        try:
            signed_for = statement.manifest_digest
            if signed_for is not None and signed_for != remote.subject.digest:
                raise oms.SignatureInvalid(f"{what}: made for manifest {signed_for[:19]}..., not "
                                           f"{remote.subject.digest[:19]}... (image re-pushed, or signature copied)")
            oms.compare(statement.files, files.items(), f"{source}: the image does not match its signature")
        except oms.SignatureInvalid as e:
            mismatch = mismatch or e
            continue
        return VerifiedImage(remote.pinned, remote.subject.digest, statement.name, dict(statement.files), bundle,
                             sig, _provenance(remote, referrers, key), remote.bytes_fetched, remote.requests,
                             tuple(d.digest for d in remote.layers_read))
    if mismatch is not None:
        raise mismatch
    many = (f"none of the {len(signatures)} signatures verifies" if len(signatures) > 1
            else "the signature does not verify")
    reason = failures[0].split(" (", 1)[1].rstrip(")") if failures and " (" in failures[0] else ""
    raise oms.SignatureInvalid(f"{source}: {many} with {key}" + (f" ({reason})" if reason else ""))


def bundle_of(remote: Remote, sig: Referrer) -> bytes:
    """The bundle blob a signature or attestation manifest holds."""
    manifest = remote.manifest(sig.descriptor.digest)
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise oms.SignatureInvalid(f"{remote.ref.repository}@{sig.descriptor.digest[:19]}: "
                                   f"{len(layers)} layers, a bundle artifact has one")
    from ..oci import Descriptor

    subject = (manifest.get("subject") or {}).get("digest")
    if subject != remote.subject.digest:
        raise oms.SignatureInvalid(f"{remote.ref.repository}@{sig.descriptor.digest[:19]}: its subject is "
                                   f"{str(subject)[:19]}, not this image")
    return remote.small_blob(Descriptor.from_json(layers[0]))


def _provenance(remote: Remote, referrers: list[Referrer], key: str | Path) -> list[dict[str, Any]]:
    """Each provenance attestation: verified with the key (and made for this
    manifest) or not, unsigned, or failing; never raises."""
    out = []
    for r in newest_first([r for r in referrers if r.kind == "provenance"]):
        entry = r.to_json()
        if not r.signed:
            entry["verified"] = False
            entry["reason"] = "unsigned"
        else:
            try:
                statement = oms.verify_statement(bundle_of(remote, r), key)
                hexes = {(s.get("digest") or {}).get("sha256") for s in statement.get("subject") or []}
                entry["verified"] = remote.subject.digest.split(":", 1)[1] in hexes
                if not entry["verified"]:
                    entry["reason"] = "made for another manifest"
            except ModelImageError as e:
                entry["verified"] = False
                entry["reason"] = str(e).rsplit("(", 1)[-1].rstrip(")")
        out.append(entry)
    return out
