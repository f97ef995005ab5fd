"""modelimage.artifact: ModelPack and Docker Model Runner artifacts.

Raw (one-file) layer streams; both formats of the llama safetensors and GGUF
fixtures into OCI layouts and oci-archives, checked against the specs
(modelpack/model-spec specs-go/v1 and schema/config-schema.json,
docker/model-spec spec.md and config.md); determinism; resharding; limits;
then pushed to the real registry and read back with skopeo, oras-py and the
ModelPack Python client (PyPI ``modelpack-client``), comparing every file's
bytes, or, for resharded weights, every tensor, with the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from modelimage import synth
from modelimage.artifact import (
    ANNOTATION_FILE_METADATA,
    ANNOTATION_FILEPATH,
    ANNOTATION_MEDIATYPE_UNTESTED,
    DOCKER_CHAT_TEMPLATE,
    DOCKER_CONFIG,
    DOCKER_CONFIG_TAR,
    DOCKER_GGUF,
    DOCKER_LICENSE,
    DOCKER_SAFETENSORS,
    FORMATS,
    MODELPACK_ARTIFACT_TYPE,
    MODELPACK_CODE,
    MODELPACK_CONFIG,
    MODELPACK_DATASET,
    MODELPACK_DOC,
    MODELPACK_WEIGHT,
    MODELPACK_WEIGHT_CONFIG,
    artifact_manifest_size,
    artifact_size,
    build_artifact,
    docker_media_type,
    modelpack_media_type,
    param_size,
    plan_artifact,
    precision,
)
from modelimage.build import build_image
from modelimage.cache import DigestCache
from modelimage.content import FileRange, Literal, VirtualFile
from modelimage.errors import ConfigError, PlanError
from modelimage.job import Options, prepare
from modelimage.layout import LayoutRef, open_sink
from modelimage.oci import ANNOTATION_TITLE, MEDIA_TYPE_MANIFEST
from modelimage.registry.client import RegistryClient
from modelimage.registry.push import PushSettings, RegistrySink
from modelimage.registry.reference import Reference
from modelimage.tarstream import Digester, Entry, LayerStream, blob_chunks

from .tools import SMALL, need, run, virtual_bytes

MB = 10**6
LLAMA_FILES = {
    "LICENSE", "README.md", "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json",
}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha256(path.read_bytes())


@pytest.fixture
def cache(tmp_path) -> DigestCache:
    return DigestCache(tmp_path / "cache")


class Built:
    """An artifact built into an OCI layout, with its manifest and config."""

    def __init__(self, source: Path, fmt: str, out: Path, cache: DigestCache, max_layer_size: int = 10**9,
                 **options):
        self.job = prepare(str(source), Options(max_layer_size=max_layer_size, **options))
        self.ref = LayoutRef("oci", out, "v1")
        self.result = build_artifact(self.job.model, self.job.plan(), open_sink(self.ref), format=fmt,  # type: ignore[arg-type]
                                     settings=self.job.image_settings, reference=str(self.ref), cache=cache)
        self.manifest_bytes = self.blob(self.result.manifest.digest)
        self.manifest = json.loads(self.manifest_bytes)
        self.config = json.loads(self.blob(self.manifest["config"]["digest"]))
        self.layers = self.manifest["layers"]

    def blob(self, digest: str) -> bytes:
        return (self.ref.path / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    def by_title(self) -> dict[str, dict]:
        return {layer["annotations"][ANNOTATION_TITLE]: layer for layer in self.layers}


# ---------------------------------------------------------------- raw streams


def _stream_bytes(stream: LayerStream, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(bytes(d) for d, _ in stream.chunks(start, end))


def test_raw_stream_is_the_file(tmp_path):
    data = os.urandom(3 * 2**20 + 17)
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    stream = LayerStream.raw("w.bin", VirtualFile.whole("w.bin", src, len(data)))
    assert stream.kind == "raw" and stream.mtime is None and stream.size == len(data)
    assert _stream_bytes(stream) == data
    assert _stream_bytes(stream, 1000, 2**20 + 5) == data[1000 : 2**20 + 5]

    digester = Digester(stream)
    out = b"".join(bytes(c) for c in blob_chunks(stream, digester))
    res = digester.result()
    assert out == data
    assert res.digest == res.diff_id == res.files[0].sha256 == sha256(data)
    assert (res.size, res.tar_size, res.files[0].path) == (len(data), len(data), "w.bin")

    # resumable: a snapshot taken part-way continues to the same digests
    d = Digester(stream)
    for chunk, file in stream.chunks(0, 12345):
        d.feed(chunk, file)
    snap = d.copy()
    list(blob_chunks(stream, snap, 12345))
    assert snap.result() == res


def test_raw_stream_of_a_resharded_file(tmp_path):
    """A VirtualFile made of generated bytes and source ranges (a rewritten
    header followed by tensor data) streams as exactly those bytes."""
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 100)
    vf = VirtualFile("shard-00001-of-00002.gguf",
                     (Literal(b"HEADER" * 10), FileRange(src, 100, 5000), Literal(b"\0" * 7), FileRange(src, 9000, 3)))
    expected = virtual_bytes(vf)
    stream = LayerStream.raw(vf.name, vf)
    assert stream.size == len(expected) == vf.size
    assert _stream_bytes(stream) == expected
    assert _stream_bytes(stream, 55, 5070) == expected[55:5070]
    d = Digester(stream)
    list(blob_chunks(stream, d))
    assert d.result().digest == sha256(expected)


def test_empty_raw_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    stream = LayerStream.raw("empty", VirtualFile.whole("empty", tmp_path / "empty", 0))
    d = Digester(stream)
    list(blob_chunks(stream, d))
    assert d.result().digest == d.result().files[0].sha256 == sha256(b"")


def test_raw_and_tar_layers_of_one_file_have_different_cache_keys(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    vf = VirtualFile.whole("f", tmp_path / "f", 100)
    cache = DigestCache(tmp_path / "c")
    raw = cache.key(LayerStream.raw("f", vf), "none")
    tar = cache.key(LayerStream([Entry("f", vf)], 0), "none")
    assert raw and tar and raw != tar
    assert raw == cache.key(LayerStream.raw("f", vf), "none")


# ---------------------------------------------------------------- classifying


@pytest.mark.parametrize(("name", "size", "expected", "tested"), [
    ("model-00001-of-00002.safetensors", 10, MODELPACK_WEIGHT, True),
    ("llama-Q4_K_M.gguf", 10, MODELPACK_WEIGHT, True),
    ("pytorch_model.bin", 10, MODELPACK_WEIGHT, True),
    ("unet/diffusion_pytorch_model.safetensors", 10, MODELPACK_WEIGHT, True),
    ("config.json", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("model.safetensors.index.json", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("tokenizer.model", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("merges.txt", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("chat_template.jinja", 10, MODELPACK_WEIGHT_CONFIG, True),
    ("README.md", 10, MODELPACK_DOC, True),
    ("LICENSE", 10, MODELPACK_DOC, True),
    ("LICENSE.txt", 10, MODELPACK_DOC, True),
    ("USE_POLICY.md", 10, MODELPACK_DOC, True),
    ("figures/arch.png", 10, MODELPACK_DOC, True),
    ("modeling_custom.py", 10, MODELPACK_CODE, True),
    ("eval/sample.jsonl", 10, MODELPACK_DATASET, True),
    ("odd.blob", 10, MODELPACK_WEIGHT_CONFIG, False),
    ("odd.blob", 64 * 2**20, MODELPACK_WEIGHT, False),
])
def test_modelpack_media_types(name, size, expected, tested):
    assert modelpack_media_type(name, size) == (expected, tested)


@pytest.mark.parametrize(("name", "expected"), [
    ("model.gguf", DOCKER_GGUF),
    ("model-00001-of-00002.safetensors", DOCKER_SAFETENSORS),
    ("LICENSE", DOCKER_LICENSE),
    ("LICENSE.md", DOCKER_LICENSE),
    ("NOTICE", DOCKER_LICENSE),
    ("chat_template.jinja", DOCKER_CHAT_TEMPLATE),
    ("config.json", DOCKER_CONFIG_TAR),
    ("tokenizer.model", DOCKER_CONFIG_TAR),
    ("README.md", DOCKER_CONFIG_TAR),
])
def test_docker_media_types(name, expected):
    assert docker_media_type(name) == expected


@pytest.mark.parametrize(("parameters", "expected"), [
    (8_030_261_248, "8B"), (6_738_415_616, "6.7B"), (1_705_216, "1.7M"), (999_960_000, "1B"),
    (70_553_706_496, "70.6B"), (1_000_000_000_000, "1T"), (137_000_000, "137M"), (500, None), (0, None),
])
def test_param_size_is_count_and_scale(parameters, expected):
    assert param_size(parameters) == expected


@pytest.mark.parametrize(("dtypes", "expected"), [
    ({"F16": 100}, "fp16"), ({"BF16": 990, "F32": 10}, "bf16"), ({"Q4_K": 65, "Q6_K": 35}, "mixed"),
    ({"Q8_0": 99, "F32": 1}, "int8"), ({"INT4": 100}, "int4"), ({}, None),
])
def test_precision(dtypes, expected):
    assert precision(dtypes) == expected


# ---------------------------------------------------------------- ModelPack


def check_raw_layer(layer: dict, source_root: Path, epoch: int = 0) -> None:
    """A raw layer as model-spec annotations.md says, with the file's digest."""
    ann = layer["annotations"]
    path = ann[ANNOTATION_FILEPATH]
    assert ann[ANNOTATION_TITLE] == path
    assert ann[ANNOTATION_MEDIATYPE_UNTESTED] in ("true", "false")
    meta = json.loads(ann[ANNOTATION_FILE_METADATA])
    assert meta == {"name": Path(path).name, "mode": 0o644, "uid": 0, "gid": 0, "size": layer["size"],
                    "mtime": "1970-01-01T00:00:00Z" if epoch == 0 else meta["mtime"], "typeflag": ord("0")}
    if (source_root / path).exists():
        assert layer["digest"] == file_sha(source_root / path)
        assert layer["size"] == (source_root / path).stat().st_size


