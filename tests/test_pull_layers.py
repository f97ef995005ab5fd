"""Which layers and files a pull takes (modelimage.pull.layers): the layer
file lists, layer kinds, the subtree that becomes DEST, names refused."""

from __future__ import annotations

import json

import pytest

from modelimage.errors import UnsafeLayer
from modelimage.image import Image
from modelimage.oci import ANNOTATION_FILES, MEDIA_TYPE_LAYER_TAR, Descriptor
from modelimage.pull.layers import (
    Listed,
    Selection,
    classify,
    glob_match,
    is_tar,
    layer_file_lists,
    normalize,
    paths_overlap,
    subtree,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def image(layers: list[Descriptor], labels: dict[str, str] | None = None) -> Image:
    return Image("oci:x:v1", "sha256:" + "0" * 64, {"layers": []}, {"config": {"Labels": labels or {}}},
                 tuple(layers), lambda d, s: iter(()), lambda: None)


def listed(files: list[dict]) -> dict[str, str]:
    return {ANNOTATION_FILES: json.dumps(files)}


@pytest.mark.parametrize("media_type, tar", [
    ("application/vnd.oci.image.layer.v1.tar", True),
    ("application/vnd.oci.image.layer.v1.tar+gzip", True),
    ("application/vnd.oci.image.layer.v1.tar+zstd", True),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", True),
    ("application/vnd.cncf.model.weight.v1.tar", True),
    ("application/vnd.docker.ai.vllm.config.tar", True),
    ("application/vnd.cncf.model.weight.v1.raw", False),
    ("application/vnd.docker.ai.gguf.v3", False),
    ("application/octet-stream", False),
])
def test_is_tar(media_type, tar):
    assert is_tar(media_type) is tar


def test_file_lists_come_from_the_one_reader():
    files = [{"path": "/models/m/a.bin", "size": 3, "sha256": "sha256:aa"}, {"path": "models/m/b", "size": 0,
                                                                            "sha256": "sha256:bb"}]
    img = image([
        Descriptor(MEDIA_TYPE_LAYER_TAR, D1, 10, annotations=listed(files)),
        Descriptor(MEDIA_TYPE_LAYER_TAR, D2, 10),  # no list: its tar decides
        Descriptor(MEDIA_TYPE_LAYER_TAR, D2, 10, annotations={ANNOTATION_FILES: "not json"}),
        Descriptor(MEDIA_TYPE_LAYER_TAR, D2, 10, annotations={ANNOTATION_FILES: '[{"path": "x"}]'}),
    ])
    lists = layer_file_lists(img)
    assert lists == [(Listed("models/m/a.bin", 3, "sha256:aa"), Listed("models/m/b", 0, "sha256:bb")),
                     None, None, None]
    assert [layer.known for layer in classify(img)] == [True, False, False, False]


def test_a_listed_name_that_climbs_out_is_refused():
    img = image([Descriptor(MEDIA_TYPE_LAYER_TAR, D1, 10,
                            annotations=listed([{"path": "../etc/passwd", "size": 1, "sha256": "sha256:aa"}]))])
    with pytest.raises(UnsafeLayer, match="climbs out"):
        layer_file_lists(img)


def test_classify_raw_and_other_layers():
    img = image([
        Descriptor("application/vnd.cncf.model.weight.v1.raw", D1, 7,
                   annotations={"org.cncf.model.filepath": "weights/model.gguf"}),
        Descriptor("application/vnd.docker.ai.gguf.v3", D2, 5,
                   annotations={"org.opencontainers.image.title": "model.gguf"}),
        Descriptor("application/vnd.example.thing", D2, 5),
    ])
    raw, titled, other = classify(img)
    assert (raw.kind, raw.listed) == ("raw", (Listed("weights/model.gguf", 7, D1),))
    assert (titled.kind, titled.listed) == ("raw", (Listed("model.gguf", 5, D2),))
    assert (other.kind, other.listed) == ("other", ())
    assert raw.label == "oci:x:v1: layer 1 (sha256:111111111111)"


def test_subtree_is_path_else_target_else_root():
    assert subtree("/models/x/", image([])) == "models/x"
    assert subtree(None, image([], {"dev.modelimage.target": "/models/llama"})) == "models/llama"
    assert subtree(None, image([])) == ""
    assert subtree("/", image([], {"dev.modelimage.target": "/models/llama"})) == ""
    with pytest.raises(UnsafeLayer):
        subtree("../up", image([]))


@pytest.mark.parametrize("name, clean", [
    ("./a/b", "a/b"), ("a//b/", "a/b"), (".", ""), ("./", ""), ("a/./b", "a/b"),
])
def test_normalize(name, clean):
    assert normalize(name, "L") == clean


@pytest.mark.parametrize("name, message", [
    ("/etc/passwd", "absolute path"), ("a/../../b", "'..'"), ("..", "'..'"), ("a\0b", "NUL"),
])
def test_normalize_refuses(name, message):
    with pytest.raises(UnsafeLayer, match=message):
        normalize(name, "L")


@pytest.mark.parametrize("rel, pattern, match", [
    ("sub/model.gguf", "*.gguf", True),  # no '/': the file name anywhere
    ("sub/model.gguf", "sub/*.gguf", True),
    ("sub/model.gguf", "/sub/*.gguf", True),
    ("sub/model.gguf", "other/*.gguf", False),
    ("tokenizer_config.json", "tokenizer*", True),
])
def test_glob_match(rel, pattern, match):
    assert glob_match(rel, pattern) is match


def test_selection_relative_covering_wants():
    s = Selection("models/m", ("*.json",), frozenset({"a.json", "b/c.json"}))
    assert s.relative("models/m/a.json") == "a.json"
    assert s.relative("models/m") == "" and s.relative("models/mm/x") is None and s.relative("etc/x") is None
    # a whiteout of the subtree itself or an ancestor removes all of it
    assert s.covering("models") == "" and s.covering("") == "" and s.covering("models/m") == ""
    assert s.covering("models/m/b") == "b" and s.covering("etc") is None
    assert s.wants("a.json") and not s.wants("x.json") and not s.wants("a.bin")
    assert not s.all_dirs and Selection().all_dirs


def test_paths_overlap():
    assert not paths_overlap(["a", "b/c", "b/d"])
    assert paths_overlap(["a", "a/b"]) and paths_overlap(["x", "x"])
    assert not paths_overlap(["a", "ab/c"])
