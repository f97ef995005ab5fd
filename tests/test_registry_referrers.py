"""OCI 1.1 referrers against the real CNCF distribution 2.8 (no referrers
API): the fallback tag holds what the distribution spec says, keeps every
existing entry, and is left alone when it is not a referrers list."""

from __future__ import annotations

import json

import httpx
import pytest

from modelimage.oci import MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, Descriptor, canonical_json, sha256_digest
from modelimage.registry.client import RegistryClient
from modelimage.registry.reference import Reference
from modelimage.registry.referrers import (
    EMPTY_DESCRIPTOR,
    _next_link,
    artifact_manifest,
    attach,
    list_referrers,
    referrers_tag,
)
from modelimage.registry.transport import RegistryError

pytestmark = pytest.mark.integration


# distribution-spec v1.1 "Referrers Tag Schema", the table's three rows
@pytest.mark.parametrize("digest,tag", [
    ("sha256:" + "a" * 64, "sha256-" + "a" * 64),
    ("sha512:" + "a" * 128, "sha512-" + "a" * 64),
    ("test+algorithm+using+algorithm+separators+and+lots+of+characters+to+excercise+overall+truncation:"
     "alsoSome=InTheEncodedSectionToShowHyphenReplacementAndLotsAndLotsOfCharactersToExcerciseEncodedTruncation",
     "test-algorithm-using-algorithm-s-alsoSome-InTheEncodedSectionToShowHyphenReplacementAndLotsAndLot"),
])
def test_referrers_tag_is_the_spec_table(digest, tag):
    assert referrers_tag(digest) == tag


def test_next_link():
    assert _next_link('</v2/r/referrers/sha256:a?n=2&last=b>; rel="next"') == "/v2/r/referrers/sha256:a?n=2&last=b"
    assert _next_link("") is None


@pytest.fixture
def subject(registry):
    """A small image pushed to the registry: (client, repo, its descriptor)."""
    ref = Reference.parse(f"{registry.host}/referrers/img:v1")
    client = RegistryClient(ref)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    client.put_blob(ref.repository, config, sha256_digest(config))
    manifest = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_TYPE_MANIFEST, "layers": [],
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": sha256_digest(config), "size": len(config)}})
    client.put_manifest(ref.repository, "v1", manifest, MEDIA_TYPE_MANIFEST)
    yield client, ref.repository, Descriptor.of_bytes(MEDIA_TYPE_MANIFEST, manifest)
    client.close()


def _artifact(subject: Descriptor, payload: bytes, kind: str = "application/vnd.example.sig") -> tuple[bytes, bytes]:
    layer = Descriptor.of_bytes(kind, payload)
    return artifact_manifest(kind, [layer], subject, {"org.example.note": payload.decode()}), payload


def test_fallback_tag_index_is_what_the_spec_says(registry, subject):
    client, repo, desc = subject
    assert list_referrers(client, repo, desc.digest) == ([], "none")
    manifest, blob = _artifact(desc, b"one")
    attached = attach(client, repo, manifest, [(blob, sha256_digest(blob))])
    assert attached.listed_by == "tag" and attached.tag == "sha256-" + desc.hex
    r = httpx.get(f"{registry.url}/v2/{repo}/manifests/sha256-{desc.hex}", headers={"Accept": MEDIA_TYPE_INDEX})
    assert r.status_code == 200 and r.headers["Content-Type"] == MEDIA_TYPE_INDEX
    index = r.json()
    assert index == {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [{
        "mediaType": MEDIA_TYPE_MANIFEST, "digest": sha256_digest(manifest), "size": len(manifest),
        "artifactType": "application/vnd.example.sig",  # the artifact's artifactType
        "annotations": {"org.example.note": "one"},  # all its annotations, copied
    }]}
    # the artifact itself: empty config, subject = the image
    pushed = httpx.get(f"{registry.url}/v2/{repo}/manifests/{attached.descriptor.digest}",
                       headers={"Accept": MEDIA_TYPE_MANIFEST}).json()
    assert pushed["config"] == EMPTY_DESCRIPTOR.to_json()
    assert pushed["subject"] == {"mediaType": MEDIA_TYPE_MANIFEST, "digest": desc.digest, "size": desc.size}
    assert httpx.get(f"{registry.url}/v2/{repo}/blobs/{EMPTY_DESCRIPTOR.digest}").content == b"{}"
    entries, found = list_referrers(client, repo, desc.digest)
    assert found == "tag" and [e.digest for e in entries] == [attached.descriptor.digest]


def test_existing_entries_are_kept_and_duplicates_not_added(registry, subject):
    client, repo, desc = subject
    # another tool's referrer, listed with a field modelimage does not know about
    theirs, payload = _artifact(desc, b"theirs", "application/vnd.other")
    client.put_blob(repo, payload, sha256_digest(payload))
    client.put_blob(repo, b"{}", EMPTY_DESCRIPTOR.digest)
    client.put_manifest(repo, sha256_digest(theirs), theirs, MEDIA_TYPE_MANIFEST)
    foreign = {"mediaType": MEDIA_TYPE_MANIFEST, "digest": sha256_digest(theirs), "size": len(theirs),
               "artifactType": "application/vnd.other", "annotations": {"x": "y"}, "data": "e30="}
    client.put_manifest(repo, referrers_tag(desc.digest),
                        json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [foreign]}).encode(),
                        MEDIA_TYPE_INDEX)
    first, blob = _artifact(desc, b"first")
    attach(client, repo, first, [(blob, sha256_digest(blob))])
    second, blob2 = _artifact(desc, b"second")
    attach(client, repo, second, [(blob2, sha256_digest(blob2))])
    attach(client, repo, second, [(blob2, sha256_digest(blob2))])  # again: no duplicate
    index = httpx.get(f"{registry.url}/v2/{repo}/manifests/sha256-{desc.hex}",
                      headers={"Accept": MEDIA_TYPE_INDEX}).json()
    assert index["manifests"][0] == foreign
    assert [m["digest"] for m in index["manifests"]] == [foreign["digest"], sha256_digest(first), sha256_digest(second)]
    entries, _ = list_referrers(client, repo, desc.digest, "application/vnd.example.sig")
    assert [e.digest for e in entries] == [sha256_digest(first), sha256_digest(second)]


def test_a_referrers_tag_that_is_not_an_index_is_left_alone(registry, subject):
    client, repo, desc = subject
    other = httpx.get(f"{registry.url}/v2/{repo}/manifests/v1", headers={"Accept": MEDIA_TYPE_MANIFEST}).content
    client.put_manifest(repo, referrers_tag(desc.digest), other, MEDIA_TYPE_MANIFEST)
    manifest, blob = _artifact(desc, b"x")
    with pytest.raises(RegistryError, match="not an image index; it is not a referrers list, so it was left alone"):
        attach(client, repo, manifest, [(blob, sha256_digest(blob))])
    after = httpx.get(f"{registry.url}/v2/{repo}/manifests/{referrers_tag(desc.digest)}",
                      headers={"Accept": MEDIA_TYPE_MANIFEST}).content
    assert after == other
