"""``build -o docker-daemon:NAME[:TAG]`` (modelimage/daemon.py, issue 16
item 9): the image loaded into a Docker-API engine (podman's
Docker-compatible socket here) as it is built, nothing staged on our side."""

from __future__ import annotations

import io
import tarfile
import tempfile
import uuid
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.daemon import DaemonRef
from modelimage.errors import ConfigError
from modelimage.job import prepare

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(docker_api, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", docker_api.socket_url)
    return docker_api


def files_in(engine, image: str, folder: str) -> dict[str, bytes]:
    """The files under ``folder`` in the image, as the engine hands them out."""
    container = engine.containers.create(image, command=["none"])
    try:
        bits, _ = container.get_archive(folder)
        data = b"".join(bits)
    finally:
        container.remove(force=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        base = Path(folder).name
        return {m.name.removeprefix(base + "/"): tar.extractfile(m).read() for m in tar if m.isfile()}


def test_the_image_is_in_the_engine_streamed(engine, llama_dir, tmp_path, capsys, monkeypatch):
    name = f"localhost/modelimage-daemon-{uuid.uuid4().hex[:8]}"
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir(), tmp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    try:
        assert main(["build", str(llama_dir), "-o", f"docker-daemon:{name}:v1"]) == 0
        out, err = capsys.readouterr()
        assert out == f"{name}:v1\n"
        assert err.startswith(f"loaded {name}:v1 into the engine at {engine.socket_url} (image ID sha256:")
        assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []  # no copy of the model on our side
        image = engine.images.get(f"{name}:v1")
        assert len(image.attrs["RootFS"]["Layers"]) == len(prepare(str(llama_dir)).plan().layers) == 3
        got = files_in(engine, f"{name}:v1", "/models/llama")
        assert got == {p.name: p.read_bytes() for p in llama_dir.iterdir() if p.is_file()}
    finally:
        engine.images.remove(f"{name}:v1", force=True)


def test_a_failed_build_loads_nothing(engine, llama_dir, capsys, monkeypatch):
    import modelimage.daemon
    from tests.test_cli_build import _Boom

    name = f"localhost/modelimage-daemon-broken-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    monkeypatch.setattr(modelimage.daemon, "blob_chunks", _Boom(modelimage.daemon.blob_chunks))
    assert main(["build", str(llama_dir), "-o", f"docker-daemon:{name}", "--max-layer-size", "900KB"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed while building" in err
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        engine.images.get(f"{name}:latest")


def test_no_engine_is_one_line(llama_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    assert main(["build", str(llama_dir), "-o", "docker-daemon:x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: docker-daemon: the engine at unix://{tmp_path}/none.sock does not answer")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("text", "name", "tag"), [
    ("docker-daemon:llama", "llama", "latest"), ("docker-daemon:acme/llama:q4", "acme/llama", "q4"),
    ("docker-daemon:localhost:5000/llama:v1", "localhost:5000/llama", "v1"),
])
def test_names(text, name, tag):
    ref = DaemonRef.parse(text)
    assert (ref.name, ref.tag) == (name, tag)


@pytest.mark.parametrize("text", ["docker-daemon:", "docker-daemon:Llama", "docker-daemon:a:b:c", "docker-daemon:x:bad tag"])
def test_bad_names(text):
    with pytest.raises(ConfigError, match="docker-daemon:NAME"):
        DaemonRef.parse(text)


@pytest.mark.parametrize(("text", "why"), [
    ("docker-daemon:bob:hunter2-s3cret@registry.local/llama:v1", "credentials do not go in a name"),
    ("docker-daemon:llama@sha256:" + "0" * 64, "under a tag, not a digest"),
])
def test_a_name_with_credentials_or_a_digest_says_why_and_never_shows_the_password(text, why):
    """The error echoed the whole name back, password included."""
    with pytest.raises(ConfigError) as e:
        DaemonRef.parse(text)
    assert "hunter2" not in str(e.value) and why in str(e.value) and "docker-daemon:NAME[:TAG]" in str(e.value)
