"""Verified layers applied to DEST (modelimage.pull.apply): nothing changes
before a blob matched its digest; whiteouts reach only what earlier layers
of the same image put there; files modelimage did not write are never
modified or removed; a new version replaces the old one's files; and the
tree is the one ``umoci unpack`` makes (a hypothesis differential test).
Edge cases from peers' trackers have a small test each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from modelimage.cli import main
from modelimage.errors import BadLayer, PullConflict, PullError, UnsafeLayer
from modelimage.pull import prepare_pull, pull, verify

from .pullkit import D, L, R, S, images, info, inspected, kinds, layout, own, readable, sha, snapshot, t, tar_of, tree
from .tools import need


def _corrupt(source: str, blob: bytes, new: bytes) -> None:
    root = source.removeprefix("oci:").rsplit(":", 1)[0]
    path = f"{root}/blobs/sha256/{sha(blob)[7:]}"
    with open(path, "wb") as f:
        f.write(new)


def _user_files(dest: Path) -> None:
    """What a user had in DEST before any pull."""
    (dest / "notes").mkdir(parents=True)
    (dest / "important.txt").write_text("mine")
    (dest / "notes" / "a.txt").write_text("my notes")


# ---------------------------------------------------------------- digests


def test_a_tar_layer_that_does_not_match_its_digest_keeps_nothing(tmp_path):
    good = tar_of([(info("a.txt"), b"a"), (info("sub/b.txt"), b"b")])
    bad = tar_of([(info("a.txt"), b"A"), (info("sub/b.txt"), b"B")])
    assert len(good) == len(bad)
    source = layout(tmp_path / "oci", [good])
    _corrupt(source, good, bad)
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="does not match its digest"):
        pull(source, dest)
    assert tree(dest) == {}


def test_a_good_layer_then_a_bad_one(tmp_path):
    first = tar_of([(info("a.txt"), b"a")])
    good = tar_of([(info("b.txt"), b"b")])
    source = layout(tmp_path / "oci", [first, good])
    _corrupt(source, good, tar_of([(info("b.txt"), b"X")]))
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="layer 2 .*does not match its digest"):
        pull(source, dest)
    assert tree(dest) == {"a.txt": sha(b"a")}  # the verified layer stays for the next run


@pytest.mark.parametrize("case", ["whiteout", "symlink", "opaque"])
def test_issue13_2_a_changed_blob_leaves_dest_exactly_as_it_was(tmp_path, capsys, case):
    """Issue 13, failing input 2: the blob's bytes changed after the manifest
    was written; its tar holds a whiteout of a file DEST has (or a symlink,
    or an opaque root). The pull fails naming the digest; DEST is untouched."""
    evil = {"whiteout": (".wh.important.txt", R, ""), "symlink": ("evil", S, "model.bin"),
            "opaque": (".wh..wh..opq", R, "")}[case]
    good = t(("model.bin", b"weights-1"), evil)
    bad = t(("model.bin", b"weights-2"), evil)
    assert len(good) == len(bad)
    source = layout(tmp_path / "oci", [good])
    _corrupt(source, good, bad)
    dest = tmp_path / "dest"
    _user_files(dest)
    before = snapshot(dest)
    assert main(["pull", source, str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "does not match its digest" in err, err
    assert snapshot(dest) == before


# ---------------------------------------------------------------- whiteouts and ownership


def test_issue13_1_an_opaque_root_keeps_what_dest_held(tmp_path, capsys):
    """Issue 13, failing input 1: a hand-made one-layer layout whose tar
    holds ``.wh..wh..opq`` at its root and ``model.bin``."""
    source = layout(tmp_path / "oci", [t((".wh..wh..opq", b""), ("model.bin", b"weights"))])
    dest = tmp_path / "dest"
    _user_files(dest)
    assert main(["pull", source, str(dest)]) == 0
    capsys.readouterr()
    assert tree(dest) == {"important.txt": sha(b"mine"), "notes/a.txt": sha(b"my notes"),
                          "model.bin": sha(b"weights")}
    assert own(dest) == {".modelimage-pull.json"}  # issue 13, failing input 7: no staging left


def test_whiteouts_reach_only_what_earlier_layers_of_the_image_put_there(tmp_path):
    lower = t(("keep/a", b"a"), ("gone.txt", b"g"), ("d/x", b"x"))
    upper = t((".wh.important.txt", b""), (".wh.gone.txt", b""), ("notes/.wh..wh..opq", b""),
              ("d/.wh..wh..opq", b""), ("d/y", b"y"), ("notes/new.txt", b"n"))
    dest = tmp_path / "dest"
    _user_files(dest)
    pull(layout(tmp_path / "oci", [lower, upper]), dest)
    assert tree(dest) == {"important.txt": sha(b"mine"), "notes/a.txt": sha(b"my notes"), "keep/a": sha(b"a"),
                          "d/y": sha(b"y"), "notes/new.txt": sha(b"n")}


def test_a_whiteout_of_a_folder_keeps_files_modelimage_did_not_write_in_it(tmp_path):
    dest = tmp_path / "dest"
    _user_files(dest)
    pull(layout(tmp_path / "oci", [t(("notes/b.txt", b"b")), t((".wh.notes", b""))]), dest)
    assert tree(dest) == {"important.txt": sha(b"mine"), "notes/a.txt": sha(b"my notes")}


def test_a_file_modelimage_did_not_write_stops_the_pull_unless_overwrite(tmp_path, capsys):
    source = layout(tmp_path / "oci", [t(("important.txt", b"theirs"), ("model.bin", b"w"))])
    dest = tmp_path / "dest"
    _user_files(dest)
    before = snapshot(dest)
    assert main(["pull", source, str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{dest.resolve()}/important.txt" in err and "--overwrite" in err, err
    assert snapshot(dest) == before
    assert main(["pull", source, str(dest), "--overwrite"]) == 0
    assert (dest / "important.txt").read_bytes() == b"theirs" and (dest / "model.bin").read_bytes() == b"w"
    # now it is modelimage's: a version without it removes it
    pull(layout(tmp_path / "oci2", [t(("model.bin", b"w2"))]), dest)
    assert tree(dest) == {"notes/a.txt": sha(b"my notes"), "model.bin": sha(b"w2")}


def test_a_listed_file_in_the_way_stops_before_anything_is_fetched(tmp_path, llama_dir):
    out = tmp_path / "oci"
    assert main(["build", str(llama_dir), "-o", f"oci:{out}:v1"]) == 0
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").write_text("{}")  # not the image's bytes
    with pytest.raises(PullConflict, match="config.json"):
        prepare_pull(f"oci:{out}:v1", dest)  # planning only: no layer was read
    assert os.listdir(dest) == ["config.json"]
    # the image's own bytes already there are adopted, not a conflict, and never removed later
    shutil.copy(llama_dir / "config.json", dest / "config.json")
    result = pull(f"oci:{out}:v1", dest)
    assert tree(dest) == tree(llama_dir) and "config.json" in {f.path for f in result.files}
    record = json.loads((dest / ".modelimage-pull.json").read_text())
    assert record["entries"]["config.json"].get("adopted") is True
    pull(layout(tmp_path / "other", [t(("other.bin", b"o"))]), dest)
    assert tree(dest) == {"config.json": sha((llama_dir / "config.json").read_bytes()), "other.bin": sha(b"o")}


def test_issue13_4_a_new_version_replaces_the_old_ones_files(tmp_path):
    """Issue 13, failing input 4: v1 (one ``model.safetensors``) then v2 (the
    same weights resharded into ``model-0000k-of-0000n`` + index) into one
    DEST: only v2's files are left, next to the user's."""
    from modelimage import synth

    from .tools import SMALL

    model = synth.write_llama_safetensors(tmp_path / "model", SMALL, shards=1)
    size = (model / "model.safetensors").stat().st_size
    out = tmp_path / "oci"
    assert main(["build", str(model), "-o", f"oci:{out}:v1"]) == 0
    assert main(["build", str(model), "-o", f"oci:{out}:v2", "--max-layer-size", str(size // 2)]) == 0
    dest = tmp_path / "dest"
    _user_files(dest)
    pull(f"oci:{out}:v1", dest)
    assert "model.safetensors" in tree(dest)
    v2 = pull(f"oci:{out}:v2", dest)
    shards = {p for p in tree(dest) if p.endswith(".safetensors")}
    assert "model.safetensors" not in shards and len(shards) >= 2 and "model.safetensors.index.json" in tree(dest)
    assert set(tree(dest)) == {f.path for f in v2.files} | {"important.txt", "notes/a.txt"}
    assert verify(f"oci:{out}:v2", dest).extra == ("important.txt", "notes/a.txt")


def test_folders_modelimage_made_go_when_empty_and_stay_when_they_hold_user_files(tmp_path):
    dest = tmp_path / "dest"
    _user_files(dest)
    pull(layout(tmp_path / "v1", [t(("sub/deep/w.bin", b"w"), ("notes/b.txt", b"b"), ("keep/x", b"x"))]), dest)
    (dest / "keep" / "mine.txt").write_text("user file in a folder modelimage made")
    pull(layout(tmp_path / "v2", [t(("w.bin", b"w"))]), dest)
    assert kinds(dest) == {"important.txt": sha(b"mine"), "notes": "dir", "notes/a.txt": sha(b"my notes"),
                           "keep": "dir", "keep/mine.txt": sha(b"user file in a folder modelimage made"),
                           "w.bin": sha(b"w")}


def test_a_pull_that_writes_nothing_is_an_error_and_leaves_dest_alone(tmp_path, capsys):
    source = layout(tmp_path / "oci", [t(("opt/app/model.bin", b"w"))])
    dest = tmp_path / "dest"
    _user_files(dest)
    pull(layout(tmp_path / "v1", [t(("old.bin", b"o"))]), dest)
    before = snapshot(dest)
    assert main(["pull", source, str(dest), "--path", "/models"]) == 1
    err = capsys.readouterr().err
    assert "wrote no file" in err and "/opt/app" in err and err.count("\n") == 1, err
    assert main(["pull", source, str(dest), "--include", "*.gguf"]) == 1
    assert "no file under / matches --include *.gguf" in capsys.readouterr().err
    assert snapshot(dest) == before  # v1's file was not removed


# ---------------------------------------------------------------- from peers' trackers


def test_an_opaque_marker_after_the_layers_own_files_keeps_them(tmp_path):
    """moby/moby#17819: opaque whiteouts depended on the file order, so
    files the same layer added before ``.wh..wh..opq`` were removed too."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [t(("d/old", b"o")), t(("d/new", b"n"), ("d/.wh..wh..opq", b""))]), dest)
    assert tree(dest) == {"d/new": sha(b"n")}


