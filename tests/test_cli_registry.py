"""``modelimage login``, ``logout``, ``limits`` and the summary ``push`` and
``build --push`` share (modelimage/cli/registry.py, cli/build.py)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.registry.reference import name_at


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def test_login_then_logout_then_the_registry_refuses(htpasswd_registry, llama_dir, docker_config, monkeypatch,
                                                     capsys):
    reg = htpasswd_registry
    monkeypatch.setattr(sys, "stdin", io.StringIO(reg.password + "\n"))
    assert main(["login", reg.host, "-u", reg.username, "--password-stdin"]) == 0
    capsys.readouterr()
    assert reg.host in json.loads((docker_config / "config.json").read_text())["auths"]

    assert main(["logout", reg.host]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"removed from {docker_config / 'config.json'}\n"
    assert json.loads((docker_config / "config.json").read_text())["auths"] == {}
    assert main(["build", str(llama_dir), "--push", f"{reg.host}/x/llama:v1"]) == 1
    assert "modelimage login" in capsys.readouterr().err

    assert main(["logout", reg.host]) == 0  # twice: nothing to forget, said so
    assert "no credentials" in capsys.readouterr().err


def test_push_and_build_push_summarise_the_same_way(registry, llama_dir, tmp_path, capsys):
    """One line on stderr for both: tag, layers by action (singular for one), size."""
    layout = f"oci:{tmp_path / 'o'}:v1"
    assert main(["build", str(llama_dir), "-o", layout, "--max-layer-size", "900KB"]) == 0
    capsys.readouterr()
    assert main(["push", layout, f"{registry.host}/sum/a:v1"]) == 0
    out_push, err_push = capsys.readouterr()
    assert main(["build", str(llama_dir), "--push", f"{registry.host}/sum/b:v1", "--max-layer-size", "900KB"]) == 0
    out_build, err_build = capsys.readouterr()
    assert out_push.strip().split("@")[1] == out_build.strip().split("@")[1]  # same digest
    shape = r"pushed {}/sum/{}:v1 \((\d+) layers: ((?:\d+ (?:exists|mounted|uploaded)(?:, )?)+); ([\d.]+ [kMG]?B)\)\n"
    a = re.fullmatch(shape.format(re.escape(registry.host), "a"), err_push)
    b = re.fullmatch(shape.format(re.escape(registry.host), "b"), err_build)
    assert a and b, (err_push, err_build)
    assert (a.group(1), a.group(3)) == (b.group(1), b.group(3))  # as many layers, as many bytes
    assert "uploaded" not in b.group(2)  # b's blobs are a's: mounted across repositories, or there


def test_quiet_prints_the_result_only(registry, llama_dir, tmp_path, capsys):
    for argv in (["-q", "build", str(llama_dir), "-o", f"oci:{tmp_path / 'q1'}"],
                 ["build", str(llama_dir), "-o", f"oci:{tmp_path / 'q2'}", "--quiet"],
                 ["build", str(llama_dir), "--push", f"{registry.host}/quiet/x:v1", "-q"],
                 ["pull", "-q", f"{registry.host}/quiet/x:v1", str(tmp_path / "dest")]):
        assert main(argv) == 0
        out, err = capsys.readouterr()
        assert err == "", argv
    assert main(["build", str(llama_dir), "-o", f"oci:{tmp_path / 'q3'}"]) == 0
    assert capsys.readouterr().err.startswith("wrote ")


def test_digest_references_are_written_with_an_at():
    assert name_at("ghcr.io/acme/llama", "sha256:" + "a" * 64) == "ghcr.io/acme/llama@sha256:" + "a" * 64
    assert name_at("ghcr.io/acme/llama", "v1") == "ghcr.io/acme/llama:v1"


def test_api_login_checks_then_stores_and_a_refused_login_stores_nothing(htpasswd_registry, docker_config):
    """``modelimage.api.login``, what ``login`` calls: the registry is asked
    first; only credentials it accepts reach config.json."""
    import base64
    import json

    from modelimage.api import login
    from modelimage.errors import ModelImageError

    reg = htpasswd_registry
    with pytest.raises(ModelImageError):
        login(reg.host, reg.username, "not-the-pa55word")
    assert not (docker_config / "config.json").exists()
    where = login(reg.host, reg.username, reg.password)
    assert where.startswith(str(docker_config / "config.json")) and reg.password not in where
    auths = json.loads((docker_config / "config.json").read_text())["auths"]
    assert [base64.b64decode(a["auth"]).decode() for a in auths.values()] == [f"{reg.username}:{reg.password}"]


def test_a_broken_model_entry_does_not_stop_commands_that_need_only_registries(
        htpasswd_registry, registry, llama_dir, docker_config, tmp_path, monkeypatch, capsys):
    """Review finding: the transport options parsed and checked the WHOLE
    ./modelimage.toml, so a broken [models.NAME] entry stopped login, pull,
    push and limits, which read only [registries]. A broken [registries]
    still stops them: one line naming the file."""
    layout = f"oci:{tmp_path / 'o'}:v1"
    assert main(["build", str(llama_dir), "-o", layout, "-q"]) == 0
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "modelimage.toml"
    toml.write_text(f'[models.x]\nsource = "a"\ncolour = "red"\n\n[registries."{registry.host}"]\n'
                    'max_layer_size = "5GB"\n')
    capsys.readouterr()
    ref = f"{registry.host}/cfg/llama:v1"

    def login() -> int:
        monkeypatch.setattr(sys, "stdin", io.StringIO(htpasswd_registry.password + "\n"))
        return main(["login", htpasswd_registry.host, "-u", htpasswd_registry.username, "--password-stdin"])

    assert login() == 0
    assert main(["push", layout, ref]) == 0
    assert main(["pull", ref, str(tmp_path / "dest")]) == 0
    assert (tmp_path / "dest" / "config.json").is_file()
    capsys.readouterr()
    assert main(["limits", registry.host, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_layer_size"] == 5_000_000_000
    assert main(["plan", "x"]) == 1  # a command that reads the models still says what is wrong
    assert "unknown key(s) colour" in capsys.readouterr().err

    toml.write_text('[models.x]\nsource = "a"\n\n[registries]\nmirrors = 1\n')
    for run in (login, lambda: main(["push", layout, ref]), lambda: main(["pull", ref, str(tmp_path / "d2")]),
                lambda: main(["limits", registry.host])):
        assert run() == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "modelimage.toml" in err and "[registries]" in err, err
