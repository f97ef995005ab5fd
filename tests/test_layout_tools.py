"""The layouts modelimage writes, read by independent clients: skopeo,
umoci and podman. File bytes after unpacking must match the sources (or,
for resharded files, load back tensor for tensor)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from modelimage.build import build_image
from modelimage.job import Options, prepare
from modelimage.layout import LayoutRef, open_sink

from .tools import need, podman_pull_export, run

pytestmark = pytest.mark.integration
MB = 10**6


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def build(source: Path, output: str, **opts):
    job = prepare(str(source), Options(**opts))
    plan = job.plan()
    ref = LayoutRef.parse(output)
    return job, plan, build_image(job.model, plan, open_sink(ref), settings=job.image_settings, reference=str(ref))


def check_tree(root: Path, source: Path, result, resharded: bool) -> None:
    """Every file of the image is in ``root`` with the recorded sha256; files
    kept as they are equal the source; shards hold the same tensors."""
    recorded = {f.path: f.sha256 for layer in result.layers for f in layer.files}
    assert recorded
    for path, digest in recorded.items():
        assert sha256(root / path) == digest, path
        src = source / Path(path).name
        if src.exists() and not (resharded and src.suffix == ".safetensors") and src.name != "model.safetensors.index.json":
            assert sha256(src) == digest, path
    if resharded:
        model_dir = root / next(iter(recorded)).rsplit("/", 1)[0]
        assert_same_tensors(source, model_dir)


def tensors(directory: Path) -> dict[str, bytes]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as g:
            for k in g.keys():
                out[k] = np.ascontiguousarray(g.get_tensor(k)).tobytes()
    return out


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    assert all(ta[k] == tb[k] for k in ta)
    index = json.loads((b / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tb)
    assert {p.name for p in b.glob("*.safetensors")} == set(index["weight_map"].values())


@pytest.fixture(scope="module")
def resharded(tmp_path_factory, llama_dir):
    out = tmp_path_factory.mktemp("layout") / "oci"
    job, plan, result = build(llama_dir, f"oci:{out}:v1", max_layer_size=int(0.9 * MB))
    assert plan.reshards, "the limit must force resharding"
    return out, plan, result


def test_skopeo_inspects_layout(resharded):
    need("skopeo")
    out, plan, result = resharded
    info = json.loads(run("skopeo", "inspect", f"oci:{out}:v1").stdout)
    assert info["Digest"] == result.manifest.digest
    assert info["Layers"] == [layer.descriptor.digest for layer in result.layers]
    assert len(info["Layers"]) == len(plan.layers)
    assert info["Labels"]["dev.modelimage.parameters"] == str(job_params(result))
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    raw = json.loads(run("skopeo", "inspect", "--raw", f"oci:{out}:v1").stdout)
    assert all(layer["size"] <= 0.9 * MB for layer in raw["layers"])


def job_params(result) -> int:
    return int(json.loads((Path(result.reference.split(":")[1]) / "blobs" / "sha256" / result.config.hex).read_text())
               ["config"]["Labels"]["dev.modelimage.parameters"])


def test_umoci_unpacks_identical_files(resharded, llama_dir, tmp_path):
    need("umoci")
    out, plan, result = resharded
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--image", f"{out}:v1", bundle)
    check_tree(bundle / "rootfs", llama_dir, result, resharded=True)


def test_podman_pulls_layout_and_files_match(resharded, llama_dir, tmp_path, podman_env):
    out, plan, result = resharded
    pulled, export, _ = podman_pull_export(f"oci:{out}:v1", podman_env)
    assert "sha256:" + pulled == result.config.digest  # the image ID is the config digest
    root = tmp_path / "rootfs"
    (tmp_path / "export.tar").write_bytes(export)
    with tarfile.open(tmp_path / "export.tar") as t:
        t.extractall(root, filter="data")
    check_tree(root, llama_dir, result, resharded=True)


def test_oci_archive_read_by_skopeo_and_podman(tmp_path, gguf_file, podman_env):
    need("skopeo")
    archive = tmp_path / "model.tar"
    _, _, result = build(gguf_file, f"oci-archive:{archive}:q4")
    info = json.loads(run("skopeo", "inspect", f"oci-archive:{archive}:q4").stdout)
    assert info["Digest"] == result.manifest.digest
    pulled = run("podman", "pull", "-q", f"oci-archive:{archive}:q4", env=podman_env).stdout.strip()
    subprocess.run(["podman", "rmi", "-f", pulled], capture_output=True, env=podman_env)
    assert "sha256:" + pulled == result.config.digest


def test_skopeo_copy_round_trip_keeps_digest(resharded, tmp_path):
    need("skopeo")
    out, _, result = resharded
    run("skopeo", "copy", "-q", "--preserve-digests", f"oci:{out}:v1", f"oci:{tmp_path / 'copy'}:v1")
    info = json.loads(run("skopeo", "inspect", f"oci:{tmp_path / 'copy'}:v1").stdout)
    assert info["Digest"] == result.manifest.digest
    assert info["Layers"] == [layer.descriptor.digest for layer in result.layers]


def test_gguf_split_unpacks_and_loads(tmp_path, gguf_file):
    """A GGUF over the limit becomes a llama.cpp split set that gguf reads."""
    import gguf

    need("umoci")
    src = gguf.GGUFReader(str(gguf_file))
    biggest = max(int(t.n_bytes) for t in src.tensors)
    _, plan, result = build(gguf_file, f"oci:{tmp_path / 'oci'}:q4", max_layer_size=biggest * 2)
    assert plan.reshards
    run("umoci", "unpack", "--image", f"{tmp_path / 'oci'}:q4", tmp_path / "b")
    model_dir = next((tmp_path / "b" / "rootfs" / "models").iterdir())
    splits = sorted(model_dir.glob("*.gguf"))
    assert len(splits) == len(plan.layers) and len(splits) > 1
    got = {}
    for n, path in enumerate(splits):
        r = gguf.GGUFReader(str(path))
        assert r.fields["split.no"].contents() == n
        assert r.fields["split.count"].contents() == len(splits)
        got.update({t.name: bytes(t.data.tobytes()) for t in r.tensors})
    assert got == {t.name: bytes(t.data.tobytes()) for t in src.tensors}


def test_containerd_imports_and_unpacks(tmp_path, llama_dir, containerd):
    """containerd (Kubernetes nodes) imports the archive and unpacks it
    with its snapshotter; the mounted files match."""
    archive = tmp_path / "llama.tar"
    _, _, result = build(llama_dir, f"oci-archive:{archive}:v1")
    ctr = ("ctr", "--address", containerd)
    run(*ctr, "images", "import", "--base-name", "modelimage/llama", archive)
    listing = run(*ctr, "images", "ls").stdout
    assert result.manifest.digest in listing
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(*ctr, "images", "mount", "modelimage/llama:v1", mnt)
    try:
        check_tree(mnt, llama_dir, result, resharded=False)
    finally:
        run(*ctr, "images", "unmount", mnt)
