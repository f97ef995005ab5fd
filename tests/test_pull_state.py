"""Resuming a cut pull (modelimage.pull.state, .apply): journals of plain
tar layers and partial raw blobs, continued with Range requests, hashed
again from disk."""

from __future__ import annotations

import json
import os

import pytest

from modelimage.cli import main
from modelimage.errors import ModelImageError
from modelimage.pull import pull

from .pullkit import cut_after, layer_size, push_raw_artifact, tree

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
