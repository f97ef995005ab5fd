"""s3:// sources: inspect, plan, build and push straight from a bucket, against
a local S3-compatible server (moto's server mode, tests.s3server), and the
remote-object path through tarstream and the digest cache (unit tests with an
in-memory object)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelimage.build import build_image
from modelimage.cache import DigestCache
from modelimage.config import load_config
from modelimage.content import FileRange, VirtualFile
from modelimage.errors import ConfigError, SourceError
from modelimage.inspect import inspect_model
from modelimage.job import Options, prepare
from modelimage.layout import LayoutRef, open_sink
from modelimage.plan import PlanSettings, make_plan
from modelimage.sources import s3 as s3src
from modelimage.sources.s3 import S3Object, S3Prefix
from modelimage.tarstream import Entry, LayerStream, write_layer

from .images import read_image

BUCKET = "models"
BIG = 128 << 20  # the object the push streams: bigger than the memory it may take
MANY = 1100  # objects under one prefix: more than one page (1,000) of a listing


# ---------------------------------------------------------------- unit: the remote path, no server


@dataclass(frozen=True)
class MemObject:
    """A RemoteObject in memory, read in 1000-byte pieces."""

    key: str
    data: bytes
    etag: str = '"1"'

    def __str__(self) -> str:
        return f"mem://{self.key}"

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def stamp(self) -> tuple[int, str]:
        return (self.size, self.etag)

    @property
    def identity(self) -> list[str | int]:
        return ["mem", self.key, self.size, self.etag]

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        for o in range(offset, offset + length, 1000):
            yield self.data[o:min(o + 1000, offset + length)]

    def open(self):
        return io.BytesIO(self.data)

    def read_bytes(self) -> bytes:
        return self.data


def test_remote_ranges_stream_like_local_ones(tmp_path: Path) -> None:
    """A layer of ranges of a remote object has the bytes (and digests) of
    the same layer made of ranges of a local file with the same content."""
    data = os.urandom(10_000)
    (tmp_path / "w.bin").write_bytes(data)
    mem = MemObject("w.bin", data)

    def layer(src) -> bytes:
        vf = VirtualFile("w.bin", (FileRange(src, 5, 4000), FileRange(src, 7000, 2500)))
        out = io.BytesIO()
        write_layer([Entry("models/m/w.bin", vf)], out)
        return out.getvalue()

    assert layer(mem) == layer(tmp_path / "w.bin")
    stream = LayerStream([Entry("m/w.bin", VirtualFile.whole("w.bin", mem, len(data)))])
    assert b"".join(bytes(d) for d, _ in stream.chunks(700, 3000)) == \
        b"".join(bytes(d) for d, _ in stream.chunks())[700:3000]


def test_cache_keys_remote_objects_by_etag() -> None:
    def key(obj: MemObject) -> str | None:
        stream = LayerStream([Entry("m/w.bin", VirtualFile.whole("w.bin", obj, obj.size))])
        return DigestCache(enabled=True).key(stream, "none")

    a = MemObject("w.bin", b"x" * 100)
    assert key(a) is not None and key(a) == key(replace(a))
    assert key(a) != key(replace(a, etag='"2"'))  # same size and key, new version
    assert key(a) != key(replace(a, key="v2/w.bin"))


def test_parse_url_and_endpoint_setting(tmp_path: Path) -> None:
    assert S3Prefix.parse("s3://b/a/model") == S3Prefix("b", "a/model")
    assert S3Prefix.parse("s3://b").name == "b" and S3Prefix.parse("s3://b/x/llama/").name == "llama"
    with pytest.raises(SourceError):
        S3Prefix.parse("s3:///x")
    cfg = tmp_path / "modelimage.toml"
    cfg.write_text('[models.ft]\nsource = "s3://b/ft"\nendpoint = "https://fly.storage.tigris.dev"\n')
    assert load_config(cfg).models["ft"].endpoint == "https://fly.storage.tigris.dev"
    cfg.write_text('[models.ft]\nsource = "s3://b/ft"\nendpoint = "fly.storage.tigris.dev"\n')
    with pytest.raises(ConfigError, match="endpoint must be an http"):
        load_config(cfg)
    cfg.write_text('[models.ft]\nsource = "./ft"\nendpoint = "http://minio:9000"\n')
    with pytest.raises(ConfigError, match="s3:// sources only"):
        load_config(cfg)


# ---------------------------------------------------------------- against a local S3 server


@pytest.fixture(scope="module")
def bucket(s3_server, llama_dir, gguf_file, tmp_path_factory) -> dict:
    """s3://models/ with: llama/ (the llama_dir fixture), big/ (a 128 MiB
    safetensors file uploaded in 8 MiB multipart parts), many/ (1,100 tiny
    objects and a GGUF)."""
    from boto3.s3.transfer import TransferConfig
    from safetensors.numpy import save_file

    c = s3_server.client()
    c.create_bucket(Bucket=BUCKET)
    for p in sorted(llama_dir.rglob("*")):
        if p.is_file():
            c.upload_file(str(p), BUCKET, f"llama/{p.relative_to(llama_dir).as_posix()}")

    big_dir = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(7)
    n = BIG // 2 // 8  # eight fp16 tensors
    save_file({f"layers.{i}.weight": rng.integers(0, 2**16, n, dtype=np.uint16).view(np.float16).reshape(-1, 1024)
               for i in range(8)}, str(big_dir / "model.safetensors"))
    (big_dir / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    multipart = TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=8 << 20)
    for p in big_dir.iterdir():
        c.upload_file(str(p), BUCKET, f"big/{p.name}", Config=multipart)
    etag = c.head_object(Bucket=BUCKET, Key="big/model.safetensors")["ETag"]
    assert etag.rstrip('"').split("-")[-1].isdigit() and "-" in etag  # a multipart upload's ETag

    many = {f"data/{i:05d}.txt": f"object {i}\n".encode() for i in range(MANY)}
    many["model-Q4_K_M.gguf"] = gguf_file.read_bytes()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: c.put_object(Bucket=BUCKET, Key=f"many/{kv[0]}", Body=kv[1]), many.items()))
    return {"client": c, "big": big_dir, "many": many, "endpoint": s3_server.endpoint}


@pytest.fixture
def fetched(monkeypatch) -> list[int]:
    """Bytes of every ranged GET made through S3Object.get."""
    sizes: list[int] = []
    real = S3Object.get

    def counting(self: S3Object, offset: int, length: int) -> bytes:
        data = real(self, offset, length)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(S3Object, "get", counting)
    return sizes


def _config(tmp_path: Path, endpoint: str, **models: str) -> Path:
    cfg = tmp_path / "modelimage.toml"
    cfg.write_text("".join(f'[models.{name}]\nsource = "{src}"\nendpoint = "{endpoint}"\n\n'
                           for name, src in models.items()))
    return cfg


@pytest.mark.integration
def test_inspect_and_plan_read_headers_not_weights(bucket, llama_dir, fetched) -> None:
    """inspect and plan of a bucket prefix agree with the same folder on
    disk, and read only headers: 64 KiB of a 128 MiB object."""
    remote = inspect_model(S3Prefix(BUCKET, "llama", bucket["endpoint"]))
    local = inspect_model(llama_dir)
    assert remote.to_json() == local.to_json()
    settings = PlanSettings(max_layer_size=10**6, target="/models/llama")
    remote_plan, local_plan = make_plan(remote, settings), make_plan(local, settings)
    assert remote_plan.reshards  # shards over 2 MB are resharded from remote ranges
    assert remote_plan.to_json() == local_plan.to_json()

    fetched.clear()
    big = inspect_model(S3Prefix(BUCKET, "big/", bucket["endpoint"]))
    assert big.parameters == BIG // 2 and big.files[1].size > BIG
    assert sum(fetched) <= s3src.READAHEAD + 100  # the header's GET and config.json
    print(f"inspect of a {big.files[1].size}-byte object fetched {sum(fetched)} bytes in {len(fetched)} GETs")


@pytest.mark.integration
def test_build_from_bucket_matches_local_build(bucket, llama_dir, tmp_path, fetched) -> None:
    """Built (and resharded) from the bucket, every layer has the digest of
    the same layer built from the folder on disk: the same bytes. A rebuild
    reads no weights (the digest cache keys objects by ETag); a new version
    of an object (same size, new ETag) is read again."""
    cfg = _config(tmp_path, bucket["endpoint"], llama="s3://models/llama")
    opts = Options(config=cfg, max_layer_size=10**6)
    job = prepare("llama", opts)
    plan = job.plan()
    out = LayoutRef.parse(f"oci:{tmp_path}/remote:v1")
    remote = build_image(job.model, plan, open_sink(out), settings=job.image_settings, reference=str(out))
    local_job = prepare(str(llama_dir), replace(opts, config=None, name="llama"))
    ref = LayoutRef.parse(f"oci:{tmp_path}/local:v1")
    local = build_image(local_job.model, local_job.plan(), open_sink(ref), settings=local_job.image_settings,
                        reference=str(ref))
    assert [la.descriptor.digest for la in remote.layers] == [la.descriptor.digest for la in local.layers]
    manifest, config, files = read_image(tmp_path / "remote", "v1")
    assert manifest["annotations"]["dev.modelimage.source"] == "s3://models/llama"
    assert config["config"]["Labels"]["dev.modelimage.source"] == "s3://models/llama"
    assert files == read_image(tmp_path / "local", "v1")[2]

    weights = sum(f.size for f in job.model.files if f.is_weights)
    fetched.clear()
    job = prepare("llama", opts)
    again = build_image(job.model, job.plan(), open_sink(out), settings=job.image_settings, reference=str(out))
    assert again.manifest.digest == remote.manifest.digest
    assert {la.action for la in again.layers} == {"exists"}
    assert sum(fetched) < weights / 4  # headers and JSON only

    shard = "llama/model-00002-of-00002.safetensors"
    body = bucket["client"].get_object(Bucket=BUCKET, Key=shard)["Body"].read()
    changed = body[:-1] + bytes([body[-1] ^ 1])  # a new version: same size and header, new ETag
    bucket["client"].put_object(Bucket=BUCKET, Key=shard, Body=changed)
    try:
        job = prepare("llama", opts)
        fetched.clear()
        third = build_image(job.model, job.plan(), open_sink(out), settings=job.image_settings, reference=str(out))
        ranges = [[s for e in layer.entries for s in e.content.segments
                   if isinstance(s, FileRange) and str(s.path).endswith(shard)] for layer in plan.layers]
        assert third.manifest.digest != remote.manifest.digest
        # the layers made of that object's ranges are streamed again, and only those ranges are read
        assert [la.action == "written" for la in third.layers] == [bool(r) for r in ranges]
        assert sum(fetched) == sum(s.length for r in ranges for s in r) > len(body) * 0.9
    finally:
        bucket["client"].put_object(Bucket=BUCKET, Key=shard, Body=body)


@pytest.mark.integration
def test_object_changed_after_inspect_fails_the_build(bucket, tmp_path) -> None:
    c = bucket["client"]
    c.put_object(Bucket=BUCKET, Key="changing/model.gguf", Body=bucket["many"]["model-Q4_K_M.gguf"])
    cfg = _config(tmp_path, bucket["endpoint"], changing="s3://models/changing")
    job = prepare("changing", Options(config=cfg))
    c.put_object(Bucket=BUCKET, Key="changing/model.gguf", Body=bucket["many"]["model-Q4_K_M.gguf"][::-1])
    out = LayoutRef.parse(f"oci:{tmp_path}/out:v1")
    with pytest.raises(SourceError, match="changed while building"):
        build_image(job.model, job.plan(), open_sink(out), settings=job.image_settings, reference=str(out))
    assert not (tmp_path / "out" / "index.json").exists()


@pytest.mark.integration
def test_parallel_ranged_reads_come_back_in_order(bucket, monkeypatch) -> None:
    """Small parts: many GETs in flight, reassembled in order, at any offset."""
    monkeypatch.setattr(s3src, "PART_SIZE", 1 << 20)
    local = (bucket["big"] / "model.safetensors").read_bytes()
    obj = S3Prefix(BUCKET, "big", bucket["endpoint"]).list_files(include=["*.safetensors"])[0].path
    for offset, length in ((0, 5 << 20), (123_457, (7 << 20) + 3), (len(local) - 999, 999)):
        parts = list(obj.read(offset, length))
        assert max(len(p) for p in parts) <= 1 << 20
        assert b"".join(parts) == local[offset:offset + length]


@pytest.mark.integration
def test_prefix_with_more_objects_than_a_listing_page(bucket, tmp_path) -> None:
    """1,101 objects (two pages of ListObjectsV2) inspect, plan and build to
    a layout whose files are the objects' bytes."""
    cfg = _config(tmp_path, bucket["endpoint"], many="s3://models/many")
    job = prepare("many", Options(config=cfg))
    assert len(job.model.files) == MANY + 1
    assert job.model.format == "gguf" and job.model.quantization == "Q4_K_M"
    out = LayoutRef.parse(f"oci:{tmp_path}/many:v1")
    start = time.monotonic()
    build_image(job.model, job.plan(), open_sink(out), settings=job.image_settings, reference=str(out))
    print(f"built {MANY + 1} objects in {time.monotonic() - start:.1f}s")
    files = read_image(tmp_path / "many", "v1")[2]
    assert files == {f"models/many/{k}": v for k, v in bucket["many"].items()}


