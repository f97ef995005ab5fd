"""Signing and checking images in the real CNCF registry (no referrers API:
the fallback tag), without reading a layer; skopeo and oras-py still read
the signed image; every failure is one line."""

from __future__ import annotations

import hashlib
import io
import json
import re
from contextlib import redirect_stdout

import httpx
import pytest

from modelimage.cli import main
from modelimage.oci import ANNOTATION_FILES, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, canonical_json
from modelimage.registry.client import RegistryClient
from modelimage.registry.reference import Reference
from modelimage.registry.referrers import attach, referrers_tag
from modelimage.signing import oms
from modelimage.signing.referrer import ANNOTATION_BUNDLE_CONTENT, ANNOTATION_BUNDLE_PREDICATE
from modelimage.signing.sign import sign_image
from modelimage.signing.verify import SignatureMissing, verify_image

from .faultproxy import FaultProxy
from .signkeys import signer_and_stranger
from .tools import need, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return signer_and_stranger(tmp_path_factory.mktemp("keys"))


def push(source, ref: str, *extra: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["build", str(source), "--push", ref, "--json", *extra]) == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def signed(registry, llama_dir, keys):
    """The llama model pushed and signed: (ref, pushed JSON, sign result)."""
    ref = f"{registry.host}/signing/llama:v1"
    pushed = push(llama_dir, ref, "--max-layer-size", "900KB")
    return ref, pushed, sign_image(ref, keys[0])


def test_sign_then_verify_fetches_no_layer(registry, signed, keys):
    ref, pushed, result = signed
    assert result.reference == f"{registry.host}/signing/llama@{pushed['digest']}"
    assert result.signature is not None and result.signature.listed_by == "tag"
    files = {f["path"].removeprefix("/models/llama/"): f["sha256"] for layer in pushed["layers"] for f in layer["files"]}
    assert result.files == len(files) > 3

    with FaultProxy(registry.host) as proxy:  # every request verify makes, seen on the way
        verified = verify_image(ref.replace(registry.host, proxy.host), keys[1])
        fetched = [s.path.rsplit("/", 1)[1] for s in proxy.requests("GET", "/blobs/")]
    layers = {layer["digest"] for layer in pushed["layers"]}
    assert fetched and not layers & set(fetched)  # config and bundle only
    assert set(fetched) == {pushed["config"], *_bundle_digests(registry, pushed["digest"])}
    assert verified.files == files and verified.digest == pushed["digest"]
    # what it says it fetched: the manifest, the config, the referrers list, the signature manifest and bundle
    manifest = httpx.get(f"{registry.url}/v2/signing/llama/manifests/v1", headers={"Accept": MEDIA_TYPE_MANIFEST})
    assert len(manifest.content) < verified.bytes_fetched < 64 * 1024
    assert verified.requests >= 6


def _bundle_digests(registry, digest: str) -> set[str]:
    index = httpx.get(f"{registry.url}/v2/signing/llama/manifests/{referrers_tag(digest)}",
                      headers={"Accept": MEDIA_TYPE_INDEX}).json()
    out = set()
    for m in index["manifests"]:
        art = httpx.get(f"{registry.url}/v2/signing/llama/manifests/{m['digest']}",
                        headers={"Accept": MEDIA_TYPE_MANIFEST}).json()
        out |= {layer["digest"] for layer in art["layers"]}
    return out


def test_the_signature_referrer_follows_the_cosign_bundle_layout(registry, signed):
    ref, pushed, result = signed
    index = httpx.get(f"{registry.url}/v2/signing/llama/manifests/sha256-{pushed['digest'].split(':')[1]}",
                      headers={"Accept": MEDIA_TYPE_INDEX}).json()
    entry = next(m for m in index["manifests"] if m["digest"] == result.signature.descriptor.digest)
    assert entry["artifactType"] == oms.BUNDLE_MEDIA_TYPE
    assert entry["annotations"][ANNOTATION_BUNDLE_CONTENT] == "dsse-envelope"
    assert entry["annotations"][ANNOTATION_BUNDLE_PREDICATE] == oms.OMS_PREDICATE_TYPE
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entry["annotations"]["org.opencontainers.image.created"])


