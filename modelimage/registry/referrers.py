"""OCI 1.1 referrers: artifacts whose ``subject`` is a manifest.

Follows the distribution spec (v1.1, "Pushing Manifests with Subject",
"Listing Referrers", "Referrers Tag Schema"), as go-containerregistry's
``remote`` package and oras do:

* :func:`attach` pushes an artifact's blobs, then its manifest by digest.
  A registry with the referrers API answers the PUT with ``OCI-Subject``
  and keeps the list itself. Without it (CNCF distribution 2.8, GHCR) the
  client keeps the list: the image index tagged ``sha256-<hex>`` (the
  referrers tag) is read, the new descriptor appended (``artifactType``
  and all annotations copied from the artifact, no duplicates, every
  existing entry kept), and pushed back; then read again to check no other
  client's write replaced ours (the spec leaves races to clients; retried a
  few times).
* :func:`list_referrers` asks ``GET /v2/NAME/referrers/DIGEST``; a 404
  falls back to the referrers tag; no tag means no referrers.

No printing, no format logic beyond the spec's descriptors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..oci import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Descriptor, canonical_json, sha256_digest
from .client import RegistryClient
from .transport import RegistryError
from .transport import error_from_response as _error

MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"  # image-spec "Guidance for an Empty Descriptor"
EMPTY_JSON = b"{}"
EMPTY_DESCRIPTOR = Descriptor(MEDIA_TYPE_EMPTY, sha256_digest(EMPTY_JSON), len(EMPTY_JSON))
FALLBACK_ATTEMPTS = 3
MAX_INDEX_BYTES = 4 << 20  # a referrers list is a manifest: the spec's 4 MB

Found = Literal["api", "tag", "none"]


def referrers_tag(digest: str) -> str:
    """The referrers tag of a digest: algorithm truncated to 32 characters,
    ``-``, encoded part truncated to 64, characters a tag may not hold
    replaced by ``-`` (distribution spec, "Referrers Tag Schema")."""
    algorithm, _, encoded = digest.partition(":")
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{algorithm[:32]}-{encoded[:64]}")


def artifact_manifest(artifact_type: str, layers: Sequence[Descriptor], subject: Descriptor,
                      annotations: dict[str, str] | None = None) -> bytes:
    """An OCI 1.1 artifact manifest (image manifest with ``artifactType``,
    the empty config and ``subject``), canonical JSON."""
    d: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": artifact_type,
        "config": EMPTY_DESCRIPTOR.to_json(),
        "layers": [layer.to_json() for layer in layers],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
    }
    if annotations:
        d["annotations"] = dict(annotations)
    return canonical_json(d)


def descriptor_of(manifest: bytes) -> Descriptor:
    """The referrers-list entry for an artifact manifest: ``artifactType``
    (or, without one, the config's media type) and all its annotations."""
    m = json.loads(manifest)
    artifact_type = m.get("artifactType") or (m.get("config") or {}).get("mediaType")
    return Descriptor(m.get("mediaType") or MEDIA_TYPE_MANIFEST, sha256_digest(manifest), len(manifest),
                      annotations=dict(m.get("annotations") or {}), artifact_type=artifact_type)


@dataclass(frozen=True)
class Attached:
    """An artifact pushed: its descriptor, and how the registry lists it
    (``api``: the registry's referrers API; ``tag``: the referrers tag this
    client updated)."""

    descriptor: Descriptor
    listed_by: Found
    tag: str | None = None


def attach(client: RegistryClient, repo: str, manifest: bytes, blobs: Sequence[tuple[bytes, str]]) -> Attached:
    """Push ``blobs`` (bytes, digest), then the artifact ``manifest`` (which
    has a ``subject``) by digest, then make sure it is listed as a referrer
    of its subject. Raises :class:`RegistryError`."""
    for data, digest in [(EMPTY_JSON, EMPTY_DESCRIPTOR.digest), *blobs]:
        client.put_blob(repo, data, digest)
    desc = descriptor_of(manifest)
    subject = json.loads(manifest)["subject"]["digest"]
    r = client.http.put(f"/v2/{repo}/manifests/{desc.digest}", content=manifest,
                        headers={"Content-Type": desc.media_type})
    if r.status_code not in (200, 201):
        raise _error(f"{client.host}/{repo}: pushing referrer {desc.digest[:19]}", r)
    if r.headers.get("OCI-Subject"):
        return Attached(desc, "api")
    if _api_index(client, repo, subject) is not None:  # an API that lists without announcing it
        return Attached(desc, "api")
    tag = referrers_tag(subject)
    for _ in range(FALLBACK_ATTEMPTS):
        index = _tag_document(client, repo, subject)
        if index is None:  # no tag yet: start with an empty index
            index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}
        if any(isinstance(d, dict) and d.get("digest") == desc.digest for d in index["manifests"]):
            return Attached(desc, "tag", tag)
        # existing entries are kept as they were written (fields we do not know included)
        index["manifests"] = [*index["manifests"], desc.to_json()]
        client.put_manifest(repo, tag, canonical_json(index), MEDIA_TYPE_INDEX)
        after = _tag_index(client, repo, subject) or []
        if any(d.digest == desc.digest for d in after):
            return Attached(desc, "tag", tag)
    raise RegistryError(f"{client.host}/{repo}:{tag}: the referrers list kept changing under us "
                        f"(another client writing it?); run again", 409, "CONFLICT")


