"""Signatures and attestations as OCI referrers: what the artifacts look like.

Follows cosign's "Cosign Bundle Specification" (sigstore/cosign
``specs/BUNDLE_SPEC.md``), which OMS signatures stored in registries use
too: an artifact manifest with ``artifactType``
``application/vnd.dev.sigstore.bundle.v0.3+json``, the empty config, one
layer holding the bundle JSON, ``subject`` = the image manifest, and the
annotations ``dev.sigstore.bundle.content`` (``dsse-envelope``),
``dev.sigstore.bundle.predicateType`` (the in-toto predicate) and
``org.opencontainers.image.created``. The registry (or the referrers tag)
copies the annotations into the referrers list, so a client can tell a
model signature from a provenance attestation without fetching either.

An unsigned attestation (provenance with no key) is the bare in-toto
statement: artifactType and layer ``application/vnd.in-toto+json`` with
``in-toto.io/predicate-type`` (docker buildx's attestation-storage
convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..oci import ANNOTATION_CREATED, Descriptor
from ..registry.referrers import artifact_manifest
from .oms import BUNDLE_MEDIA_TYPE, IN_TOTO_PAYLOAD_TYPE, OMS_PREDICATE_TYPE

ANNOTATION_BUNDLE_CONTENT = "dev.sigstore.bundle.content"
ANNOTATION_BUNDLE_PREDICATE = "dev.sigstore.bundle.predicateType"
ANNOTATION_INTOTO_PREDICATE = "in-toto.io/predicate-type"
SLSA_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"

Kind = Literal["signature", "provenance", "attestation", "other"]


def bundle_artifact(bundle: bytes, predicate_type: str, subject: Descriptor, created: str) -> tuple[bytes, bytes]:
    """(artifact manifest, bundle blob) for a sigstore bundle whose DSSE
    envelope holds an in-toto statement of ``predicate_type``."""
    layer = Descriptor.of_bytes(BUNDLE_MEDIA_TYPE, bundle)
    manifest = artifact_manifest(BUNDLE_MEDIA_TYPE, [layer], subject, {
        ANNOTATION_BUNDLE_CONTENT: "dsse-envelope",
        ANNOTATION_BUNDLE_PREDICATE: predicate_type,
        ANNOTATION_CREATED: created,
    })
    return manifest, bundle


def statement_artifact(statement: bytes, predicate_type: str, subject: Descriptor, created: str) -> tuple[bytes, bytes]:
    """(artifact manifest, statement blob) for an unsigned in-toto statement."""
    layer = Descriptor.of_bytes(IN_TOTO_PAYLOAD_TYPE, statement,
                                annotations={ANNOTATION_INTOTO_PREDICATE: predicate_type})
    manifest = artifact_manifest(IN_TOTO_PAYLOAD_TYPE, [layer], subject, {
        ANNOTATION_INTOTO_PREDICATE: predicate_type,
        ANNOTATION_CREATED: created,
    })
    return manifest, statement


@dataclass(frozen=True)
class Referrer:
    """One entry of an image's referrers list, as modelimage reads it."""

    descriptor: Descriptor
    kind: Kind
    signed: bool  # a sigstore bundle (signature over the statement) rather than a bare statement
    predicate_type: str | None
    created: str | None

    def to_json(self) -> dict[str, object]:
        return {"digest": self.descriptor.digest, "size": self.descriptor.size, "kind": self.kind,
                "signed": self.signed, "artifactType": self.descriptor.artifact_type,
                "predicateType": self.predicate_type, "created": self.created}


def classify(desc: Descriptor) -> Referrer:
    """What a referrers-list entry is, from its artifactType and annotations."""
    a = desc.annotations
    signed = desc.artifact_type == BUNDLE_MEDIA_TYPE
    predicate = a.get(ANNOTATION_BUNDLE_PREDICATE) if signed else a.get(ANNOTATION_INTOTO_PREDICATE)
    if desc.artifact_type not in (BUNDLE_MEDIA_TYPE, IN_TOTO_PAYLOAD_TYPE):
        kind: Kind = "other"
    elif predicate == OMS_PREDICATE_TYPE:
        kind = "signature"
    elif predicate == SLSA_PREDICATE_TYPE:
        kind = "provenance"
    else:
        kind = "attestation"
    return Referrer(desc, kind, signed, predicate, a.get(ANNOTATION_CREATED))


def newest_first(referrers: list[Referrer]) -> list[Referrer]:
    """RFC 3339 UTC timestamps sort as text; undated ones last."""
    return sorted(referrers, key=lambda r: r.created or "", reverse=True)
