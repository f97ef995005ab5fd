"""An image's model files read by range (modelimage/sources/image.py), and
``modelimage inspect REF|oci:DIR[:TAG]`` (issue 16 item 3): the report of
the folder, from the manifest, the config and the weight headers only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.numpy import save_file

import modelimage
from modelimage.cli import main
from modelimage.errors import SourceError
from modelimage.image import open_image
from modelimage.registry.pieces import FetchStats
from modelimage.sources.image import ImageFolder

from .pullkit import info, layout, push_layers, tar_of


def report(capsys, *argv: str) -> list[str]:
    assert main(["inspect", *argv]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return out.splitlines()


def without_notes(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("  note: ")]


@pytest.fixture(scope="module")
def heavy(tmp_path_factory) -> Path:
    """A model whose tensor data dwarfs its headers (8 MB of weights)."""
    import numpy as np

    d = tmp_path_factory.mktemp("heavy") / "heavy"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in (1, 2):
        save_file({f"layer{i}.{k}": rng.standard_normal((512, 1024)).astype(np.float32) for k in ("a", "b")},
                  str(d / f"model-0000{i}-of-00002.safetensors"))
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    return d


def test_a_layout_reads_as_its_folder_by_range(heavy, tmp_path, capsys):
    ref = f"oci:{tmp_path / 'oci'}:v1"
    assert main(["build", str(heavy), "-o", ref, "-q"]) == 0
    capsys.readouterr()
    folder, image = report(capsys, str(heavy)), report(capsys, ref)
    assert without_notes(image) == without_notes(folder)
    stats = FetchStats()
    img = open_image(ref, stats=stats)
    source = ImageFolder(img, stats)
    model = modelimage.inspect(ref)
    img.close()
    assert [f.name for f in source.list_files()] == [f.name for f in model.files]
    assert "read from the layout" in model.notes[-1]
    assert source.fetched < source.total / 20  # headers, never the 4 MB of tensor data


def test_a_registry_image_is_inspected_with_ranged_gets(heavy, gguf_file, registry, tmp_path, capsys):
    ref = f"{registry.host}/inspect/heavy:v1"
    assert main(["build", str(heavy), "--push", ref, "-q"]) == 0
    capsys.readouterr()
    lines = report(capsys, ref)
    folder = without_notes(report(capsys, str(heavy)))
    assert without_notes(lines)[:len(folder)] == folder  # then what is attached to it (signatures: none)
    assert any("fetched from the registry" in line for line in lines)
    model = modelimage.inspect(ref)
    fetched = _bytes(model.notes[-1])
    assert 0 < fetched < sum(p.stat().st_size for p in heavy.iterdir()) / 20

    gguf = f"{registry.host}/inspect/gguf:v1"
    assert main(["build", str(gguf_file), "--push", gguf, "-q"]) == 0
    capsys.readouterr()
    got = modelimage.inspect(gguf)
    want = modelimage.inspect(gguf_file)
    assert (got.format, got.quantization, got.parameters, got.dtypes) == (
        want.format, want.quantization, want.parameters, want.dtypes)


def _bytes(note: str) -> int:
    from modelimage.units import parse_size

    number, unit = note.split(" ")[:2]
    return parse_size(number + unit)


def test_artifacts_raw_layers_are_files(heavy, registry, tmp_path, capsys):
    ref = f"{registry.host}/inspect/heavy-modelpack:v1"
    assert main(["build", str(heavy), "--push", ref, "--format", "modelpack", "-q"]) == 0
    capsys.readouterr()
    got, want = modelimage.inspect(ref), modelimage.inspect(heavy)
    assert (got.parameters, got.dtypes, [f.name for f in got.files]) == (
        want.parameters, want.dtypes, [f.name for f in want.files])


def test_a_foreign_tar_is_walked_with_its_whiteouts(heavy, tmp_path):
    weights = (heavy / "model-00001-of-00002.safetensors").read_bytes()
    lower = tar_of([(info("models/m/model.safetensors"), weights), (info("models/m/old.txt"), b"old"),
                    (info("models/m/config.json"), b"{}")])
    upper = tar_of([(info("models/m/.wh.old.txt"), b""), (info("models/m/README.md"), b"hi")])
    ref = layout(tmp_path / "oci", [lower, upper])
    model = modelimage.inspect(ref)
    assert [f.name for f in model.files] == ["models/m/README.md", "models/m/config.json",
                                             "models/m/model.safetensors"]
    assert model.format == "safetensors" and model.parameters == 2 * 512 * 1024


def test_a_compressed_layer_is_one_line(registry, capsys):
    import gzip

    data = gzip.compress(tar_of([(info("m/model.safetensors"), b"x" * 100)]))
    ref = push_layers(registry, "inspect/gzipped", [data])
    assert main(["inspect", ref]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is compressed" in err and "pull the image" in err


def test_a_name_that_is_neither_says_both(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "127.0.0.1:1/no/such:v1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "127.0.0.1" in err and "Traceback" not in err
    with pytest.raises(SourceError):
        modelimage.inspect("oci:" + str(tmp_path / "none"))
    shutil.rmtree(tmp_path, ignore_errors=True)


# ---------------------------------------------------------------- images others rewrote (breaker3)


def _rewrite(layout_dir: Path, *, created_by: str | None = None) -> None:
    """Drop the layer annotations of the layout's one image, as skopeo and
    podman copies do; with ``created_by``, also rename every history entry
    (podman's own history for an image built from a rendered Dockerfile)."""
    import hashlib
    import json

    blobs = layout_dir / "blobs" / "sha256"
    index = json.loads((layout_dir / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    for d in manifest["layers"]:
        d.pop("annotations", None)
    if created_by is not None:
        config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
        config["history"] = [{**h, "created_by": created_by} for h in config["history"]]
        raw = json.dumps(config).encode()
        (blobs / hashlib.sha256(raw).hexdigest()).write_bytes(raw)
        manifest["config"].update(digest="sha256:" + hashlib.sha256(raw).hexdigest(), size=len(raw))
    raw = json.dumps(manifest).encode()
    (blobs / hashlib.sha256(raw).hexdigest()).write_bytes(raw)
    index["manifests"][0].update(digest="sha256:" + hashlib.sha256(raw).hexdigest(), size=len(raw))
    (layout_dir / "index.json").write_text(json.dumps(index))


def test_a_skopeo_copy_with_compressed_layers_is_one_line_never_an_empty_report(llama_dir, tmp_path, capsys):
    """``skopeo copy`` (and ``podman push``) gzip the layers and drop their
    file lists: inspect said "0 parameters, 0 files" with exit 0. The
    history names the model's layers; those are compressed: one line."""
    from .tools import need, run

    need("skopeo")
    out, copy = tmp_path / "out", tmp_path / "copy"
    assert main(["build", str(llama_dir), "-o", f"oci:{out}:v1", "-q"]) == 0
    run("skopeo", "copy", "-q", "--dest-compress-format", "gzip", f"oci:{out}:v1", f"oci:{copy}:v1")
    capsys.readouterr()
    assert main(["inspect", f"oci:{copy}:v1"]) == 1
    out_, err = capsys.readouterr()
    assert out_ == "" and err.count("\n") == 1
    assert "is compressed (gzip)" in err and "pull the image" in err


def test_layers_that_lost_their_file_lists_are_read_by_the_history(llama_dir, tmp_path, capsys):
    """Uncompressed layers without annotations (``podman save --uncompressed``):
    the report is the folder's, whether the history names modelimage's
    layers or, for an image podman built from a rendered Dockerfile, none."""
    want = modelimage.inspect(llama_dir)
    for created_by in (None, "/bin/sh -c #(nop) COPY dir:abc in /models/llama"):
        out = tmp_path / f"out-{created_by is None}"
        assert main(["build", str(llama_dir), "-o", f"oci:{out}:v1", "-q"]) == 0
        _rewrite(out, created_by=created_by)
        got = modelimage.inspect(f"oci:{out}:v1")
        assert (got.parameters, got.dtypes, got.format, [f.name for f in got.files]) == (
            want.parameters, want.dtypes, want.format, [f.name for f in want.files]), created_by
    capsys.readouterr()


def test_a_base_image_layer_is_not_read_when_the_history_names_the_models(llama_dir, tmp_path):
    """On a base whose layer is gzip: with the file lists dropped, the
    history says which layers are the model's; the base's is never read."""
    import gzip

    base = layout(tmp_path / "base", [gzip.compress(tar_of([(info("bin/tool"), b"#!/bin/sh\n")]))])
    out = tmp_path / "out"
    assert main(["build", str(llama_dir), "--base", base, "-o", f"oci:{out}:v1", "-q"]) == 0
    _rewrite(out)
    got = modelimage.inspect(f"oci:{out}:v1")
    assert got.parameters == modelimage.inspect(llama_dir).parameters


def test_an_image_with_nothing_under_its_model_folder_is_an_error(tmp_path, capsys):
    """A recorded target that holds no file: one line, exit 1, never an
    empty report."""
    ref = layout(tmp_path / "oci", [tar_of([(info("elsewhere/model.safetensors"), b"x")])])
    assert main(["inspect", ref, "--include", "*.gguf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no files in its layers (after include/exclude)" in err


def test_a_registry_that_ignores_range_or_answers_another_range(heavy, registry, faults, capsys):
    """Behind a proxy that drops ``Range`` (200, the whole blob) the report
    is the same, the note saying what it cost; one that answers 206 with
    more than asked is read from the right offset; one whose ``Content-Range``
    does not cover the asked bytes is one line, never its bytes read as
    the asked ones (they were: a garbled header, or a wrong report)."""
    from .faultproxy import Rewrite, Rule

    assert main(["build", str(heavy), "--push", f"{registry.host}/inspect/ranges:v1", "-q"]) == 0
    capsys.readouterr()
    want = modelimage.inspect(heavy)
    ref = f"{faults.url.split('//')[1]}/inspect/ranges:v1"
    for request in ((("Range", None),), (("Range", "bytes=0-"),)):
        faults.reset()
        faults.add(Rule("GET", r"/blobs/", Rewrite(request=request), occurrence=2, times=None))  # after the config
        got = modelimage.inspect(ref)
        assert (got.parameters, got.dtypes, [f.name for f in got.files]) == (
            want.parameters, want.dtypes, [f.name for f in want.files]), request
    faults.reset()
    faults.add(Rule("GET", r"/blobs/", Rewrite(request=(("Range", "bytes=1-"),)), occurrence=2, times=None))
    from modelimage.errors import ModelImageError

    with pytest.raises(ModelImageError, match=r"asked for bytes 0-\d+, got Content-Range 'bytes 1-"):
        modelimage.inspect(ref)


def test_a_registry_that_ignores_range_is_read_once_per_layer_not_once_per_header(heavy, registry, faults):
    """Review finding: behind a server that answers every ranged GET with
    the whole blob (200), each tar header read fetched the blob from its
    start again (N headers: N blobs). After the first 200 no range is
    asked for again: the layer is one forward stream, headers read on it."""
    from .faultproxy import Rewrite, Rule
    from .pullkit import sha

    weights = (heavy / "model-00001-of-00002.safetensors").read_bytes()
    small = [(info(f"m/notes/{i:03}.txt"), bytes([i]) * 20_000) for i in range(40)]
    layer = tar_of([*small, (info("m/config.json"), b'{"model_type": "llama"}'),
                    (info("m/model.safetensors"), weights)])
    push_layers(registry, "inspect/norange", [layer])
    want = modelimage.inspect(f"{registry.host}/inspect/norange:v1")
    faults.add(Rule("GET", r"/blobs/", Rewrite(request=(("Range", None),)), times=None))
    got = modelimage.inspect(f"{faults.url.split('//')[1]}/inspect/norange:v1")
    assert (got.parameters, [f.name for f in got.files]) == (want.parameters, [f.name for f in want.files])
    assert got.parameters == 2 * 512 * 1024
    assert _bytes(got.notes[-1]) < 2 * len(layer)  # was about 40 x the layer
    gets = faults.requests("GET", f"/blobs/{sha(layer)}")
    assert 1 <= len(gets) <= 3 and all(s.status == 200 for s in gets)