def list_referrers(client: RegistryClient, repo: str, digest: str,
                   artifact_type: str | None = None) -> tuple[list[Descriptor], Found]:
    """The referrers of ``digest`` (optionally only one ``artifact_type``)
    and where the list came from. Raises :class:`RegistryError`."""
    found: Found = "api"
    entries = _api_index(client, repo, digest)
    if entries is None:
        entries, found = _tag_index(client, repo, digest), "tag"
        if entries is None:
            return [], "none"
    if artifact_type is not None:
        entries = [d for d in entries if d.artifact_type == artifact_type]
    return entries, found


def _api_index(client: RegistryClient, repo: str, digest: str) -> list[Descriptor] | None:
    """The referrers API's answer (following ``Link: rel="next"`` pages), or
    None when the registry has no such API (404, or an answer that is not an index)."""
    out: list[Descriptor] = []
    url: str | None = f"/v2/{repo}/referrers/{digest}"
    while url:
        r = client.http.get(url, headers={"Accept": MEDIA_TYPE_INDEX})
        if r.status_code in (404, 400, 405, 406):
            return None
        if r.status_code != 200:
            raise _error(f"{client.host}/{repo}: referrers of {digest[:19]}", r)
        if r.headers.get("Content-Type", "").split(";")[0].strip() != MEDIA_TYPE_INDEX:
            return None
        out += _entries(r.content, f"{client.host}/{repo}: referrers of {digest[:19]}")
        url = _next_link(r.headers.get("Link", ""))
    return out


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        m = re.match(r'\s*<([^>]+)>\s*;.*rel="?next"?', part)
        if m:
            return m.group(1)
    return None


def _tag_index(client: RegistryClient, repo: str, digest: str) -> list[Descriptor] | None:
    """The referrers tag's index entries, or None when the tag does not exist."""
    doc = _tag_document(client, repo, digest)
    if doc is None:
        return None
    return _entries(doc, f"{client.host}/{repo}:{referrers_tag(digest)}")


def _tag_document(client: RegistryClient, repo: str, digest: str) -> dict[str, Any] | None:
    """The index the referrers tag holds (as JSON), or None when there is no such tag."""
    tag = referrers_tag(digest)
    try:
        m = client.get_manifest(repo, tag)
    except RegistryError as e:
        if e.status == 404:
            return None
        raise
    what = f"{client.host}/{repo}:{tag}"
    try:
        doc = json.loads(m.data)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("mediaType", m.media_type) != MEDIA_TYPE_INDEX \
            or not isinstance(doc.get("manifests", []), list):
        raise RegistryError(what, 200, "MANIFEST_INVALID",
                            f"the referrers tag holds a {m.media_type or 'document'}, not an image index; "
                            "it is not a referrers list, so it was left alone")
    doc.setdefault("manifests", [])
    return doc


def _entries(data: bytes | dict[str, Any], what: str) -> list[Descriptor]:
    if isinstance(data, bytes) and len(data) > MAX_INDEX_BYTES:
        raise RegistryError(what, 200, "SIZE_INVALID", f"referrers list of {len(data)} bytes")
    try:
        doc = json.loads(data) if isinstance(data, bytes) else data
        return [Descriptor.from_json(d) for d in doc.get("manifests") or []]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RegistryError(what, 200, "MANIFEST_INVALID", f"not a referrers list ({e})") from None
