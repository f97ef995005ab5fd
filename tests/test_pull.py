"""`modelimage pull` and `modelimage verify` against the real registry:
what modelimage pushed (image, resharded; ModelPack and Docker model
artifacts), what podman pushed (gzip, zstd, whiteouts on a base), include
filters, resume after a cut, unsafe layers, verify's findings, and redirects
that must never carry the Authorization header."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import tarfile
import threading
from pathlib import Path

import httpx
import pytest

from modelimage.cli import main
from modelimage.errors import ModelImageError
from modelimage.oci import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
)
from modelimage.pull import pull
from modelimage.registry import fetch
from modelimage.registry.auth import Credentials
from modelimage.registry.client import RegistryClient
from modelimage.registry.reference import Reference

from .tools import need, run

pytestmark = pytest.mark.integration


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of the regular files under ``root``
    (symlinks as ``-> target``), without the puller's own folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/", 1)[0] == ".modelimage-pull":
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = sha(p.read_bytes())
    return out


@pytest.fixture
def small_pieces(monkeypatch):
    """Ranged GETs of 64 KiB, so small test blobs still go over several connections."""
    monkeypatch.setattr(fetch, "PIECE", 64 << 10)


@pytest.fixture(scope="module")
def pushed_llama(registry, llama_dir, tmp_path_factory):
    """The llama model pushed by modelimage, its weights resharded to fit
    900 kB layers: (reference, {path under DEST: sha256}, total blob bytes)."""
    os.environ.setdefault("MODELIMAGE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    ref = f"{registry.host}/pull/llama:v1"
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert main(["build", str(llama_dir), "--push", ref, "--max-layer-size", "900KB", "--json"]) == 0
    pushed = json.loads(out.getvalue())
    files = {f["path"].removeprefix("/models/llama/"): f["sha256"]
             for layer in pushed["layers"] for f in layer["files"]}
    return ref, files, sum(layer["size"] for layer in pushed["layers"])


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
    artifact = pytest.importorskip("modelimage.artifact", reason="modelimage.artifact is not there yet")
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
        run("podman", "build", "-q", "-t", local, str(ctx), env=podman_env)
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
    run("podman", "build", "-q", "--network=none", "--tls-verify=false", "-t", ref, str(ctx), env=podman_env)
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


def test_pull_over_one_streaming_connection_per_blob(pushed_llama, tmp_path, small_pieces):
    ref, files, total = pushed_llama
    dest = tmp_path / "dest"
    assert main(["pull", ref, str(dest), "--connections", "1", "--concurrency", "2"]) == 0
    assert tree(dest) == files
    assert main(["verify", ref, str(dest)]) == 0


# ---------------------------------------------------------------- resume


def _cut_after(monkeypatch, limit: int) -> list[int]:
    """The first time more than ``limit`` bytes have come through the
    reader's own GETs (ranged pieces, or the streaming GET of one
    connection; not the first piece, read while resolving), the connection
    breaks mid-answer."""
    real = fetch.BlobReader._open_range
    seen, cuts = [0], []

    class Cutting:
        def __init__(self, r):
            self.r = r

        def readinto(self, view):
            if not cuts and seen[0] + len(view) > limit:
                n = self.r.readinto(view[: limit - seen[0]]) if limit > seen[0] else 0
                seen[0] += n
                cuts.append(seen[0])
                raise ConnectionResetError("connection reset (injected)")
            n = self.r.readinto(view)
            seen[0] += n
            return n

        def __getattr__(self, name):
            return getattr(self.r, name)

    def open_range(self, conns, target, lo, hi):
        return Cutting(real(self, conns, target, lo, hi))

    monkeypatch.setattr(fetch.BlobReader, "_open_range", open_range)
    return cuts


def test_resume_image_after_a_cut(pushed_llama, tmp_path, monkeypatch, small_pieces):
    ref, files, total = pushed_llama
    cuts = _cut_after(monkeypatch, total // 2)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError, match="gave up after 1 attempt"):
        pull(ref, dest, concurrency=1, retries=0)
    assert cuts
    staging = dest / ".modelimage-pull" / "partial"
    journaled = {seg[1]["temp"] for j in staging.glob("*.tarjournal")
                 for seg in json.loads(j.read_text())["segments"] if seg[0] == "file"}
    assert {p.name for p in staging.glob("*.tmp")} == journaled  # only what the cut layer's journal names
    again = pull(ref, dest, concurrency=1, retries=0)
    assert 0 < again.bytes_fetched < total and again.layers_skipped > 0
    assert tree(dest) == files


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
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert main(["build", str(model), "--push", ref, "--json"]) == 0
    total = sum(layer["size"] for layer in json.loads(out.getvalue())["layers"])
    return ref, files, total


@pytest.mark.parametrize("connections", [1, 2])
def test_resume_a_tar_layer_mid_file_with_a_range_request(pushed_big_file, tmp_path, monkeypatch, small_pieces,
                                                          connections):
    """Cut 2 MiB into the pull (one streaming GET, or ranged pieces over two
    connections): the tar layer's staged file and a journal of its header
    bytes stay; the next run hashes them again from disk and asks only for
    the rest of the blob."""
    ref, files, total = pushed_big_file
    cuts = _cut_after(monkeypatch, 2 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError, match="gave up after 1 attempt"):
        pull(ref, dest, concurrency=1, retries=0, connections=connections)
    staging = dest / ".modelimage-pull" / "partial"
    assert cuts and [p.suffix for p in staging.iterdir()].count(".tarjournal") == 1
    assert not (dest / "weights.bin").exists()  # only complete files carry their name
    journal = json.loads(next(staging.glob("*.tarjournal")).read_text())
    assert (2 << 20) - (512 << 10) <= journal["pos"] < 3 << 20  # up to the pieces in flight short of the cut

    again = pull(ref, dest, concurrency=1, retries=0, connections=connections)
    assert not again.warnings
    # the weights' layer comes first: of it only the rest, then the small files' layer (never reached before)
    assert again.bytes_fetched == total - journal["pos"]
    assert journal["pos"] < _layer_size(ref, journal["digest"])
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert not list(staging.iterdir())  # journal and staged files gone once the layer is in
    assert main(["verify", ref, str(dest)]) == 0


def _layer_size(ref: str, digest: str) -> int:
    r = Reference.parse(ref)
    client = RegistryClient(r)
    try:
        layers = client.get_manifest(r.repository, r.tag).json()["layers"]
    finally:
        client.close()
    (size,) = [d["size"] for d in layers if d["digest"] == digest]
    return size


def test_a_staged_file_changed_after_the_cut_fails_the_digest_then_starts_afresh(pushed_big_file, tmp_path,
                                                                              monkeypatch, small_pieces):
    ref, files, total = pushed_big_file
    cuts = _cut_after(monkeypatch, 2 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError):
        pull(ref, dest, concurrency=1, retries=0)
    assert cuts
    staging = dest / ".modelimage-pull" / "partial"
    assert json.loads(next(staging.glob("*.tarjournal")).read_text())["digest"].startswith("sha256:")
    (staged,) = staging.glob("*.tmp")
    with open(staged, "r+b") as f:  # one byte flipped in what was already written
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ModelImageError, match="does not match its digest"):
        pull(ref, dest, concurrency=1, retries=0)
    assert not (dest / "weights.bin").exists()
    assert not list(staging.glob("*.tarjournal")) and not list(staging.glob("*.tmp"))
    again = pull(ref, dest, concurrency=1, retries=0)
    assert again.bytes_fetched == total  # the weights' layer from its start, then the rest
    assert not list(staging.iterdir())
    assert (dest / "weights.bin").read_bytes() == files["weights.bin"]


def _push_raw_artifact(registry, repo: str, files: dict[str, bytes]) -> str:
    """A hand-made artifact of raw file layers (title annotations), pushed
    with the registry client."""
    ref = Reference.parse(f"{registry.host}/{repo}:v1")
    client = RegistryClient(ref)
    layers = []
    for name, data in files.items():
        d = Descriptor.of_bytes("application/vnd.example.file.v1", data,
                                annotations={"org.opencontainers.image.title": name})
        client.put_blob(ref.repository, data, d.digest)
        layers.append(d)
    config = b"{}"
    cd = Descriptor.of_bytes("application/vnd.example.config.v1+json", config)
    client.put_blob(ref.repository, config, cd.digest)
    m = Manifest(cd, tuple(layers), artifact_type="application/vnd.example.model.v1")
    client.put_manifest(ref.repository, "v1", m.to_bytes(), MEDIA_TYPE_MANIFEST)
    client.close()
    return str(ref)


def test_resume_raw_file_with_a_range_request(registry, tmp_path, monkeypatch, small_pieces):
    weights = os.urandom(3 << 20)
    ref = _push_raw_artifact(registry, "pull/raw", {"weights/model.bin": weights, "config.json": b'{"a": 1}'})
    cuts = _cut_after(monkeypatch, 2 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError):
        pull(ref, dest, concurrency=1, retries=0)
    partial = [p for p in (dest / ".modelimage-pull" / "partial").iterdir() if p.suffix == ".partial"]
    assert cuts and partial and 0 < partial[0].stat().st_size < len(weights)
    assert not (dest / "weights" / "model.bin").exists()  # only complete files carry their name
    have = partial[0].stat().st_size
    again = pull(ref, dest, concurrency=1, retries=0)
    # from where the partial file ended (and the small config.json, never reached before)
    assert again.bytes_fetched == len(weights) - have + len(b'{"a": 1}')
    assert (dest / "weights" / "model.bin").read_bytes() == weights
    assert (dest / "config.json").read_bytes() == b'{"a": 1}'
    assert main(["verify", ref, str(dest)]) == 0


# ---------------------------------------------------------------- unsafe layers


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    i = tarfile.TarInfo(name)
    i.type, i.linkname, i.mode = kind, link, mode
    return i


def _layout(root: Path, layers: list[bytes]) -> str:
    """An OCI layout with these tar layers (no labels: a foreign image)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descs = []
    for data in layers:
        (blobs / sha(data)[7:]).write_bytes(data)
        descs.append(Descriptor(MEDIA_TYPE_LAYER_TAR, sha(data), len(data)))
    config = ImageConfig("amd64", "linux", tuple(d.digest for d in descs), "1970-01-01T00:00:00Z").to_bytes()
    (blobs / sha(config)[7:]).write_bytes(config)
    manifest = Manifest(Descriptor(MEDIA_TYPE_CONFIG, sha(config), len(config)), tuple(descs)).to_bytes()
    (blobs / sha(manifest)[7:]).write_bytes(manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MEDIA_TYPE_MANIFEST, "digest": sha(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    return f"oci:{root}:v1"


UNSAFE = {
    "dotdot": ([_info("ok.txt"), _info("../evil.txt")], "'..'"),
    "absolute": ([_info("/evil.txt")], "absolute path"),
    "nested-dotdot": ([_info("a/../../evil.txt")], "'..'"),
    "symlink-out": ([_info("link", tarfile.SYMTYPE, "../../evil.txt")], "links outside"),
    "symlink-absolute": ([_info("link", tarfile.SYMTYPE, "/etc/passwd")], "absolute path"),
    "hardlink-out": ([_info("link", tarfile.LNKTYPE, "../evil.txt")], "'..'"),
    "device": ([_info("dev", tarfile.CHRTYPE)], "device, fifo or socket"),
    "fifo": ([_info("fifo", tarfile.FIFOTYPE)], "device, fifo or socket"),
    "through-symlink": ([_info("real", tarfile.DIRTYPE, mode=0o755), _info("d", tarfile.SYMTYPE, "real"),
                         _info("d/evil.txt")], "through a symlink"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_layers_are_refused(tmp_path, capsys, case):
    infos, message = UNSAFE[case]
    source = _layout(tmp_path / "oci", [_tar([(i, b"evil") for i in infos])])
    dest = tmp_path / "box" / "dest"
    assert main(["pull", source, str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "box" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert sorted(os.listdir(tmp_path / "box")) == ["dest"]
    # no file of the refused layer, not even its harmless ones (a symlink inside may stay)
    assert not [p for p, h in tree(dest).items() if not h.startswith("->")]


def test_unsafe_layer_pushed_to_a_registry(registry, tmp_path, capsys):
    layer = _tar([(_info("../evil.txt"), b"evil")])
    ref = Reference.parse(f"{registry.host}/pull/evil:v1")
    client = RegistryClient(ref)
    client.put_blob(ref.repository, layer, sha(layer))
    config = ImageConfig("amd64", "linux", (sha(layer),), "1970-01-01T00:00:00Z").to_bytes()
    client.put_blob(ref.repository, config, sha(config))
    manifest = Manifest(Descriptor(MEDIA_TYPE_CONFIG, sha(config), len(config)),
                        (Descriptor(MEDIA_TYPE_LAYER_TAR, sha(layer), len(layer)),))
    client.put_manifest(ref.repository, "v1", manifest.to_bytes(), MEDIA_TYPE_MANIFEST)
    client.close()
    assert main(["pull", str(ref), str(tmp_path / "dest")]) == 1
    assert "'..'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["dest"]


def test_modes_are_tamed_and_whiteouts_stay_inside(tmp_path):
    lower = _tar([(_info("bin/tool", mode=0o4775), b"#!"), (_info("keep/a"), b"a"), (_info("keep/b"), b"b")])
    upper = _tar([(_info("keep/.wh.a"), b""), (_info(".wh..wh..opq"), b""), (_info("keep/c"), b"c")])
    dest = tmp_path / "dest"
    pull(_layout(tmp_path / "oci", [lower]), dest)
    assert stat.S_IMODE((dest / "bin" / "tool").stat().st_mode) == 0o755  # no setuid, no group write
    pull(_layout(tmp_path / "oci2", [lower, upper]), tmp_path / "two")
    assert tree(tmp_path / "two") == {"keep/c": sha(b"c")}  # the root was made opaque: lower files gone


# ---------------------------------------------------------------- verify


def test_verify_finds_changed_missing_and_extra(pushed_llama, tmp_path, capsys):
    ref, files, _ = pushed_llama
    dest = tmp_path / "dest"
    pull(ref, dest)
    shard = sorted(p for p in files if p.endswith(".safetensors"))[0]
    with open(dest / shard, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    (dest / "config.json").unlink()
    (dest / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["verify", ref, str(dest)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["missing config.json", f"changed {shard}", "extra notes.txt"]
    assert err.startswith("error: ") and "1 missing, 1 changed, 1 extra" in err
    assert main(["verify", ref, str(dest), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["missing"], report["changed"], report["extra"], report["ok"]) == (
        ["config.json"], [shard], ["notes.txt"], False)
    # a pull repairs it: the state notices the changed shard and the missing file
    pull(ref, dest)
    (dest / "notes.txt").unlink()
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