# modelpack/model-spec specs-go/v1/config.go (JSON names); the schema allows no other keys
DESCRIPTOR_KEYS = {"createdAt", "authors", "family", "name", "docURL", "sourceURL", "datasetsURL", "version",
                   "revision", "vendor", "licenses", "title", "description"}
CONFIG_KEYS = {"architecture", "format", "paramSize", "precision", "quantization", "capabilities"}


def check_modelpack_config(c: dict, layers: list[dict]) -> None:
    assert set(c) == {"descriptor", "config", "modelfs"}
    assert set(c["descriptor"]) <= DESCRIPTOR_KEYS and c["descriptor"]["name"]
    assert set(c["config"]) <= CONFIG_KEYS
    assert all(isinstance(v, str) for v in c["config"].values())
    assert c["modelfs"] == {"type": "layers", "diffIds": [layer["digest"] for layer in layers]}


def test_modelpack_llama(llama_dir, tmp_path, cache):
    b = Built(llama_dir, "modelpack", tmp_path / "oci", cache)
    m = b.manifest
    assert m["mediaType"] == MEDIA_TYPE_MANIFEST and m["schemaVersion"] == 2
    assert m["artifactType"] == MODELPACK_ARTIFACT_TYPE
    assert m["config"]["mediaType"] == MODELPACK_CONFIG
    assert b.result.manifest.artifact_type == MODELPACK_ARTIFACT_TYPE
    index = json.loads((b.ref.path / "index.json").read_text())
    assert index["manifests"][0]["artifactType"] == MODELPACK_ARTIFACT_TYPE

    titles = [layer["annotations"][ANNOTATION_TITLE] for layer in b.layers]
    assert set(titles) == LLAMA_FILES and len(titles) == len(LLAMA_FILES)
    assert titles[:2] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    types = {t: layer["mediaType"] for t, layer in b.by_title().items()}
    assert types == {
        "model-00001-of-00002.safetensors": MODELPACK_WEIGHT, "model-00002-of-00002.safetensors": MODELPACK_WEIGHT,
        "LICENSE": MODELPACK_DOC, "README.md": MODELPACK_DOC,
        **{n: MODELPACK_WEIGHT_CONFIG for n in ("config.json", "generation_config.json", "model.safetensors.index.json",
                                                "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json")},
    }
    for layer in b.layers:
        check_raw_layer(layer, llama_dir)
        assert b.blob(layer["digest"]) == (llama_dir / layer["annotations"][ANNOTATION_FILEPATH]).read_bytes()

    c = b.config
    check_modelpack_config(c, b.layers)
    assert c["descriptor"] == {"createdAt": "1970-01-01T00:00:00Z", "name": "llama"}
    assert c["config"] == {"architecture": "LlamaForCausalLM", "format": "safetensors", "paramSize": "1.7M",
                           "precision": "fp16"}
    assert [bl.diff_id for bl in b.result.layers] == c["modelfs"]["diffIds"]

    # what --json prints
    out = b.result.to_json()
    assert out["digest"] == b.result.manifest.digest and len(out["layers"]) == len(LLAMA_FILES)
    assert {f["path"] for layer in out["layers"] for f in layer["files"]} == {"/" + n for n in LLAMA_FILES}
    assert artifact_manifest_size(b.job.model, b.job.plan(), "modelpack", b.job.image_settings) == len(b.manifest_bytes)


