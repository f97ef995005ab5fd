"""What in DEST is modelimage's (modelimage.pull.owned): what is in the way
of a layer's entries, and removing only what modelimage wrote."""

from __future__ import annotations

import hashlib
import os

import pytest

from modelimage.errors import PullConflict, UnsafeLayer
from modelimage.pull.extract import Entry
from modelimage.pull.owned import Ownership
from modelimage.pull.state import Record

MANIFEST = "sha256:" + "1" * 64


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "dest"
    (d / "user-dir").mkdir(parents=True)
    (d / "user.txt").write_bytes(b"mine")
    (d / "same.bin").write_bytes(b"image bytes")
    (d / "ours.txt").write_bytes(b"written by modelimage")
    (d / "ours-dir").mkdir()
    (d / "ours-dir" / "f").write_bytes(b"f")
    (d / "link").symlink_to("ours-dir")
    return d


def owned(dest, manifest: str = MANIFEST) -> Ownership:
    record = Record(str(dest), manifest, {})
    for rel, kind in (("ours.txt", "file"), ("ours-dir", "dir"), ("ours-dir/f", "file"), ("link", "symlink")):
        record.put(rel, kind, size=1, sha256="sha256:x")
    return Ownership(str(dest), record)


@pytest.mark.parametrize("entry, blocked, adopted", [
    (Entry("file", "new.txt", size=1), [], set()),
    (Entry("file", "user.txt", size=5, sha256=sha(b"other")), ["user.txt"], set()),
    (Entry("file", "same.bin", size=11, sha256=sha(b"image bytes")), [], {"same.bin"}),
    (Entry("file", "ours.txt", size=3, sha256=sha(b"new")), [], set()),
    (Entry("dir", "user-dir"), [], set()),  # the layer's files go into a folder that was there
    (Entry("file", "user-dir/x", size=1), [], set()),
    (Entry("file", "user-dir", size=1), ["user-dir"], set()),
    (Entry("file", "user.txt/below", size=1), ["user.txt"], set()),
    (Entry("symlink", "user.txt", link="x"), ["user.txt"], set()),
])
def test_conflicts(dest, entry, blocked, adopted):
    assert owned(dest).conflicts([entry], "L") == (blocked, adopted)


def test_writing_below_a_symlink_of_the_image_or_of_the_layer_is_unsafe(dest):
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        owned(dest).conflicts([Entry("file", "link/x", "link/x")], "L")
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        owned(dest).conflicts([Entry("symlink", "s", link="."), Entry("file", "s/x", "s/x")], "L")
    # the layer's own whiteout removes the symlink first: then a folder may go there
    assert owned(dest).conflicts([Entry("whiteout", "link"), Entry("file", "link/x")], "L") == ([], set())


def test_whiteouts_remove_only_what_the_image_wrote(dest):
    o = owned(dest)
    (dest / "ours-dir" / "user-file").write_bytes(b"mine too")
    assert o.remove_current("ours-dir", itself=True) == 2  # ours-dir/f, and ours-dir (which stays: not empty)
    assert sorted(os.listdir(dest / "ours-dir")) == ["user-file"]
    assert o.remove_current("", itself=False) == 2  # ours.txt, link
    assert sorted(os.listdir(dest)) == ["ours-dir", "same.bin", "user-dir", "user.txt"]


def test_remove_old_removes_another_images_files_and_empty_folders(dest):
    o = owned(dest)
    o.record.save()
    fresh = Ownership(str(dest), Record(str(dest), "sha256:" + "2" * 64, {}))
    assert fresh.record.old() == ["ours-dir/f", "link", "ours-dir", "ours.txt"]
    fresh.record.put("ours.txt", "file", size=3, sha256="sha256:y")  # rewritten by the new image: stays
    fresh.remove_old()
    assert sorted(os.listdir(dest)) == [".modelimage-pull.json", "ours.txt", "same.bin", "user-dir", "user.txt"]


def test_refuse_names_the_first_path_and_counts_the_rest(dest):
    with pytest.raises(PullConflict) as e:
        owned(dest).refuse(["a", "b", "c"], "IMG")
    assert str(e.value).startswith(f"{dest}/a: IMG has a file there") and "(2 more: b, c)" in str(e.value)