def test_a_whiteout_after_the_layers_own_file_keeps_it(tmp_path):
    """umoci#224/#232 (out-of-order whiteouts): a whiteout applies to lower
    layers only, wherever it stands in the tar."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [t(("a", b"1")), t(("a", b"2"), (".wh.a", b""))]), dest)
    assert tree(dest) == {"a": sha(b"2")}


def test_a_bare_whiteout_is_an_error(tmp_path):
    """image-spec#1314, anchore/stereoscope#647: ``etc/.wh.`` names nothing;
    treating it as a whiteout of ``etc`` deletes the whole folder."""
    dest = tmp_path / "dest"
    with pytest.raises(BadLayer, match="names nothing"):
        pull(layout(tmp_path / "oci", [t(("etc/passwd", b"p")), t(("etc/.wh.", b""))]), dest, concurrency=1)
    assert tree(dest) == {"etc/passwd": sha(b"p")}


def test_a_folder_deleted_then_made_again_does_not_bring_back_its_old_files(tmp_path):
    """moby/buildkit#2614: a layer deletes a folder, a later one makes it again."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [t(("d/x", b"x")), t((".wh.d", b"")), t(("d/y", b"y"))]), dest)
    assert tree(dest) == {"d/y": sha(b"y")}


def test_hard_links_without_their_folders_across_layers_and_to_symlinks(tmp_path):
    """apple/container#1797 (a hard link whose folder has no tar entry),
    image-spec#1204 (a hard link to a file of an earlier layer),
    containerd#2458 (a hard link to a symlink is that symlink)."""
    lower = t(("bin/app", b"binary"))
    upper = t(("run/_main/app_/app", L, "bin/app"), ("z", b"z"), ("x", S, "z"), ("y", L, "x"))
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [lower, upper]), dest)
    assert tree(dest) == {"bin/app": sha(b"binary"), "run/_main/app_/app": sha(b"binary"), "z": sha(b"z"),
                          "x": "-> z", "y": "-> z"}
    assert os.stat(dest / "bin" / "app").st_ino == os.stat(dest / "run/_main/app_/app").st_ino


