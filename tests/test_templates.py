"""The templates: rendering rules, packaging, and every kind's output
against golden files (tests/golden/*.txt, compared byte for byte).

A change to a template or to what is passed to it shows up here as a diff.
When the change is meant, regenerate the files and review them:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_templates.py
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from pathlib import Path
from types import SimpleNamespace

import jinja2
import pytest
from click.testing import CliRunner

from modelimage import render as rd
from modelimage import summary, synth, templates
from modelimage.cli import cli

from .tools import SMALL

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).parent.parent
UPDATE = os.environ.get("UPDATE_GOLDEN", "") not in ("", "0")
CONFIG = """\
[models.tiny-llama]
source = "models/tiny-llama"
image = "ghcr.io/acme/models/tiny-llama:v1"

[models.sd]
source = "models/sd"
image = "registry.example.com/models/sd:v1"
"""


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(text.encode())
        return
    assert path.exists(), f"{path} is missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    want = path.read_bytes().decode()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(path), "rendered"))
        pytest.fail(f"{name} differs from its golden file (UPDATE_GOLDEN=1 to accept):\n{diff}")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a modelimage.toml and two small models, used as the cwd
    so every path in the output is relative and the same everywhere."""
    ws = tmp_path_factory.mktemp("render-ws")
    (ws / "modelimage.toml").write_text(CONFIG)
    synth.write_llama_safetensors(ws / "models" / "tiny-llama", SMALL, shards=2)
    synth.write_diffusers(ws / "models" / "sd")
    return ws


@pytest.fixture
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return workspace


def render_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, ["render", *args], catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


# ---------------------------------------------------------------- the module


def test_render_fills_a_template() -> None:
    text = templates.render("makefile", default_model="llama")
    assert "MODEL ?= llama\n" in text
    assert text.endswith("\n")


def test_a_missing_value_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(jinja2.UndefinedError, match="default_model"):
        templates.render("makefile")


def test_unknown_template() -> None:
    with pytest.raises(KeyError, match="no template 'nope'.*dockerfile"):
        templates.render("nope")


def test_every_kind_has_its_templates() -> None:
    names = set(templates.kinds())
    assert set(rd.KINDS) - {"k8s"} <= names
    assert {"k8s", "k8s-init-container", "summary"} <= names


def test_templates_are_package_data() -> None:
    """Every template is matched by the package-data globs of
    modelimage.templates, the package the top-level templates/ folder
    becomes. (Building a wheel needs setuptools>=77 in an isolated build:
    ~10 s and the network; `pip wheel --no-deps -w DIR .` then `unzip -l`
    lists modelimage/templates/*.j2.)"""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setup["package-dir"]["modelimage.templates"] == "templates"
    assert "modelimage.templates" in setup["packages"]
    globs = setup["package-data"]["modelimage.templates"]
    folder = ROOT / "templates"
    shipped = {p for g in globs for p in folder.glob(g)}
    assert sorted(folder.glob("*.j2"))
    assert set(folder.rglob("*.j2")) <= shipped
    assert {p.name.removesuffix(".j2") for p in folder.glob("*.j2")} == set(templates.kinds())


# ---------------------------------------------------------------- golden files


GOLDEN_CASES = {
    "dockerfile": ["dockerfile", "tiny-llama", "--builder", "docker"],
    "dockerfile-no-link": ["dockerfile", "sd", "--builder", "podman"],
    "dockerfile-consumer": ["dockerfile-consumer", "tiny-llama", "--builder", "docker"],
    "github-action": ["github-action", "tiny-llama"],
    "makefile": ["makefile"],
    "k8s": ["k8s", "tiny-llama"],
    "k8s-init-container": ["k8s", "tiny-llama", "--fallback", "init-container"],
}


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden(name: str, in_workspace: Path) -> None:
    check_golden(name, render_cli(*GOLDEN_CASES[name]))


def test_golden_summary(in_workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The build summary; pull times are stubbed (they follow estimate's
    measured constants, which tests/test_estimate.py covers)."""
    result = CliRunner().invoke(cli, ["build", "tiny-llama", "-o", "oci:out:latest", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    build = json.loads(result.stdout)
    fake = SimpleNamespace(total_seconds=12.5, low_seconds=7.5, high_seconds=23.75, disk_bytes=2 * 10**7)
    monkeypatch.setattr(summary, "estimate_pull", lambda specs, **kw: fake)
    (in_workspace / "build.json").write_text(json.dumps(build))
    out = CliRunner().invoke(summary.command, ["build.json", "--model", "tiny-llama"], catch_exceptions=False)
    assert out.exit_code == 0, out.stderr
    check_golden("summary", out.stdout)
