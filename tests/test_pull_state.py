"""Resuming a cut pull (modelimage.pull.state, .apply): journals of plain
tar layers and partial raw blobs, continued with Range requests, hashed
again from disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.errors import ModelImageError, PullError
from modelimage.pull import prepare_pull, pull

from .pullkit import cut_after, info, layer_size, layout, own, push_raw_artifact, sha, tar_of, tree
from .tools import tmpfs, unavailable

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- resume


def test_resume_image_after_a_cut(pushed_llama, tmp_path, monkeypatch, small_pieces):
    ref, files, total = pushed_llama
    cuts = cut_after(monkeypatch, total // 2)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError, match="gave up after 1 attempt"):
        pull(ref, dest, concurrency=1, retries=0)
    assert cuts
    staging = dest / ".modelimage-pull"
    journaled = {seg[1]["temp"] for j in staging.glob("*.tarjournal")
                 for seg in json.loads(j.read_text())["segments"] if seg[0] == "file"}
    assert {p.name for p in staging.glob("*.tmp")} == journaled  # only what the cut layer's journal names
    again = pull(ref, dest, concurrency=1, retries=0)
    assert 0 < again.bytes_fetched < total and again.layers_skipped > 0
    assert tree(dest) == files


@pytest.mark.parametrize("connections", [1, 2])
def test_resume_a_tar_layer_mid_file_with_a_range_request(pushed_big_file, tmp_path, monkeypatch, small_pieces,
                                                          connections):
    """Cut 2 MiB into the pull (one streaming GET, or ranged pieces over two
    connections): the tar layer's staged file and a journal of its header
    bytes stay; the next run hashes them again from disk and asks only for
    the rest of the blob."""
    ref, files, total = pushed_big_file
    cuts = cut_after(monkeypatch, 2 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError, match="gave up after 1 attempt"):
        pull(ref, dest, concurrency=1, retries=0, connections=connections)
    staging = dest / ".modelimage-pull"
    assert cuts and [p.suffix for p in staging.iterdir()].count(".tarjournal") == 1
    assert not (dest / "weights.bin").exists()  # only complete files carry their name
    journal = json.loads(next(staging.glob("*.tarjournal")).read_text())
    assert (2 << 20) - (512 << 10) <= journal["pos"] < 3 << 20  # up to the pieces in flight short of the cut

    again = pull(ref, dest, concurrency=1, retries=0, connections=connections)
    assert not again.warnings
    # the weights' layer comes first: of it only the rest, then the small files' layer (never reached before)
    assert again.bytes_fetched == total - journal["pos"]
    assert journal["pos"] < layer_size(ref, journal["digest"])
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert not staging.exists()  # journal, staged files and the staging folder gone once the pull is done
    assert main(["verify", ref, str(dest)]) == 0


def test_a_staged_file_changed_after_the_cut_fails_the_digest_then_starts_afresh(pushed_big_file, tmp_path,
                                                                              monkeypatch, small_pieces):
    ref, files, total = pushed_big_file
    cuts = cut_after(monkeypatch, 2 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError):
        pull(ref, dest, concurrency=1, retries=0)
    assert cuts
    staging = dest / ".modelimage-pull"
    assert json.loads(next(staging.glob("*.tarjournal")).read_text())["digest"].startswith("sha256:")
    (staged,) = staging.glob("*.tmp")
    with open(staged, "r+b") as f:  # one byte flipped in what was already written
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ModelImageError, match="does not match its digest"):
        pull(ref, dest, concurrency=1, retries=0)
    assert not (dest / "weights.bin").exists()
    assert not list(staging.glob("*.tarjournal")) and not list(staging.glob("*.tmp"))
    again = pull(ref, dest, concurrency=1, retries=0)
    assert again.bytes_fetched == total  # the weights' layer from its start, then the rest
    assert not staging.exists()
    assert (dest / "weights.bin").read_bytes() == files["weights.bin"]


def test_resume_raw_file_with_a_range_request(registry, tmp_path, monkeypatch, small_pieces):
    weights = os.urandom(3 << 20)
    ref = push_raw_artifact(registry, "pull/raw", {"weights/model.bin": weights, "config.json": b'{"a": 1}'})
    cuts = cut_after(monkeypatch, 2 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError):
        pull(ref, dest, concurrency=1, retries=0)
    partial = [p for p in (dest / ".modelimage-pull").iterdir() if p.suffix == ".partial"]
    assert cuts and partial and 0 < partial[0].stat().st_size < len(weights)
    assert not (dest / "weights" / "model.bin").exists()  # only complete files carry their name
    have = partial[0].stat().st_size
    again = pull(ref, dest, concurrency=1, retries=0)
    # from where the partial file ended (and the small config.json, never reached before)
    assert again.bytes_fetched == len(weights) - have + len(b'{"a": 1}')
    assert (dest / "weights" / "model.bin").read_bytes() == weights
    assert (dest / "config.json").read_bytes() == b'{"a": 1}'
    assert main(["verify", ref, str(dest)]) == 0


# ---------------------------------------------------------------- a disk that fills up (issue 13, input 6)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test (as root; a failure, not a skip, under CI=true)."""
    yield from tmpfs(tmp_path / "disk", "16m")


