"""sources.local: a folder's files, with the Hugging Face cache's link
rules (moved here from test_inspect.py with the listing itself)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelimage import synth
from modelimage.errors import SourceError
from modelimage.inspect import inspect_model
from modelimage.sources.local import hf_cache_repo, list_files

SHAPE = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)


@pytest.fixture(scope="module")
def llama_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth.write_llama_safetensors(tmp_path_factory.mktemp("local") / "llama-single", SHAPE, shards=1)


def test_hidden_files_skipped_and_symlinks_inside_followed(tmp_path: Path, llama_single: Path) -> None:
    import shutil

    d = tmp_path / "m"
    (d / "real").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(llama_single / f, d / "real" / f)
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref")
    (d / ".gitattributes").write_text("*.safetensors filter=lfs")
    (d / "config.json").symlink_to("real/config.json")
    (d / "model.safetensors").symlink_to(d / "real" / "model.safetensors")
    m = inspect_model(d, exclude=["real/*"])
    assert [f.name for f in m.files] == ["config.json", "model.safetensors"]
    assert m.file("model.safetensors").size == (llama_single / "model.safetensors").stat().st_size
    assert m.parameters == SHAPE.parameters


def test_symlinks_leading_outside_are_refused(tmp_path: Path, llama_single: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SourceError, match="symlink leads outside the model folder"):
        inspect_model(d)
    (d / "passwd").unlink()
    (d / "sub").symlink_to(llama_single)  # a linked folder outside
    with pytest.raises(SourceError, match="sub.*outside"):
        inspect_model(d)


def test_hugging_face_cache_snapshot_links_are_followed(tmp_path: Path, llama_single: Path) -> None:
    """A HF cache snapshot is made of links into ../../blobs: allowed."""
    import shutil

    repo = tmp_path / "hub" / "models--acme--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / f"blob-{f}"
        shutil.copy(llama_single / f, blob)
        (snap / f).symlink_to(Path("../../blobs") / blob.name)
    m = inspect_model(snap)
    assert [f.name for f in m.files] == ["config.json", "model.safetensors"]


def test_non_utf8_names_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    open(os.path.join(os.fsencode(d), b"weird-\xff.bin"), "wb").close()
    with pytest.raises(SourceError, match="must be UTF-8"):
        inspect_model(d)


def test_fifo_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    os.mkfifo(d / "pipe")
    with pytest.raises(SourceError, match="not a regular file"):
        list_files(d)


def test_a_single_file_is_its_own_listing(llama_single: Path) -> None:
    (f,) = list_files(llama_single / "model.safetensors")
    assert (f.name, f.size) == ("model.safetensors", (llama_single / "model.safetensors").stat().st_size)
    assert f.path == (llama_single / "model.safetensors").resolve() and f.is_weights


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        list_files(tmp_path / "nope")
    (tmp_path / "empty" / ".git").mkdir(parents=True)
    with pytest.raises(SourceError, match="no files to pack"):
        list_files(tmp_path / "empty")


def test_hf_cache_repo(tmp_path: Path) -> None:
    snap = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "0123abcd"
    assert hf_cache_repo(snap) == (tmp_path / "hub" / "models--acme--tiny").absolute()
    assert hf_cache_repo(tmp_path / "hub" / "plain") is None
