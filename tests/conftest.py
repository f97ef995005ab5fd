"""Shared fixtures: synthetic models and the real external tools.

Integration tests run the real programs (skopeo, umoci, podman, the CNCF
registry). When one is missing they skip locally but FAIL under CI=true:
CI installs them (make test), so a missing tool there is a broken setup.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from modelimage import synth
from modelimage.cli import main

from .hubserver import HubServer
from .tools import CONTAINERS_CONF, IN_CI, SMALL, need, run, start_daemon, stop_daemon, unavailable


@pytest.fixture(autouse=True, scope="session")
def _private_digest_cache(tmp_path_factory):
    """Tests never touch the user's cache (~/.cache/modelimage)."""
    old = os.environ.get("MODELIMAGE_CACHE_DIR")
    os.environ["MODELIMAGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("digest-cache"))
    yield
    if old is None:
        os.environ.pop("MODELIMAGE_CACHE_DIR", None)
    else:
        os.environ["MODELIMAGE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def hub() -> HubServer:
    """A loopback Hugging Face Hub (tests/hubserver.py), one per test module."""
    server = HubServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A llama-shaped HF checkpoint: 2 safetensors shards + index, tokenizer."""
    return synth.write_llama_safetensors(tmp_path_factory.mktemp("models") / "llama", SMALL)


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory) -> Path:
    return synth.write_llama_gguf(tmp_path_factory.mktemp("models") / "llama-Q4_K_M.gguf", SMALL)


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory) -> dict[str, str]:
    """Environment for podman here: runc, no rlimits (see ENVIRONMENT.md)."""
    need("podman")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


@pytest.fixture(scope="session")
def containerd(tmp_path_factory):
    """A private containerd (what Kubernetes nodes run); yields its socket."""
    need("containerd")
    need("ctr")
    # short path: unix socket paths are limited to 108 bytes
    d = Path(tempfile.mkdtemp(prefix="ctrd-"))
    sock = d / "containerd.sock"
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n[grpc]\n  address = "{sock}"\n'
    )
    proc = start_daemon(["containerd", "--config", str(d / "config.toml")], sock, d / "log")
    yield str(sock)
    stop_daemon(proc)
    subprocess.run(["umount", "-R", str(d / "root")], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def registry():
    """An open CNCF registry (no auth): a ``tests.registry.Registry``."""
    from .registry import start_registry

    with start_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def proxy(registry):
    """A fault-injecting proxy (``tests.faultproxy.FaultProxy``) in front of the open registry."""
    from .faultproxy import FaultProxy

    with FaultProxy(registry.host) as p:
        yield p


@pytest.fixture
def faults(proxy):
    """The proxy, with no rules and no records (again after the test)."""
    proxy.reset()
    yield proxy
    proxy.reset()


@pytest.fixture(scope="session")
def htpasswd_registry():
    """A registry with HTTP Basic auth (htpasswd); ``.username``/``.password``."""
    from .registry import start_htpasswd_registry

    with start_htpasswd_registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def token_registry():
    """A registry with bearer-token auth (like Docker Hub / GHCR); the token
    server is ``.extra["token_server"]`` (a ``tests.tokenserver.TokenServer``)."""
    from .registry import start_token_registry

    with start_token_registry() as reg:
        yield reg


@pytest.fixture(scope="session")
def docker_api(podman_env, tmp_path_factory):
    """podman's Docker-compatible API on a unix socket, as a docker SDK client."""
    import docker

    d = Path(tempfile.mkdtemp(prefix="podman-api-"))
    sock = d / "podman.sock"
    proc = start_daemon(["podman", "system", "service", "--time=0", f"unix://{sock}"], sock, d / "log", podman_env)
    client = docker.DockerClient(base_url=f"unix://{sock}")
    client.socket_url = f"unix://{sock}"  # DOCKER_HOST for what finds the engine itself (-o docker-daemon:)
    yield client
    client.close()
    stop_daemon(proc)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def busybox_base(registry, podman_env, tmp_path_factory) -> str:
    """A FROM-scratch busybox image (Debian's busybox-static) pushed to the
    open registry: a small base with a shell and sha256sum."""
    need("podman")
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        unavailable("busybox-static is not installed (make test installs it)")
    ctx = tmp_path_factory.mktemp("busybox")
    (ctx / "bin").mkdir()
    shutil.copy(busybox, ctx / "bin" / "busybox")
    for tool in ("sh", "sha256sum", "ls", "cat"):
        (ctx / "bin" / tool).symlink_to("busybox")
    (ctx / "Containerfile").write_text('FROM scratch\nCOPY bin /bin\nENV PATH=/bin\nCMD ["/bin/sh"]\n')
    ref = f"{registry.host}/base/busybox:latest"
    run("podman", "build", "-q", "-t", ref, str(ctx), env=podman_env)  # fails showing podman's stderr
    run("podman", "push", "-q", "--tls-verify=false", ref, env=podman_env)
    subprocess.run(["podman", "rmi", "-f", ref], env=podman_env, capture_output=True)
    return ref


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3-compatible server (moto, server mode) on a loopback port,
    a ``tests.s3server.S3Server``. Its stand-in AWS credentials (and empty
    AWS config files) are in os.environ for the session."""
    from .s3server import restore_env, set_env, start_s3

    server = start_s3(tmp_path_factory.mktemp("aws"))
    old = set_env(server.env)
    yield server
    restore_env(old)
    server.stop()


# ---------------------------------------------------------------- pull tests (tests/test_pull_*.py)


@pytest.fixture
def small_pieces(monkeypatch):
    """Ranged GETs of 64 KiB, so small test blobs still go over several connections."""
    from modelimage.registry import fetch

    monkeypatch.setattr(fetch, "PIECE", 64 << 10)


@pytest.fixture(scope="session")
def pushed_llama(registry, llama_dir, tmp_path_factory):
    """The llama model pushed by modelimage, its weights resharded to fit
    900 kB layers: (reference, {path under DEST: sha256}, total blob bytes)."""
    os.environ.setdefault("MODELIMAGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    ref = f"{registry.host}/pull/llama:v1"
    out = io.StringIO()

    with redirect_stdout(out):
        assert main(["build", str(llama_dir), "--push", ref, "--max-layer-size", "900KB", "--json"]) == 0
    pushed = json.loads(out.getvalue())
    files = {f["path"].removeprefix("/models/llama/"): f["sha256"]
             for layer in pushed["layers"] for f in layer["files"]}
    return ref, files, sum(layer["size"] for layer in pushed["layers"])


@pytest.fixture
def pushed_big_file(registry, tmp_path, monkeypatch):
    """A modelimage image whose weights layer holds one 3 MiB file, next to
    a layer of small files: (reference, {name: bytes}, total blob bytes)."""
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    files = {"weights.bin": os.urandom(3 << 20), "config.json": b'{"model_type": "test"}',
             "tokenizer.json": b'{"version": "1.0"}' * 100}
    for name, data in files.items():
        (model / name).write_bytes(data)
    ref = f"{registry.host}/pull/bigfile:v1"
    out = io.StringIO()

    with redirect_stdout(out):
        assert main(["build", str(model), "--push", ref, "--json"]) == 0
    total = sum(layer["size"] for layer in json.loads(out.getvalue())["layers"])
    return ref, files, total


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: CI installs every tool and package
    the tests use, so a test that skips there tests nothing (issue 12)."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"
