"""The build summary (``python -m modelimage.summary``) and the composite
action (action.yml) that writes it as the job summary.

The action's shell steps are run here the way the GitHub runner runs them
(``bash --noprofile --norc -eo pipefail``, ``${{ }}`` expressions replaced,
``$GITHUB_OUTPUT``/``$GITHUB_STEP_SUMMARY`` files, ``::add-mask::`` taken
out of the log), against a real registry with a password, so the test
sees what a workflow run would show and checks the password is nowhere in it.
Two steps are stood in for: actions/setup-python (this interpreter) and the
pip install of the action's checkout (this virtualenv has modelimage).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from modelimage import summary
from modelimage.limits import limits_for

from .tools import need, run

ROOT = Path(__file__).parent.parent
ACTION = ROOT / "action.yml"
EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


@pytest.fixture(scope="module")
def action() -> dict:
    return yaml.safe_load(ACTION.read_text())


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """Where `modelimage login` stores credentials (never ~/.docker)."""
    return tmp_path / "docker-config"


def build_json(model: Path, *extra: str) -> dict:
    from modelimage.cli import cli

    result = CliRunner().invoke(cli, ["build", str(model), "--json", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------- the summary


def test_summary_markdown(llama_dir: Path, tmp_path: Path) -> None:
    build = build_json(llama_dir, "-o", f"oci:{tmp_path / 'out'}:v1", "--max-layer-size", "5MB")
    (tmp_path / "build.json").write_text(json.dumps(build))
    out = tmp_path / "summary.md"
    outputs = tmp_path / "outputs"
    proc = run(sys.executable, "-m", "modelimage.summary", tmp_path / "build.json", "--model", llama_dir,
               "--registry", "ghcr.io", "--summary", out, "--github-output", outputs)
    assert proc.stdout == ""
    md = out.read_text()
    assert md.startswith(f"### Model image {llama_dir.name}\n")
    assert f"| digest | `{build['digest']}` |" in md
    rows = [line for line in md.split("#### Layers", 1)[1].split("####", 1)[0].splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(build["layers"])
    assert "`model-00001-of-00002.safetensors`" in rows[0]
    assert "#### Registry limits: ghcr.io (GitHub Container Registry): within them" in md
    assert "| ✅ | largest layer |" in md and "| 10 GB per layer |" in md
    assert "| ℹ️ | upload time |" in md and "uploads cut after 10" in md
    pulls = md.split("#### Pull time (containerd, estimated)", 1)[1]
    for link in ("100 Mbit/s", "1 Gbit/s", "10 Gbit/s"):
        assert f"| {link} |" in pulls
    assert outputs.read_text() == f"digest={build['digest']}\nreference=oci:{tmp_path / 'out'}:v1\n"
    # appended, as $GITHUB_STEP_SUMMARY is by every step
    run(sys.executable, "-m", "modelimage.summary", tmp_path / "build.json", "--summary", out)
    assert out.read_text().count("### Model image") == 2


def test_summary_flags_a_layer_over_the_limit(llama_dir: Path, tmp_path: Path) -> None:
    build = build_json(llama_dir, "-o", f"oci:{tmp_path / 'out'}:v1")
    small = limits_for("ghcr.io").__class__("tiny registry", max_layer_size=10**6)
    md = summary.summarize(build, registry="tiny.example.com", limits=small)
    assert "tiny.example.com (tiny registry): NOT within them" in md
    assert "| ❌ | largest layer |" in md


def test_summary_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "modelimage.summary", "b.json"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "modelimage build --json" in proc.stderr
    (tmp_path / "c.json").write_text("not json")
    proc = subprocess.run([sys.executable, "-m", "modelimage.summary", "c.json"], capture_output=True, text=True)
    assert proc.returncode == 1 and "not JSON" in proc.stderr


def test_summary_without_the_model_still_summarizes(llama_dir: Path, tmp_path: Path) -> None:
    build = build_json(llama_dir, "-o", f"oci:{tmp_path / 'out'}:v1")
    (tmp_path / "b.json").write_text(json.dumps(build))
    proc = subprocess.run([sys.executable, "-m", "modelimage.summary", "b.json", "--model", "gone"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "warning: gone" in proc.stderr
    assert "#### Layers" in proc.stdout and "| parameters |" not in proc.stdout


def test_summary_help() -> None:
    proc = run(sys.executable, "-m", "modelimage.summary", "--help")
    for option in ("BUILD_JSON", "--summary", "--github-output", "--model", "--registry"):
        assert option in proc.stdout


# ---------------------------------------------------------------- action.yml


def test_action_structure(action: dict) -> None:
    assert set(action["inputs"]) >= {"model", "image", "max-layer-size", "registry", "username", "password",
                                     "push", "config"}
    assert action["inputs"]["model"]["required"] is True
    assert action["inputs"]["push"]["default"] == "true"
    assert {k: v["value"] for k, v in action["outputs"].items()} == {
        "digest": "${{ steps.build.outputs.digest }}", "reference": "${{ steps.build.outputs.reference }}"}
    assert action["runs"]["using"] == "composite"
    steps = {s["id"]: s for s in action["runs"]["steps"]}
    assert list(steps) == ["python", "install", "login", "build"]
    for s in steps.values():
        assert "uses" in s or s["shell"] == "bash"
        # inputs reach scripts through env only: nothing a user types is pasted into shell code
        assert "${{" not in s.get("run", "")
    assert "${{ github.action_path }}" in steps["install"]["env"].values()
    assert 'pip install' in steps["install"]["run"] and '"$ACTION_PATH"' in steps["install"]["run"]
    assert "--password-stdin" in steps["login"]["run"]
    with_password = [s["id"] for s in steps.values() if "inputs.password" in json.dumps(s)]
    assert with_password == ["login"]
    assert "--json" in steps["build"]["run"] and "-m modelimage.summary" in steps["build"]["run"]
    assert '"$GITHUB_STEP_SUMMARY"' in steps["build"]["run"] and '"$GITHUB_OUTPUT"' in steps["build"]["run"]


@dataclass
class ActionRun:
    outputs: dict[str, str]
    summary: str
    log: str
    masks: list[str] = field(default_factory=list)
    returncode: int = 0


def run_action(action: dict, inputs: dict[str, str], tmp: Path, env: dict[str, str]) -> ActionRun:
    """Run the composite action's steps as the runner would."""
    values = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    values.update(inputs)
    steps: dict[str, dict[str, str]] = {}
    summary_file = tmp / "step-summary.md"
    summary_file.touch()
    log, masks = [], []

    def expand(text: str) -> str:
        def one(m: re.Match) -> str:
            expr = m.group(1)
            if expr.startswith("inputs."):
                return values[expr[len("inputs."):]]
            if expr == "github.action_path":
                return str(ROOT)
            hit = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
            assert hit, f"expression the test runner does not know: {expr}"
            return steps.get(hit.group(1), {}).get(hit.group(2), "")
        return EXPR.sub(one, str(text))

    for step in action["runs"]["steps"]:
        sid = step["id"]
        if "uses" in step:  # actions/setup-python
            steps[sid] = {"python-path": sys.executable}
            continue
        if sid == "install":  # this virtualenv has modelimage installed (editable)
            steps[sid] = {"bin": str(Path(sys.executable).parent)}
            continue
        out_file = tmp / f"output-{sid}"
        out_file.touch()
        script = tmp / f"step-{sid}.sh"
        script.write_text(step["run"])
        step_env = {**env, "GITHUB_OUTPUT": str(out_file), "GITHUB_STEP_SUMMARY": str(summary_file),
                    "RUNNER_TEMP": str(tmp), **{k: expand(v) for k, v in step.get("env", {}).items()}}
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=step_env,
                              capture_output=True, text=True, cwd=tmp)
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith("::add-mask::"):  # the runner consumes these: they never reach the log
                masks.append(line[len("::add-mask::"):])
            else:
                log.append(line)
        steps[sid] = dict(line.split("=", 1) for line in out_file.read_text().splitlines() if "=" in line)
        if proc.returncode != 0:
            return ActionRun({}, summary_file.read_text(), "\n".join(log), masks, proc.returncode)
    outputs = {name: expand(spec["value"]) for name, spec in action["outputs"].items()}
    return ActionRun(outputs, summary_file.read_text(), "\n".join(log), masks)