def test_modelpack_gguf(gguf_file, tmp_path, cache):
    b = Built(gguf_file, "modelpack", tmp_path / "oci", cache)
    (layer,) = b.layers
    assert layer["mediaType"] == MODELPACK_WEIGHT
    assert layer["annotations"][ANNOTATION_TITLE] == gguf_file.name
    check_raw_layer(layer, gguf_file.parent)
    c = b.config
    check_modelpack_config(c, b.layers)
    assert c["config"] == {"architecture": "llama", "format": "gguf", "paramSize": "1.7M", "precision": "mixed",
                           "quantization": "Q4_K_M"}
    assert c["modelfs"]["diffIds"] == [file_sha(gguf_file)]


def test_source_date_epoch_sets_created_and_file_mtimes(llama_dir, tmp_path, cache, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    b = Built(llama_dir, "modelpack", tmp_path / "oci", cache)
    assert b.config["descriptor"]["createdAt"] == "2023-11-14T22:13:20Z"
    assert b.manifest["annotations"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    for layer in b.layers:
        assert json.loads(layer["annotations"][ANNOTATION_FILE_METADATA])["mtime"] == "2023-11-14T22:13:20Z"


# ---------------------------------------------------------------- Docker


def test_docker_model_llama(llama_dir, tmp_path, cache):
    b = Built(llama_dir, "docker-model", tmp_path / "oci", cache)
    m = b.manifest
    assert m["mediaType"] == MEDIA_TYPE_MANIFEST and "artifactType" not in m
    assert m["config"]["mediaType"] == DOCKER_CONFIG
    assert [layer["mediaType"] for layer in b.layers] == [DOCKER_SAFETENSORS, DOCKER_SAFETENSORS, DOCKER_CONFIG_TAR,
                                                          DOCKER_LICENSE]
    titles = [layer["annotations"][ANNOTATION_TITLE] for layer in b.layers]
    assert titles == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.tar", "LICENSE"]
    for layer in b.layers:
        if layer["mediaType"] != DOCKER_CONFIG_TAR:
            check_raw_layer(layer, llama_dir)

    # the config archive: every other file, deterministic headers, same bytes
    config_tar = b.blob(b.layers[2]["digest"])
    with tarfile.open(fileobj=io.BytesIO(config_tar)) as t:
        members = t.getmembers()
        assert [x.name for x in members] == sorted(LLAMA_FILES - set(titles))
        for x in members:
            assert (x.uid, x.gid, x.mtime, x.mode, x.uname) == (0, 0, 0, 0o644, "")
            assert t.extractfile(x).read() == (llama_dir / x.name).read_bytes()

    c = b.config
    assert c["descriptor"] == {"created": "1970-01-01T00:00:00Z"}
    assert "createdAt" not in c["descriptor"]  # Model Runner would take it for a ModelPack config
    weights = sum(layer["size"] for layer in b.layers[:2])
    assert c["config"] == {"format": "safetensors", "quantization": "F16", "parameters": "1.71 M",
                           "architecture": "LlamaForCausalLM", "size": str(weights),
                           "safetensors": {"format": "pt", "tensor_count": "21"}}
    assert c["files"] == [{"diffID": layer["digest"], "type": layer["mediaType"]} for layer in b.layers]
    assert c["rootfs"] == {"type": "rootfs", "diff_ids": [layer["digest"] for layer in b.layers]}
    assert artifact_manifest_size(b.job.model, b.job.plan(), "docker-model", b.job.image_settings) == len(
        b.manifest_bytes)


def test_docker_model_gguf(gguf_file, tmp_path, cache):
    b = Built(gguf_file, "docker-model", tmp_path / "oci", cache)
    (layer,) = b.layers
    assert layer["mediaType"] == DOCKER_GGUF
    assert layer["digest"] == file_sha(gguf_file)
    c = b.config["config"]
    assert (c["format"], c["format_version"], c["quantization"], c["architecture"], c["parameters"]) == (
        "gguf", "3", "Q4_K_M", "llama", "1.71 M")
    assert c["size"] == str(gguf_file.stat().st_size)
    assert c["gguf"]["general.architecture"] == "llama"
    assert c["gguf"]["llama.context_length"] == str(SMALL.context)
    assert all(isinstance(v, str) for v in c["gguf"].values())  # Model Runner reads map[string]string
    assert not any(k.startswith(("tokenizer.", "split.")) for k in c["gguf"])


def test_docker_model_license_and_chat_template_layers(llama_dir, tmp_path, cache):
    model = tmp_path / "m"
    shutil.copytree(llama_dir, model)
    (model / "chat_template.jinja").write_text("{{ messages }}")
    (model / "NOTICE").write_text("notice\n")
    b = Built(model, "docker-model", tmp_path / "oci", cache)
    assert [(layer["mediaType"], layer["annotations"][ANNOTATION_TITLE]) for layer in b.layers[2:]] == [
        (DOCKER_CONFIG_TAR, "config.tar"), (DOCKER_LICENSE, "LICENSE"), (DOCKER_LICENSE, "NOTICE"),
        (DOCKER_CHAT_TEMPLATE, "chat_template.jinja")]


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("fmt", ["modelpack", "docker-model"])
def test_same_files_same_digest(llama_dir, tmp_path, fmt):
    """Another copy of the files (other paths, other mtimes), another
    layout, with and without the digest cache: the same manifest."""
    copy = tmp_path / "elsewhere" / "llama"
    shutil.copytree(llama_dir, copy)
    for p in copy.iterdir():
        os.utime(p, (1_600_000_000, 1_600_000_000))
    cached = DigestCache(tmp_path / "cache")
    a = Built(llama_dir, fmt, tmp_path / "a", cached)
    b = Built(copy, fmt, tmp_path / "b", DigestCache(enabled=False))
    c = Built(llama_dir, fmt, tmp_path / "c", cached)  # digests from the cache this time
    assert a.result.manifest.digest == b.result.manifest.digest == c.result.manifest.digest
    assert a.manifest_bytes == b.manifest_bytes


def test_formats_differ_but_share_weight_blobs(llama_dir, tmp_path, cache):
    digests = {}
    for fmt in ("modelpack", "docker-model"):
        b = Built(llama_dir, fmt, tmp_path / fmt, cache)
        digests[fmt] = b
    mp, dk = digests["modelpack"], digests["docker-model"]
    assert mp.result.manifest.digest != dk.result.manifest.digest
    assert [x["digest"] for x in mp.layers[:2]] == [x["digest"] for x in dk.layers[:2]]
    assert FORMATS == ("image", "modelpack", "docker-model")


def test_oci_archive_sink(gguf_file, tmp_path, cache):
    job = prepare(str(gguf_file), Options())
    ref = LayoutRef("oci-archive", tmp_path / "m.tar", "v1")
    r = build_artifact(job.model, job.plan(), open_sink(ref), format="modelpack", settings=job.image_settings,
                       reference=str(ref), cache=cache)
    with tarfile.open(tmp_path / "m.tar") as t:
        assert t.extractfile(f"blobs/sha256/{file_sha(gguf_file).split(':')[1]}").read() == gguf_file.read_bytes()
        index = json.loads(t.extractfile("index.json").read())
    assert index["manifests"][0]["digest"] == r.manifest.digest
    need("skopeo")
    raw = run("skopeo", "inspect", "--raw", f"oci-archive:{tmp_path / 'm.tar'}:v1").stdout
    assert sha256(raw.encode()) == r.manifest.digest


def test_progress_counts_every_byte(llama_dir, tmp_path, cache):
    job = prepare(str(llama_dir), Options())
    seen: list[int] = []
    layers = plan_artifact(job.model, job.plan(), "docker-model")
    build_artifact(job.model, job.plan(), open_sink(LayoutRef("oci", tmp_path / "o", "v1")), format="docker-model",
                   settings=job.image_settings, reference="x", cache=cache, progress=seen.append)
    assert sum(seen) == artifact_size(layers)


def test_image_build_unchanged_by_the_raw_support(llama_dir, tmp_path):
    """build_image still writes tar layers and an image config."""
    job = prepare(str(llama_dir), Options())
    ref = LayoutRef("oci", tmp_path / "img", "v1")
    r = build_image(job.model, job.plan(), open_sink(ref), settings=job.image_settings, reference="x",
                    cache=DigestCache(enabled=False))
    assert r.config.media_type == "application/vnd.oci.image.config.v1+json"
    assert {layer.descriptor.media_type for layer in r.layers} == {"application/vnd.oci.image.layer.v1.tar"}


# ---------------------------------------------------------------- resharding


def gguf_tensors(paths: list[Path]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for p in paths:
        for t in GGUFReader(str(p)).tensors:
            assert t.name not in out
            out[t.name] = (int(t.tensor_type), tuple(int(x) for x in t.shape), np.asarray(t.data).tobytes())
    return out


def safetensors_tensors(paths: list[Path]) -> dict[str, tuple]:
    from safetensors.numpy import load_file

    out: dict[str, tuple] = {}
    for p in paths:
        for k, v in load_file(str(p)).items():
            assert k not in out
            out[k] = (str(v.dtype), v.shape, v.tobytes())
    return out


@pytest.mark.parametrize("fmt", ["modelpack", "docker-model"])
def test_resharded_gguf_is_consecutive_layers(gguf_file, tmp_path, cache, fmt):
    b = Built(gguf_file, fmt, tmp_path / "oci", cache, max_layer_size=600_000)
    weight_type = MODELPACK_WEIGHT if fmt == "modelpack" else DOCKER_GGUF
    assert [layer["mediaType"] for layer in b.layers] == [weight_type, weight_type]
    stem = gguf_file.stem
    assert [layer["annotations"][ANNOTATION_TITLE] for layer in b.layers] == [
        f"{stem}-00001-of-00002.gguf", f"{stem}-00002-of-00002.gguf"]
    out = tmp_path / "files"
    out.mkdir()
    for layer in b.layers:
        assert layer["size"] <= 600_000
        (out / layer["annotations"][ANNOTATION_TITLE]).write_bytes(b.blob(layer["digest"]))
    shards = sorted(out.iterdir())
    assert gguf_tensors(shards) == gguf_tensors([gguf_file])
    assert [int(GGUFReader(str(s)).fields["split.no"].parts[-1][0]) for s in shards] == [0, 1]


def test_resharded_safetensors_for_docker_model(tmp_path, cache):
    """One 3.4 MB model.safetensors under a 1 MB limit: shards named the way
    Model Runner renames them, the new index in the config archive."""
    src = synth.write_llama_safetensors(tmp_path / "single", SMALL, shards=1)
    b = Built(src, "docker-model", tmp_path / "oci", cache, max_layer_size=1 * MB)
    weights = [x for x in b.layers if x["mediaType"] == DOCKER_SAFETENSORS]
    n = len(weights)
    assert n >= 4
    assert [x["annotations"][ANNOTATION_TITLE] for x in weights] == [
        f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    out = tmp_path / "files"
    out.mkdir()
    for layer in weights:
        assert layer["size"] <= MB
        (out / layer["annotations"][ANNOTATION_TITLE]).write_bytes(b.blob(layer["digest"]))
    (config_tar,) = [x for x in b.layers if x["mediaType"] == DOCKER_CONFIG_TAR]
    with tarfile.open(fileobj=io.BytesIO(b.blob(config_tar["digest"]))) as t:
        t.extractall(out, filter="data")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {x["annotations"][ANNOTATION_TITLE] for x in weights}
    assert safetensors_tensors(sorted(out.glob("*.safetensors"))) == safetensors_tensors([src / "model.safetensors"])


# ---------------------------------------------------------------- limits and refusals


def test_too_many_files_for_one_per_layer(tmp_path, cache):
    model = synth.write_llama_safetensors(tmp_path / "m", SMALL, shards=1)
    for i in range(130):
        (model / f"extra-{i:03d}.json").write_text("{}")
    job = prepare(str(model), Options())
    job.plan()  # an image packs them together
    with pytest.raises(PlanError, match=r"one file per layer: 1\d\d layers, but at most 125 fit.*--format image"):
        plan_artifact(job.model, job.plan(), "modelpack")
    # docker-model puts them in one config archive: fine
    assert len(plan_artifact(job.model, job.plan(), "docker-model")) == 3


def test_layer_limit_counts_resharded_shards(gguf_file, tmp_path):
    job = prepare(str(gguf_file), Options(max_layer_size=300_000))
    plan = job.plan()
    from dataclasses import replace

    tight = replace(plan, settings=replace(plan.settings, max_layers=3))
    with pytest.raises(PlanError, match="raise --max-layer-size"):
        plan_artifact(job.model, tight, "modelpack")


def test_docker_model_refusals(llama_dir, tmp_path):
    def refuse(model: Path, match: str, **options) -> None:
        job = prepare(str(model), Options(**options))
        with pytest.raises(ConfigError, match=match):
            plan_artifact(job.model, job.plan(), "docker-model")
        plan_artifact(job.model, job.plan(), "modelpack")  # ModelPack takes any files

    with_bin = tmp_path / "bin"
    shutil.copytree(llama_dir, with_bin)
    (with_bin / "pytorch_model.bin").write_bytes(b"\0" * 100)
    refuse(with_bin, r"pytorch_model.bin holds pytorch weights.*--exclude 'pytorch_model.bin'")

    two = tmp_path / "two"
    two.mkdir()
    synth.write_llama_gguf(two / "a-Q4.gguf", SMALL)
    synth.write_llama_gguf(two / "b-Q4.gguf", SMALL, seed=1)
    refuse(two, "several weight sets")

    nested = tmp_path / "nested"
    synth.write_llama_safetensors(nested / "sub", SMALL, shards=1)
    refuse(nested, "only loads weights at the top")

    renamed = tmp_path / "renamed"
    synth.write_llama_safetensors(renamed, SMALL, shards=1)
    (renamed / "model.safetensors").rename(renamed / "weights.safetensors")
    refuse(renamed, "renames safetensors shards", max_layer_size=1 * MB)

    job = prepare(str(llama_dir), Options(compression="gzip"))
    with pytest.raises(ConfigError, match="uncompressed.*--compression gzip"):
        plan_artifact(job.model, job.plan(), "modelpack")


# ---------------------------------------------------------------- the real registry


def push(source: Path, ref_text: str, fmt: str, cache: DigestCache, max_layer_size: int = 10**9, **settings):
    ref = Reference.parse(ref_text)
    job = prepare(str(source), Options(max_layer_size=max_layer_size, registry=ref.host))
    sink = RegistrySink(ref, RegistryClient(ref), settings=PushSettings(backoff=0.01, **settings), cache=cache)
    result = build_artifact(job.model, job.plan(), sink, format=fmt, settings=job.image_settings,  # type: ignore[arg-type]
                            reference=str(ref), cache=cache)
    return result, sink.stats


def skopeo_raw(ref: str, *extra: str) -> bytes:
    need("skopeo")
    return run("skopeo", "inspect", "--raw", *extra, "--tls-verify=false", f"docker://{ref}").stdout.encode()


def oras_pull(registry, ref: str, out: Path) -> dict[str, bytes]:
    import oras.provider

    client = oras.provider.Registry(hostname=registry.host, insecure=True)
    paths = client.pull(target=ref, outdir=str(out))
    return {Path(p).relative_to(out).as_posix(): Path(p).read_bytes() for p in paths}


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["modelpack", "docker-model"])
def test_push_llama_and_pull_with_oras(registry, llama_dir, tmp_path, fmt):
    cache = DigestCache(tmp_path / "cache")
    ref = f"{registry.host}/artifacts/llama-{fmt}:v1"
    # 512 KiB PATCHes: every weight goes up in several resumable chunks
    result, stats = push(llama_dir, ref, fmt, cache, chunk_size=512 * 1024)
    assert {layer.action for layer in result.layers} == {"uploaded"}
    local = Built(llama_dir, fmt, tmp_path / "local", DigestCache(enabled=False))
    assert result.manifest.digest == local.result.manifest.digest  # registry push == layout build

    raw = skopeo_raw(ref)
    assert sha256(raw) == result.manifest.digest
    assert json.loads(raw) == local.manifest
    assert sha256(skopeo_raw(ref, "--config")) == result.config.digest

    files = oras_pull(registry, ref, tmp_path / "pulled")
    if fmt == "docker-model":
        with tarfile.open(fileobj=io.BytesIO(files.pop("config.tar"))) as t:
            files.update({m.name: t.extractfile(m).read() for m in t.getmembers()})
    assert set(files) == LLAMA_FILES
    for name, data in files.items():
        assert data == (llama_dir / name).read_bytes(), name

    again, stats = push(llama_dir, ref, fmt, cache)
    assert again.manifest.digest == result.manifest.digest
    assert {layer.action for layer in again.layers} == {"exists"} and stats.bytes_sent == 0


@pytest.mark.integration
def test_raw_upload_resumes_from_the_confirmed_offset(registry, gguf_file, tmp_path, monkeypatch):
    """The connection drops as the third 256 KiB PATCH of the GGUF starts:
    the raw layer continues from the offset the registry confirms."""
    from .test_registry_push import _cut_patch

    chunk = 256 * 1024
    cuts = _cut_patch(monkeypatch, at=2 * chunk, after_bytes=0)
    result, stats = push(gguf_file, f"{registry.host}/artifacts/resume:v1", "docker-model",
                         DigestCache(tmp_path / "cache"), chunk_size=chunk)
    assert cuts == [2 * chunk] and stats.resumes == 1
    assert stats.resent_bytes == chunk
    assert result.layers[0].descriptor.digest == file_sha(gguf_file)
    assert sha256(skopeo_raw(f"{registry.host}/artifacts/resume:v1")) == result.manifest.digest


@pytest.mark.integration
def test_docker_model_after_modelpack_reuses_the_weight_blobs(registry, llama_dir, tmp_path):
    cache = DigestCache(tmp_path / "cache")
    ref = f"{registry.host}/artifacts/both"
    push(llama_dir, ref + ":modelpack", "modelpack", cache)
    result, stats = push(llama_dir, ref + ":docker", "docker-model", cache)
    actions = {layer.descriptor.media_type: layer.action for layer in result.layers}
    assert actions[DOCKER_SAFETENSORS] == "exists" and actions[DOCKER_LICENSE] == "exists"
    assert actions[DOCKER_CONFIG_TAR] == "uploaded"
    assert stats.bytes_sent == next(x.descriptor.size for x in result.layers if x.action == "uploaded")


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["modelpack", "docker-model"])
def test_push_resharded_gguf_and_load_the_pulled_shards(registry, gguf_file, tmp_path, fmt):
    cache = DigestCache(tmp_path / "cache")
    ref = f"{registry.host}/artifacts/gguf-{fmt}:split"
    result, _ = push(gguf_file, ref, fmt, cache, max_layer_size=600_000)
    assert len(result.layers) == 2
    assert sha256(skopeo_raw(ref)) == result.manifest.digest
    files = oras_pull(registry, ref, tmp_path / "pulled")
    assert sorted(files) == [f"{gguf_file.stem}-00001-of-00002.gguf", f"{gguf_file.stem}-00002-of-00002.gguf"]
    assert gguf_tensors(sorted((tmp_path / "pulled").glob("*.gguf"))) == gguf_tensors([gguf_file])


@pytest.mark.integration
def test_nested_model_pulls_into_folders(registry, tmp_path):
    """Titles are paths in the model, so a diffusers pipeline (two
    diffusion_pytorch_model.safetensors) pulls back into its folders."""
    model = synth.write_diffusers(tmp_path / "sd")
    ref = f"{registry.host}/artifacts/diffusers:v1"
    result, _ = push(model, ref, "modelpack", DigestCache(tmp_path / "cache"))
    files = oras_pull(registry, ref, tmp_path / "pulled")
    expected = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()}
    assert set(files) == expected and any("/" in n for n in expected)
    for name, data in files.items():
        assert data == (model / name).read_bytes(), name


# The ModelPack Python client is on PyPI as modelpack-client (0.1.0); PyPI's
# "modelpack" is an unrelated DeepView package, and model-spec's own SDK
# (specs-python, also named "modelpack") is not published there.
@pytest.mark.integration
def test_modelpack_client_pulls_what_we_push(registry, llama_dir, gguf_file, tmp_path):
    """The ModelPack Python client validates the manifest, the config against
    model-spec's JSON schema (schema/config-schema.json), every blob and
    diffId, and writes each layer to its org.cncf.model.filepath."""
    client_module = pytest.importorskip("modelpack_client", reason="pip install modelpack-client")
    import jsonschema
    from modelpack_client.schema import CONFIG_SCHEMA

    cache = DigestCache(tmp_path / "cache")
    client = client_module.ModelPackClient(insecure=True)

    ref = f"{registry.host}/artifacts/mpc-llama:v1"
    result, _ = push(llama_dir, ref, "modelpack", cache)
    pulled = client.pull(ref, tmp_path / "llama")
    assert list(jsonschema.Draft202012Validator(CONFIG_SCHEMA).iter_errors(pulled.config)) == []
    assert pulled.config["modelfs"]["diffIds"] == [layer.diff_id for layer in result.layers]
    assert {p.relative_to(tmp_path / "llama").as_posix() for p in pulled.files} == LLAMA_FILES
    for name in LLAMA_FILES:
        assert (tmp_path / "llama" / name).read_bytes() == (llama_dir / name).read_bytes()

    ref = f"{registry.host}/artifacts/mpc-gguf:split"
    push(gguf_file, ref, "modelpack", cache, max_layer_size=600_000)
    pulled = client.pull(ref, tmp_path / "gguf")
    assert pulled.config["config"]["format"] == "gguf"
    assert gguf_tensors(sorted(pulled.files)) == gguf_tensors([gguf_file])


def test_cli_build_format(llama_dir, tmp_path, capsys):
    """`modelimage build --format` writes each format; --base is refused for artifacts."""
    import json as _json

    from modelimage.cli import main

    digests = {}
    for fmt in ("image", "modelpack", "docker-model"):
        assert main(["build", str(llama_dir), "--format", fmt, "-o", f"oci:{tmp_path / fmt}:v1", "--json"]) == 0
        out = _json.loads(capsys.readouterr().out)
        digests[fmt] = out["digest"]
        manifest = _json.loads((tmp_path / fmt / "blobs" / "sha256" / out["digest"].split(":")[1]).read_bytes())
        if fmt == "modelpack":
            assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
        if fmt == "docker-model":
            assert manifest["config"]["mediaType"] == "application/vnd.docker.ai.model.config.v0.1+json"
    assert len(set(digests.values())) == 3
    assert main(["build", str(llama_dir), "--format", "modelpack", "--base", "oci:x", "-o", f"oci:{tmp_path}/y"]) == 2