def test_a_hard_link_to_a_file_whited_out_in_the_same_layer(tmp_path):
    """vmware/vic#5714, cvmfs#1147: whiteouts and hard links in one layer.
    The link is made from the lower layer's file before the layer's
    whiteouts apply, so it keeps those bytes."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [t(("a", b"data")), t((".wh.a", b""), ("b", L, "a"))]), dest)
    assert tree(dest) == {"b": sha(b"data")}


def test_a_hard_link_to_nothing_is_an_error(tmp_path):
    with pytest.raises(BadLayer, match="no earlier layer holds"):
        pull(layout(tmp_path / "oci", [t(("b", L, "missing"))]), tmp_path / "dest")


def test_duplicate_entries_the_last_one_wins(tmp_path):
    """image-spec#196, anchore/syft#1445: the same path twice in one layer."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [t(("a", b"1"), ("a", b"2"), ("d", b"file"), ("d/", D, ""), ("d/x", b"x"))]),
         dest)
    assert kinds(dest) == {"a": sha(b"2"), "d": "dir", "d/x": sha(b"x")}
    assert not list((dest / ".modelimage-pull").glob("*")) if (dest / ".modelimage-pull").exists() else True


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_and_long_link_targets(tmp_path, fmt):
    """rules_pkg#326, libarchive#682, MidnightCommander#2306: names over 100
    bytes (pax ``path``, GNU ``././@LongLink``) and long link targets."""
    long_dir = "/".join(["a-rather-long-folder-name-for-a-model-component"] * 4)
    name = f"{long_dir}/model-00001-of-00002.safetensors"
    import io

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        i = tarfile.TarInfo(name)
        i.size = 5
        tf.addfile(i, io.BytesIO(b"bytes"))
        s = tarfile.TarInfo("link")
        s.type, s.linkname = tarfile.SYMTYPE, name
        tf.addfile(s)
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [buf.getvalue()]), dest)
    assert tree(dest) == {name: sha(b"bytes"), "link": "-> " + name}


