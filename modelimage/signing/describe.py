"""``inspect REF``: what an image in a registry says about its model, and
which signatures and attestations are attached to it, from the manifest,
the config and the referrers list (no layer, no bundle is read)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..oci import ANNOTATION_PREFIX
from ..registry.keychain import Credentials
from .files import image_files
from .oms import SigningError
from .referrer import Referrer, newest_first
from .remote import open_remote


@dataclass(frozen=True)
class ImageReport:
    """An image in a registry: ``reference`` pinned by digest, the model
    facts its manifest records (``dev.modelimage.*`` without the prefix),
    its files (path, ``sha256:HEX``; empty when its layers do not list
    them), its size in bytes (layers), and its referrers, newest first."""

    reference: str
    digest: str
    platform: str
    facts: dict[str, str]
    files: list[tuple[str, str]]
    size: int
    referrers: list[Referrer]

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest, "platform": self.platform,
                "facts": self.facts, "size": self.size,
                "files": [{"path": p, "sha256": d} for p, d in self.files],
                "signatures": [r.to_json() for r in self.referrers if r.kind == "signature"],
                "attestations": [r.to_json() for r in self.referrers if r.kind in ("provenance", "attestation")],
                "referrers": [r.to_json() for r in self.referrers]}


def describe_image(source: str, *, platform: str | None = None, insecure: frozenset[str] = frozenset(),
                   credentials: Credentials | None = None, single: bool = False) -> ImageReport | None:
    """Read ``source``'s manifest, config and referrers list; with
    ``single``, None when ``source`` is an index (its entries are described
    elsewhere: variants). Raises :class:`~modelimage.errors.ModelImageError`
    subclasses, one line."""
    with open_remote(source, platform=platform, insecure=insecure, credentials=credentials, mirrors=True) as remote:
        if single and remote.from_index:
            return None
        image = remote.image
        annotations = image.manifest.get("annotations") or {}
        facts = {k[len(ANNOTATION_PREFIX):]: v for k, v in sorted(annotations.items())
                 if k.startswith(ANNOTATION_PREFIX)}
        try:
            files = [(f.path, f.sha256) for f in image_files(image)]
        except SigningError:
            files = []
        return ImageReport(remote.pinned, remote.subject.digest, str(image.platform), facts, files,
                           sum(d.size for d in image.layers), newest_first(remote.referrers()))


def looks_like_registry_reference(text: str) -> bool:
    """``HOST[:PORT]/REPO[:TAG|@DIGEST]`` with an explicit registry host
    (a dot, a port, or ``localhost`` in the first part), as docker decides;
    one with credentials in it too (``Reference.parse`` refuses it)."""
    from ..registry.reference import has_credentials, names_host

    if has_credentials(text):
        return True
    if "://" in text or text.startswith(("oci:", "oci-archive:")) or "/" not in text:
        return False
    return names_host(text.split("/", 1)[0])
