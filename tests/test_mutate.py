"""Model images on a base image: offline from an OCI layout, and across
registries (base layers streamed through), then run to check the files."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def removed_after(image: str, env: dict) -> Iterator[str]:
    """``image`` (podman's storage is shared: unique names), removed from it when the block ends."""
    try:
        yield image
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=env)


@contextmanager
def pulled(source: str, env: dict, *flags: str) -> Iterator[str]:
    """``podman pull`` of ``source``: the image ID, removed again when the block ends."""
    with removed_after(run("podman", "pull", "-q", *flags, source, env=env).stdout.strip(), env) as image:
        yield image


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
    with pulled(f"oci:{out}:v1", podman_env) as image:
        seen = run_sha256sums(image, podman_env)
        config = json.loads(run("podman", "image", "inspect", image, env=podman_env).stdout)[0]
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
        with pulled(ref, podman_env, "--tls-verify=false") as image:
            seen = run_sha256sums(image, podman_env)
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


@pytest.fixture(scope="module")
def docker_base(busybox_base, registry, podman_env) -> str:
    """The busybox base pushed again by podman as a Docker schema 2 image
    (``podman push --format v2s2``): Docker media types throughout."""
    ref = f"{registry.host}/base/busybox-v2s2:latest"
    with pulled(busybox_base, podman_env, "--tls-verify=false") as image:
        run("podman", "push", "-q", "--tls-verify=false", "--format", "v2s2", image, ref, env=podman_env)
    manifest = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    return ref


def test_docker_schema2_base_gives_an_oci_manifest_throughout(docker_base, registry, llama_dir, tmp_path,
                                                              podman_env, capsys):
    """Issue 15 item 3: the manifest on a v2s2 base lists the base's layers
    with their OCI media types, so skopeo converts it to docker-archive."""
    ref = f"{registry.host}/serve/on-v2s2:v1"
    assert main(["build", str(llama_dir), "--base", docker_base, "--push", ref]) == 0
    capsys.readouterr()
    manifest = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    base = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{docker_base}").stdout)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert {d["mediaType"] for d in manifest["layers"]} <= {"application/vnd.oci.image.layer.v1.tar",
                                                           "application/vnd.oci.image.layer.v1.tar+gzip"}
    n = len(base["layers"])
    assert [d["digest"] for d in manifest["layers"][:n]] == [d["digest"] for d in base["layers"]]
    archive = tmp_path / "docker.tar"
    run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"docker-archive:{archive}:serve/x:v1")
    loaded = run("podman", "load", "-q", "-i", str(archive), env=podman_env).stdout.strip().rsplit(" ", 1)[-1]
    with removed_after(loaded, podman_env) as image:
        seen = run_sha256sums(image, podman_env)
    assert seen["tokenizer.json"] == sha256(llama_dir / "tokenizer.json")


def test_base_keeps_config_fields_it_does_not_know(base_layout, llama_dir, tmp_path, capsys):
    """go-containerregistry's mutate keeps the whole config: so does --base."""
    from modelimage.mutate import load_base

    base = load_base(base_layout, None)
    assert main(["build", str(llama_dir), "--base", base_layout, "-o", f"oci:{tmp_path / 'o'}:v1", "--json"]) == 0
    capsys.readouterr()
    config = json.loads(run("skopeo", "inspect", "--config", "--raw", f"oci:{tmp_path / 'o'}:v1").stdout)
    for key in set(base.config) - {"created", "history", "rootfs", "config"}:
        assert config[key] == base.config[key], key
    assert config["rootfs"]["diff_ids"][: len(base.layers)] == base.config["rootfs"]["diff_ids"]
    assert config["history"][: len(base.config["history"])] == base.config["history"]