def test_whiting_out_a_symlink_removes_the_symlink_not_its_target(tmp_path):
    """apptainer/singularity#1605: a whiteout of a symlink resolved the link
    and removed its target."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [t(("real/f", b"f"), ("link", S, "real")), t((".wh.link", b""))]), dest)
    assert tree(dest) == {"real/f": sha(b"f")}


def test_a_symlink_replaces_a_symlink(tmp_path):
    """opencontainers/image-tools#41 ("symlink ...: file exists" when an
    upgrade replaced a symlink), containerd#6991 (an opaque marker next to a
    symlink that replaces the lower one)."""
    lower = t(("bin/real-1", b"1"), ("bin/real-2", b"2"), ("bin/tool", S, "real-1"), ("d/link", S, "x"))
    upper = t(("bin/tool", S, "real-2"), ("d/", D, ""), ("d/.wh..wh..opq", b""), ("d/link", S, "y"))
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [lower, upper]), dest)
    assert tree(dest) == {"bin/real-1": sha(b"1"), "bin/real-2": sha(b"2"), "bin/tool": "-> real-2",
                          "d/link": "-> y"}


def test_a_symlink_to_a_folder_replaced_by_a_folder_and_its_old_target_removed(tmp_path):
    """reproducible-containers/diffoci#183."""
    lower = t(("real/f", b"f"), ("d", S, "real"))
    upper = t((".wh.real", b""), ("d/", D, ""), ("d/g", b"g"))
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [lower, upper]), dest)
    assert kinds(dest) == {"d": "dir", "d/g": sha(b"g")}


