"""The scale-out configuration of docs/scale-out.md, run for real: two CNCF
registry processes (distribution 2.8, Debian's docker-registry) with the S3
storage driver over ONE bucket of a local S3-compatible server (moto). A
model pushed through one node is pulled through the other with podman, and
an upload started on one node is finished on the other: the nodes keep no
state of their own."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from .registry import Registry, start_registry
from .s3server import CREDENTIALS
from .tools import need, podman_pull_export

pytestmark = pytest.mark.integration
BUCKET = "registry-storage"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def registry_storage(endpoint: str) -> dict:
    """The `storage` section both registries share (docs/scale-out.md)."""
    return {
        "s3": {
            "accesskey": CREDENTIALS["AWS_ACCESS_KEY_ID"], "secretkey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region": "us-east-1", "regionendpoint": endpoint, "bucket": BUCKET,
            "secure": False, "v4auth": True, "chunksize": 5 << 20, "rootdirectory": "/",
        },
        "delete": {"enabled": True},
        # serve blobs through the registry: with redirects on, GETs are sent to the bucket itself
        "redirect": {"disable": True},
    }


@pytest.fixture(scope="module")
def nodes(s3_server):
    """Two registry nodes over one bucket. They share `http.secret` (the
    helper gives every registry the same one), which signs upload state."""
    need("docker-registry")
    s3_server.client().create_bucket(Bucket=BUCKET)
    # aws-sdk-go v1 in distribution 2.8 panics at start when AWS_CA_BUNDLE is set
    # ("LoadCustomCABundleError: ... HTTPClient's transport unsupported type")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    started: list[Registry] = []
    try:
        for _ in range(2):
            started.append(start_registry(extra_config={"storage": registry_storage(s3_server.endpoint)}, env=env))
        yield tuple(started)
    finally:
        for reg in started:
            reg.stop()


def test_push_through_one_node_pull_through_the_other(nodes, s3_server, llama_dir, tmp_path, podman_env) -> None:
    a, b = nodes
    ref_a, ref_b = f"{a.host}/models/llama:v1", f"{b.host}/models/llama:v1"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "modelimage", "build", str(llama_dir), "--push", ref_a, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    pushed = json.loads(proc.stdout)
    push_s = time.monotonic() - start

    # node B knows the tag and serves the same manifest
    r = httpx.get(f"{b.url}/v2/models/llama/manifests/v1", headers={"Accept": MANIFEST})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == pushed["digest"]
    # the blobs live in the bucket, not on the nodes' disks
    keys = {o["Key"] for page in s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])}
    for layer in pushed["layers"]:
        hexd = layer["digest"].split(":", 1)[1]
        assert f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data" in keys
    assert not any((reg.root / "data").exists() for reg in nodes)

    image_id, export, pull_s = podman_pull_export(ref_b, podman_env, "--tls-verify=false")
    assert "sha256:" + image_id == pushed["config"]
    (tmp_path / "export.tar").write_bytes(export)
    with tarfile.open(tmp_path / "export.tar") as t:
        t.extractall(tmp_path / "rootfs", filter="data")
    model = tmp_path / "rootfs" / "models" / "llama"
    sources = {p.relative_to(llama_dir).as_posix(): p.read_bytes() for p in llama_dir.rglob("*") if p.is_file()}
    assert {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()} == sources
    size = sum(len(v) for v in sources.values())
    print(f"scale-out: pushed {size} bytes through {a.host} in {push_s:.1f}s, podman pulled them through "
          f"{b.host} in {pull_s:.1f}s")


def test_an_upload_started_on_one_node_finishes_on_the_other(nodes) -> None:
    """POST on A, PATCH and PUT on B (what a round-robin load balancer
    does): the upload state is in the signed URL and the bucket."""
    a, b = nodes
    data = os.urandom((6 << 20) + 123)  # over the driver's 5 MiB chunk: an S3 multipart upload
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{a.url}/v2/models/cross/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["Location"]
    path = location.split(a.host, 1)[1] if location.startswith("http") else location
    half = len(data) // 2
    r = httpx.patch(f"{b.url}{path}", content=data[:half], headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    path = r.headers["Location"].split(b.host, 1)[1] if r.headers["Location"].startswith("http") \
        else r.headers["Location"]
    r = httpx.patch(f"{a.url}{path}", content=data[half:], headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    path = r.headers["Location"].split(a.host, 1)[1] if r.headers["Location"].startswith("http") \
        else r.headers["Location"]
    sep = "&" if "?" in path else "?"
    r = httpx.put(f"{b.url}{path}{sep}digest={digest}")
    assert r.status_code == 201, r.text
    assert httpx.get(f"{a.url}/v2/models/cross/blobs/{digest}").content == data


def test_the_registry_config_in_the_doc_is_the_tested_one() -> None:
    """docs/scale-out.md shows the storage section this test runs."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "scale-out.md").read_text()
    for key in ("regionendpoint:", "secure: false", "v4auth: true", "chunksize: 5242880", "disable: true",
                "secret:", f"bucket: {BUCKET}", "AWS_CA_BUNDLE"):
        assert key in doc, key


