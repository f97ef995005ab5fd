"""``modelimage sign`` and ``build --sign``: attach an OMS signature (and
SLSA provenance) to an image in a registry as OCI 1.1 referrers.

The image is read by its manifest and config only (:mod:`.remote`); the
signed file list comes from the digests recorded in the manifest
(:mod:`.files`); the statement is signed with ``model-signing``
(:mod:`.oms`) and attached with the referrers API or the referrers tag
(:mod:`modelimage.registry.referrers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from ..errors import ConfigError, ModelImageError
from ..registry.keychain import Credentials
from ..registry.referrers import Attached, attach
from ..registry.transport import network_message
from . import oms
from .files import image_files
from .provenance import BuildFacts
from .referrer import SLSA_PREDICATE_TYPE, bundle_artifact, statement_artifact
from .remote import Remote, open_remote


@dataclass(frozen=True)
class SignResult:
    """What was attached to the image ``reference`` (``HOST/REPO@sha256:...``)."""

    reference: str
    files: int
    signature: Attached | None
    provenance: Attached | None
    provenance_signed: bool

    def to_json(self) -> dict[str, Any]:
        def one(a: Attached | None) -> dict[str, Any] | None:
            return None if a is None else {"digest": a.descriptor.digest, "size": a.descriptor.size,
                                           "artifactType": a.descriptor.artifact_type, "listedBy": a.listed_by,
                                           "tag": a.tag}
        return {"reference": self.reference, "files": self.files, "signature": one(self.signature),
                "provenance": one(self.provenance), "provenanceSigned": self.provenance_signed}


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_image(source: str, key: str | Path | None, *, provenance: BuildFacts | None = None,
               platform: str | None = None, insecure: frozenset[str] = frozenset(),
               credentials: Credentials | None = None, created: str | None = None) -> SignResult:
    """Sign the image ``source`` (``HOST/REPO[:TAG|@DIGEST]``) with the EC
    private key at ``key`` and attach the bundle as a referrer; with
    ``provenance``, attach its SLSA statement too (signed when ``key`` is
    given, a bare in-toto statement otherwise). No layer is read.

    Raises :class:`~modelimage.signing.oms.SigningError` (key, image that
    does not record its files), registry errors, one line each."""
    if key is None and provenance is None:
        raise ConfigError("nothing to attach: give a key (--key / --sign) or ask for provenance")
    if key is not None:
        oms.load_private_key(key)  # fail on the key before any request
    created = created or now_rfc3339()
    with open_remote(source, platform=platform, insecure=insecure, credentials=credentials) as remote:
        try:
            return _sign(remote, key, provenance, created)
        except httpx.HTTPError as e:
            raise ModelImageError(network_message(remote.ref.host, e)) from None


def _sign(remote: Remote, key: str | Path | None, provenance: BuildFacts | None, created: str) -> SignResult:
    files = image_files(remote.image)
    repo = remote.ref.repository
    signature = None
    if key is not None:
        name = _model_name(remote)
        bundle = oms.sign_files(key, name, files, {"modelimage": {"manifest": remote.subject.digest}})
        manifest, blob = bundle_artifact(bundle, oms.OMS_PREDICATE_TYPE, remote.subject, created)
        signature = attach(remote.client, repo, manifest, [(blob, _digest(blob))])
    attached = None
    if provenance is not None:
        statement = provenance.statement(f"{remote.ref.host}/{repo}", remote.subject.digest)
        if key is not None:
            blob = oms.sign_statement(key, statement)
            manifest, blob = bundle_artifact(blob, SLSA_PREDICATE_TYPE, remote.subject, created)
        else:
            raw = json.dumps(statement, indent=2, sort_keys=True).encode()
            manifest, blob = statement_artifact(raw, SLSA_PREDICATE_TYPE, remote.subject, created)
        attached = attach(remote.client, repo, manifest, [(blob, _digest(blob))])
    return SignResult(remote.pinned, len(files), signature, attached, key is not None and attached is not None)


def _model_name(remote: Remote) -> str:
    """The OMS subject name (informative only): the model's name recorded
    in the image, else the repository's last part."""
    from ..oci import ANNOTATION_PREFIX, ANNOTATION_TITLE

    ann = remote.image.manifest.get("annotations") or {}
    return ann.get(ANNOTATION_PREFIX + "name") or ann.get(ANNOTATION_TITLE) or remote.ref.repository.rsplit("/", 1)[-1]


def _digest(data: bytes) -> str:
    from ..oci import sha256_digest

    return sha256_digest(data)
