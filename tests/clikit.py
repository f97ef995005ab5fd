"""Shared by the ``tests/test_cli*.py`` files: a small llama model, the
command run through click, and readers of the OCI layouts it writes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from modelimage import synth
from modelimage.cli import cli

SHAPE = synth.LlamaShape(vocab=1024, hidden=256, layers=2, intermediate=512)
REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = 1_700_000_000


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient SOURCE_DATE_EPOCH, and a cwd without a modelimage.toml
    (where a default ``build/`` output would land)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-models")
    synth.write_llama_safetensors(base / "llama", SHAPE, shards=2)
    synth.write_llama_gguf(base / "gguf" / "llama-demo-Q4_K_M.gguf", SHAPE)
    return base


@pytest.fixture(scope="module")
def llama(models: Path) -> Path:
    return models / "llama"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result


def run_json(*args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(run(*args, "--json", env=env).stdout)


def blob(layout: Path, digest: str) -> bytes:
    data = (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def tagged(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    (desc,) = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) == tag]
    return desc


def manifest_of(layout: Path, tag: str) -> tuple[str, dict[str, Any]]:
    desc = tagged(layout, tag)
    return desc["digest"], json.loads(blob(layout, desc["digest"]))


def layer_tars(layout: Path, manifest: dict[str, Any]) -> list[tarfile.TarFile]:
    return [tarfile.open(fileobj=io.BytesIO(blob(layout, layer["digest"]))) for layer in manifest["layers"]]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def nothing_left(where: Path) -> None:
    assert sorted(p.name for p in where.iterdir()) == [], "output left behind"
