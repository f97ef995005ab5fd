"""image: resolving an index to the image of a platform (variants too), the
one reader every caller reads images with."""

from __future__ import annotations

import json
import os

import pytest

from modelimage import oci
from modelimage.errors import ModelImageError, SourceError
from modelimage.image import choose_platform, is_index, open_image


def index(*platforms: str | None) -> dict:
    entries = []
    for i, p in enumerate(platforms):
        entry = {"mediaType": oci.MEDIA_TYPE_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1}
        if p:
            entry["platform"] = oci.Platform.parse(p).to_json()
        entries.append(entry)
    return {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": entries}


def chosen(idx: dict, platform: str | None) -> int:
    return int(choose_platform(idx, platform, "x")["digest"].split(":")[1], 16)


@pytest.mark.parametrize("platforms, asked, want", [
    (("linux/amd64", "linux/arm64/v8"), "linux/arm64", 1),
    (("linux/amd64", "linux/arm64"), "linux/arm64/v8", 1),
    (("linux/amd64", "linux/arm64"), "linux/aarch64", 1),
    (("linux/arm/v6", "linux/arm/v7"), "linux/arm", 1),
    (("linux/arm/v7", "linux/arm/v6"), "linux/arm/v6", 1),
    (("linux/amd64", "windows/amd64"), "windows/amd64", 1),
    (("unknown/unknown", "linux/amd64"), "linux/amd64", 1),
])
def test_asked_platform(platforms, asked, want):
    assert chosen(index(*platforms), asked) == want


@pytest.mark.parametrize("machine, platforms, want", [
    ("aarch64", ("linux/amd64", "linux/arm64/v8"), 1),
    ("aarch64", ("linux/amd64", "linux/arm/v6", "linux/arm/v7"), 2),  # arm64 runs arm/v7 before v6
    ("x86_64", ("linux/386", "linux/amd64"), 1),
    ("x86_64", ("linux/arm64", "linux/386"), 1),
    ("x86_64", (None,), 0),  # one entry without a platform: that one
    ("x86_64", ("linux/arm64",), 0),  # one entry: that one, as before
])
def test_host_platform(monkeypatch, machine, platforms, want):
    monkeypatch.setattr(oci._platform, "machine", lambda: machine)
    assert chosen(index(*platforms), None) == want


def test_no_match_names_what_the_index_has(monkeypatch):
    monkeypatch.setattr(oci._platform, "machine", lambda: "x86_64")
    with pytest.raises(SourceError, match=r"^x: no linux/s390x image in the index "
                                          r"\(it has: linux/amd64, linux/arm64/v8, no platform\)$"):
        choose_platform(index("linux/amd64", "linux/arm64/v8", None), "linux/s390x", "x")
    with pytest.raises(SourceError, match="no linux/amd64 image"):
        choose_platform(index("linux/arm64", "linux/ppc64le"), None, "x")


def test_is_index():
    assert is_index(index("linux/amd64"))
    assert is_index({"manifests": []}, oci.MEDIA_TYPE_DOCKER_LIST)
    assert not is_index({"layers": [], "config": {}, "manifests": []})


# ---------------------------------------------------------------- the one reader, used by every caller
# pull/verify (open_image), estimate REF (pulltime), inspect/estimate REF's variants (variants.resolve)
# and sign/verify/describe (signing.remote) all read through image: against the real registry, each
# of them must answer the same for the same input.

def _push(client, repo: str, tag: str, doc: dict, media_type: str) -> tuple[str, int]:
    data = json.dumps(doc).encode()
    return client.put_manifest(repo, tag, data, media_type), len(data)


@pytest.fixture(scope="module")
def nested(registry):
    """``readers/nested:v1``: an OCI index -> a Docker manifest list -> a
    Docker schema 2 image manifest of one 3000-byte layer."""
    from modelimage.registry.client import RegistryClient
    from modelimage.registry.reference import Reference

    ref = Reference.parse(f"{registry.host}/readers/nested:v1")
    client = RegistryClient(ref)
    layer = os.urandom(3000)
    config = oci.ImageConfig("amd64", "linux", (oci.sha256_digest(layer),), "1970-01-01T00:00:00Z").to_bytes()
    for blob in (layer, config):
        client.put_blob(ref.repository, blob, oci.sha256_digest(blob))
    manifest = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_DOCKER_MANIFEST,
                "config": {"mediaType": oci.MEDIA_TYPE_DOCKER_CONFIG, "digest": oci.sha256_digest(config),
                           "size": len(config)},
                "layers": [{"mediaType": oci.MEDIA_TYPE_DOCKER_LAYER, "digest": oci.sha256_digest(layer),
                            "size": len(layer)}]}
    m_digest, m_size = _push(client, ref.repository, "image", manifest, oci.MEDIA_TYPE_DOCKER_MANIFEST)
    host = oci.Platform.host().to_json()
    docker_list = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_DOCKER_LIST, "manifests": [
        {"mediaType": oci.MEDIA_TYPE_DOCKER_MANIFEST, "digest": m_digest, "size": m_size, "platform": host}]}
    l_digest, l_size = _push(client, ref.repository, "list", docker_list, oci.MEDIA_TYPE_DOCKER_LIST)
    index = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": [
        {"mediaType": oci.MEDIA_TYPE_DOCKER_LIST, "digest": l_digest, "size": l_size}]}
    _push(client, ref.repository, "v1", index, oci.MEDIA_TYPE_INDEX)
    client.close()
    return str(ref), m_digest, m_size, len(layer)


