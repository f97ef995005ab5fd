"""The whole kind (issue 16): every command, given bad input, prints ONE
line on stderr, exits non-zero, never a traceback, and leaves nothing
half-written.

Bad inputs: a missing path, a path that looks like an image reference (and
the other way round), a garbage model file or layout, an unreachable
registry port, a wrong password, an output that cannot be written, a full
small disk, and Ctrl-C in the middle of a run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelimage.cli import main


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int | None = None) -> str:
    """Run ``modelimage ARGV`` and return its one error line."""
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc != 0 if code is None else rc == code, (argv, rc, err)
    assert "Traceback" not in err, (argv, err)
    assert err.count("\n") == 1 and err.startswith("error: "), (argv, err)
    return err.rstrip("\n")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# ---------------------------------------------------------------- paths that look like paths


PATHS = ["./no-such-model", "../no/such", "/no/such/folder", "~/no-such-model", "models/llama.safetensors",
         "weights/model.gguf"]


@pytest.mark.parametrize("command", ["inspect", "plan", "estimate", "build", "render dockerfile", "render k8s"])
@pytest.mark.parametrize("path", PATHS)
def test_a_missing_model_path_is_no_such_file_or_folder(command, path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line(capsys, [*command.split(), path])
    assert line == f"error: {path}: no such file or folder"
    assert listing(tmp_path) == []


@pytest.mark.parametrize("command", ["pull", "verify"])
@pytest.mark.parametrize("path", PATHS)
def test_a_missing_image_path_is_no_such_file_or_folder(command, path, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert one_line(capsys, [command, path, "dest"]) == f"error: {path}: no such file or folder"
    assert listing(tmp_path) == []


def test_a_folder_where_an_image_is_read_says_what_to_write(llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(llama_dir), "-o", "oci:layout:v1"]) == 0
    capsys.readouterr()
    assert one_line(capsys, ["pull", "./layout", "dest"]) == "error: ./layout is an OCI layout: name it oci:./layout[:TAG]"
    line = one_line(capsys, ["verify", str(llama_dir), "dest"])
    assert line.startswith(f"error: {llama_dir}: a folder, not an image (give HOST/REPO[:TAG], oci:DIR[:TAG]")
    assert sorted(os.listdir(tmp_path)) == ["layout"]


@pytest.mark.parametrize(("ref", "expected"), [
    ("./out", "./out: a file system path, not an image reference (HOST/REPO[:TAG])"),
    ("a..b:5000/x:v1", "'a..b:5000/x:v1': 'a..b:5000' is not a registry host"),
    (".:5000/x", "'.:5000/x': '.:5000' is not a registry host"),
])
def test_a_push_target_that_is_not_a_reference(ref, expected, llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert expected in one_line(capsys, ["build", str(llama_dir), "--push", ref])
    assert listing(tmp_path) == []
