"""Which layers a pull fetches and in which groups (modelimage.pull.schedule)."""

from __future__ import annotations

from modelimage.oci import MEDIA_TYPE_LAYER_TAR, Descriptor
from modelimage.pull.layers import Layer, Listed
from modelimage.pull.schedule import plan_tasks


def layer(i: int, files: list[str] | None, kind: str = "tar") -> Layer:
    d = Descriptor(MEDIA_TYPE_LAYER_TAR, "sha256:" + f"{i:064x}", 100)
    listed = None if files is None else tuple(Listed(f, 1, "sha256:" + "a" * 64) for f in files)
    return Layer(i, d, kind, listed, f"L{i}")  # type: ignore[arg-type]


def shape(schedule) -> list[list[int]]:
    return [[t.layer.index for t in g] for g in schedule.groups]


def test_layers_that_list_disjoint_files_go_together():
    layers = [layer(0, ["m/a"]), layer(1, ["m/b"]), layer(2, ["m/c"])]
    s = plan_tasks(layers, prefix="m", include=(), ours=True, whole_image=False, target="/m")
    assert shape(s) == [[0, 1, 2]] and not s.ordered and s.skipped == 0
    assert {rel for g in s.groups for t in g for rel in t.files} == {"a", "b", "c"}


def test_a_layer_of_unknown_content_cuts_the_groups_and_orders_everything():
    layers = [layer(0, ["a"]), layer(1, ["b"]), layer(2, None), layer(3, ["c"])]
    s = plan_tasks(layers, prefix="", include=(), ours=False, whole_image=False, target=None)
    assert shape(s) == [[0, 1], [2], [3]] and s.ordered


def test_overlapping_lists_go_one_by_one():
    layers = [layer(0, ["a"]), layer(1, ["a"])]
    s = plan_tasks(layers, prefix="", include=(), ours=False, whole_image=False, target=None)
    assert shape(s) == [[0], [1]] and s.ordered


def test_base_layers_of_a_modelimage_image_are_left_out_unless_a_path_is_given():
    layers = [layer(0, None), layer(1, None), layer(2, ["models/m/w.bin"])]
    s = plan_tasks(layers, prefix="models/m", include=(), ours=True, whole_image=False, target="/models/m")
    assert shape(s) == [[2]] and s.skipped == 2
    assert s.warnings == ["2 base-image layers left out (the model is under /models/m; --path / pulls everything)"]
    everything = plan_tasks(layers, prefix="", include=(), ours=True, whole_image=True, target="/models/m")
    assert shape(everything) == [[0], [1], [2]] and everything.skipped == 0


def test_include_skips_layers_without_a_match_and_other_layers_are_left_out_with_a_warning():
    layers = [layer(0, ["m/w-1.gguf"]), layer(1, ["m/config.json", "m/tokenizer.json"]), layer(2, [], "other")]
    s = plan_tasks(layers, prefix="m", include=("*.json",), ours=True, whole_image=False, target="/m")
    assert shape(s) == [[1]] and s.skipped == 2
    (t,) = s.groups[0]
    assert set(t.files) == {"config.json", "tokenizer.json"} and t.selection.wanted == frozenset(t.files)
    assert any("neither a tar nor a named file" in w for w in s.warnings)
