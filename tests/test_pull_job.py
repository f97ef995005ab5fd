"""`modelimage pull` end to end against the real registry (modelimage.pull.job):
what modelimage pushed (image, resharded; ModelPack and Docker model
artifacts), what podman pushed (gzip, zstd, whiteouts on a base), include
filters, and redirects that must never carry the Authorization header."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from modelimage.cli import main
from modelimage.pull import pull
from modelimage.registry.client import RegistryClient
from modelimage.registry.keychain import Credentials
from modelimage.registry.reference import Reference

from .pullkit import sha, tree
from .tools import need, run

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- what modelimage pushed


def test_pull_modelimage_image_then_again(pushed_llama, llama_dir, tmp_path, capsys, small_pieces):
    ref, files, total = pushed_llama
    dest = tmp_path / "dest"
    assert main(["pull", ref, str(dest), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert "pulled" in err and "MB/s" in err
    assert len([f for f in files if f.endswith(".safetensors")]) > 2  # resharded into several shards
    assert tree(dest) == files  # the model's folder IS dest
    assert {f["path"]: f["sha256"] for f in result["files"]} == files
    assert result["bytes_fetched"] == total and result["layers_skipped"] == 0
    for name in ("config.json", "tokenizer.json"):
        assert (dest / name).read_bytes() == (llama_dir / name).read_bytes()
    assert main(["verify", ref, str(dest)]) == 0

    # again: nothing is fetched, nothing changes
    assert main(["pull", ref, str(dest), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["bytes_fetched"] == 0 and again["layers_fetched"] == 0
    assert tree(dest) == files


def test_include_fetches_only_the_layers_it_needs(pushed_llama, tmp_path, capsys):
    ref, files, total = pushed_llama
    dest = tmp_path / "dest"
    assert main(["pull", ref, str(dest), "--include", "config.json", "--include", "tokenizer*", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    want = {p: s for p, s in files.items() if p == "config.json" or p.startswith("tokenizer")}
    assert tree(dest) == want
    assert 0 < result["bytes_fetched"] < total / 5  # the weight layers were never fetched
    assert result["layers_skipped"] >= 3

    # a weight shard later: only its layer comes
    result = pull(ref, dest, include=["model-00002-*"])
    assert set(tree(dest)) == set(want) | {p for p in files if p.startswith("model-00002-")}
    assert result.layers_fetched == 1


def test_model_on_a_base_leaves_the_base_out(registry, busybox_base, llama_dir, tmp_path, capsys):
    ref = f"{registry.host}/pull/onbase:v1"
    assert main(["build", str(llama_dir), "--base", busybox_base, "--push", ref]) == 0
    capsys.readouterr()
    dest = tmp_path / "model"
    result = pull(ref, dest)
    assert "bin" not in os.listdir(dest) and (dest / "config.json").exists()
    assert any("base-image layer" in w for w in result.warnings)
    everything = tmp_path / "root"
    pull(ref, everything, path="/")
    assert (everything / "bin" / "busybox").is_file() and os.readlink(everything / "bin" / "sh") == "busybox"
    assert tree(everything / "models" / "llama") == tree(dest)


@pytest.mark.parametrize("fmt", ["modelpack", "docker-model"])
def test_pull_model_artifacts(registry, llama_dir, tmp_path, fmt, small_pieces):
    from modelimage import artifact
    from modelimage.cache import DigestCache
    from modelimage.job import Options, prepare
    from modelimage.registry.push import PushSettings, RegistrySink

    ref = Reference.parse(f"{registry.host}/pull/{fmt}:v1")
    job = prepare(str(llama_dir), Options(max_layer_size=10**7, registry=ref.host))
    sink = RegistrySink(ref, RegistryClient(ref), settings=PushSettings(backoff=0.01),
                        cache=DigestCache(tmp_path / "c"))
    built = artifact.build_artifact(job.model, job.plan(), sink, format=fmt, settings=job.image_settings,
                                    reference=str(ref))
    expected = {f.path: f.sha256 for layer in built.layers for f in layer.files}
    dest = tmp_path / "dest"
    result = pull(str(ref), dest)
    assert tree(dest) == expected == {f.path: f.sha256 for f in result.files}
    assert tree(dest) == tree(llama_dir)  # every file as it was (raw layers: DEST/<filepath>)
    assert main(["verify", str(ref), str(dest)]) == 0
    only = tmp_path / "only"
    r = pull(str(ref), only, include=["*.safetensors"])
    assert set(tree(only)) == {p for p in expected if p.endswith(".safetensors")}
    assert r.layers_skipped > 0


# ---------------------------------------------------------------- what podman pushed


@pytest.fixture(scope="module")
def podman_images(registry, llama_dir, podman_env, tmp_path_factory):
    """The llama folder COPYed into a FROM-scratch image by podman, pushed
    gzip (podman's default) and zstd: {"gzip": ref, "zstd": ref}."""
    need("podman")
    refs = {}
    for k, fmt in enumerate(("gzip", "zstd")):
        # distinct mtimes, so podman cannot reuse the other push's compressed blob
        ctx = tmp_path_factory.mktemp(f"podman-{fmt}")
        shutil.copytree(llama_dir, ctx / "llama")
        for p in (ctx / "llama").rglob("*"):
            os.utime(p, (1_000_000 + k, 1_000_000 + k))
        (ctx / "Containerfile").write_text("FROM scratch\nCOPY llama /models/llama\nCOPY llama/config.json /etc/\n")
        local = f"localhost/modelimage-test/pull-podman-{fmt}:v1"
        refs[fmt] = f"{registry.host}/podman/llama-{fmt}:v1"
        run("podman", "build", "-q", "--no-cache", "-t", local, str(ctx), env=podman_env)
        try:
            run("podman", "push", "-q", "--tls-verify=false", "--compression-format", fmt, local,
                f"docker://{refs[fmt]}", env=podman_env)
        finally:
            run("podman", "rmi", "-f", local, env=podman_env)
    return refs


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_pull_what_podman_pushed(registry, podman_images, llama_dir, tmp_path, fmt, capsys):
    ref = podman_images[fmt]
    client = RegistryClient(Reference.parse(ref))
    manifest = client.get_manifest(*ref.split("/", 1)[1].rsplit(":", 1)).json()
    client.close()
    assert {layer["mediaType"].rsplit("+", 1)[-1] for layer in manifest["layers"]} == {fmt}
    dest = tmp_path / "model"
    assert main(["pull", ref, str(dest), "--path", "/models/llama"]) == 0
    assert tree(dest) == tree(llama_dir)
    root = tmp_path / "root"  # no label: the whole root filesystem
    result = pull(ref, root)
    assert tree(root / "models" / "llama") == tree(llama_dir)
    assert (root / "etc" / "config.json").read_bytes() == (llama_dir / "config.json").read_bytes()
    assert all(f.sha256 == sha((root / f.path).read_bytes()) for f in result.files)
    assert main(["verify", ref, str(root)]) == 0
    # foreign layers do not list their files: the tar is read, only matches are written
    some = tmp_path / "some"
    pull(ref, some, include=["config.json"])
    assert set(tree(some)) == {"models/llama/config.json", "etc/config.json"}
    capsys.readouterr()


def test_whiteouts_from_a_podman_build(registry, busybox_base, tmp_path, podman_env):
    """A second layer that deletes a file (``.wh.NAME``) and re-creates a
    folder (opaque whiteout) on top of a busybox base."""
    ctx = tmp_path / "ctx"
    (ctx / "m" / "sub").mkdir(parents=True)
    for name, text in {"keep.txt": "keep", "gone.txt": "gone", "sub/old.txt": "old"}.items():
        (ctx / "m" / name).write_text(text)
    (ctx / "Containerfile").write_text(
        f"FROM {busybox_base}\nCOPY m /models/m\n"
        "RUN rm /models/m/gone.txt && rm -rf /models/m/sub && mkdir /models/m/sub && "
        "echo new > /models/m/sub/new.txt\n")
    ref = f"{registry.host}/podman/whiteout:v1"
    run("podman", "build", "-q", "--no-cache", "--network=none", "--tls-verify=false", "-t", ref, str(ctx),
        env=podman_env)
    try:
        run("podman", "push", "-q", "--tls-verify=false", ref, env=podman_env)
    finally:
        run("podman", "rmi", "-f", ref, env=podman_env)
    dest = tmp_path / "dest"
    (dest / "sub").mkdir(parents=True)
    result = pull(ref, dest, path="/models/m")
    assert tree(dest) == {"keep.txt": sha(b"keep"), "sub/new.txt": sha(b"new\n")}
    assert {f.path for f in result.files} == {"keep.txt", "sub/new.txt"}
    assert main(["verify", ref, str(dest), "--path", "/models/m"]) == 0
    root = tmp_path / "root"
    pull(ref, root)
    assert not (root / "models" / "m" / "gone.txt").exists() and (root / "bin" / "busybox").is_file()


# ---------------------------------------------------------------- what skopeo and podman rewrote (issue 13, input 3)


def _layer_annotations(layout_dir: Path) -> list[dict]:
    index = json.loads((layout_dir / "index.json").read_text())
    blobs = layout_dir / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    return [(d["mediaType"], d.get("annotations") or {}) for d in manifest["layers"]]


@pytest.mark.parametrize("fmt", ["gzip", "zstd", "zstd:chunked"])
def test_issue13_3_a_skopeo_copy_that_dropped_the_layer_annotations(tmp_path, llama_dir, fmt, capsys):
    """``skopeo copy --dest-compress-format gzip|zstd|zstd:chunked`` drops the
    layers' file lists; the config's target and history still say where the
    model is and which layers are its."""
    need("skopeo")
    out, copy = tmp_path / "out", tmp_path / "copy"
    assert main(["build", str(llama_dir), "-o", f"oci:{out}:v1"]) == 0
    run("skopeo", "copy", "-q", "--dest-compress-format", fmt, f"oci:{out}:v1", f"oci:{copy}:v1")
    layers = _layer_annotations(copy)
    assert all(m.endswith("+" + fmt.split(":")[0]) and "dev.modelimage.files" not in a for m, a in layers)
    dest = tmp_path / "dest"
    assert main(["pull", f"oci:{copy}:v1", str(dest)]) == 0
    assert tree(dest) == tree(llama_dir)
    assert main(["verify", f"oci:{copy}:v1", str(dest)]) == 0
    capsys.readouterr()


def _unique_model(llama_dir: Path, tmp_path: Path) -> Path:
    """The llama model with a file of its own: an image no other test (or
    other suite on this machine, sharing podman's storage) has, so removing
    it from podman's storage by ID harms nobody."""
    model = tmp_path / "model"
    shutil.copytree(llama_dir, model)
    (model / "nonce.txt").write_text(uuid.uuid4().hex)
    return model


def test_issue13_3_pushed_again_by_skopeo_and_podman(registry, llama_dir, podman_env, tmp_path, capsys):
    """The image pushed again to the registry by ``skopeo copy`` (Docker
    media types: no annotations at all) and by ``podman push`` (gzip)."""
    need("skopeo")
    model = _unique_model(llama_dir, tmp_path)
    ref = f"{registry.host}/pull/again:v1"
    assert main(["build", str(model), "--push", ref]) == 0
    capsys.readouterr()
    files = tree(model)
    again = {"skopeo": f"{registry.host}/pull/again-skopeo:v1", "podman": f"{registry.host}/pull/again-podman:v1"}
    run("skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", "--format", "v2s2",
        f"docker://{ref}", f"docker://{again['skopeo']}")
    image = run("podman", "pull", "-q", "--tls-verify=false", ref, env=podman_env).stdout.strip()
    try:
        run("podman", "push", "-q", "--tls-verify=false", "--compression-format", "gzip", image,
            f"docker://{again['podman']}", env=podman_env)
    finally:
        run("podman", "rmi", "-f", image, env=podman_env)
    for tool, copy in again.items():
        client = RegistryClient(Reference.parse(copy))
        manifest = client.get_manifest(*copy.split("/", 1)[1].rsplit(":", 1)).json()
        client.close()
        assert not any("annotations" in d for d in manifest["layers"]), tool
        dest = tmp_path / tool
        result = pull(copy, dest)
        assert tree(dest) == files and {f.path for f in result.files} == set(files), tool
        assert main(["verify", copy, str(dest)]) == 0


# ---------------------------------------------------------------- layouts and archives others wrote (issue 13, input 5)


def test_issue13_5_untagged_layouts_and_archives_are_sources(tmp_path, llama_dir, podman_env, capsys):
    """``skopeo copy oci:out:v1 oci:b`` writes an index entry without
    ``org.opencontainers.image.ref.name``; ``oci-archive:FILE[:TAG]`` files
    written by modelimage, skopeo and ``podman save`` are sources too, for
    pull and verify."""
    need("skopeo")
    model = _unique_model(llama_dir, tmp_path)
    out = tmp_path / "out"
    assert main(["build", str(model), "-o", f"oci:{out}:v1"]) == 0
    assert main(["build", str(model), "-o", f"oci-archive:{tmp_path / 'mi.tar'}:v1"]) == 0
    run("skopeo", "copy", "-q", f"oci:{out}:v1", f"oci:{tmp_path / 'b'}")
    entry = json.loads((tmp_path / "b" / "index.json").read_text())["manifests"][0]
    assert "org.opencontainers.image.ref.name" not in (entry.get("annotations") or {})
    run("skopeo", "copy", "-q", f"oci:{out}:v1", f"oci-archive:{tmp_path / 'skopeo.tar'}")
    image = run("podman", "pull", "-q", f"oci:{out}:v1", env=podman_env).stdout.strip()
    try:
        run("podman", "save", "-q", "--format", "oci-archive", "-o", str(tmp_path / "podman.tar"), image,
            env=podman_env)
    finally:
        run("podman", "rmi", "-f", image, env=podman_env)
    sources = [f"oci:{tmp_path / 'b'}", f"oci-archive:{tmp_path / 'mi.tar'}:v1", f"oci-archive:{tmp_path / 'mi.tar'}",
               f"oci-archive:{tmp_path / 'skopeo.tar'}", f"oci-archive:{tmp_path / 'podman.tar'}"]
    for k, source in enumerate(sources):
        dest = tmp_path / f"dest{k}"
        assert main(["pull", source, str(dest)]) == 0, source
        assert tree(dest) == tree(model), source
        assert main(["verify", source, str(dest)]) == 0, source
    capsys.readouterr()


def test_pull_over_one_streaming_connection_per_blob(pushed_llama, tmp_path, small_pieces):
    ref, files, total = pushed_llama
    dest = tmp_path / "dest"
    assert main(["pull", ref, str(dest), "--connections", "1", "--concurrency", "2"]) == 0
    assert tree(dest) == files
    assert main(["verify", ref, str(dest)]) == 0


# ---------------------------------------------------------------- redirects


class _Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[dict[str, str]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def test_redirect_to_storage_never_carries_authorization(registry, pushed_llama, tmp_path, small_pieces):
    """A registry front that wants Basic auth and answers blob GETs with a
    307 to 'object storage' on another port (as S3/GCS-backed registries
    do): the storage must never see the Authorization header."""
    ref, files, _ = pushed_llama
    upstream = registry.url
    secret = "Basic " + base64.b64encode(b"puller:s3cret").decode()

    class Storage(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.server.seen.append(dict(self.headers))
            digest = self.path.split("/")[-1].split("?")[0]
            data = httpx.get(f"{upstream}/v2/pull/llama/blobs/{digest}").content
            rng = self.headers.get("Range")
            if rng:
                lo, hi = (int(x) for x in rng.split("=")[1].split("-"))
                body, code = data[lo : hi + 1], 206
            else:
                body, code = data, 200
            self.send_response(code)
            if rng:
                self.send_header("Content-Range", f"bytes {lo}-{lo + len(body) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    storage = _Recorder(Storage)

    class Front(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.server.seen.append(dict(self.headers))
            if self.headers.get("Authorization") != secret:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if "/blobs/" in self.path:
                self.send_response(307)
                self.send_header("Location", f"{storage.url}/bucket/{self.path.split('/')[-1]}?sig=abc")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            r = httpx.get(upstream + self.path, headers={"Accept": self.headers.get("Accept", "*/*")})
            self.send_response(r.status_code)
            for k in ("Content-Type", "Docker-Content-Digest"):
                if k in r.headers:
                    self.send_header(k, r.headers[k])
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

    front = _Recorder(Front)
    try:
        host = front.url.removeprefix("http://")
        dest = tmp_path / "dest"
        pull(f"{host}/pull/llama:v1", dest, credentials=Credentials("puller", "s3cret"), connections=2)
        assert tree(dest) == files
        assert len(storage.seen) > len(files)  # every blob, in several ranged GETs
        # and over one streaming connection per blob (the default on loopback)
        pull(f"{host}/pull/llama:v1", tmp_path / "dest1", credentials=Credentials("puller", "s3cret"))
        assert tree(tmp_path / "dest1") == files
        assert not any(k.lower() == "authorization" for h in storage.seen for k in h)
        assert any(h.get("Authorization") == secret for h in front.seen)
    finally:
        front.stop()
        storage.stop()


# ---------------------------------------------------------------- DESTs nobody should pull into (breaker2)


def test_the_file_systems_root_is_refused_as_dest(tmp_path, capsys):
    """``pull REF /`` (or a symlink to /) would write the image's files, the
    record and the staging folder straight into /: refused before anything."""
    from .pullkit import info, layout, tar_of

    lay = layout(tmp_path / "oci", [tar_of([(info("breaker2-never-written.bin"), b"w")])])
    (tmp_path / "root-link").symlink_to("/")
    for dest in ("/", str(tmp_path / "root-link"), "/tmp/.."):
        assert main(["pull", lay, dest]) == 1
        assert "is the file system's root" in capsys.readouterr().err
    assert not os.path.exists("/breaker2-never-written.bin") and not os.path.exists("/.modelimage-pull.json")


def test_a_failed_pull_removes_the_parents_of_dest_it_made_too(tmp_path, capsys):
    """``pull REF a/b/c`` that fails made a, a/b and a/b/c; it removed c
    alone and said "DEST was left as it was" (breaker3). Every folder the
    pull made goes again while empty; a parent that was there stays, and
    so does one that holds something now."""
    from .pullkit import info, layout, tar_of

    lay = layout(tmp_path / "oci", [tar_of([(info("m/model.safetensors"), b"w")])])
    base = tmp_path / "there"
    base.mkdir()
    assert main(["pull", lay, str(base / "a" / "b" / "c"), "--include", "*.gguf"]) == 1
    assert "DEST was left as it was" in capsys.readouterr().err
    assert os.listdir(base) == []
    (base / "a").mkdir()
    (base / "a" / "yours.txt").write_text("kept")
    assert main(["pull", lay, str(base / "a" / "b" / "c"), "--include", "*.gguf"]) == 1
    assert sorted(os.listdir(base / "a")) == ["yours.txt"]
    assert main(["pull", lay, str(base / "a" / "b" / "c")]) == 0  # and a pull that works keeps them
    assert (base / "a" / "b" / "c" / "m" / "model.safetensors").read_bytes() == b"w"
    capsys.readouterr()
