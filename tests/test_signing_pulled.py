"""The signing commands end to end on the real registry: build --push --sign,
verify --key (no layer read), pull --require-signature (refuses before
writing anything), DEST/model.sig accepted by the upstream
`python -m model_signing verify key`, inspect REF listing signatures and
attestations; every failure one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from modelimage.cli import main
from modelimage.signing import oms
from modelimage.signing.pulled import check_pulled

from .signkeys import signer_and_stranger

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return signer_and_stranger(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signed_ref(registry, llama_dir, keys):
    """The llama model built, pushed and signed (with signed provenance) in one command."""
    ref = f"{registry.host}/signed/llama:v1"
    assert main(["build", str(llama_dir), "--push", ref, "--sign", str(keys[0]), "--max-layer-size", "900KB"]) == 0
    return ref


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def upstream_verify(dest, public) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(dest), "--signature",
                           str(dest / "model.sig"), "--public_key", str(public)], capture_output=True, text=True)


def test_pull_require_signature_then_the_upstream_tool_accepts_the_folder(signed_ref, keys, tmp_path, capsys):
    rc, _, err = cli(capsys, "verify", signed_ref, "--key", str(keys[1]))
    assert rc == 0 and "signature by" in err and "no layer" in err and "provenance sha256:" in err and "verified" in err
    dest = tmp_path / "llama"
    rc, out, err = cli(capsys, "pull", signed_ref, str(dest), "--require-signature", str(keys[1]), "--json")
    assert rc == 0, err
    assert "every pulled file matches the signature" in err
    assert (dest / "model.sig").is_file()
    r = upstream_verify(dest, keys[1])
    assert r.returncode == 0, r.stderr + r.stdout
    rc, _, err = cli(capsys, "verify", signed_ref, str(dest), "--key", str(keys[1]))
    assert rc == 0 and "all" in err and "files match" in err  # model.sig is not an extra file

    # a changed file: the upstream tool and modelimage both say so
    (dest / "config.json").write_text('{"model_type": "llama", "tampered": true}')
    r = upstream_verify(dest, keys[1])
    assert r.returncode != 0 and "config.json" in r.stderr
    rc, out, err = cli(capsys, "verify", signed_ref, str(dest), "--key", str(keys[1]))
    assert rc == 1 and "changed config.json" in out
    assert err.splitlines()[-1].startswith("error: ") and "1 changed" in err.splitlines()[-1]


def test_require_signature_refuses_before_writing_anything(registry, llama_dir, signed_ref, keys, tmp_path, capsys):
    unsigned = f"{registry.host}/signed/unsigned:v1"
    assert main(["build", str(llama_dir), "--push", unsigned, "--max-layer-size", "900KB"]) == 0
    for ref, key, expected in [(unsigned, keys[1], "no signature is attached"),
                               (signed_ref, keys[2], "signed with another key")]:
        dest = tmp_path / "dest"
        rc, out, err = cli(capsys, "pull", ref, str(dest), "--require-signature", str(key))
        assert rc == 1 and out == ""
        assert len(err.splitlines()) == 1 and err.startswith(f"error: {ref}: ") and expected in err
        assert not dest.exists()  # nothing written, not even DEST
        rc, _, err = cli(capsys, "verify", ref, "--key", str(key))
        assert rc == 1 and len(err.splitlines()) == 1 and expected in err


def test_plain_pull_writes_model_sig_a_partial_pull_does_not(signed_ref, tmp_path, capsys):
    assert main(["pull", signed_ref, str(tmp_path / "all")]) == 0
    assert oms.bundle_statement((tmp_path / "all" / "model.sig").read_bytes())["predicateType"] == \
        oms.OMS_PREDICATE_TYPE
    assert main(["pull", signed_ref, str(tmp_path / "some"), "--include", "*.json"]) == 0
    assert not (tmp_path / "some" / "model.sig").exists()


def test_a_model_sig_of_your_own_is_never_replaced(registry, llama_dir, signed_ref, keys, tmp_path, capsys):
    """DEST/model.sig that modelimage did not write (a folder signature of
    your own, from model_signing sign) was silently replaced by the image's
    signature, by pull and by pull --require-signature: pull never touches
    what it did not write. --require-signature refuses before writing
    anything, a plain pull leaves it and warns, --overwrite replaces it.
    A model.sig modelimage wrote for another image goes when the image
    pulled now is not signed."""
    dest = tmp_path / "dest"
    dest.mkdir()
    mine = b"my own folder signature\n"
    (dest / "model.sig").write_bytes(mine)
    rc, out, err = cli(capsys, "pull", signed_ref, str(dest), "--require-signature", str(keys[1]))
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "model.sig: a signature file modelimage did not write" in err and "--overwrite" in err
    assert sorted(p.name for p in dest.iterdir()) == ["model.sig"]  # nothing written
    rc, _, err = cli(capsys, "pull", signed_ref, str(dest))
    assert rc == 0 and "warning: " in err and "model.sig: not written by modelimage, left as it is" in err
    assert (dest / "model.sig").read_bytes() == mine
    rc, _, err = cli(capsys, "pull", signed_ref, str(dest), "--require-signature", str(keys[1]), "--overwrite")
    assert rc == 0, err
    assert upstream_verify(dest, keys[1]).returncode == 0
    rc, _, err = cli(capsys, "pull", signed_ref, str(dest), "--require-signature", str(keys[1]))
    assert rc == 0, err  # its own model.sig is modelimage's to replace

    unsigned = f"{registry.host}/signed/unsigned-other:v1"
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.bin").write_bytes(bytes(range(256)) * 4)
    assert main(["build", str(other), "--push", unsigned]) == 0
    rc, _, err = cli(capsys, "pull", unsigned, str(dest))
    assert rc == 0, err
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == ["weights.bin"]


def test_inspect_lists_signatures_and_attestations_and_provenance_says_what_was_built(
        signed_ref, llama_dir, keys, capsys):
    rc, out, _ = cli(capsys, "inspect", signed_ref, "--json")
    report = json.loads(out)
    assert rc == 0 and len(report["files"]) > 3
    assert [s["kind"] for s in report["signatures"]] == ["signature"] and report["signatures"][0]["signed"]
    assert [(a["kind"], a["signed"]) for a in report["attestations"]] == [("provenance", True)]
    rc, out, _ = cli(capsys, "inspect", signed_ref)
    assert "signatures    1" in out and "https://slsa.dev/provenance/v1" in out

    from modelimage.signing.remote import open_remote
    from modelimage.signing.verify import bundle_of

    with open_remote(signed_ref) as remote:
        (prov,) = [r for r in remote.referrers() if r.kind == "provenance"]
        statement = oms.verify_statement(bundle_of(remote, prov), keys[1])
        assert statement["subject"][0]["digest"]["sha256"] == remote.subject.digest.split(":")[1]
    build = statement["predicate"]["buildDefinition"]
    assert build["externalParameters"]["source"] == str(llama_dir)
    assert build["externalParameters"]["maxLayerSize"] == "900000"
    deps = {d["name"]: d["digest"]["sha256"] for d in build["resolvedDependencies"]}
    assert deps["config.json"] == hashlib.sha256((llama_dir / "config.json").read_bytes()).hexdigest()
    assert set(deps) == {f["path"] for f in report["files"]}


def test_unsigned_provenance_is_listed_not_verified(registry, llama_dir, keys, capsys):
    ref = f"{registry.host}/signed/prov:v1"
    assert main(["build", str(llama_dir), "--push", ref, "--provenance"]) == 0
    rc, out, _ = cli(capsys, "inspect", ref, "--json")
    report = json.loads(out)
    assert report["signatures"] == [] and [(a["kind"], a["signed"]) for a in report["attestations"]] == \
        [("provenance", False)]
    rc, _, err = cli(capsys, "sign", ref, "--key", str(keys[0]))
    assert rc == 0 and "signed" in err
    rc, _, err = cli(capsys, "verify", ref, "--key", str(keys[1]))
    assert rc == 0 and "not verified (unsigned)" in err


def test_sign_and_build_sign_refuse_bad_input_with_one_line(registry, llama_dir, keys, tmp_path, capsys):
    rc, _, err = cli(capsys, "build", str(llama_dir), "-o", f"oci:{tmp_path}/out:v1", "--sign", str(keys[0]))
    assert rc == 1 and "add --push REF" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    rc, _, err = cli(capsys, "build", str(llama_dir), "--push", f"{registry.host}/signed/nokey:v1",
                     "--sign", str(keys[1]))
    assert rc == 1 and "that is a public key; sign with the private one" in err and len(err.splitlines()) == 1
    rc, _, err = cli(capsys, "sign", f"oci:{tmp_path}/out:v1", "--key", str(keys[0]))
    assert rc == 1 and "push it first" in err


def test_check_pulled():
    signed = {"a": "sha256:" + "1" * 64, "b": "sha256:" + "2" * 64}
    check_pulled(signed, signed.items(), "x", complete=True)
    check_pulled(signed, [("a", signed["a"])], "x", complete=False)
    with pytest.raises(oms.SignatureInvalid, match="b is signed but not in the image"):
        check_pulled(signed, [("a", signed["a"])], "x", complete=True)
    with pytest.raises(oms.SignatureInvalid, match="c is in the image but not signed"):
        check_pulled(signed, [("c", "sha256:" + "3" * 64)], "x", complete=False)
    with pytest.raises(oms.SignatureInvalid, match="a came from a layer that does not list its files"):
        check_pulled(signed, [("a", None)], "x", complete=False)


def test_an_image_with_a_file_list_layer_signs_verifies_and_pulls(registry, llama_dir, keys, tmp_path, capsys,
                                                                   monkeypatch):
    """A model with thousands of files keeps its file lists in the
    file-list layer (modelimage.filelist), not the manifest. build --sign,
    sign, verify --key and inspect REF died there with a traceback
    (AssertionError: signing and signature checks never read layers) after
    the image was pushed. They read that one small layer, and no other."""
    from modelimage import filelist

    monkeypatch.setattr(filelist, "INLINE_LIMIT", 64)  # what 6,000 small files do, with the test model
    ref = f"{registry.host}/signed/listed:v1"
    rc, out, err = cli(capsys, "build", str(llama_dir), "--push", ref, "--sign", str(keys[0]), "--json")
    assert rc == 0, err
    pushed = json.loads(out)
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                                         capture_output=True, text=True, check=True).stdout)
    listed = [d for d in manifest["layers"] if d.get("annotations", {}).get(filelist.ANNOTATION_FILELIST)]
    assert len(listed) == 1  # the case under test: the lists are in a layer

    rc, out, err = cli(capsys, "verify", ref, "--key", str(keys[1]), "--json")
    assert rc == 0, err
    assert "only the file-list layer" in err
    checked = json.loads(out)
    assert checked["layersRead"] == [listed[0]["digest"]] and checked["digest"] == pushed["digest"]
    assert {f["path"] for f in checked["files"]} >= {"config.json", "model.safetensors.index.json"}

    rc, out, err = cli(capsys, "inspect", ref)
    assert rc == 0, err
    assert "config.json" in out and "signature, signed" in out

    dest = tmp_path / "listed"
    rc, _, err = cli(capsys, "pull", ref, str(dest), "--require-signature", str(keys[1]))
    assert rc == 0, err
    r = upstream_verify(dest, keys[1])
    assert r.returncode == 0, r.stderr + r.stdout


def test_model_sig_is_the_pulled_manifests_never_what_the_tag_names_now(registry, llama_dir, keys, tmp_path):
    """A plain pull looked the signature up again by tag (and the platform's
    default index entry): when the tag moved during the pull, or --variant
    pulled another entry, DEST/model.sig was another image's signature next
    to these files, exit 0. It is looked up by the digest that was pulled."""
    from modelimage.pull import pull
    from modelimage.signing.pulled import SignedPull

    def copy(src: str, dst: str) -> None:
        subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{src}", f"docker://{dst}"], check=True, capture_output=True)

    ref, other = f"{registry.host}/signed/moving:v1", f"{registry.host}/signed/moving:signed"
    # a signed image in the same repository
    assert main(["build", str(llama_dir), "--push", other, "--sign", str(keys[0]), "--max-layer-size", "900KB"]) == 0
    assert main(["build", str(llama_dir), "--push", ref, "--max-layer-size", "2MB"]) == 0  # unsigned, other layers
    signed = SignedPull.before(ref, None)
    result = pull(signed.source, tmp_path / "dest")
    copy(other, ref)  # the tag moves to the signed image before the signature is looked up
    signed.after(result)
    assert not (tmp_path / "dest" / "model.sig").exists()
    # the signed image pulled by its tag still gets its signature
    signed = SignedPull.before(ref, None)
    signed.after(pull(signed.source, tmp_path / "dest2"))
    assert (tmp_path / "dest2" / "model.sig").is_file()