def test_every_reader_follows_a_nested_index_of_docker_types_to_the_image(nested, tmp_path, monkeypatch):
    """estimate REF read one index level and answered 0 bytes (exit 0);
    signing refused the image ("not an image manifest"): both now find
    the Docker schema 2 manifest under the OCI index and the Docker list."""
    from modelimage.pulltime import estimate_source
    from modelimage.signing.remote import open_remote

    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path))  # no stored calibration
    ref, digest, size, layer_bytes = nested
    image = open_image(ref)
    image.close()
    assert (image.digest, image.size, image.media_type, image.from_index) == \
        (digest, size, oci.MEDIA_TYPE_DOCKER_MANIFEST, True)
    assert [d.size for d in image.layers] == [layer_bytes]
    report = estimate_source(ref)
    assert (report.bytes, len(report.layers)) == (layer_bytes, 1)
    with open_remote(ref) as remote:
        assert remote.subject == oci.Descriptor(oci.MEDIA_TYPE_DOCKER_MANIFEST, digest, size)
        assert remote.from_index and remote.image.layers == image.layers


def test_a_variant_entry_that_is_an_index_reads_as_its_image(registry, nested):
    """``inspect REF``/``estimate REF`` took a variant's per-platform index
    for its manifest: no layers, 0 bytes (exit 0). Now the variant is the
    image its index holds for this machine, as ``pull --variant`` reads it."""
    from modelimage.registry.client import RegistryClient
    from modelimage.registry.reference import Reference
    from modelimage.variants.resolve import read_index
    from modelimage.variants.select import ANNOTATION_VARIANT

    ref = Reference.parse(f"{registry.host}/readers/nested:list")
    client = RegistryClient(ref)
    inner = client.get_manifest(ref.repository, "list")
    outer = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": [
        {"mediaType": oci.MEDIA_TYPE_DOCKER_LIST, "digest": inner.digest, "size": len(inner.data),
         "annotations": {ANNOTATION_VARIANT: "q4"}}]}
    _push(client, ref.repository, "variants", outer, oci.MEDIA_TYPE_INDEX)
    client.close()
    view = read_index(f"{registry.host}/readers/nested:variants")
    assert [(v.facts.name, v.image_bytes) for v in view.variants] == \
        [("q4", nested[3] + _config_size(nested[0]))]


def _config_size(ref: str) -> int:
    image = open_image(ref)
    image.close()
    return int(image.manifest["config"]["size"])


def test_every_reader_refuses_an_oversized_manifest_before_reading_it(registry, nested, monkeypatch, tmp_path):
    """No registry reader had a bound (a layout's was 64 MiB): a server
    could make estimate, inspect, pull or verify hold any number of bytes.
    All of them now stop at oci.MAX_MANIFEST_BYTES (made small here), with
    one line naming the manifest."""
    from modelimage.pulltime import estimate_source
    from modelimage.registry import client as registry_client
    from modelimage.signing.remote import open_remote
    from modelimage.variants.resolve import read_index

    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path))
    ref = nested[0].rsplit(":", 1)[0] + ":image"  # the image manifest itself, ~400 bytes
    monkeypatch.setattr(registry_client, "MAX_MANIFEST_BYTES", 100)
    for read in (open_image, estimate_source, read_index, open_remote):
        with pytest.raises(ModelImageError) as e:
            read(ref)
        assert str(e.value) == f"{registry.host}/readers/nested:image: 200 SIZE_INVALID: the manifest is over " \
                               "100 B (registries keep them under 4 MB); not read", read


def test_an_index_entry_whose_size_is_wrong_is_refused_from_a_registry_as_from_a_layout(registry, nested):
    """A layout refused an index entry whose size is not its manifest's; a
    registry's was read. Both refuse it now, by every reader."""
    from modelimage.pulltime import estimate_source
    from modelimage.registry.client import RegistryClient
    from modelimage.registry.reference import Reference
    from modelimage.signing.remote import open_remote

    ref = Reference.parse(f"{registry.host}/readers/nested:liar")
    client = RegistryClient(ref)
    _, digest, size, _ = nested
    index = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_INDEX, "manifests": [
        {"mediaType": oci.MEDIA_TYPE_DOCKER_MANIFEST, "digest": digest, "size": size + 7}]}
    _push(client, ref.repository, "liar", index, oci.MEDIA_TYPE_INDEX)
    client.close()
    for read in (open_image, estimate_source, open_remote):
        with pytest.raises(SourceError, match=rf"^{ref}: blob {digest[:19]} is {size} bytes, its descriptor "
                                              rf"says {size + 7}$"):
            read(str(ref))
