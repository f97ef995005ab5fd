"""Safe extraction (modelimage.pull.extract): unsafe layers refused whole,
modes tamed, whiteouts kept inside DEST."""

from __future__ import annotations

import os
import stat
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelimage.cli import main
from modelimage.pull import pull

from .pullkit import info, layout, push_layers, sha, tar_of, tree

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- unsafe layers


UNSAFE = {
    "dotdot": ([info("ok.txt"), info("../evil.txt")], "'..'"),
    "absolute": ([info("/evil.txt")], "absolute path"),
    "nested-dotdot": ([info("a/../../evil.txt")], "'..'"),
    "symlink-out": ([info("link", tarfile.SYMTYPE, "../../evil.txt")], "links outside"),
    "symlink-absolute": ([info("link", tarfile.SYMTYPE, "/etc/passwd")], "absolute path"),
    "hardlink-out": ([info("link", tarfile.LNKTYPE, "../evil.txt")], "'..'"),
    "device": ([info("dev", tarfile.CHRTYPE)], "device, fifo or socket"),
    "fifo": ([info("fifo", tarfile.FIFOTYPE)], "device, fifo or socket"),
    "through-symlink": ([info("real", tarfile.DIRTYPE, mode=0o755), info("d", tarfile.SYMTYPE, "real"),
                         info("d/evil.txt")], "through a symlink"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_layers_are_refused(tmp_path, capsys, case):
    infos, message = UNSAFE[case]
    source = layout(tmp_path / "oci", [tar_of([(i, b"evil") for i in infos])])
    dest = tmp_path / "box" / "dest"
    assert main(["pull", source, str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "box" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    # the pull made DEST (and box) and removes them again when nothing is left in them; no file of the
    # refused layer, not even its harmless ones (a symlink inside may stay, and DEST with it)
    assert not (tmp_path / "box").exists() or sorted(os.listdir(tmp_path / "box")) == ["dest"]
    assert not dest.exists() or not [p for p, h in tree(dest).items() if not h.startswith("->")]


def test_unsafe_layer_pushed_to_a_registry(registry, tmp_path, capsys):
    ref = push_layers(registry, "pull/evil", [tar_of([(info("../evil.txt"), b"evil")])])
    assert main(["pull", ref, str(tmp_path / "dest")]) == 1
    assert "'..'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == []  # the pull made DEST; nothing in it, so it is gone again


def test_modes_are_tamed_and_whiteouts_stay_inside(tmp_path):
    lower = tar_of([(info("bin/tool", mode=0o4775), b"#!"), (info("keep/a"), b"a"), (info("keep/b"), b"b")])
    upper = tar_of([(info("keep/.wh.a"), b""), (info(".wh..wh..opq"), b""), (info("keep/c"), b"c")])
    dest = tmp_path / "dest"
    pull(layout(tmp_path / "oci", [lower]), dest)
    assert stat.S_IMODE((dest / "bin" / "tool").stat().st_mode) == 0o755  # no setuid, no group write
    pull(layout(tmp_path / "oci2", [lower, upper]), tmp_path / "two")
    assert tree(tmp_path / "two") == {"keep/c": sha(b"c")}  # the root was made opaque: lower files gone


@given(st.integers(0, 0o7777777))
@settings(max_examples=200, deadline=None)
def test_data_mode_is_what_data_filter_leaves(mode):
    """The regular-file fast path keeps tarfile.data_filter's mode exactly."""
    import tarfile

    from modelimage.pull.extract import data_mode

    m = tarfile.TarInfo("a/b.bin")
    m.mode = mode
    assert data_mode(mode) == tarfile.data_filter(m, "/nonexistent-root").mode
