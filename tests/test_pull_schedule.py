"""Which layers a pull fetches (modelimage.pull.schedule): tasks in manifest
order, base layers left out (by file lists, or by the config's history when
a copy dropped the annotations), how a resume goes."""

from __future__ import annotations

from modelimage.oci import MEDIA_TYPE_LAYER_TAR, Descriptor
from modelimage.pull.layers import Layer, Listed
from modelimage.pull.schedule import model_layers, plan_tasks


def layer(i: int, files: list[str] | None, kind: str = "tar") -> Layer:
    d = Descriptor(MEDIA_TYPE_LAYER_TAR, "sha256:" + f"{i:064x}", 100)
    listed = None if files is None else tuple(Listed(f, 1, "sha256:" + "a" * 64) for f in files)
    return Layer(i, d, kind, listed, f"L{i}")  # type: ignore[arg-type]


def shape(schedule) -> list[int]:
    return [t.layer.index for t in schedule.tasks]


def history(*created_by: str, empty: int = 0) -> dict:
    h = [{"created_by": c} for c in created_by]
    return {"history": [{"created_by": "ENV X=1", "empty_layer": True}] * empty + h}


def test_layers_that_list_disjoint_files_resume_file_by_file():
    layers = [layer(0, ["m/a"]), layer(1, ["m/b"]), layer(2, ["m/c"])]
    s = plan_tasks(layers, prefix="m", include=(), ours=True, whole_image=False, target="/m")
    assert shape(s) == [0, 1, 2] and not s.ordered and s.skipped == 0 and s.listed_files == 3
    assert {rel for t in s.tasks for rel in t.files} == {"a", "b", "c"}


def test_a_layer_of_unknown_content_makes_the_resume_go_by_layer():
    layers = [layer(0, ["a"]), layer(1, ["b"]), layer(2, None), layer(3, ["c"])]
    s = plan_tasks(layers, prefix="", include=(), ours=False, whole_image=False, target=None)
    assert shape(s) == [0, 1, 2, 3] and s.ordered


def test_overlapping_lists_resume_by_layer():
    layers = [layer(0, ["a"]), layer(1, ["a"])]
    s = plan_tasks(layers, prefix="", include=(), ours=False, whole_image=False, target=None)
    assert shape(s) == [0, 1] and s.ordered


def test_base_layers_of_a_modelimage_image_are_left_out_unless_a_path_is_given():
    layers = [layer(0, None), layer(1, None), layer(2, ["models/m/w.bin"])]
    s = plan_tasks(layers, prefix="models/m", include=(), ours=True, whole_image=False, target="/models/m")
    assert shape(s) == [2] and s.skipped == 2
    assert s.warnings == ["2 base-image layers left out (the model is under /models/m; --path / pulls everything)"]
    everything = plan_tasks(layers, prefix="", include=(), ours=True, whole_image=True, target="/models/m")
    assert shape(everything) == [0, 1, 2] and everything.skipped == 0


def test_include_skips_layers_without_a_match_and_other_layers_are_left_out_with_a_warning():
    layers = [layer(0, ["m/w-1.gguf"]), layer(1, ["m/config.json", "m/tokenizer.json"]), layer(2, [], "other")]
    s = plan_tasks(layers, prefix="m", include=("*.json",), ours=True, whole_image=False, target="/m")
    assert shape(s) == [1] and s.skipped == 2
    (t,) = s.tasks
    assert set(t.files) == {"config.json", "tokenizer.json"} and t.selection.wanted == frozenset(t.files)
    assert any("neither a tar nor a named file" in w for w in s.warnings)


def test_a_copy_without_annotations_finds_the_model_layers_in_the_history():
    """skopeo/podman copies drop the layer annotations; the config (and its
    history) is copied as it is."""
    layers = [layer(0, None), layer(1, None), layer(2, None)]
    config = history("/bin/sh -c #(nop) ADD file:abc in /", "modelimage build: model.safetensors",
                     "modelimage build: 8 files", empty=2)
    s = plan_tasks(layers, prefix="models/m", include=(), ours=True, whole_image=False, target="/models/m",
                   config=config)
    assert shape(s) == [1, 2] and s.skipped == 1 and s.ordered
    assert "1 base-image layer left out" in s.warnings[0]


def test_without_a_usable_history_every_layer_is_read():
    layers = [layer(0, None), layer(1, None)]
    for config in ({}, history("modelimage build: x"), history("RUN a", "RUN b")):
        s = plan_tasks(layers, prefix="models/m", include=(), ours=True, whole_image=False, target="/models/m",
                       config=config)
        assert shape(s) == [0, 1] and not s.warnings


def test_model_layers():
    assert model_layers(history("RUN a", "modelimage build: w", empty=1), 2) == {1}
    assert model_layers(history("RUN a"), 2) is None
    assert model_layers({"history": "nonsense"}, 0) is None
