"""``modelimage render``: what each kind writes really works with the tool
that reads it. The Dockerfile is built by podman, the Makefile include is
run by make, the Kubernetes manifests are checked against the Kubernetes
schemas and the client's models (and the init-container copy is run by
podman), the workflow is parsed as YAML.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

import pytest
import yaml
from click.testing import CliRunner, Result

from modelimage import render as rd
from modelimage import synth
from modelimage.build import model_facts
from modelimage.cli import cli, main
from modelimage.errors import ModelImageError
from modelimage.job import Options, prepare
from modelimage.tarstream import DIR_MODE, FILE_MODE
from modelimage.units import parse_size

from .tools import SMALL, need, run

ROOT = Path(__file__).parent.parent
EXAMPLE_REPO = ROOT / "examples" / "inference-repo"
IMAGE = "ghcr.io/acme/models/tiny-llama:v1"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rendered(*args: str) -> str:
    result = invoke("render", *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("render-models")
    synth.write_llama_safetensors(base / "llama", SMALL, shards=2)
    synth.write_diffusers(base / "sd")
    synth.write_llama_gguf(base / "gguf" / "tiny-Q4_K_M.gguf", SMALL)
    return base


@pytest.fixture(autouse=True)
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No modelimage.toml of the repository's in the way; no ambient epoch."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_kind(flag: str) -> None:
    result = invoke("render", flag)
    assert result.exit_code == 0
    for kind in rd.KINDS:
        assert kind in result.stdout
    for option in ("--output", "--no-link", "--image", "--serve-image", "--fallback", "--gpus", "--action"):
        assert option in result.stdout


def test_help_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--help"]) == 0
    assert "KIND is one of" in capsys.readouterr().out


def test_output_file_is_written_atomically(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "Dockerfile"
    out.write_text("old\n")
    result = invoke("render", "dockerfile", str(models / "llama"), "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert out.read_text() == rendered("dockerfile", str(models / "llama")).replace("-f Dockerfile ", f"-f {out} ")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["Dockerfile"]  # no temporary file left


def test_output_into_a_missing_folder_is_one_line(models: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "makefile", "-o", str(tmp_path / "nope" / "modelimage.mk")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nope" in err


def test_kinds_that_read_a_model_need_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "dockerfile"]) == 2
    assert "needs a SOURCE or NAME" in capsys.readouterr().err


def test_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "helm", "x"]) == 2
    assert "helm" in capsys.readouterr().err


# ---------------------------------------------------------------- dockerfile


def test_dockerfile_one_copy_per_layer(models: Path) -> None:
    job = prepare(str(models / "sd"))
    plan = job.plan()
    text = rendered("dockerfile", str(models / "sd"), "--builder", "docker")
    final = text.split("\nFROM scratch\n", 1)[1]
    copies = [line for line in final.splitlines() if line.startswith("COPY")]
    assert len(copies) == len(plan.layers)
    assert all(c.startswith("COPY --link ") for c in copies)
    # the files layer spans folders: gathered in a stage at full paths, copied as one layer
    assert "COPY --link --from=layer-5 / /" in copies  # keeps the stage's modes (dirs 755)
    assert 'COPY --chmod=644 ["tokenizer/vocab.json", "/models/sd/tokenizer/vocab.json"]' in text
    # every file gets build's mode: --chmod on each COPY of files, none on the stage copy of folders
    assert all("--chmod=644" in c for c in copies if "--from=" not in c)
    assert f"docker build -t sd:latest -f Dockerfile {models / 'sd'}" in text
    assert "WORKDIR /models/sd" in text


def test_dockerfile_no_link(models: Path) -> None:
    text = rendered("dockerfile", str(models / "llama"), "--no-link")
    assert "COPY --link" not in text
    assert "podman build" in text


def test_dockerfile_refuses_a_plan_that_reshards(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "dockerfile", str(models / "llama"), "--max-layer-size", "1MB"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model-00001-of-00002.safetensors" in err and "model-00002-of-00002.safetensors" in err
    assert "`modelimage build`" in err and "--max-layer-size 2MB" in err


def test_dockerfile_refuses_names_copy_would_glob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = synth.write_llama_safetensors(tmp_path / "m", SMALL, shards=1)
    (model / "notes[1].txt").write_text("x")
    assert main(["render", "dockerfile", str(model)]) == 1
    err = capsys.readouterr().err
    assert "notes[1].txt" in err and "modelimage build" in err


@pytest.fixture(scope="module")
def podman_image(models: Path, podman_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The diffusers model built by podman from `render dockerfile` (podman
    is on PATH: the builder found there, issue 16); yields (tag, plan, saved
    OCI layout folder)."""
    need("podman")
    ctx = models / "sd"
    for p in ctx.rglob("*"):  # as safetensors 0.8 writes them (issue 22, input 4)
        if p.is_file():
            p.chmod(0o600)
    dockerfile = tmp_path_factory.mktemp("dockerfile") / "Dockerfile.sd"
    result = invoke("render", "dockerfile", str(ctx), "-o", str(dockerfile))
    assert result.exit_code == 0, result.stderr
    assert "rendered for podman (found on PATH" in result.stderr
    # the header's build command names this file and the model folder
    assert f"#   podman build -t sd:latest -f {dockerfile} {ctx}\n" in dockerfile.read_text()
    tag = f"localhost/modelimage-render-test:{os.getpid()}"
    run("podman", "build", "-q", "--no-cache", "-t", tag, "-f", dockerfile, ctx, env=podman_env)
    saved = tmp_path_factory.mktemp("saved") / "oci"
    run("podman", "save", "--format", "oci-dir", "-o", saved, tag, env=podman_env)
    yield tag, prepare(str(ctx)).plan(), saved
    subprocess.run(["podman", "rmi", "-f", tag], env=podman_env, capture_output=True)


