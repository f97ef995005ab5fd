"""The OMS adapter against the upstream model-signing tool: the statement
built from known digests is the one the upstream folder serializer makes,
its bundle passes the upstream CLI's `verify key`, and bad keys give one line."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelimage.signing import oms

from .signkeys import write_keypair


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return write_keypair(tmp_path_factory.mktemp("keys"))


def _digests(folder: Path) -> list[oms.SignedFile]:
    return [oms.SignedFile(p.relative_to(folder).as_posix(), "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != oms.SIGNATURE_FILE]


def _statement(bundle: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))


def _upstream_verify(folder: Path, signature: Path, public: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(folder), "--signature",
                           str(signature), "--public_key", str(public)], capture_output=True, text=True)


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and not s.startswith(".git") and s != "model.sig" and not s.startswith(".modelimage"))
trees = st.dictionaries(st.lists(names, min_size=1, max_size=3).map("/".join), st.binary(max_size=64),
                        min_size=1, max_size=6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_statement_from_known_digests_is_the_upstream_serializers(tree, tmp_path_factory, keys):
    """Differential: model_signing's own folder hashing of the same files
    gives the same resources and root digest as our digests-only statement."""
    from model_signing import hashing

    folder = tmp_path_factory.mktemp("model")
    for rel, data in tree.items():
        p = folder / rel
        if any(parent.is_file() for parent in p.parents):
            continue  # a file where a folder is needed: not a tree
        if p.is_dir():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    upstream = hashing.Config().set_ignored_paths(paths=list(oms.IGNORE_PATHS)).hash(folder)
    ours = oms.oms_payload(folder.name, _digests(folder))
    theirs_rd = [(rd.identifier, rd.digest.digest_hex) for rd in upstream.resource_descriptors()]
    ours_json = json.loads(oms._to_json(ours.statement.pb))
    assert [(r["name"], r["digest"]) for r in ours_json["predicate"]["resources"]] == theirs_rd
    from model_signing._signing import signing

    theirs_json = json.loads(oms._to_json(signing.Payload(upstream).statement.pb))
    assert ours_json["subject"] == theirs_json["subject"]  # the root digest over all files


def test_upstream_cli_verifies_our_signature_of_a_folder(tmp_path, keys):
    private, public = keys
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    (folder / ".modelimage-pull").mkdir()  # the puller's own state: ignored by the signed statement
    (folder / ".modelimage-pull" / "state.json").write_text("{}")
    files = [f for f in _digests(folder) if not f.path.startswith(".modelimage-pull")]
    bundle = oms.sign_files(private, "model", files, {"modelimage": {"manifest": "sha256:" + "1" * 64}})
    (folder / "model.sig").write_bytes(bundle)
    r = _upstream_verify(folder, folder / "model.sig", public)
    assert r.returncode == 0, r.stderr
    statement = oms.verify_files(bundle, public)
    assert dict(statement.files) == {"model.safetensors": "sha256:" + hashlib.sha256(b"\0" * 1000).hexdigest(),
                                     "sub/config.json": "sha256:" + hashlib.sha256(b'{"a": 1}').hexdigest()}
    assert statement.manifest_digest == "sha256:" + "1" * 64
    assert _statement(bundle)["predicateType"] == oms.OMS_PREDICATE_TYPE
    (folder / "sub" / "config.json").write_text('{"a": 2}')  # a changed file
    r = _upstream_verify(folder, folder / "model.sig", public)
    assert r.returncode != 0 and "sub/config.json" in r.stderr


def test_wrong_key_and_tampered_bundle_fail_with_one_line(tmp_path, keys):
    private, public = keys
    _, other = write_keypair(tmp_path, "other")
    bundle = oms.sign_files(private, "m", [oms.SignedFile("a", "sha256:" + "2" * 64)])
    with pytest.raises(oms.SignatureInvalid) as e:
        oms.verify_files(bundle, other, "sig")
    assert str(e.value) == f"sig: does not verify with {other} (signed with another key)"
    doc = json.loads(bundle)
    statement = _statement(bundle)
    statement["predicate"]["resources"][0]["digest"] = "3" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(oms.SignatureInvalid) as e:
        oms.verify_files(json.dumps(doc).encode(), public, "sig")
    assert "\n" not in str(e.value) and "does not verify" in str(e.value)


def _pem(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


@pytest.mark.parametrize("make,expected", [
    (lambda: _pem(rsa.generate_private_key(65537, 2048)), "not an EC key; OpenSSF model signing keys are ECDSA P-256"),
    (lambda: _pem(ed25519.Ed25519PrivateKey.generate()), "not an EC key"),
    (lambda: _pem(ec.generate_private_key(ec.SECP256K1())), "an EC key on secp256k1, which is not supported"),
    (lambda: b"not a key", "not a PEM private key"),
    (lambda: _pem(ec.generate_private_key(ec.SECP256R1()), b"pw"), "the key is encrypted; put its password in $MODELIMAGE_KEY_PASSWORD"),
])
def test_unusable_private_keys_get_one_line(tmp_path, make, expected, monkeypatch):
    monkeypatch.delenv(oms.PASSWORD_ENV, raising=False)
    path = tmp_path / "key.pem"
    path.write_bytes(make())
    with pytest.raises(oms.SigningError) as e:
        oms.sign_files(path, "m", [oms.SignedFile("a", "sha256:" + "2" * 64)])
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value) and "\n" not in str(e.value)


def test_encrypted_key_with_its_password(tmp_path, monkeypatch):
    private, public = write_keypair(tmp_path, password=b"s3cret")
    monkeypatch.setenv(oms.PASSWORD_ENV, "wrong")
    with pytest.raises(oms.SigningError, match="wrong password in"):
        oms.load_private_key(private)
    monkeypatch.setenv(oms.PASSWORD_ENV, "s3cret")
    bundle = oms.sign_files(private, "m", [oms.SignedFile("a", "sha256:" + "2" * 64)])
    assert dict(oms.verify_files(bundle, public).files) == {"a": "sha256:" + "2" * 64}


def test_public_key_errors(tmp_path, keys):
    private, _ = keys
    with pytest.raises(oms.SigningError, match="that is a private key: pass the public one"):
        oms.load_public_key(private)
    with pytest.raises(oms.SigningError, match="cannot read the key"):
        oms.load_public_key(tmp_path / "missing.pub")


@pytest.mark.parametrize("path", ["model.sig", ".git/config", "a/../b", "/abs", ".modelimage-pull/x", ".modelimage-pull.json"])
def test_paths_a_folder_check_could_not_see_are_refused(keys, path):
    with pytest.raises(oms.SigningError):
        oms.sign_files(keys[0], "m", [oms.SignedFile(path, "sha256:" + "2" * 64)])


def test_compare_names_the_first_difference():
    signed = {"a": "sha256:" + "1" * 64, "b": "sha256:" + "2" * 64}
    oms.compare(signed, signed.items(), "x")
    with pytest.raises(oms.SignatureInvalid, match="x: b is sha256:3333333333.* in the image, sha256:2222222222"):
        oms.compare(signed, {"a": signed["a"], "b": "sha256:" + "3" * 64}.items(), "x")
    with pytest.raises(oms.SignatureInvalid, match="x: b is signed but not in the image"):
        oms.compare(signed, {"a": signed["a"]}.items(), "x")
    with pytest.raises(oms.SignatureInvalid, match="x: c is in the image but not signed"):
        oms.compare(signed, {**signed, "c": "sha256:" + "4" * 64}.items(), "x")


def test_signed_provenance_round_trip(keys):
    private, public = keys
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "subject": [{"name": "h/r", "digest": {"sha256": "5" * 64}}],
                 "predicateType": "https://slsa.dev/provenance/v1",
                 "predicate": {"buildDefinition": {"externalParameters": {"source": "hf://o/r@abc"}}}}
    bundle = oms.sign_statement(private, statement)
    got = oms.verify_statement(bundle, public)
    assert got["subject"] == statement["subject"] and got["predicate"] == statement["predicate"]
    with pytest.raises(oms.SignatureInvalid, match="is not an OMS signature"):
        oms.verify_files(bundle, public)