def test_an_artifact_is_not_a_base(llama_dir, tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["build", str(llama_dir), "--format", "modelpack", "-o", f"oci:{art}:mp"]) == 0
    capsys.readouterr()
    assert main(["build", str(llama_dir), "--base", f"oci:{art}:mp", "-o", f"oci:{tmp_path / 'out'}:v1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --base oci:{art}:mp: its config is application/vnd.cncf.model.config.v1+json")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_base_from_an_oci_archive_streams_from_the_tar(busybox_base, llama_dir, tmp_path, podman_env, capsys):
    """--base oci-archive:FILE: the base's blobs are read from their offsets
    in the tar (nothing extracted beside it) and the result runs."""
    archive = tmp_path / "base" / "busybox.tar"
    archive.parent.mkdir()
    run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{busybox_base}", f"oci-archive:{archive}")
    out = tmp_path / "out"
    assert main(["build", str(llama_dir), "--base", f"oci-archive:{archive}", "-o", f"oci:{out}:v1"]) == 0
    capsys.readouterr()
    assert [p.name for p in archive.parent.iterdir()] == ["busybox.tar"]
    with pulled(f"oci:{out}:v1", podman_env) as image:
        seen = run_sha256sums(image, podman_env)
    assert seen["config.json"] == sha256(llama_dir / "config.json")


def test_a_base_of_another_platform_is_refused_when_one_is_asked_for(base_layout, llama_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", str(llama_dir), "--base", base_layout, "--platform", "linux/arm64",
                 "-o", f"oci:{out}:v1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --base {base_layout} is a linux/amd64 image, not linux/arm64: the model would run "
                   "where its base runs; choose a linux/arm64 base, or drop --platform")
    assert not out.exists()
    assert main(["build", str(llama_dir), "--base", base_layout, "--platform", "linux/x86_64",
                 "-o", f"oci:{out}:v1"]) == 0  # the same platform, another name


# ---------------------------------------------------------------- an adapter on its base model's image (issue 22)


def test_adapter_on_its_base_model_image(registry, tmp_path, capsys):
    """``build ADAPTER --base BASE_MODEL_IMAGE``: one image whose pull yields
    the base model and the adapter together, whose manifest records the base
    by digest and name, and whose push uploads only the adapter's layers (the
    base's are mounted from its repository); render k8s passes the adapter to
    vLLM beside the base model."""
    import io
    import re
    from contextlib import redirect_stdout

    from modelimage import synth
    from modelimage.mutate import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME
    from modelimage.pull import pull

    from . import upstream
    from .tools import SMALL

    base_dir = synth.write_llama_safetensors(tmp_path / "tiny", SMALL, shards=1)
    base_ref = f"{registry.host}/models/tiny:v1"
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["build", str(base_dir), "--push", base_ref, "--json"]) == 0
    base = json.loads(out.getvalue())
    adapter_dir = synth.write_peft_adapter(tmp_path / "tiny-lora", SMALL, rank=32, base="models/tiny")
    ref = f"{registry.host}/adapters/tiny-lora:v1"
    before = registry.log.read_text(errors="replace")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["build", str(adapter_dir), "--base", base_ref, "--push", ref, "--json"]) == 0
    built = json.loads(out.getvalue())
    capsys.readouterr()
    log = registry.log.read_text(errors="replace")[len(before):]
    # every blob upload the registry completed (PUT .../blobs/uploads/UUID?...digest=...)
    uploaded = set(re.findall(r'uri="/v2/adapters/tiny-lora/blobs/uploads/[^"]*digest=(sha256:[0-9a-f]{64})"', log))
    base_blobs = {layer["digest"] for layer in base["layers"]}
    adapter_blobs = {layer["digest"] for layer in built["layers"]}
    assert uploaded == adapter_blobs | {built["config"]}, (uploaded, adapter_blobs)
    assert not uploaded & base_blobs, "a base layer was uploaded again"
    assert len(re.findall(r'uri="/v2/adapters/tiny-lora/blobs/uploads/\?[^"]*mount=', log)) == len(base_blobs)

    manifest = json.loads(run(need("skopeo"), "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    ann = manifest["annotations"]
    assert ann[ANNOTATION_BASE_DIGEST] == base["digest"] and ann[ANNOTATION_BASE_NAME] == base_ref
    assert ann["dev.modelimage.target"] == "/models/tiny"
    assert [layer["digest"] for layer in manifest["layers"][:len(base["layers"])]] == [
        layer["digest"] for layer in base["layers"]]

    # one pull: the base model and its adapter, each loadable by its loader's rules
    dest = tmp_path / "dest"
    pull(ref, dest)
    assert (dest / "config.json").is_file() and (dest / "adapters" / "tiny-lora" / "adapter_config.json").is_file()
    state = upstream.transformers_load(dest)
    assert "model.embed_tokens.weight" in state
    config, tensors = upstream.peft_load(dest / "adapters" / "tiny-lora")
    assert config["r"] == 32 and tensors

    # render k8s: vLLM gets the base model and the adapter
    assert main(["render", "k8s", str(adapter_dir), "--base", base_ref, "--image", ref]) == 0
    import yaml

    doc = yaml.safe_load(capsys.readouterr().out)
    (server,) = doc["spec"]["template"]["spec"]["containers"]
    args = server["args"]
    assert args[:2] == ["--model", "/models/tiny"]
    assert args[args.index("--lora-modules") + 1] == "tiny-lora=/models/tiny/adapters/tiny-lora"
    assert args[args.index("--max-lora-rank") + 1] == "32"
    assert server["volumeMounts"][0]["subPath"] == "models/tiny"


def test_a_base_without_history_gets_entries_for_its_layers(llama_dir, tmp_path, capsys):
    """History is optional; a base without it (crane, hand-made layouts)
    gets one entry per layer, as BuildKit adds them, so the history lines up
    with the layers and names the model's (what pull and inspect rely on
    when a copy drops the layer annotations)."""
    import gzip

    from modelimage.image import open_image
    from modelimage.pull.schedule import model_layers

    from .pullkit import info, layout, tar_of

    base = layout(tmp_path / "base", [gzip.compress(tar_of([(info(f"bin/t{i}"), b"x")])) for i in (1, 2)])
    assert main(["build", str(llama_dir), "--base", base, "-o", f"oci:{tmp_path / 'out'}:v1", "-q"]) == 0
    capsys.readouterr()
    image = open_image(f"oci:{tmp_path / 'out'}:v1")
    n = len(image.layers)
    assert len(image.config["history"]) == n
    assert model_layers(image.config, n) == set(range(2, n))
    image.close()