def _executables(folder: Path, *names: str) -> str:
    folder.mkdir()
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_the_builder_is_the_one_on_path(models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """podman or buildah when one is there (their Dockerfile builds with docker
    too), else docker; --builder chooses; --no-link wins over the builder."""
    for i, (names, expected) in enumerate([((), ("docker", False)), (("docker",), ("docker", True)),
                                           (("docker", "podman"), ("podman", True)),
                                           (("docker", "buildah"), ("buildah", True))]):
        assert rd.detect_builder(_executables(tmp_path / str(i), *names)) == expected
    monkeypatch.setenv("PATH", str(tmp_path / "1"))  # docker only
    result = invoke("render", "dockerfile", str(models / "llama"), "-o", str(tmp_path / "Dockerfile.docker"))
    text = (tmp_path / "Dockerfile.docker").read_text()
    assert f"#   docker build -t llama:latest -f {tmp_path / 'Dockerfile.docker'} " in text
    assert "\nCOPY --link --chmod=644 " in text and "rendered for docker (found on PATH" in result.stderr
    for builder, command, link in [("buildkit", "docker buildx build", True), ("podman", "podman build", False),
                                   ("buildah", "buildah build", False)]:
        text = rendered("dockerfile", str(models / "llama"), "--builder", builder)
        assert f"#   {command} -t llama:latest -f Dockerfile " in text
        assert ("\nCOPY --link " in text) == link, builder
    assert "\nCOPY --link " not in rendered("dockerfile", str(models / "llama"), "--builder", "docker", "--no-link")


def test_podman_builds_the_planned_layers(podman_image, models: Path, podman_env: dict[str, str]) -> None:
    tag, plan, saved = podman_image
    inspect = json.loads(run("podman", "inspect", tag, env=podman_env).stdout)[0]
    assert len(inspect["RootFS"]["Layers"]) == len(plan.layers)
    job = prepare(str(models / "sd"))
    labels = inspect["Config"]["Labels"]
    for key, value in model_facts(job.model, "/models/sd").items():
        assert labels[key] == value
    assert inspect["Config"]["WorkingDir"] == "/models/sd"

    index = json.loads((saved / "index.json").read_text())
    manifest = json.loads((saved / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    assert len(manifest["layers"]) == len(plan.layers)
    for layer, planned in zip(manifest["layers"], plan.layers, strict=True):
        with tarfile.open(saved / "blobs" / "sha256" / layer["digest"][7:]) as tar:
            files = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
            assert set(files) == {e.path for e in planned.entries}  # the planner's grouping
            # the modes `modelimage build` gives (COPY --chmod=644), whatever the folder had (0600)
            assert {m.name: oct(m.mode & 0o7777) for m in files.values()} == {
                m.name: oct(FILE_MODE) for m in files.values()}
            dirs = [m for m in tar.getmembers() if m.isdir()]
            assert all(m.mode & 0o7777 == DIR_MODE for m in dirs), [(m.name, oct(m.mode)) for m in dirs]
            for e in planned.entries:
                source = models / "sd" / e.content.name
                data = tar.extractfile(files[e.path])
                assert data is not None
                assert hashlib.sha256(data.read()).hexdigest() == sha256(source), e.path


# ---------------------------------------------------------------- dockerfile-consumer


def test_consumer_copies_the_model_folder(models: Path) -> None:
    text = rendered("dockerfile-consumer", str(models / "llama"), "--image", IMAGE, "--serve-image", "srv:1",
                    "--builder", "buildkit")
    assert "FROM srv:1\n" in text
    assert f"COPY --link --from={IMAGE} /models/llama /models/llama\n" in text
    plain = rendered("dockerfile-consumer", str(models / "llama"), "--image", IMAGE, "--builder", "podman")
    assert f"COPY --from={IMAGE} /models/llama /models/llama\n" in plain


def test_consumer_warns_when_one_copy_is_over_the_layer_limit(models: Path) -> None:
    result = invoke("render", "dockerfile-consumer", str(models / "llama"), "--image", IMAGE,
                    "--max-layer-size", "2MB")
    assert result.exit_code == 0, result.stderr
    assert "warning: COPY --from makes one layer" in result.stderr
    assert "--base vllm/vllm-openai:latest" in result.stderr
    assert "# WARNING: COPY --from makes one layer" in result.stdout


def test_consumer_and_k8s_need_the_model_image(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("dockerfile-consumer", "k8s"):
        assert main(["render", kind, str(models / "llama")]) == 1
        err = capsys.readouterr().err
        assert "--image REF" in err and err.count("\n") == 1


def test_the_image_comes_from_modelimage_toml(models: Path, tmp_path: Path) -> None:
    (tmp_path / "modelimage.toml").write_text(f'[models.llama]\nsource = "{models / "llama"}"\nimage = "{IMAGE}"\n')
    assert f"--from={IMAGE} " in rendered("dockerfile-consumer", "llama")


# ---------------------------------------------------------------- k8s


def k8s_doc(*args: str) -> dict:
    return yaml.safe_load(rendered("k8s", *args))


def validate(doc: dict, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, version, strict=True)


def deployment(doc: dict):
    """The manifest as the Kubernetes client's V1Deployment (its models check
    types and required fields)."""
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(doc, "V1Deployment")


def test_k8s_image_volume(models: Path) -> None:
    import kubernetes_validate
    from kubernetes.client import V1ImageVolumeSource

    text = rendered("k8s", str(models / "llama"), "--image", IMAGE)
    assert "Kubernetes >= 1.33" in text and "on by default\n# from 1.35" in text
    doc = yaml.safe_load(text)
    validate(doc, "1.33.0")
    validate(doc, "1.35.0")
    with pytest.raises(kubernetes_validate.ValidationError, match="image"):
        validate(doc, "1.30.0")  # before image volumes: the schema says no
    assert {"reference", "pull_policy"} <= set(V1ImageVolumeSource.attribute_map)
    dep = deployment(doc)
    (volume,) = dep.spec.template.spec.volumes
    assert isinstance(volume.image, V1ImageVolumeSource)
    assert (volume.image.reference, volume.image.pull_policy) == (IMAGE, "IfNotPresent")
    (server,) = dep.spec.template.spec.containers
    (mount,) = server.volume_mounts
    assert (mount.name, mount.mount_path, mount.sub_path, mount.read_only) == \
        (volume.name, "/models/llama", "models/llama", True)
    assert server.image == rd.DEFAULT_SERVE_IMAGE
    assert server.args[:2] == ["--model", "/models/llama"]
    assert server.resources.limits == {"nvidia.com/gpu": "1"}


def test_k8s_options(models: Path) -> None:
    doc = k8s_doc(str(models / "gguf"), "--image", "r.example.com/m:latest", "--serve-image", "srv:2",
                  "--gpus", "0", "--port", "9000", "--target", "/weights/tiny")
    validate(doc, "1.33.0")
    spec = doc["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    assert server["image"] == "srv:2" and "resources" not in server
    assert server["args"][:2] == ["--model", "/weights/tiny/tiny-Q4_K_M.gguf"]  # a single GGUF: the file
    assert server["ports"][0]["containerPort"] == 9000
    assert spec["volumes"][0]["image"]["pullPolicy"] == "Always"  # :latest, as Kubernetes would
    assert server["volumeMounts"][0]["subPath"] == "weights/tiny"


def test_k8s_names_are_dns_labels() -> None:
    assert rd.dns_label("Llama_3.1-8B") == "llama-3-1-8b"
    assert rd.dns_label("__") == "model"
    assert len(rd.dns_label("x" * 100)) == 63


def test_k8s_init_container_fallback(models: Path) -> None:
    text = rendered("k8s", str(models / "llama"), "--image", IMAGE, "--fallback", "init-container")
    assert "no shell, no cp" in text
    doc = yaml.safe_load(text)
    for version in ("1.27.0", "1.30.0", "1.35.0"):
        validate(doc, version)
    dep = deployment(doc)
    spec = dep.spec.template.spec
    copier, model = spec.init_containers
    assert copier.image == rd.DEFAULT_COPIER_IMAGE and model.image == IMAGE
    assert model.command[0] == f"{rd.TOOLS_DIR}/busybox"
    volumes = {v.name: v for v in spec.volumes}
    assert all(v.empty_dir is not None and v.image is None for v in volumes.values())
    (server,) = spec.containers
    (mount,) = server.volume_mounts
    assert mount.mount_path == "/models/llama" and mount.read_only and mount.sub_path is None
    assert {m.name for m in model.volume_mounts} == set(volumes) and mount.name in volumes


def test_init_container_copy_runs_in_a_from_scratch_image(podman_image, models: Path, tmp_path: Path,
                                                          podman_env: dict[str, str]) -> None:
    """Run the fallback's two init containers the way a kubelet would, with
    podman: the copier puts a static busybox into the tools volume, then
    the FROM-scratch model image runs it to copy the model out."""
    tag, plan, _ = podman_image
    busybox = Path(need("busybox"))  # Debian's busybox-static: a static binary, like the musl image's
    doc = k8s_doc(str(models / "sd"), "--image", tag, "--fallback", "init-container")
    spec = doc["spec"]["template"]["spec"]
    copier, model = spec["initContainers"]
    volumes = {v["name"]: tmp_path / v["name"] for v in spec["volumes"]}
    for folder in volumes.values():
        folder.mkdir()
    # 1. the copier (busybox:musl here is Debian's static busybox)
    assert copier["command"][:3] == ["/bin/busybox", "cp", "/bin/busybox"]
    (tools,) = copier["volumeMounts"]
    shutil.copy(busybox, volumes[tools["name"]] / Path(copier["command"][3]).relative_to(tools["mountPath"]))
    # 2. the model image, with the command and mounts of the manifest
    mounts = []
    for m in model["volumeMounts"]:
        mounts += ["-v", f"{volumes[m['name']]}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}"]
    run("podman", "run", "--rm", "--network=none", *mounts, "--entrypoint", model["command"][0], tag,
        *model["command"][1:], env=podman_env)
    # 3. what the server would mount
    (server,) = spec["containers"]
    (served,) = server["volumeMounts"]
    copied = volumes[served["name"]]
    assert served["mountPath"] == "/models/sd"
    want = {e.content.name for e in plan.files}
    assert {str(p.relative_to(copied)) for p in copied.rglob("*") if p.is_file()} == want
    for name in want:
        assert sha256(copied / name) == sha256(models / "sd" / name), name


# ---------------------------------------------------------------- github-action


def test_github_workflow_uses_the_action(models: Path, tmp_path: Path) -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    (tmp_path / "modelimage.toml").write_text(f'[models.llama]\nsource = "{models / "llama"}"\nimage = "{IMAGE}"\n')
    doc = yaml.safe_load(rendered("github-action", "llama", "--max-layer-size", "5MB"))
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "workflow_dispatch" in on and on["push"]["paths"] == ["modelimage.toml"]
    assert doc["permissions"] == {"contents": "read", "packages": "write"}
    steps = doc["jobs"]["model-image"]["steps"]
    (step,) = [s for s in steps if s.get("id") == "modelimage"]
    assert step["uses"] == rd.DEFAULT_ACTION
    assert set(step["with"]) <= set(action["inputs"])
    assert {k for k, v in action["inputs"].items() if v.get("required")} <= set(step["with"])
    assert step["with"]["model"] == "llama" and step["with"]["max-layer-size"] == "5000000"
    assert step["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    assert step["with"]["registry"] == "ghcr.io" and step["with"]["push"] == "true"
    used = steps[-1]["env"]
    assert used["REFERENCE"] == "${{ steps.modelimage.outputs.reference }}"


def test_github_workflow_other_registry_and_a_path(models: Path) -> None:
    doc = yaml.safe_load(rendered("github-action", str(models / "llama"), "--image", "quay.io/acme/llama:v1",
                                  "--action", "acme/modelimage@v2"))
    step = doc["jobs"]["model-image"]["steps"][1]
    assert step["uses"] == "acme/modelimage@v2"
    assert step["with"]["username"] == "${{ secrets.REGISTRY_USERNAME }}"
    assert step["with"]["password"] == "${{ secrets.REGISTRY_PASSWORD }}"
    assert step["with"]["image"] == "quay.io/acme/llama:v1" and "config" not in step["with"]
    assert doc["permissions"] == {"contents": "read"}
    assert doc.get("on", doc.get(True))["push"]["paths"] == [f"{models / 'llama'}/**"]


def test_github_workflow_signs_with_a_secret(models: Path) -> None:
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    text = rendered("github-action", str(models / "llama"), "--image", "quay.io/acme/llama:v1", "--sign")
    step = yaml.safe_load(text)["jobs"]["model-image"]["steps"][1]
    assert step["with"]["signing-key"] == "${{ secrets.MODELIMAGE_SIGNING_KEY }}"
    assert set(step["with"]) <= set(action["inputs"]) and "MODELIMAGE_SIGNING_KEY" in text.split("name:", 1)[0]
    unsigned = yaml.safe_load(rendered("github-action", str(models / "llama"), "--image", "quay.io/acme/llama:v1"))
    assert "signing-key" not in unsigned["jobs"]["model-image"]["steps"][1]["with"]


def test_github_workflow_needs_somewhere_to_push(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "github-action", str(models / "llama")]) == 1
    assert "--image REF" in capsys.readouterr().err


# ---------------------------------------------------------------- makefile and the examples


def test_examples_are_what_render_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLE_REPO)
    assert (EXAMPLE_REPO / "modelimage.mk").read_text() == rendered("makefile")
    assert (ROOT / "examples" / "github-workflow.yml").read_text() == rendered("github-action", "tiny-llama")


def test_makefile_targets_run(tmp_path: Path, registry) -> None:
    """The example inference repo with a freshly rendered modelimage.mk:
    make builds an OCI layout (read back by skopeo) and pushes."""
    need("make")
    skopeo = need("skopeo")
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_REPO, repo, ignore=shutil.ignore_patterns("build", "models"))
    (repo / "modelimage.mk").unlink()
    mi = str(Path(sys.executable).parent / "modelimage")
    result = invoke("render", "makefile", "-o", str(repo / "modelimage.mk"))
    assert result.exit_code == 0, result.stderr
    run(mi, "example-model", repo / "models" / "tiny-llama", "--shards", "2", "--seed", "1", cwd=repo)
    make = ["make", "-s", f"MODELIMAGE={mi}"]
    plan = run(*make, "model-plan", cwd=repo).stdout
    assert "tiny-llama: 3 layers" in plan
    run(*make, "model-build", "OUT=oci:out:v1", cwd=repo)
    inspect = json.loads(run(skopeo, "inspect", f"oci:{repo / 'out'}:v1").stdout)
    assert len(inspect["Layers"]) == 3
    assert inspect["Labels"]["dev.modelimage.name"] == "tiny-llama"
    ref = f"{registry.host}/inference/tiny-llama:v1"
    pushed = run(*make, "model-push", f"IMAGE={ref}", cwd=repo).stdout.strip().splitlines()[-1]
    remote = json.loads(run(skopeo, "inspect", "--tls-verify=false", f"docker://{ref}").stdout)
    assert pushed == f"{registry.host}/inference/tiny-llama@{remote['Digest']}"
    assert remote["Layers"] == inspect["Layers"]
    assert "tiny-llama" in run(*make, "model-inspect", cwd=repo).stdout
    failed = subprocess.run([*make, "model-build", "MODEL="], cwd=repo, capture_output=True, text=True)
    assert failed.returncode != 0 and "set MODEL=NAME" in failed.stderr


def test_render_model_api(models: Path) -> None:
    """The Python API the command calls."""
    out = rd.render_model("k8s", str(models / "llama"), Options(), rd.RenderSettings(image=IMAGE, gpus=2))
    assert out.warnings == ()
    assert 'nvidia.com/gpu: "2"' in out.text


# ---------------------------------------------------------------- paths: only what the image holds (issue 14)

LLAMA_CPP = "ghcr.io/ggml-org/llama.cpp:server"


@pytest.fixture(scope="module")
def path_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("path-models")
    synth.write_llama_safetensors(base / "st", SMALL, shards=2)
    synth.write_llama_gguf(base / "gg" / "tiny-Q4_K_M.gguf", SMALL)
    synth.write_llama_gguf(base / "mm" / "tiny-Q4_K_M.gguf", SMALL)
    synth.write_mmproj(base / "mm" / "mmproj-tiny-f16.gguf", hidden=64, blocks=1)
    synth.write_llama_gguf(base / "lora" / "tiny-Q4_K_M.gguf", SMALL)
    synth.write_gguf_lora(base / "lora" / "tiny-lora-f16.gguf", SMALL, rank=4)
    synth.write_llama_safetensors(base / "peft", SMALL, shards=1)
    synth.write_peft_adapter(base / "peft" / "adapter", SMALL, rank=32)
    return base


def _named_paths(text: str, root: str) -> set[str]:
    """Every path under the model's root that ``text`` names (with or without
    the leading /), as root-relative paths ("" for the root itself)."""
    found = set()
    for m in re.finditer(rf"/?{re.escape(root)}(/[^\s\"',\]\\`|]*)?", text):
        rel = (m.group(1) or "").strip("/")
        found.add("" if rel in ("", ".") else rel.removesuffix("/."))
    return found


def _check_named(text: str, plan) -> set[str]:
    root = plan.settings.root
    files = {e.content.name for e in plan.files}
    dirs = {""} | {str(PurePosixPath(n).parent) for n in files for _ in [0]} | {
        "/".join(n.split("/")[:i]) for n in files for i in range(1, n.count("/") + 1)}
    named = _named_paths(text, root)
    for rel in named:
        assert rel in files or rel in dirs, f"{rel!r} is not in the image (files: {sorted(files)[:8]}...)"
    return named


@pytest.mark.parametrize("limit", ["10GB", "600KB"], ids=["whole", "split"])
@pytest.mark.parametrize("model", ["st", "gg", "mm", "lora", "peft"])
def test_every_kind_names_only_files_the_image_holds(path_models: Path, model: str, limit: str,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each kind, rendered for split and unsplit models, names only paths
    the built image holds; a kind that cannot (a Dockerfile for a resharded
    plan, vLLM for a split GGUF) refuses in one line instead."""
    src = str(path_models / model)
    job = prepare(src, Options(max_layer_size=parse_size(limit)))
    try:
        plan = job.plan()
    except ModelImageError:  # the PEFT adapter cannot be split: every kind that plans refuses
        assert main(["render", "k8s", src, "--max-layer-size", limit, "--image", IMAGE]) == 1
        assert "cannot be split" in capsys.readouterr().err
        return
    texts = {}
    for kind, extra in [("dockerfile", ()), ("dockerfile-consumer", ("--image", IMAGE)),
                        ("k8s", ("--image", IMAGE)), ("k8s", ("--image", IMAGE, "--serve-image", LLAMA_CPP)),
                        ("k8s", ("--image", IMAGE, "--fallback", "init-container", "--serve-image", LLAMA_CPP)),
                        ("github-action", ("--image", IMAGE)), ("makefile", ())]:
        rc = main(["render", kind, src, "--max-layer-size", limit, *extra])
        out, err = capsys.readouterr()
        if rc == 0:
            texts[(kind, *extra)] = out
        else:
            assert err.count("\n") == 1 and err.startswith("error: "), err
    assert [k for k in texts if k[0] == "k8s"], "some server takes it"
    for key, text in texts.items():
        named = _check_named(text, plan)
        if key[0] in ("k8s", "dockerfile", "dockerfile-consumer"):
            assert "" in named, key  # the model's folder, at least
        if key[0] == "dockerfile":  # COPY ["src", ..., "dest"]: the sources are the plan's files, each once
            sources = [src for line in text.splitlines() if line.startswith("COPY") and "[" in line
                       for src in json.loads(line[line.index("["):])[:-1]]
            assert sorted(sources) == sorted(e.content.name for e in plan.files)
    # the summary of a real build of the same plan
    from modelimage.build import build_image
    from modelimage.layout import LayoutRef, open_sink
    from modelimage.summary import summarize

    ref = LayoutRef.parse(f"oci:{tmp_path / 'out'}:v1")
    result = build_image(job.model, plan, open_sink(ref), settings=job.image_settings, reference=str(ref))
    md = summarize(result.to_json(), model=job.model, target="/" + plan.settings.root)
    layers_md = md.split("#### Layers", 1)[1].split("####", 1)[0]
    shown = set(re.findall(r"`([^`]+)`", layers_md)) - {t for t in re.findall(r"`([^`]+)`", layers_md)
                                                          if t.startswith("sha256:")}
    files = {e.content.name for e in plan.files}
    assert shown and all(s in files or s.endswith("…") for s in shown), shown


def test_k8s_points_at_the_first_split_of_a_split_gguf(path_models: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14, input 4: --model named the unsplit file, which the image
    does not hold. llama.cpp gets the first split; vLLM, which loads only
    single-file GGUF, is refused with what works instead."""
    src = str(path_models / "gg")
    doc = k8s_doc(src, "--image", IMAGE, "--serve-image", LLAMA_CPP, "--max-layer-size", "600KB")
    (server,) = doc["spec"]["template"]["spec"]["containers"]
    args = server["args"]
    model = args[args.index("-m") + 1]
    assert re.fullmatch(r"/models/gg/tiny-Q4_K_M-00001-of-000\d\d\.gguf", model), model
    plan = prepare(src, Options(max_layer_size=600_000)).plan()
    assert model.lstrip("/") in {e.path for e in plan.files}
    assert main(["render", "k8s", src, "--image", IMAGE, "--max-layer-size", "600KB"]) == 1
    err = capsys.readouterr().err.strip()
    assert "vLLM loads only single-file GGUF" in err and "--max-layer-size" in err and LLAMA_CPP in err, err
    m = re.search(r"--max-layer-size (\S+) to keep it whole", err)
    assert m
    whole = k8s_doc(src, "--image", IMAGE, "--max-layer-size", m.group(1))
    assert whole["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "--model", "/models/gg/tiny-Q4_K_M.gguf"]


def test_k8s_passes_projectors_and_adapters(path_models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """llama.cpp: --mmproj and --lora with their paths in the image; vLLM:
    --enable-lora --lora-modules NAME=FOLDER (and --max-lora-rank over 16)."""
    doc = k8s_doc(str(path_models / "mm"), "--image", IMAGE, "--serve-image", LLAMA_CPP)
    args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--mmproj") + 1] == "/models/mm/mmproj-tiny-f16.gguf"
    assert args[args.index("-m") + 1] == "/models/mm/tiny-Q4_K_M.gguf"
    doc = k8s_doc(str(path_models / "lora"), "--image", IMAGE, "--serve-image", LLAMA_CPP)
    args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--lora") + 1] == "/models/lora/tiny-lora-f16.gguf"
    doc = k8s_doc(str(path_models / "peft"), "--image", IMAGE)
    args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["--model", "/models/peft"]
    assert "--enable-lora" in args and args[args.index("--lora-modules") + 1] == "adapter=/models/peft/adapter"
    assert args[args.index("--max-lora-rank") + 1] == "32"
    # a GGUF LoRA is not vLLM's format: refused, saying what works
    assert main(["render", "k8s", str(path_models / "lora"), "--image", IMAGE]) == 1
    err = capsys.readouterr().err
    assert "PEFT" in err and LLAMA_CPP in err


def test_k8s_for_a_gguf_lora_on_its_base_model_image(path_models: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An adapter built on its base model's image (an offline layout here):
    llama.cpp gets the base's GGUF (its first split when split) and the
    adapter beside it, inside the one mounted folder."""
    base = f"oci:{tmp_path / 'base'}:v1"
    assert main(["build", str(path_models / "gg"), "-o", base, "--max-layer-size", "600KB"]) == 0
    lora = tmp_path / "my-lora"
    synth.write_gguf_lora(lora / "my-lora-f16.gguf", SMALL, rank=4)
    capsys.readouterr()
    assert main(["render", "k8s", str(lora), "--base", base, "--image", IMAGE, "--serve-image", LLAMA_CPP]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    (server,) = doc["spec"]["template"]["spec"]["containers"]
    args = server["args"]
    assert re.fullmatch(r"/models/gg/tiny-Q4_K_M-00001-of-000\d\d\.gguf", args[args.index("-m") + 1]), args
    assert args[args.index("--lora") + 1] == "/models/gg/adapters/my-lora/my-lora-f16.gguf"
    assert server["volumeMounts"][0]["subPath"] == "models/gg"