# ------------------------------------------------------------ a pull-through mirror (issue 20)

BLOB_GET = re.compile(r'http\.request\.method=GET .*?http\.request\.uri="/v2/[^"]+/blobs/(sha256:[0-9a-f]{64})"'
                      r'.*?http\.response\.status=(\d{3})')


def upstream_blob_gets(reg: Registry) -> list[str]:
    """Digests of the blob GETs a registry answered (200/206), from its access log."""
    return [m.group(1) for m in BLOB_GET.finditer(reg.log.read_text(errors="replace")) if m.group(2) in ("200", "206")]


def test_a_pull_through_mirror_serves_the_second_node_from_its_cache(llama_dir, tmp_path, podman_env) -> None:
    """docs/scale-out.md "A pull-through mirror": a second registry in proxy
    mode in front of the first. modelimage pulls through it get the model's
    bytes; the second node's pull costs the upstream no blob GET; podman
    pulls the same image through it (same config digest, same files)."""
    need("docker-registry")
    up = start_registry()
    mirror = None
    try:
        mirror = start_registry(extra_config={"proxy": {"remoteurl": up.url}})
        proc = subprocess.run([sys.executable, "-m", "modelimage", "build", str(llama_dir), "--push",
                               f"{up.host}/models/llama:v1", "--json"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        pushed = json.loads(proc.stdout)
        sources = {p.relative_to(llama_dir).as_posix(): p.read_bytes() for p in llama_dir.rglob("*") if p.is_file()}
        layers = {d["digest"] for d in pushed["layers"]}

        def pull(dest: Path) -> list[str]:
            before = len(upstream_blob_gets(up))
            p = subprocess.run([sys.executable, "-m", "modelimage", "pull", f"{mirror.host}/models/llama:v1",
                                str(dest)], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr
            got = {q.relative_to(dest).as_posix(): q.read_bytes() for q in dest.rglob("*")
                   if q.is_file() and not q.name.startswith(".modelimage")}
            assert got == sources
            return upstream_blob_gets(up)[before:]

        first = pull(tmp_path / "node1")
        assert layers <= set(first)  # the mirror fetched every layer from the upstream (distribution 2.8: twice)
        assert pull(tmp_path / "node2") == []  # the second node: all from the mirror's cache

        image_id, export, _ = podman_pull_export(f"{mirror.host}/models/llama:v1", podman_env, "--tls-verify=false")
        assert "sha256:" + image_id == pushed["config"]
        (tmp_path / "export.tar").write_bytes(export)
        with tarfile.open(tmp_path / "export.tar") as t:
            t.extractall(tmp_path / "rootfs", filter="data")
        model = tmp_path / "rootfs" / "models" / "llama"
        assert {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()} == sources
        assert not set(upstream_blob_gets(up)[len(first):]) & layers  # podman's layers came from the cache too
    finally:
        if mirror is not None:
            mirror.stop()
        up.stop()