def test_a_symlink_of_the_user_on_the_way_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "weights").symlink_to(outside)
    with pytest.raises(PullConflict, match="weights"):
        pull(layout(tmp_path / "oci", [t(("weights/w.bin", b"w"))]), dest)
    assert not list(outside.iterdir())


def test_writing_below_a_symlink_the_layer_made_is_refused_before_anything_changes(tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        pull(layout(tmp_path / "oci", [t(("ok.txt", b"ok"), ("d", S, "."), ("d/evil.txt", b"e"))]), dest)
    assert tree(dest) == {}


# ---------------------------------------------------------------- the same tree umoci makes



@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(layers=images())
def test_pull_and_inspect_give_the_tree_umoci_unpack_gives(layers):
    """One stack of layers, four readers: ``umoci unpack``, pull (DEST),
    verify (its in-memory tree) and ``inspect REF`` (its file list) agree,
    the root's opaque whiteouts and hard links included."""
    need("umoci")
    work = Path(tempfile.mkdtemp(prefix="pull-vs-umoci-"))
    try:
        source = layout(work / "oci", [t(*m) for m in layers])
        subprocess.run(["umoci", "unpack", "--image", f"{work / 'oci'}:v1", str(work / "bundle")], check=True,
                       capture_output=True)
        dest = work / "dest"
        pull(source, dest)
        rootfs = work / "bundle" / "rootfs"
        assert kinds(dest) == kinds(rootfs)
        assert own(dest) == ({".modelimage-pull.json"} if kinds(dest) else set())
        assert inspected(source) == readable(rootfs) == readable(dest)
        checked = verify(source, dest)
        assert (checked.missing, checked.extra, checked.changed) == ((), (), ())
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- inputs nobody designed (breaker2)


def test_a_file_over_a_folder_modelimage_made_that_now_holds_user_files_stops_before_any_change(tmp_path, capsys):
    """Image A made folder ``x``; the user put ``x/user.txt`` in it; image B
    (another manifest) puts a file at ``x``, after other entries of the
    same layer. The pull stopped mid-layer: ``aaa`` written, A's ``x/a``
    removed. Now it stops before any change, naming the user's file."""
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "a", [t(("x/", D, ""), ("x/a", b"A"), ("big", b"B"))]), dest)
    (dest / "x" / "user.txt").write_text("mine")
    before = snapshot(dest)
    b = layout(tmp_path / "b", [t(("aaa", b"first"), ("x", b"now a file"), ("zzz", b"last"))])
    assert main(["pull", b, str(dest)]) == 1
    err = capsys.readouterr().err
    assert "holds x/user.txt, which modelimage did not write" in err and err.count("\n") == 1
    assert snapshot(dest) == before
    pull(b, dest, overwrite=True)
    assert tree(dest) == {"aaa": sha(b"first"), "x": sha(b"now a file"), "zzz": sha(b"last")}
