"""Taking up a cut pull (modelimage.pull.resume): journals are read back only
when they are whole and name plain staged files, the prefix is hashed again
from disk, and a journal is kept even when the disk is full."""

from __future__ import annotations

import errno
import hashlib
import json

import pytest

from modelimage.oci import MEDIA_TYPE_LAYER_TAR, Descriptor
from modelimage.pull.layers import Layer, Listed, Selection
from modelimage.pull.resume import Journals, load_journals, read_journal
from modelimage.pull.schedule import Task
from modelimage.pull.stream import Journal

DIGEST = "sha256:" + "a" * 64


def task() -> Task:
    layer = Layer(0, Descriptor(MEDIA_TYPE_LAYER_TAR, DIGEST, 10_000), "tar",
                  (Listed("w.bin", 5000, "sha256:" + "b" * 64),), "L")
    return Task(layer, Selection(), {"w.bin": layer.listed[0]})


def staged_journal(staging, data: bytes) -> Journal:
    """A journal: 512 header bytes, then ``data`` in a staged file."""
    (staging / "tmp1.tmp").write_bytes(data)
    j = Journal()
    j.meta(0, b"h" * 512)
    j.data(512, len(data), {"temp": "tmp1.tmp", "rel": "w.bin", "size": 5000, "mode": 0o644, "mtime": None})
    return j


def test_a_saved_journal_is_taken_up_and_its_prefix_hashed_again(tmp_path):
    staging = tmp_path
    t = task()
    journals = Journals(staging, {}, [])
    journals.save(t, staged_journal(staging, b"x" * 3000))
    found = load_journals(staging, {"a" * 64})
    taken = Journals(staging, found, []).take_up(t)
    assert taken is not None
    journal, h = taken
    assert journal.pos == 3512 and h.hexdigest() == hashlib.sha256(b"h" * 512 + b"x" * 3000).hexdigest()


def test_a_staged_file_shorter_than_its_journal_starts_the_layer_again(tmp_path):
    t = task()
    Journals(tmp_path, {}, []).save(t, staged_journal(tmp_path, b"x" * 3000))
    (tmp_path / "tmp1.tmp").write_bytes(b"x" * 100)
    warnings: list[str] = []
    assert Journals(tmp_path, load_journals(tmp_path, {"a" * 64}), warnings).take_up(t) is None
    assert "does not match the staged files" in warnings[0] and not list(tmp_path.glob("*.tarjournal"))


@pytest.mark.parametrize("temp", ["../escape.tmp", "/etc/passwd.tmp", "sub/x.tmp", "x.bin", ".."])
def test_a_journal_naming_anything_but_a_plain_staged_file_is_ignored(tmp_path, temp):
    path = tmp_path / f"{'a' * 64}.tarjournal"
    path.write_text(json.dumps({"version": 1, "digest": DIGEST, "wanted": ["w.bin"], "pos": 10,
                                "segments": [["file", {"temp": temp, "rel": "w.bin", "size": 5}, 5]]}))
    assert read_journal(path) is None
    assert load_journals(tmp_path, {"a" * 64}) == {} and not path.exists()


def test_journals_and_staged_files_of_other_layers_are_removed(tmp_path):
    (tmp_path / "stale.tmp").write_bytes(b"s")
    Journals(tmp_path, {}, []).save(task(), staged_journal(tmp_path, b"x" * 10))
    assert load_journals(tmp_path, {"b" * 64}) == {}
    assert list(tmp_path.iterdir()) == []


def test_on_a_full_disk_the_journal_gives_back_a_mib_and_is_kept(tmp_path, monkeypatch):
    t = task()
    journals = Journals(tmp_path, {}, [])
    journal = staged_journal(tmp_path, b"x" * (3 << 20))
    real = journals.save
    calls = []

    def save(t, j):
        calls.append(j.pos)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(t, j)

    monkeypatch.setattr(journals, "save", save)
    assert journals.keep_cut(t, journal)
    assert calls == [512 + (3 << 20), 512 + (2 << 20)]
    assert (tmp_path / "tmp1.tmp").stat().st_size == 2 << 20
    assert read_journal(journals.path(t.layer))["pos"] == 512 + (2 << 20)


def test_other_errors_keep_nothing(tmp_path, monkeypatch):
    t = task()
    journals = Journals(tmp_path, {}, [])
    monkeypatch.setattr(journals, "save", lambda t, j: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    assert not journals.keep_cut(t, staged_journal(tmp_path, b"x" * 10))
    assert not journals.path(t.layer).exists()