def _grow(mnt: Path, size: str = "64m") -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def _leftovers(dest: Path) -> list[str]:
    """Files nobody should find after a failed pull: empty ones, temporary
    state files, records or journals that are not whole JSON."""
    bad = []
    for p in dest.rglob("*"):
        if p.is_file() and not p.is_symlink():
            if p.stat().st_size == 0 or p.name.endswith(".new") or p.name.startswith(".state-"):
                bad.append(str(p))
            elif p.suffix in (".json", ".tarjournal"):
                try:
                    json.loads(p.read_text())
                except ValueError:
                    bad.append(str(p))
    return bad


def test_a_full_disk_is_one_line_and_what_was_applied_stays(small_disk, tmp_path, capsys):
    small = tar_of([(info("small.txt"), b"s" * 1000)])
    big = tar_of([(info("big.bin"), os.urandom(20 << 20))])  # a foreign layer: its size is unknown before
    source = layout(tmp_path / "oci", [small, big])
    dest = small_disk / "dest"
    assert main(["pull", source, str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "no space left on the device while staging big.bin (20,971,520 bytes)" in err, err
    assert f"{dest}/.modelimage-pull/" in err and "1 of 2 layers are in DEST" in err, err
    assert tree(dest) == {"small.txt": sha(b"s" * 1000)} and not _leftovers(dest)
    assert own(dest) == {".modelimage-pull.json"}  # nothing half-staged kept: a foreign layer cannot resume
    _grow(small_disk)
    assert main(["pull", source, str(dest)]) == 0
    assert set(tree(dest)) == {"small.txt", "big.bin"} and own(dest) == {".modelimage-pull.json"}


def test_listed_files_that_cannot_fit_stop_before_anything_is_fetched(small_disk, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(20 << 20))
    (model / "config.json").write_text("{}")
    assert main(["build", str(model), "-o", f"oci:{tmp_path / 'oci'}:v1"]) == 0
    capsys.readouterr()
    dest = small_disk / "dest"
    assert main(["pull", f"oci:{tmp_path / 'oci'}:v1", str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the files to pull need 21 MB" in err and "is free there" in err, err
    assert not dest.exists()  # the pull made DEST, and removed it again (empty) when it failed


def test_a_disk_that_fills_during_the_pull_keeps_what_was_verified(small_disk, tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    files = {"weights.bin": os.urandom(6 << 20), "config.json": b'{"a": 1}'}
    for name, data in files.items():
        (model / name).write_bytes(data)
    assert main(["build", str(model), "-o", f"oci:{tmp_path / 'oci'}:v1"]) == 0
    capsys.readouterr()
    dest = small_disk / "dest"
    job = prepare_pull(f"oci:{tmp_path / 'oci'}:v1", dest, concurrency=1)  # the space check passes
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # then something else fills the disk, 3 MiB left
        f.write(b"\0" * ((16 << 20) - (3 << 20)))
    with pytest.raises(PullError) as info_:
        job.run()
    message = str(info_.value)
    assert "no space left on the device while staging weights.bin (6,291,456 bytes)" in message, message
    assert "kept in" in message and "for the next run" in message, message
    assert not _leftovers(dest)
    staging = dest / ".modelimage-pull"
    (journal,) = staging.glob("*.tarjournal")  # the staged prefix of the cut layer, for the resume
    pos = json.loads(journal.read_text())["pos"]
    filler.unlink()
    again = pull(f"oci:{tmp_path / 'oci'}:v1", dest)
    assert 0 < pos and again.bytes_fetched < sum(len(d) for d in files.values()) + 10240 - pos + 1
    assert {p: (dest / p).read_bytes() for p in files} == files and own(dest) == {".modelimage-pull.json"}


def test_a_read_only_file_system_is_one_line(small_disk, tmp_path, capsys):
    source = layout(tmp_path / "oci", [tar_of([(info("model.bin"), b"w")])])
    (small_disk / "dest").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for dest in (small_disk / "dest", small_disk / "new"):
        assert main(["pull", source, str(dest)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(dest) in err, err
        assert "read-only file system" in err.lower(), err
    assert os.listdir(small_disk) == ["dest"] and os.listdir(small_disk / "dest") == []


def test_no_permission_is_one_line(tmp_path):
    """As a user who may read the image but not write DEST (a forked child
    that dropped root: the interpreter lives where ``nobody`` cannot run it)."""
    if os.geteuid() != 0:
        unavailable("dropping to another user needs root")
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="pull-perm-"))
    try:
        work.chmod(0o755)
        source = layout(work / "oci", [tar_of([(info("model.bin"), b"w")])])
        dest = work / "dest"
        dest.mkdir(mode=0o755)
        err_file = work / "stderr"
        pid = os.fork()
        if pid == 0:  # the child: nobody, running the CLI in-process
            try:
                import sys

                sys.stderr = open(err_file, "w")  # the child writes nothing else
                os.setgid(65534)
                os.setuid(65534)
                code = main(["pull", source, str(dest)])
                sys.stderr.flush()
                os._exit(code)
            except BaseException:
                os._exit(99)
        _, status = os.waitpid(pid, 0)
        err = err_file.read_text()
        assert os.waitstatus_to_exitcode(status) == 1, err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(dest) in err, err
        assert "permission denied" in err.lower() and "write permission" in err, err
        assert os.listdir(dest) == []
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_foreign_image_resumes_by_layer_after_a_bad_blob(tmp_path):
    """Layers of unknown content apply in order; those applied stay recorded,
    and the next run starts at the first one that was not."""
    layers = [tar_of([(info(f"l{i}/f"), bytes([i]) * 1000)]) for i in range(3)]
    source = layout(tmp_path / "oci", layers)
    blob = Path(source.removeprefix("oci:").rsplit(":", 1)[0]) / "blobs" / "sha256" / sha(layers[2])[7:]
    blob.write_bytes(tar_of([(info("l2/f"), b"X" * 1000)]))
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="layer 3 .*does not match its digest.*2 of 3 layers are in DEST"):
        pull(source, dest, concurrency=1)
    assert set(tree(dest)) == {"l0/f", "l1/f"}
    blob.write_bytes(layers[2])
    again = pull(source, dest)
    assert (again.layers_skipped, again.layers_fetched, again.bytes_fetched) == (2, 1, len(layers[2]))
    assert set(tree(dest)) == {"l0/f", "l1/f", "l2/f"} and own(dest) == {".modelimage-pull.json"}


def test_a_foreign_image_pulled_again_with_another_include_keeps_the_first_files(tmp_path):
    source = layout(tmp_path / "oci", [tar_of([(info("config.json"), b"{}"), (info("w.bin"), b"w")])])
    dest = tmp_path / "dest"
    pull(source, dest, include=["*.json"])
    pull(source, dest, include=["*.bin"])
    assert tree(dest) == {"config.json": sha(b"{}"), "w.bin": sha(b"w")}
    (dest / "w.bin").write_bytes(b"changed")  # a changed file: every layer applies again, nothing is lost
    pull(source, dest)
    assert tree(dest) == {"config.json": sha(b"{}"), "w.bin": sha(b"w")}


def test_files_an_earlier_version_recorded_in_state_json_are_modelimages(tmp_path):
    """DEST pulled by a version that kept ``.modelimage-pull/state.json``:
    its files count as modelimage's, so another image replaces them."""
    dest = tmp_path / "dest"
    (dest / ".modelimage-pull").mkdir(parents=True)
    (dest / "old.bin").write_bytes(b"old")
    (dest / "mine.txt").write_text("mine")
    (dest / ".modelimage-pull" / "state.json").write_text(json.dumps({
        "version": 1, "manifest": "sha256:" + "0" * 64, "selection": {"path": "", "include": []}, "applied": [],
        "files": {"old.bin": {"size": 3, "sha256": sha(b"old"), "stat": [0, 0, 0, 0]}}}))
    pull(layout(tmp_path / "oci", [tar_of([(info("new.bin"), b"new")])]), dest)
    assert tree(dest) == {"mine.txt": sha(b"mine"), "new.bin": sha(b"new")}
    assert own(dest) == {".modelimage-pull.json"}


# ---------------------------------------------------------------- a record or staging folder nobody designed (breaker2)


def test_a_record_naming_paths_outside_dest_harms_nothing_there(tmp_path):
    """A hand-edited or planted DEST/.modelimage-pull.json that names
    ``../x``, an absolute path or the puller's own files: a pull of another
    image (which removes what the record says modelimage wrote) removes
    nothing outside DEST; the record's clean entries still count."""
    victims = [tmp_path / "victim", tmp_path / "abs-victim"]
    for v in victims:
        v.write_text("precious")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.bin").write_text("an earlier pull wrote this")
    entries = {"../victim": {"kind": "file"}, str(victims[1]): {"kind": "file"}, "./old.bin": {"kind": "file"},
               "a/../../victim": {"kind": "file"}, ".modelimage-pull.json": {"kind": "file"},
               "old.bin": {"kind": "file"}}
    (dest / ".modelimage-pull.json").write_text(json.dumps(
        {"version": 2, "manifest": "sha256:" + "0" * 64, "selection": {}, "applied": [], "entries": entries}))
    pull(layout(tmp_path / "oci", [tar_of([(info("model.bin"), b"weights")])]), dest)
    assert all(v.read_text() == "precious" for v in victims)
    assert tree(dest) == {"model.bin": sha(b"weights")}  # old.bin was modelimage's: removed
    assert set(json.loads((dest / ".modelimage-pull.json").read_text())["entries"]) == {"model.bin"}


def test_a_record_that_is_a_symlink_is_not_read(tmp_path):
    """A symlink at the record's name (modelimage writes a file there) is
    not trusted: what it says is modelimage's stays."""
    planted = tmp_path / "planted.json"
    planted.write_text(json.dumps({"version": 2, "manifest": "sha256:" + "0" * 64, "selection": {},
                                   "applied": [], "entries": {"user.txt": {"kind": "file"}}}))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "user.txt").write_text("mine")
    (dest / ".modelimage-pull.json").symlink_to(planted)
    pull(layout(tmp_path / "oci", [tar_of([(info("model.bin"), b"weights")])]), dest)
    assert (dest / "user.txt").read_text() == "mine"
    assert not (dest / ".modelimage-pull.json").is_symlink()  # replaced by the real record
    assert "user.txt" in json.loads(planted.read_text())["entries"]  # the symlink's target untouched


def test_a_staging_folder_that_is_a_symlink_stops_the_pull(tmp_path, capsys):
    """DEST/.modelimage-pull pointing elsewhere: the pull neither writes
    there nor cleans up stale files there (``*.tmp``, journals)."""
    elsewhere = tmp_path / "scratch"
    elsewhere.mkdir()
    (elsewhere / "keep.tmp").write_text("someone's")
    (elsewhere / "x.tarjournal").write_text("someone's")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".modelimage-pull").symlink_to(elsewhere)
    assert main(["pull", layout(tmp_path / "oci", [tar_of([(info("model.bin"), b"w")])]), str(dest)]) == 1
    assert "not the staging folder modelimage makes" in capsys.readouterr().err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.tmp", "x.tarjournal"]
    assert tree(dest) == {}


def test_a_record_temp_left_by_a_killed_run_is_removed(tmp_path):
    """SIGKILL while the record was being saved leaves
    ``..modelimage-pull.json.XXXX.new`` beside it (write_durably's temp):
    the next pull removes it, so verify finds no extra file."""
    lay = layout(tmp_path / "oci", [tar_of([(info("model.bin"), b"weights")])])
    dest = tmp_path / "dest"
    pull(lay, dest)
    (dest / "..modelimage-pull.json.k1ll3d_.new").write_text('{"version": 2, "entr')
    (dest / "user.json.new").write_text("mine")  # not the record's temp: stays
    pull(lay, dest)
    assert sorted(p.name for p in dest.iterdir()) == [".modelimage-pull.json", "model.bin", "user.json.new"]
