"""One layer fetched, checked and applied (modelimage.pull.apply): a blob
that does not match its digest leaves none of its files."""

from __future__ import annotations

import pytest

from modelimage.errors import PullError
from modelimage.pull import pull

from .pullkit import info, layout, sha, tar_of, tree


def _corrupt(source: str, blob: bytes, new: bytes) -> None:
    root = source.removeprefix("oci:").rsplit(":", 1)[0]
    path = f"{root}/blobs/sha256/{sha(blob)[7:]}"
    with open(path, "wb") as f:
        f.write(new)


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
