"""layout: naming layouts, which image a reference means, blobs read in
place from directories and archives, and durable writes (the fsync order,
checked by recording os.fsync/os.replace, and a failing fsync)."""

from __future__ import annotations

import errno
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.errors import ConfigError, SourceError
from modelimage.image import open_image
from modelimage.layout import LayoutRef, open_layout, read_layout
from modelimage.oci import ANNOTATION_REF_NAME


def tiny_model(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"architectures": ["TinyForCausalLM"]}')
    (root / "weights.bin").write_bytes(bytes(range(256)) * 12)
    return root


@pytest.fixture
def built(tmp_path, capsys) -> Path:
    """A layout with the tiny model tagged v1 and v2 (same image)."""
    src = tiny_model(tmp_path / "tiny")
    for tag in ("v1", "v2"):
        assert main(["build", str(src), "-o", f"oci:{tmp_path / 'out'}:{tag}"]) == 0
    capsys.readouterr()
    return tmp_path / "out"


def rewrite_index(layout: Path, edit) -> None:
    index = json.loads((layout / "index.json").read_text())
    edit(index["manifests"])
    (layout / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("text, path, tag, explicit, digest", [
    ("oci:out", "out", "latest", False, None),
    ("oci:out:v1", "out", "v1", True, None),
    ("oci:a/b:localhost/app/x:v9", "a/b", "localhost/app/x:v9", True, None),  # podman save's names
    ("oci-archive:f.tar", "f.tar", "latest", False, None),
    ("oci-archive:f.tar@sha256:" + "a" * 64, "f.tar", "latest", False, "sha256:" + "a" * 64),
])
def test_ref_parsing(text, path, tag, explicit, digest):
    ref = LayoutRef.parse(text)
    assert (str(ref.path), ref.tag, ref.explicit_tag, ref.digest) == (path, tag, explicit, digest)


@pytest.mark.parametrize("text, message", [
    ("oci:", "expected oci:DIR"), ("oci::v1", "expected oci:DIR"), ("docker:x", "expected oci:DIR"),
    ("oci:x:bad tag!", "is not a valid tag"),
])
def test_bad_refs(text, message):
    with pytest.raises(ConfigError, match=message):
        LayoutRef.parse(text)


def test_one_untagged_image_is_the_image(built):
    rewrite_index(built, lambda ms: [m["annotations"].pop(ANNOTATION_REF_NAME) for m in ms] and ms.pop())
    desc, manifest = read_layout(LayoutRef.parse(f"oci:{built}"))
    assert manifest["layers"] and desc.annotations.get(ANNOTATION_REF_NAME) is None
    with pytest.raises(SourceError, match=r"no image tagged 'v1' \(tags: none and 1 untagged\)"):
        read_layout(LayoutRef.parse(f"oci:{built}:v1"))


def test_several_images_without_a_tag_take_latest_or_say_which(built, tmp_path):
    with pytest.raises(SourceError, match=r"holds 2 images \(tags: 'v1', 'v2'\); name one with oci:.*:TAG"):
        read_layout(LayoutRef.parse(f"oci:{built}"))
    rewrite_index(built, lambda ms: ms[1]["annotations"].update({ANNOTATION_REF_NAME: "latest"}))
    assert read_layout(LayoutRef.parse(f"oci:{built}"))[0].annotations[ANNOTATION_REF_NAME] == "latest"


def test_a_tag_on_two_different_images_is_ambiguous(built, tmp_path):
    other = tiny_model(tmp_path / "other")
    (other / "weights.bin").write_bytes(b"other")
    assert main(["build", str(other), "-o", f"oci:{tmp_path / 'b'}:v1"]) == 0
    second = json.loads((tmp_path / "b" / "index.json").read_text())["manifests"][0]
    for blob in (tmp_path / "b" / "blobs" / "sha256").iterdir():
        (built / "blobs" / "sha256" / blob.name).write_bytes(blob.read_bytes())
    rewrite_index(built, lambda ms: ms.append(second))
    with pytest.raises(SourceError, match=r"2 different images are tagged 'v1' .*name one with oci:.*@DIGEST"):
        read_layout(LayoutRef.parse(f"oci:{built}:v1"))
    image = open_image(f"oci:{built}@{second['digest']}")
    assert image.digest == second["digest"]


def test_missing_corrupt_and_truncated_blobs(built):
    image = open_image(f"oci:{built}:v1")
    config = built / "blobs" / "sha256" / image.manifest["config"]["digest"].split(":")[1]
    config.write_bytes(config.read_bytes().replace(b"TinyForCausalLM", b"EvilForCausalLM"))
    with pytest.raises(SourceError, match=r"blob sha256:\w+ does not match its digest"):
        open_image(f"oci:{built}:v1")
    config.unlink()
    with pytest.raises(SourceError, match=r"blob sha256:\w+ is missing"):
        open_image(f"oci:{built}:v1")
    layer = built / "blobs" / "sha256" / image.layers[0].hex
    layer.write_bytes(layer.read_bytes()[:100])
    with pytest.raises(SourceError, match=r"is 100 bytes, its descriptor says \d+ \(the layout is truncated"):
        b"".join(image.read(image.layers[0], 0))


@pytest.mark.parametrize("content, message", [
    (None, r"not an OCI layout \(no index.json\)"), (b"{not json", "index.json is not an OCI image index"),
    (b'{"manifests": [{"digest": "x"}]}', "index.json is not an OCI image index"),
    (b'{"manifests": []}', "holds no image"),
])
def test_not_a_layout(tmp_path, content, message):
    (tmp_path / "l").mkdir()
    if content is not None:
        (tmp_path / "l" / "index.json").write_bytes(content)
    with pytest.raises(SourceError, match=message):
        open_image(f"oci:{tmp_path / 'l'}")


def test_archive_blobs_are_read_in_place(built, tmp_path, capsys):
    src = tiny_model(tmp_path / "tiny")
    assert main(["build", str(src), "-o", f"oci-archive:{tmp_path / 'a.tar'}:v1"]) == 0
    capsys.readouterr()
    layout = open_layout(LayoutRef.parse(f"oci-archive:{tmp_path / 'a.tar'}"))
    desc = layout.top()
    with tarfile.open(tmp_path / "a.tar") as tar:
        member = tar.getmember("blobs/sha256/" + desc.hex)
        assert layout.locate_blob(desc.digest) == (tmp_path / "a.tar", member.offset_data, member.size)
    image = open_image(f"oci-archive:{tmp_path / 'a.tar'}:v1")
    assert image.digest == open_image(f"oci:{built}:v1").digest  # the same files give the same image
    assert b"".join(image.fetch(image.layers[0])) == (built / "blobs" / "sha256" / image.layers[0].hex).read_bytes()


def test_the_wrong_transport_says_the_right_one(built, tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(SourceError, match=r"a.tar is a file; an archive is named oci-archive:.*a.tar\[:TAG\]$"):
        open_image(f"oci:{tmp_path / 'a.tar'}")
    with pytest.raises(SourceError, match=r"out is a folder; a layout folder is named oci:.*out\[:TAG\]$"):
        open_image(f"oci-archive:{built}:v1")


def test_an_archive_is_not_written_over_a_folder(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["build", str(tiny_model(tmp_path / "tiny")), "-o", f"oci-archive:{tmp_path / 'x'}"]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'x'} is a folder; an archive is a file "
                                               f"(a layout folder is oci:{tmp_path / 'x'})")
    assert list((tmp_path / "x").iterdir()) == []


def test_not_an_archive(tmp_path):
    import gzip

    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(b"x" * 1024))
    with pytest.raises(SourceError, match="not a tar archive .*decompress it first"):
        open_image(f"oci-archive:{tmp_path / 'a.tar.gz'}")
    with pytest.raises(SourceError, match="no such file"):
        open_image(f"oci-archive:{tmp_path / 'none.tar'}")