def test_action_logs_in_pushes_and_summarizes(action: dict, htpasswd_registry, llama_dir: Path, tmp_path: Path,
                                              docker_config: Path) -> None:
    reg = htpasswd_registry
    skopeo = need("skopeo")
    image = f"{reg.host}/actions/llama:v1"
    (tmp_path / "modelimage.toml").write_text(f'[models.llama]\nsource = "{llama_dir}"\nimage = "{image}"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(docker_config)}
    result = run_action(action, {"model": "llama", "username": reg.username, "password": reg.password,
                                 "registry": reg.host, "max-layer-size": "5MB", "config": "modelimage.toml"},
                        tmp_path, env)
    assert result.returncode == 0, result.log
    remote = json.loads(run(skopeo, "inspect", "--tls-verify=false", f"--creds={reg.username}:{reg.password}",
                            f"docker://{image}").stdout)
    assert result.outputs == {"digest": remote["Digest"], "reference": f"{reg.host}/actions/llama@{remote['Digest']}"}
    assert f"login succeeded for {reg.username}" in result.log
    md = result.summary
    assert md.startswith("### Model image llama\n")
    assert f"| pushed | `{reg.host}/actions/llama@{remote['Digest']}` |" in md
    assert f"#### Registry limits: {reg.host}: within them" in md
    assert "#### Pull time (containerd, estimated)" in md
    assert len(re.findall(r"^\| \d+ \|", md, re.M)) == len(remote["Layers"])
    # the password: masked, and in no log, summary, output or file the action wrote but the credential store
    assert reg.password in result.masks
    written = [p for p in tmp_path.rglob("*") if p.is_file() and docker_config not in p.parents]
    for text in [result.log, md, json.dumps(result.outputs)] + [p.read_text(errors="replace") for p in written]:
        assert reg.password not in text


def test_action_without_push_builds_a_layout(action: dict, llama_dir: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = run_action(action, {"model": str(llama_dir), "push": "false"}, tmp_path, env)
    assert result.returncode == 0, result.log
    assert result.outputs["reference"] == f"oci:build/{llama_dir.name}:latest"
    assert (tmp_path / "build" / llama_dir.name / "index.json").is_file()
    assert "no username/password given" in result.log
    assert "#### Registry limits: any registry: within them" in result.summary


def test_action_refuses_half_credentials_and_bad_push(action: dict, llama_dir: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    half = run_action(action, {"model": str(llama_dir), "username": "u", "image": "ghcr.io/a/b"}, tmp_path, env)
    assert half.returncode == 1 and "give both username and password" in half.log
    bad = run_action(action, {"model": str(llama_dir), "push": "yes"}, tmp_path, env)
    assert bad.returncode == 1 and 'push must be "true" or "false"' in bad.log


def test_action_signs_with_a_key_from_a_secret(action: dict, registry, llama_dir: Path, tmp_path: Path,
                                               docker_config: Path) -> None:
    """signing-key (a secret's PEM text): the pushed image is signed, its
    provenance too, the key never reaches the log and its file is deleted."""
    from modelimage.signing.verify import verify_image

    from .signkeys import write_keypair

    private, public = write_keypair(tmp_path / "keys")
    image = f"{registry.host}/actions/signed:v1"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(docker_config)}
    key_text = private.read_text()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = run_action(action, {"model": str(llama_dir), "image": image, "signing-key": key_text}, run_dir, env)
    assert result.returncode == 0, result.log
    assert "PRIVATE KEY" not in result.log and not list(run_dir.glob("modelimage-signing-key*"))
    verified = verify_image(image, public)
    assert verified.digest == result.outputs["digest"]
    assert [p["verified"] for p in verified.provenance] == [True]
    refused = run_action(action, {"model": str(llama_dir), "push": "false", "signing-key": key_text},
                         run_dir, env)
    assert refused.returncode != 0 and 'signing-key needs push "true"' in refused.log