def test_wrong_key_fails_with_one_line(signed, keys):
    ref, _, _ = signed
    with pytest.raises(oms.SignatureInvalid) as e:
        verify_image(ref, keys[2])
    assert re.fullmatch(rf"{re.escape(ref)}: (the signature does not|none of the \d+ signatures) verif(y|ies) with "
                        rf"{re.escape(str(keys[2]))} \(signed with another key\)", str(e.value))


def test_missing_signature_fails_with_one_line(registry, llama_dir, keys):
    ref = f"{registry.host}/signing/unsigned:v1"
    pushed = push(llama_dir, ref, "--max-layer-size", "900KB")
    with pytest.raises(SignatureMissing) as e:
        verify_image(ref, keys[1])
    assert str(e.value) == (f"{ref}: no signature is attached to {pushed['digest'][:19]}... "
                            f"(sign it with: modelimage sign {ref} --key KEY)")


def test_a_manifest_repushed_under_the_tag_is_not_signed(registry, llama_dir, keys, tmp_path):
    ref = f"{registry.host}/signing/moved:v1"
    push(llama_dir, ref)
    sign_image(ref, keys[0])
    verify_image(ref, keys[1])
    changed = tmp_path / "llama"
    changed.mkdir()
    for p in llama_dir.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    (changed / "config.json").write_text('{"model_type": "llama", "changed": true}')
    push(changed, ref)  # the same tag, another manifest
    with pytest.raises(SignatureMissing, match="no signature is attached"):
        verify_image(ref, keys[1])


def test_a_signature_copied_onto_a_changed_manifest_fails(registry, signed, keys):
    """Same layers, but one file's recorded digest changed in the manifest,
    and the original signature attached to it: caught, one line."""
    ref, pushed, result = signed
    client = RegistryClient(Reference.parse(ref))
    try:
        manifest = json.loads(client.get_manifest("signing/llama", pushed["digest"]).data)
        listing = json.loads(manifest["layers"][0]["annotations"][ANNOTATION_FILES])
        listing[0]["sha256"] = "sha256:" + "0" * 64
        manifest["layers"][0]["annotations"][ANNOTATION_FILES] = json.dumps(listing)
        data = canonical_json(manifest)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        client.put_manifest("signing/llama", "tampered", data, MEDIA_TYPE_MANIFEST)
        sig = json.loads(client.get_manifest("signing/llama", result.signature.descriptor.digest).data)
        sig["subject"] = {"mediaType": MEDIA_TYPE_MANIFEST, "digest": digest, "size": len(data)}
        attach(client, "signing/llama", canonical_json(sig), [])
    finally:
        client.close()
    with pytest.raises(oms.SignatureInvalid) as e:
        verify_image(f"{registry.host}/signing/llama:tampered", keys[1])
    assert "made for manifest " + pushed["digest"][:19] in str(e.value) and "\n" not in str(e.value)


def test_skopeo_and_oras_still_read_a_signed_artifact(registry, llama_dir, keys, tmp_path):
    """A ModelPack artifact (raw layers: the blob digest IS the file's),
    signed: skopeo inspects it, oras-py pulls its files and reads the
    referrers tag as an index."""
    need("skopeo")
    import oras.provider

    ref = f"{registry.host}/signing/modelpack:v1"
    pushed = push(llama_dir, ref, "--format", "modelpack")
    result = sign_image(ref, keys[0])
    verified = verify_image(ref, keys[1])
    assert verified.files == {f.name: "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest()
                              for f in llama_dir.iterdir() if f.is_file()}
    inspected = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    assert "sha256:" + hashlib.sha256(canonical_json(inspected)).hexdigest() == pushed["digest"] or \
        inspected["layers"] == json.loads(httpx.get(f"{registry.url}/v2/signing/modelpack/manifests/v1",
                                                    headers={"Accept": MEDIA_TYPE_MANIFEST}).content)["layers"]
    client = oras.provider.Registry(hostname=registry.host, insecure=True)
    paths = client.pull(target=ref, outdir=str(tmp_path / "pulled"))
    assert {p.split("/pulled/", 1)[1] for p in paths} == set(verified.files)
    index = client.get_manifest(f"{registry.host}/signing/modelpack:{referrers_tag(pushed['digest'])}")
    assert index["mediaType"] == MEDIA_TYPE_INDEX
    assert result.signature.descriptor.digest in [m["digest"] for m in index["manifests"]]
