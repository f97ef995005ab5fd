"""The ``modelimage`` command group (modelimage/cli/__init__.py): help, version, usage errors, one line per error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from modelimage.cli import COMMANDS, cli, main
from tests.clikit import clean_env, error_line, llama, models, nothing_left  # noqa: F401  (fixtures)


@pytest.mark.parametrize("command", [[], ["inspect"], ["plan"], ["build"], ["example-model"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(command: list[str], flag: str) -> None:
    result = CliRunner().invoke(cli, [*command, flag])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("command", [[], ["build"], ["inspect"], ["plan"]])
def test_help_through_main(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert "modelimage" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["build", "{llama}", "--max-layer-size", "lots", "-o", "oci:{out}/x"], "--max-layer-size"),
        (["build", "{llama}", "--max-layer-size", "0", "-o", "oci:{out}/x"], "more than zero"),
        (["plan", "{llama}", "--max-layer-size", "-1GB"], "--max-layer-size"),
        (["build", "{llama}", "--compression", "zstd", "-o", "oci:{out}/x"], "--compression"),
        (["inspect", "{llama}", "--as", "q1"], "--as"),
        (["build"], "SOURCE"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_options_are_usage_errors(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], expected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main([a.format(out=out, llama=llama) for a in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    assert "Usage:" in captured.err
    (error,) = [line for line in captured.err.splitlines() if line.startswith("Error:")]
    assert expected in error
    nothing_left(out)


def test_bad_config_file(llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "modelimage.toml"
    for text, expected in [
        ("[models.x\n", "modelimage.toml"),
        ('[models.X]\nsource = "a"\n', "names are lowercase"),
        ("[models.x]\nimage = 1\n", "needs source"),
        ('[models.x]\nsource = "a"\ncolour = "red"\n', "unknown key(s) colour"),
        ('[models.x]\nsource = "a"\nmax_layer_size = 1.5e9\n', "max_layer_size"),
        ('[models.x]\nsource = "a"\ninclude = [1]\n', "include must be"),
    ]:
        cfg.write_text(text)
        assert main(["plan", "x", "--config", str(cfg)]) == 1, text
        line = error_line(capsys)
        assert line.startswith("error: ") and expected in line, (text, line)


def commands() -> dict[str, click.Command]:
    """Every command of the group, each loaded (the group loads them lazily)."""
    ctx = click.Context(cli, info_name="modelimage")
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


def test_top_level_help_shows_whole_descriptions() -> None:
    """Each command's whole first paragraph, not click's 45 characters and '...'."""
    text = " ".join(CliRunner().invoke(cli, ["--help"]).stdout.split("Commands:")[1].split())
    assert "..." not in text
    for name, command in commands().items():
        first = " ".join((command.short_help or command.help or "").split("\n\n")[0].split())
        assert first in text, name


def test_the_command_table_says_what_each_command_says() -> None:
    """``modelimage --help`` prints :data:`COMMANDS`' lines without loading a
    command: each is the command's own first paragraph (or short help), and
    names the command that runs."""
    loaded = commands()
    assert sorted(loaded) == sorted(COMMANDS)
    for name, command in loaded.items():
        assert command.name == name
        first = " ".join((command.short_help or command.help or "").split("\n\n")[0].split())
        assert COMMANDS[name][2] == first, name


def test_help_lists_every_command_and_imports_no_command() -> None:
    """``import modelimage.cli`` and ``modelimage --help`` load no command
    module, nor httpx, jinja2, huggingface_hub or rich (start-up is most of
    a small build's time, issue 20), and the help lists every command."""
    code = ("import sys\n"
            "from modelimage.cli import main\n"
            "heavy = lambda: sorted(m for m in sys.modules if m.split('.')[0] in "
            "('httpx', 'jinja2', 'huggingface_hub', 'rich') or m in {NAMES})\n"
            "print(heavy(), file=sys.stderr)\n"
            "code = main(['--help'])\n"
            "print(code, heavy(), file=sys.stderr)\n").replace(
        "{NAMES}", repr({f"modelimage.cli.{module}" for module, _, _ in COMMANDS.values()}))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.splitlines() == ["[]", "0 []"]
    listed = result.stdout.split("Commands:")[1]
    for name in COMMANDS:
        assert f" {name} " in listed, name


def test_quiet_is_an_option_of_the_group_and_of_every_command() -> None:
    for name in commands():
        assert "--quiet" in CliRunner().invoke(cli, [name, "--help"]).stdout, name
    assert "-q, --quiet" in CliRunner().invoke(cli, ["--help"]).stdout


def test_a_network_failure_outside_the_retried_paths_is_one_line(llama_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """An httpx failure no retry wraps (login, estimate's probes...) is one
    line naming the host, though ``modelimage.cli`` itself no longer imports
    httpx (the command that failed did)."""
    import httpx

    def refused(*args: object, **kw: object) -> None:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("GET", "https://r.test/v2/"))

    monkeypatch.setattr("modelimage.api._model.prepare", refused)
    assert main(["-q", "inspect", str(llama_dir)]) == 1
    assert capsys.readouterr() == ("", "error: r.test: cannot connect ([Errno 111] Connection refused)\n")
