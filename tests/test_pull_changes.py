"""THE rules of what a stack of tar layers makes (modelimage.pull.changes),
applied to a tree in memory, as ``inspect REF`` and ``verify`` apply them;
``pull`` is held to the same tree (and to umoci's) by the differential test
in test_pull_apply.py."""

from __future__ import annotations

import io
import tarfile

import pytest

from modelimage.errors import BadLayer, UnsafeLayer
from modelimage.pull.changes import Change, Node, files, member_change, resolve, selected, stack
from modelimage.pull.layers import Selection

from .pullkit import D, L, S, inspected, layout, sha, t


def changes(layer: bytes, label: str = "layer") -> list[Change]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        out = [member_change(m, label) for m in tar]
    return [c if c.kind != "file" else Change("file", c.path, data=c.path + "@" + label, name=c.name)
            for c in out if c is not None]


def made(*layers: bytes) -> dict[str, object]:
    return files(stack((f"l{i}", changes(data, f"l{i}")) for i, data in enumerate(layers)))


def test_a_root_opaque_whiteout_removes_every_lower_file_and_keeps_its_own_layers():
    lower = t(("m/model.safetensors", b"w"), ("m/config.json", b"{}"))
    upper = t(("m/new.txt", b"n"), (".wh..wh..opq", b""))
    assert made(lower, upper) == {"m/new.txt": "m/new.txt@l1"}


def test_hard_links_are_their_targets_bytes_within_and_across_layers():
    lower = t(("m/a.safetensors", b"a"))
    upper = t(("m/b.safetensors", L, "m/a.safetensors"), ("m/c", b"c"), ("m/d", L, "m/c"))
    assert made(lower, upper) == {"m/a.safetensors": "m/a.safetensors@l0", "m/b.safetensors": "m/a.safetensors@l0",
                                  "m/c": "m/c@l1", "m/d": "m/c@l1"}


def test_a_hard_link_to_a_file_whited_out_in_its_layer_keeps_the_lower_bytes():
    assert made(t(("a", b"data")), t((".wh.a", b""), ("b", L, "a"))) == {"b": "a@l0"}


def test_whiteouts_reach_lower_layers_only_wherever_they_stand():
    assert made(t(("a", b"1")), t(("a", b"2"), (".wh.a", b""))) == {"a": "a@l1"}
    assert made(t(("d/old", b"o")), t(("d/new", b"n"), ("d/.wh..wh..opq", b""))) == {"d/new": "d/new@l1"}


def test_a_file_over_a_folder_removes_its_contents_and_a_symlink_on_the_way_is_refused():
    assert made(t(("d/x", b"x")), t(("d", b"now a file"))) == {"d": "d@l1"}
    with pytest.raises(UnsafeLayer, match="through a symlink"):
        made(t(("d", S, "."), ("d/evil", b"e")))


def test_links_to_nothing_or_to_a_folder_and_names_of_nothing_are_refused():
    with pytest.raises(BadLayer, match="no earlier layer holds"):
        made(t(("b", L, "missing")))
    with pytest.raises(BadLayer, match="directory"):
        made(t(("d/", D, ""), ("b", L, "d")))
    for bare in (".wh.", "x/.wh..", "x/.wh..."):
        with pytest.raises(BadLayer, match="names nothing"):
            made(t((bare, b"")))


def test_symlinks_that_lead_to_a_file_inside_the_folder_are_that_file():
    tree = stack([("l0", changes(t(("m/real", b"r"), ("m/link", S, "real"), ("m/up", S, "../m/real"),
                                   ("m/out", S, "../../etc/passwd"), ("m/abs", S, "/m/real"),
                                   ("m/loop", S, "loop"), ("m/dir", S, "."), ("other", b"o")), "l0"))])
    assert files(tree) == {"m/real": "m/real@l0", "m/link": "m/real@l0", "m/up": "m/real@l0", "other": "other@l0"}
    assert resolve(tree, "m/link", "m") == "m/real"
    assert resolve(tree, "m/up", "m") is None  # leaves the folder on the way
    assert resolve(tree, "m/dir/real") == "m/real"
    assert tree["m/dir"] == Node("symlink", link=".")


def test_a_selection_keeps_its_subtree_and_drops_links_to_what_it_leaves_out():
    sel = Selection("m")
    assert selected(Change("file", "m/a"), sel, "l") == Change("file", "a")
    assert selected(Change("file", "x/a"), sel, "l") is None
    assert selected(Change("link", "m/b", "x/a"), sel, "l") is None
    assert selected(Change("whiteout", "m"), sel, "l") == Change("whiteout", "")
    assert selected(Change("opaque", ""), sel, "l") == Change("opaque", "")


def test_inspect_and_verify_see_a_root_opaque_whiteout_and_hard_linked_weights(tmp_path, capsys):
    """Review finding: ``inspect REF`` kept every lower file under a root
    ``.wh..wh..opq`` and dropped hard-linked weights (a wrong model, exit 0)."""
    from modelimage.cli import main
    from modelimage.pull import pull, verify

    lower = t(("m/old.bin", b"old weights"), ("m/w.bin", b"weights"))
    upper = t((".wh..wh..opq", b""), ("m/w.bin", b"new weights"), ("m/same.bin", L, "m/w.bin"))
    source = layout(tmp_path / "oci", [lower, upper])
    assert inspected(source) == {"m/w.bin": sha(b"new weights"), "m/same.bin": sha(b"new weights")}
    assert main(["inspect", source, "--json"]) == 0
    out = capsys.readouterr().out
    assert "old.bin" not in out and "same.bin" in out
    pull(source, tmp_path / "dest")
    checked = verify(source, tmp_path / "dest")
    assert checked.ok and checked.checked == 2
