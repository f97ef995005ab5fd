"""One layer fetched, staged and checked (modelimage.pull.stage): nothing of
a blob that fails its digest stays, raw blobs stay as partials to continue,
and a failure names the layer that failed, not the ones it stopped."""

from __future__ import annotations

import os

import pytest

from modelimage.errors import BadLayer, PullError
from modelimage.pull import pull
from modelimage.pull.stage import Stopped

from .pullkit import info, layout, own, sha, tar_of, tree


def _blob(source: str, data: bytes):
    root = source.removeprefix("oci:").rsplit(":", 1)[0]
    return f"{root}/blobs/sha256/{sha(data)[7:]}"


def test_a_blob_that_fails_its_digest_leaves_no_staged_file(tmp_path):
    good = tar_of([(info("a.bin"), os.urandom(50_000))])
    source = layout(tmp_path / "oci", [good])
    with open(_blob(source, good), "r+b") as f:
        f.seek(20_000)
        f.write(b"\0" * 10)
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="nothing of it was applied or kept"):
        pull(source, dest)
    assert tree(dest) == {} and own(dest) == set()


def test_the_layer_that_failed_is_named_not_the_ones_it_stopped(tmp_path):
    big = tar_of([(info("big.bin"), os.urandom(3 << 20))])
    bad = tar_of([(info("etc/.wh."), b"")])  # invalid: fails as soon as it is read
    dest = tmp_path / "dest"
    for _ in range(3):  # whichever layer's thread gets there first
        with pytest.raises(BadLayer, match="names nothing") as e:
            pull(layout(tmp_path / f"oci{_}", [big, bad]), dest, concurrency=2)
        assert not isinstance(e.value, Stopped)
