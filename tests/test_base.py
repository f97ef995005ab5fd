"""Model images on a base image: offline from an OCI layout, and across
registries (base layers streamed through), then run to check the files."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from modelimage.cli import main

from .registry import start_registry
from .tools import need, run

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def run_sha256sums(image: str, env: dict) -> dict[str, str]:
    out = run("podman", "run", "--rm", "--network=none", image, "sh", "-c", "cd /models/llama && sha256sum *",
              env=env).stdout
    return {line.split()[1]: "sha256:" + line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def base_layout(busybox_base, tmp_path_factory) -> str:
    """The busybox base as an OCI layout on disk (for offline builds)."""
    need("skopeo")
    d = tmp_path_factory.mktemp("base") / "oci"
    run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{busybox_base}", f"oci:{d}:latest")
    return f"oci:{d}:latest"


def test_offline_base_from_a_layout_runs(base_layout, llama_dir, tmp_path, podman_env, capsys):
    out = tmp_path / "out"
    assert main(["build", str(llama_dir), "--base", base_layout, "-o", f"oci:{out}:v1", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    image = run("podman", "pull", "-q", f"oci:{out}:v1", env=podman_env).stdout.strip()
    try:
        seen = run_sha256sums(image, podman_env)
        config = json.loads(run("podman", "image", "inspect", image, env=podman_env).stdout)[0]
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=podman_env)
    recorded = {f["path"].rsplit("/", 1)[1]: f["sha256"] for layer in built["layers"] for f in layer["files"]}
    assert seen == recorded
    assert seen["config.json"] == sha256(llama_dir / "config.json")
    # the base's config is kept (its CMD and PATH), the model's labels added, history extended
    assert config["Config"]["Cmd"] == ["/bin/sh"]
    assert "PATH=/bin" in config["Config"]["Env"]
    assert config["Config"]["Labels"]["dev.modelimage.format"] == "safetensors"
    base_manifest = json.loads(run("skopeo", "inspect", "--raw", base_layout).stdout)
    manifest = json.loads(run("skopeo", "inspect", "--raw", f"oci:{out}:v1").stdout)
    n = len(base_manifest["layers"])
    assert manifest["layers"][:n] == base_manifest["layers"]
    assert len(manifest["layers"]) == n + len(built["layers"])


def test_base_from_another_registry_is_streamed_through(busybox_base, registry, llama_dir, podman_env, capsys):
    other = start_registry()
    try:
        ref = f"{other.host}/serve/llama:v1"
        assert main(["build", str(llama_dir), "--base", busybox_base, "--push", ref]) == 0
        capsys.readouterr()
        info = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}").stdout)
        base = json.loads(run("skopeo", "inspect", "--tls-verify=false", f"docker://{busybox_base}").stdout)
        assert info["Layers"][: len(base["Layers"])] == base["Layers"]
        image = run("podman", "pull", "-q", "--tls-verify=false", ref, env=podman_env).stdout.strip()
        try:
            seen = run_sha256sums(image, podman_env)
        finally:
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=podman_env)
        assert seen["tokenizer.json"] == sha256(llama_dir / "tokenizer.json")
    finally:
        other.stop()


def test_base_layers_count_toward_the_limit(base_layout, llama_dir, capsys):
    from modelimage.job import Options, prepare
    from modelimage.plan import PlanSettings

    job = prepare(str(llama_dir), Options(base=base_layout))
    assert job.plan_settings.base_layers == len(job.base.layers) >= 1
    assert main(["plan", str(llama_dir), "--base", base_layout, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["max_layers"] == PlanSettings().max_layers - len(job.base.layers)