# ---------------------------------------------------------------- durability


class Recorder:
    """os.fsync and os.replace, recorded (paths of the synced fds)."""

    def __init__(self, monkeypatch, fail_on: str | None = None):
        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.events.append(("fsync", path))
            if fail_on and re.search(fail_on, path):
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)

        def replace(src, dst):
            self.events.append(("replace", f"{src} -> {dst}"))
            real_replace(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def index(self, kind: str, test) -> int:
        return next(i for i, (k, p) in enumerate(self.events) if k == kind and test(p))

    def renamed_after_sync(self, dst: Path) -> int:
        """Where ``dst`` was renamed into place, after its temp file was synced."""
        renamed = self.index("replace", lambda p: p.endswith(f"-> {dst}"))
        tmp = self.events[renamed][1].split(" -> ")[0]
        assert self.index("fsync", lambda p: p == tmp) < renamed, dst
        return renamed


def recorded_build(tmp_path: Path, monkeypatch, output: str) -> Recorder:
    rec = Recorder(monkeypatch)
    assert main(["build", str(tiny_model(tmp_path / "tiny")), "-o", output]) == 0
    return rec


def test_layout_directory_writes_are_durable_in_order(tmp_path, monkeypatch, capsys):
    out = (tmp_path / "deep" / "out").absolute()
    rec = recorded_build(tmp_path, monkeypatch, f"oci:{out}:v1")
    index_renamed = rec.renamed_after_sync(out / "index.json")
    # each blob: its data synced, then renamed to its digest, before index.json names it
    last_blob = max(rec.renamed_after_sync(b) for b in (out / "blobs" / "sha256").iterdir())
    assert last_blob < index_renamed
    for directory in (out / "blobs" / "sha256", out / "blobs", out, out.parent):
        synced = [i for i, (k, p) in enumerate(rec.events) if k == "fsync" and p == str(directory)]
        assert synced and last_blob < synced[0] < index_renamed, directory
    assert any(k == "fsync" and p == str(out) for k, p in rec.events[index_renamed + 1:])  # the rename itself


def test_archive_writes_are_durable_in_order(tmp_path, monkeypatch, capsys):
    out = (tmp_path / "new" / "a.tar").absolute()
    rec = recorded_build(tmp_path, monkeypatch, f"oci-archive:{out}:v1")
    renamed = rec.renamed_after_sync(out)
    after = [p for k, p in rec.events[renamed + 1:] if k == "fsync"]
    assert str(out.parent) in after and str(out.parent.parent) in after  # the rename and the new directory


@pytest.mark.parametrize("fail_on, output", [
    (r"/blobs/sha256/\.partial-", "oci:{out}"), (r"/\.index\.json\.partial-", "oci:{out}"),
    (r"/blobs/sha256$", "oci:{out}"), (r"/\.a\.tar\.partial-", "oci-archive:{out}/a.tar"),
])
def test_a_failed_fsync_leaves_no_complete_looking_layout(tmp_path, monkeypatch, capsys, fail_on, output):
    src = tiny_model(tmp_path / "tiny")
    out = tmp_path / "o"
    Recorder(monkeypatch, fail_on=fail_on)
    assert main(["build", str(src), "-o", output.format(out=out) + ":v1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write: Input/output error" in err[0]
    assert not (out / "index.json").exists() and not (out / "a.tar").exists()
    assert not [p for p in tmp_path.rglob("*.partial-*")]


def test_an_existing_layout_keeps_its_index_when_fsync_fails(built, tmp_path, monkeypatch, capsys):
    before = (built / "index.json").read_bytes()
    Recorder(monkeypatch, fail_on=r"/\.index\.json\.partial-")
    assert main(["build", str(tiny_model(tmp_path / "tiny")), "-o", f"oci:{built}:v3"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {built}/index.json: cannot write: Input/output error")
    assert (built / "index.json").read_bytes() == before
    assert not [p for p in built.rglob("*.partial-*")]


# ---------------------------------------------------------------- Ctrl-C: the output as it was


def _state(root: Path) -> dict[str, str]:
    """Every path under ``root`` and what it holds (a folder: "dir")."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): "dir" if p.is_dir() else p.read_bytes().hex()[:64] + str(p.stat().st_size)
            for p in sorted(root.rglob("*"))}


def _prepare(out: Path, state: str, tmp: Path) -> None:
    """``out`` missing, an empty folder, or a layout holding another image."""
    if state == "empty-dir":
        out.mkdir()
    elif state == "layout":
        assert main(["build", str(tiny_model(tmp / "other")), "-o", f"oci:{out}:other", "-q"]) == 0


STATES = ["new", "empty-dir", "layout"]


@pytest.mark.parametrize("state", STATES)
def test_ctrl_c_in_a_local_build_leaves_the_output_as_it_was(state, llama_dir, tmp_path, capsys, monkeypatch):
    """A folder build stopped in its second layer: a new layout is gone, an
    empty folder is empty again (no blobs/sha256 left), and an existing
    layout holds exactly what it held (no blob of this run, no temporary)."""
    import modelimage.layout.blobs as blobs

    from .test_cli_errors import _CtrlC

    out = tmp_path / "out"
    _prepare(out, state, tmp_path)
    before = _state(out)
    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    monkeypatch.setattr(blobs, "blob_chunks", _CtrlC(blobs.blob_chunks))
    monkeypatch.setattr(blobs, "write_layer_fd", _CtrlC(blobs.write_layer_fd))
    capsys.readouterr()
    assert main(["build", str(llama_dir), "-o", f"oci:{out}:v1"]) == 130
    assert capsys.readouterr().err == "interrupted; rerun to resume\n"
    assert _state(out) == before


@pytest.mark.integration
@pytest.mark.parametrize("state", STATES)
def test_sigint_in_an_hf_build_leaves_the_output_as_it_was(state, hub, tmp_path):
    """`build hf://... -o oci:DIR` in a process of its own, the Hub's
    answers slowed to 1 MB/s, sent SIGINT once a layer is being written:
    exit 130, one line, and DIR as it was before (missing, empty, or the
    other image's layout unchanged)."""
    import signal
    import subprocess
    import sys
    import time

    from modelimage import synth

    from .faultproxy import FaultProxy, Rule, Throttle

    src = synth.write_random_shards(tmp_path / "src" / "tiny-llm", 0.003, 2)
    hub.commit("acme/ctrl-c", {p.name: p.read_bytes() for p in sorted(src.iterdir())})
    out = tmp_path / "out"
    _prepare(out, state, tmp_path)
    before = _state(out)
    with FaultProxy(hub.url.removeprefix("http://")) as proxy:
        proxy.add(Rule("GET", r"/resolve/.*\.safetensors$", Throttle(1_000_000), times=None))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELIMAGE_"))}
        env.update(HF_ENDPOINT=proxy.url, HF_HUB_CACHE=str(tmp_path / "hf-cache"), HF_HUB_DISABLE_TELEMETRY="1",
                   MODELIMAGE_CACHE_DIR=str(tmp_path / "cache"))
        proc = subprocess.Popen([sys.executable, "-m", "modelimage", "build", "hf://acme/ctrl-c", "-o", f"oci:{out}:v1"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 60
        while not [p for p in (out / "blobs" / "sha256").glob(".partial-*") if p.stat().st_size > 0]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stdout, stderr) == (130, "", "interrupted; rerun to resume\n")
    assert _state(out) == before
