"""Pushing to a real CNCF registry on loopback: open, htpasswd and bearer
tokens; skips, mounts and resumes; read back with podman, skopeo, oras-py
and a container run through podman's Docker API."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import modelimage.registry.client as client_module
from modelimage.build import build_image
from modelimage.cache import DigestCache
from modelimage.cli import main
from modelimage.job import Options, prepare
from modelimage.registry.client import RegistryClient
from modelimage.registry.push import PushSettings, RegistrySink
from modelimage.registry.reference import Reference

from .tools import need, podman_pull_export, run

pytestmark = pytest.mark.integration
MB = 10**6


def push(source: Path, ref_text: str, cache: DigestCache, max_layer_size: int = int(0.9 * MB), **settings):
    ref = Reference.parse(ref_text)
    job = prepare(str(source), Options(max_layer_size=max_layer_size, registry=ref.host))
    sink = RegistrySink(ref, RegistryClient(ref), settings=PushSettings(backoff=0.01, **settings), cache=cache)
    result = build_image(job.model, job.plan(), sink, settings=job.image_settings, reference=str(ref), cache=cache)
    return result, sink.stats


def skopeo_inspect(ref: str, *creds: str) -> dict:
    need("skopeo")
    args = ["skopeo", "inspect", "--tls-verify=false", *creds, f"docker://{ref}"]
    return json.loads(run(*args).stdout)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> DigestCache:
    """A digest cache of this test's own (the CLI's too)."""
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    return DigestCache(tmp_path / "cache")


@pytest.fixture
def docker_config(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


def test_push_open_registry_then_podman_pull(registry, llama_dir, cache, tmp_path, podman_env, capsys):
    ref = f"{registry.host}/models/llama:v1"
    assert main(["build", str(llama_dir), "--push", ref, "--max-layer-size", "900KB"]) == 0
    out, err = capsys.readouterr()
    pinned = out.strip()
    assert pinned.startswith(f"{registry.host}/models/llama@sha256:")
    info = skopeo_inspect(ref)
    assert info["Digest"] == pinned.split("@")[1]
    assert info["Labels"]["dev.modelimage.quantization"] == "F16"

    # podman pulls it and the files inside match the sources
    _, export, _ = podman_pull_export(ref, podman_env, "--tls-verify=false")
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(export)) as t:
        names = {m.name for m in t.getmembers()}
        for f in ("config.json", "tokenizer.json"):
            assert sha256(t.extractfile(f"models/llama/{f}").read()) == sha256((llama_dir / f).read_bytes())
    assert any(n.endswith(".safetensors") for n in names)


def test_repush_skips_and_other_repo_mounts(registry, llama_dir, cache):
    first, stats = push(llama_dir, f"{registry.host}/skip/llama:v1", cache)
    assert {layer.action for layer in first.layers} == {"uploaded"}
    assert stats.bytes_sent >= sum(layer.descriptor.size for layer in first.layers)

    again, stats = push(llama_dir, f"{registry.host}/skip/llama:v1", cache)
    assert again.manifest.digest == first.manifest.digest
    assert {layer.action for layer in again.layers} == {"exists"}
    assert stats.bytes_sent == 0

    other, stats = push(llama_dir, f"{registry.host}/skip/other:v1", cache)
    assert other.manifest.digest == first.manifest.digest
    assert {layer.action for layer in other.layers} == {"mounted"}
    assert stats.bytes_sent == 0
    assert skopeo_inspect(f"{registry.host}/skip/other:v1")["Digest"] == first.manifest.digest


def _model_6mb(tmp_path: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    (tmp_path / "m").mkdir()
    weights = np.random.default_rng(0).standard_normal((6, 512, 1024)).astype(np.float16)
    save_file({f"w{i}": w for i, w in enumerate(weights)}, str(tmp_path / "m" / "model.safetensors"))
    return tmp_path / "m"


def _cut_patch(monkeypatch, at: int, after_bytes: int) -> list[int]:
    """Break the connection of the PATCH that starts at ``at``, after
    ``after_bytes`` of its body (0: before any byte reaches the registry)."""
    real_patch = client_module.RegistryClient.patch
    cuts: list[int] = []

    def patch(self, url, content, start, length):
        if start == at and not cuts:
            def broken():
                sent = 0
                for c in content:
                    if sent + len(c) > after_bytes:
                        c = c[: after_bytes - sent]
                        if c:
                            yield c
                        cuts.append(start)
                        raise httpx.WriteError("connection reset (injected)")
                    sent += len(c)
                    yield c
            return real_patch(self, url, broken(), start, length)
        return real_patch(self, url, content, start, length)

    monkeypatch.setattr(client_module.RegistryClient, "patch", patch)
    return cuts


CHUNK = 1 << 20


@pytest.fixture(scope="module")
def clean_6mb(registry, tmp_path_factory):
    model = _model_6mb(tmp_path_factory.mktemp("six"))
    result, _ = push(model, f"{registry.host}/resume/clean:v1", DigestCache(tmp_path_factory.mktemp("c")),
                     10 * MB, chunk_size=CHUNK)
    return model, result


def test_resume_from_the_confirmed_offset(registry, clean_6mb, cache, monkeypatch):
    """The connection drops as the third chunk starts (as when a proxy that
    buffers bodies loses the client): the upload continues from the offset
    the registry confirms, two chunks in, not from zero."""
    model, clean = clean_6mb
    cuts = _cut_patch(monkeypatch, at=2 * CHUNK, after_bytes=0)
    result, stats = push(model, f"{registry.host}/resume/cut:v1", cache, 10 * MB, chunk_size=CHUNK)
    assert cuts == [2 * CHUNK]
    assert stats.resumes == 1
    assert result.manifest.digest == clean.manifest.digest
    size = sum(layer.descriptor.size for layer in result.layers)
    # only what was handed to the socket of the chunk in flight went out again (the body goes
    # in 64 KiB pieces), never the two chunks the registry confirmed
    assert 0 < stats.resent_bytes <= CHUNK
    assert stats.bytes_sent == size + stats.resent_bytes
    assert skopeo_inspect(f"{registry.host}/resume/cut:v1")["Digest"] == clean.manifest.digest


def test_cut_inside_a_chunk_restarts_cleanly(registry, clean_6mb, cache, monkeypatch):
    """A cut in the middle of a PATCH body: distribution 2.8 keeps the
    partial bytes and then invalidates the upload (its size no longer
    matches the upload state). The push notices, starts a new upload and
    still lands the same image."""
    model, clean = clean_6mb
    cuts = _cut_patch(monkeypatch, at=2 * CHUNK, after_bytes=CHUNK // 2)
    result, stats = push(model, f"{registry.host}/resume/midcut:v1", cache, 10 * MB, chunk_size=CHUNK)
    assert cuts == [2 * CHUNK]
    assert stats.resumes == 1
    assert result.manifest.digest == clean.manifest.digest
    assert 2 * CHUNK < stats.resent_bytes <= 3 * CHUNK  # everything up to the cut, once more


def test_retry_budget_gives_one_line_and_no_manifest(registry, llama_dir, cache, monkeypatch, capsys):
    """Every upload fails: the push gives up after the retry budget with
    one line, and no manifest is pushed that would point at missing blobs."""
    def always_broken(self, url, content, start, length):
        raise httpx.ConnectError("connection refused (injected)")

    monkeypatch.setattr(client_module.RegistryClient, "patch", always_broken)
    ref = f"{registry.host}/budget/llama:v1"
    monkeypatch.setattr("modelimage.registry.transport.retry.RetryPolicy.wait", lambda self, attempt, error=None: None)
    assert main(["build", str(llama_dir), "--push", ref]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert "gave up after 6 attempts" in err
    r = httpx.get(f"{registry.url}/v2/budget/llama/manifests/v1")
    assert r.status_code == 404  # no manifest pointing at missing blobs


def test_htpasswd_login_push_and_wrong_password(htpasswd_registry, llama_dir, docker_config, monkeypatch,
                                                 capsys):
    reg = htpasswd_registry
    ref = f"{reg.host}/private/llama:v1"
    # without credentials: one line, no traceback
    assert main(["build", str(llama_dir), "--push", ref]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "modelimage login" in err

    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong-password\n"))
    assert main(["login", reg.host, "-u", reg.username, "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert "wrong-password" not in err and err.count("\n") == 1

    monkeypatch.setattr(sys, "stdin", io.StringIO(reg.password + "\n"))
    assert main(["login", reg.host, "-u", reg.username, "--password-stdin"]) == 0
    out, err = capsys.readouterr()
    assert reg.password not in out + err
    config = json.loads((docker_config / "config.json").read_text())
    assert reg.host in config["auths"]
    assert (docker_config / "config.json").stat().st_mode & 0o077 == 0

    assert main(["build", str(llama_dir), "--push", ref, "--json"]) == 0
    out, err = capsys.readouterr()
    assert reg.password not in out + err
    pushed = json.loads(out)
    info = skopeo_inspect(ref, "--creds", f"{reg.username}:{reg.password}")
    assert info["Digest"] == pushed["digest"]
    assert pushed["reference"] == f"{reg.host}/private/llama@{pushed['digest']}"


def test_bearer_tokens_narrow_scopes_and_refresh(token_registry, llama_dir, docker_config, cache, capsys,
                                                 monkeypatch):
    reg = token_registry
    server = reg.extra["token_server"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(reg.password))
    assert main(["login", reg.host, "-u", reg.username, "--password-stdin"]) == 0
    capsys.readouterr()
    server.clear()
    with server.configured(expires_in=2):
        # slow the push down so tokens expire on the way and must be fetched again
        import time

        from modelimage.registry import push as push_module

        real = push_module._LayerSource.body

        def slow(self, start, end):
            for chunk in real(self, start, end):
                time.sleep(0.05)
                yield chunk

        monkeypatch.setattr(push_module._LayerSource, "body", slow)
        started = time.monotonic()
        result, _ = push(llama_dir, f"{reg.host}/team/llama:v1", cache, concurrency=1)
        took = time.monotonic() - started
    scopes = set(server.scopes_asked("team/llama"))
    assert scopes <= {"repository:team/llama:pull", "repository:team/llama:pull,push"}
    assert "repository:team/llama:pull,push" in scopes
    assert not any("*" in s for s in server.scopes_asked())
    if took > 3:
        assert len([r for r in server.log() if r.user == reg.username]) >= 2  # refreshed
    info = skopeo_inspect(f"{reg.host}/team/llama:v1", "--creds", f"{reg.username}:{reg.password}")
    assert info["Digest"] == result.manifest.digest


def test_wrong_token_credentials_never_print_the_secret(token_registry, llama_dir, docker_config, capsys):
    reg = token_registry
    secret = "not-the-password-9f8e7d"
    docker_config.mkdir(parents=True, exist_ok=True)
    import base64

    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {reg.host: {"auth": base64.b64encode(f"{reg.username}:{secret}".encode()).decode()}}}))
    assert main(["build", str(llama_dir), "--push", f"{reg.host}/team/denied:v1"]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1
    assert secret not in out + err
    assert "refused" in err


def test_push_layout_and_read_back_with_oras(registry, llama_dir, tmp_path, capsys, cache):
    layout = tmp_path / "oci"
    assert main(["build", str(llama_dir), "-o", f"oci:{layout}:v2"]) == 0
    built = capsys.readouterr().out.strip()
    assert main(["push", f"oci:{layout}:v2", f"{registry.host}/layout/llama:v2", "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["digest"] == built
    assert {b["action"] for b in pushed["layers"]} == {"uploaded"}

    import oras.provider

    oras_client = oras.provider.Registry(hostname=registry.host, insecure=True)
    manifest = oras_client.get_manifest(f"{registry.host}/layout/llama:v2")
    local = json.loads((layout / "blobs" / "sha256" / built.split(":")[1]).read_bytes())
    assert manifest["layers"] == local["layers"]
    for layer in manifest["layers"]:
        blob = oras_client.get_blob(f"{registry.host}/layout/llama:v2", layer["digest"])
        assert sha256(blob.content) == layer["digest"]


def test_run_model_on_a_base_image(registry, busybox_base, llama_dir, podman_env, docker_api, capsys, cache):
    """The model on top of a FROM-scratch busybox base, pushed to the same
    registry (base layers mounted, not uploaded), then run: the container
    sees the model files with the right sha256."""
    ref = f"{registry.host}/serve/llama:v1"
    assert main(["build", str(llama_dir), "--base", busybox_base, "--push", ref, "--json"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    info = skopeo_inspect(ref)
    base_info = skopeo_inspect(busybox_base)
    assert info["Layers"][: len(base_info["Layers"])] == base_info["Layers"]
    assert info["Env"] == base_info["Env"]

    image = run("podman", "pull", "-q", "--tls-verify=false", ref, env=podman_env).stdout.strip()
    try:
        out = docker_api.containers.run(image, ["sh", "-c", "cd /models/llama && sha256sum *"],
                                        network_mode="none", remove=True).decode()
    finally:
        subprocess.run(["podman", "rmi", "-f", image], capture_output=True, env=podman_env)
    seen = {line.split()[1]: "sha256:" + line.split()[0] for line in out.splitlines() if line.strip()}
    recorded = {f["path"].rsplit("/", 1)[1]: f["sha256"] for layer in pushed["layers"] for f in layer["files"]}
    assert seen == recorded
    for name in ("config.json", "tokenizer.json"):
        assert seen[name] == sha256((llama_dir / name).read_bytes())


def test_registry_that_refuses_patch_gets_one_put(registry, llama_dir, cache, monkeypatch):
    """Like Google Artifact Registry: chunked uploads refused -> the blob
    goes again as one monolithic PUT, and later blobs skip PATCH at once."""
    from modelimage.registry.transport import RegistryError

    calls = []

    def refuse(self, url, content, start, length):
        calls.append(start)
        raise RegistryError("gar", 405, "UNSUPPORTED", "chunked uploads are not supported")

    monkeypatch.setattr(client_module.RegistryClient, "patch", refuse)
    result, stats = push(llama_dir, f"{registry.host}/gar/llama:v1", cache, concurrency=1)
    assert calls == [0]  # refused once, never tried again
    assert skopeo_inspect(f"{registry.host}/gar/llama:v1")["Digest"] == result.manifest.digest


def test_the_next_layer_streams_while_the_registry_commits(registry, faults, llama_dir, cache, tmp_path):
    """One layer at a time (--concurrency 1), the registry slow to answer
    the first commit (its final PUT): the next layer's upload is already
    under way before that answer, and the image pushed is whole: the same
    manifest digest as a push without the stall, and after a pull the same
    files, byte for byte (config and tokenizer as the source's)."""
    from .faultproxy import Rule, Stall

    faults.add(Rule("PUT", r"/blobs/uploads/.*digest=sha256", Stall(2.0)))
    ref = f"{faults.host}/overlap/llama:v1"
    result, stats = push(llama_dir, ref, cache, concurrency=1)
    commit = faults.requests("PUT", r"/blobs/uploads/.*digest=sha256")[0]
    assert commit.fault is not None and commit.status == 201
    during = [s for s in faults.requests("PATCH", r"/blobs/uploads/")
              if commit.started < s.started < commit.finished]
    assert during, "no layer streamed while the first commit was waited for"
    assert stats.resumes == 0 and stats.retries == 0
    assert len(result.layers) >= 3  # noqa: PLR2004 (several layers, so several turns)
    clean, _ = push(llama_dir, f"{registry.host}/overlap/clean:v1", DigestCache(tmp_path / "c2"), concurrency=3)
    assert result.manifest.digest == clean.manifest.digest
    pulled = {}
    for name in ("llama", "clean"):
        dest = tmp_path / name
        assert main(["pull", f"{registry.host}/overlap/{name}:v1", str(dest), "-q"]) == 0
        pulled[name] = {f.name: f.read_bytes() for f in dest.iterdir() if not f.name.startswith(".")}
    assert pulled["llama"] == pulled["clean"]
    assert sum(n.endswith(".safetensors") for n in pulled["llama"]) >= 2  # noqa: PLR2004 (the shards, re-cut)
    for name in ("config.json", "tokenizer.json"):
        assert pulled["llama"][name] == (llama_dir / name).read_bytes()