# Runs modelimage and, at exit, writes its own peak RSS (VmHWM: this
# process's memory only; a child's ru_maxrss also counts the parent it was
# forked from) and the bytes it caused to be written to storage (/proc/self/io).
_MEASURED = """
import atexit, json, os, runpy, sys

def report():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    io = dict(line.split(": ", 1) for line in open("/proc/self/io"))
    with open(os.environ["MEASURE_TO"], "w") as f:
        json.dump({"max_rss": int(status["VmHWM"].split()[0]) * 1024, "written": int(io["write_bytes"])}, f)

atexit.register(report)
sys.argv = ["modelimage", *sys.argv[1:]]
runpy.run_module("modelimage", run_name="__main__")
"""


def _run_measured(args: list[str], env: dict[str, str], where: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``modelimage ARGS``; return its output, peak RSS and bytes written to disk."""
    report = where / "usage.json"
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *args], env={**env, "MEASURE_TO": str(report)},
                          capture_output=True, text=True, timeout=300)
    usage = json.loads(report.read_text()) if report.exists() else {}
    report.unlink(missing_ok=True)
    return proc, usage


@pytest.mark.integration
def test_push_streams_from_the_bucket_without_staging(bucket, registry, tmp_path) -> None:
    """`build s3://... --push`: the 128 MiB object goes from ranged GETs into
    the registry upload. Nothing lands in the temp directory, the process
    writes (almost) nothing to disk (the same build to an OCI layout, as a
    control, writes the whole object), and its peak RSS stays within a
    bounded amount of what `inspect` of the same prefix takes."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": bucket["endpoint"], "TMPDIR": str(tmp),
           "MODELIMAGE_CACHE_DIR": str(tmp_path / "cache")}
    base, base_usage = _run_measured(["inspect", f"s3://{BUCKET}/big", "--json"], env, tmp_path)
    assert base.returncode == 0, base.stderr
    layout, layout_usage = _run_measured(["build", f"s3://{BUCKET}/big", "-o", f"oci:{tmp_path}/layout:v1"],
                                         env, tmp_path)
    assert layout.returncode == 0, layout.stderr

    ref = f"{registry.host}/s3/big:v1"
    pushed, usage = _run_measured(["build", f"s3://{BUCKET}/big", "--push", ref, "--json"], env, tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    result = json.loads(pushed.stdout)
    assert list(tmp.iterdir()) == []  # nothing through tempfile
    grown = usage["max_rss"] - base_usage["max_rss"]
    print(f"push of {BIG >> 20} MiB from S3: peak RSS {usage['max_rss'] / 2**20:.0f} MiB "
          f"(inspect alone {base_usage['max_rss'] / 2**20:.0f} MiB, +{grown / 2**20:.1f} MiB), "
          f"{usage['written']} bytes written to disk (a build to a layout: {layout_usage['written']})")
    assert layout_usage["written"] >= BIG  # the control: the measurement sees a layout's blobs
    assert usage["written"] < 1 << 20  # the push: a few small cache files at most
    # bounded by the parts in flight (and copies of a few pieces on their way out), not by the object
    assert grown < (s3src.PARALLEL + 1) * s3src.PART_SIZE + (24 << 20) <= BIG / 2

    # the registry holds exactly the layers a local build of the same files has
    job = prepare(str(bucket["big"]), Options(name="big"))
    out = LayoutRef.parse(f"oci:{tmp_path}/local:v1")
    local = build_image(job.model, job.plan(), open_sink(out), settings=job.image_settings, reference=str(out))
    assert [la["digest"] for la in result["layers"]] == [la.descriptor.digest for la in local.layers]
    manifest = httpx.get(f"{registry.url}/v2/s3/big/manifests/v1",
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert [la["digest"] for la in manifest["layers"]] == [la.descriptor.digest for la in local.layers]
    assert manifest["annotations"]["dev.modelimage.source"] == f"s3://{BUCKET}/big"
    big_layer = max(manifest["layers"], key=lambda la: la["size"])
    h = hashlib.sha256()
    with httpx.stream("GET", f"{registry.url}/v2/s3/big/blobs/{big_layer['digest']}") as r:
        for chunk in r.iter_bytes():
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == big_layer["digest"]


@pytest.mark.integration
def test_dockerfile_of_a_bucket_is_one_line_error(bucket, tmp_path) -> None:
    from modelimage.render import RenderError, dockerfile

    job = prepare("llama", Options(config=_config(tmp_path, bucket["endpoint"], llama="s3://models/llama")))
    with pytest.raises(RenderError, match="not from a bucket"):
        dockerfile(job, job.plan())
