"""Tests for modelimage.formats.safetensors: header reading and resharding."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from modelimage.content import FileRange, Literal, VirtualFile
from modelimage.errors import FormatError, LayerTooLarge
from modelimage.formats.safetensors import (
    DTYPE_BITS,
    FLOAT_DTYPES,
    SHARD_RE,
    SafetensorsHeader,
    index_name,
    index_shards,
    read_header,
    read_index,
    serialize_header,
    shard_header_size,
    shard_name,
    split,
)

from .tools import header_or_none, write_virtual

# --------------------------------------------------------------------------
# helpers


materialize = write_virtual


def load_all(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """Every tensor of a file, via the reference library."""
    with safe_open(str(path), framework="np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def raw_file(path: Path, header: Any, data: bytes = b"", *, pad: int = 0) -> Path:
    """Write a safetensors file by hand (header given as an object or bytes)."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    body += b" " * pad
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def source_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embed.weight": rng.standard_normal((16, 8)).astype(np.float32),  # 512 B
        "layer.0.w": rng.standard_normal((8, 8)).astype(np.float16),  # 128 B
        "layer.0.b": rng.integers(-100, 100, 8).astype(np.int8),  # 8 B
        "layer.1.w": rng.standard_normal((8, 8)).astype(np.float32),  # 256 B
        "layer.1.idx": rng.integers(0, 1 << 40, 4).astype(np.int64),  # 32 B
        "mask": rng.integers(0, 2, 5).astype(bool),  # 5 B
        "scalar": np.array(3.5, dtype=np.float32),  # 4 B
        "empty": np.zeros((0, 3), dtype=np.float32),  # 0 B
        "lm_head.weight": rng.standard_normal((16, 8)).astype(np.float32),  # 512 B
    }


def check_split(files: list[VirtualFile], out: Path, expected: dict[str, np.ndarray],
                max_shard_size: int, stem: str, directory: str) -> dict[str, Any]:
    """Materialize a split, check shards and index; return the parsed index."""
    *shards, idx = files
    prefix = f"{directory}/" if directory else ""
    assert idx.name == prefix + index_name(stem)
    n = len(shards)
    loaded: dict[str, np.ndarray] = {}
    where: dict[str, str] = {}
    for k, vf in enumerate(shards, start=1):
        assert vf.name == prefix + shard_name(stem, k, n)
        assert SHARD_RE.match(vf.name.rsplit("/", 1)[-1])
        assert vf.size <= max_shard_size
        path = materialize(vf, out)
        assert path.stat().st_size <= max_shard_size
        tensors, meta = load_all(path)
        assert meta == {"format": "pt"}
        assert read_header(path).data_start % 8 == 0
        for name, arr in tensors.items():
            assert name not in loaded
            loaded[name] = arr
            where[name] = path.name
    assert set(loaded) == set(expected)
    for name, arr in expected.items():
        assert loaded[name].dtype == arr.dtype
        assert loaded[name].shape == arr.shape
        assert loaded[name].tobytes() == arr.tobytes()
    index = json.loads(materialize(idx, out).read_text())
    assert index["weight_map"] == where
    # greedy: each shard's successor starts with a tensor that did not fit
    shard_headers = [read_header(out / vf.name) for vf in shards]
    for prev, nxt in zip(shard_headers, shard_headers[1:]):
        grown = [*prev.tensors, nxt.tensors[0]]
        size = shard_header_size(grown, {"format": "pt"}) + sum(t.nbytes for t in grown)
        assert size > max_shard_size
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in expected.values())
    return index


# --------------------------------------------------------------------------
# read_header


def test_read_header_dtypes_and_metadata(tmp_path: Path) -> None:
    tensors = source_tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "héllo"})
    h = read_header(path)
    assert h.path == path
    assert h.file_size == path.stat().st_size
    assert h.metadata == {"format": "pt", "note": "héllo"}
    assert h.data_start == 8 + h.header_size
    by_name = {t.name: t for t in h.tensors}
    assert set(by_name) == set(tensors)
    assert [t.begin for t in h.tensors] == sorted(t.begin for t in h.tensors)
    dtypes = {"float32": "F32", "float16": "F16", "int8": "I8", "int64": "I64", "bool": "BOOL"}
    with open(path, "rb") as f:
        blob = f.read()
    for name, arr in tensors.items():
        t = by_name[name]
        assert t.dtype == dtypes[arr.dtype.name]
        assert t.shape == arr.shape
        assert t.parameter_count == arr.size
        assert t.nbytes == arr.nbytes
        assert blob[t.begin : t.end] == arr.tobytes()
    assert by_name["scalar"].shape == () and by_name["scalar"].parameter_count == 1
    assert by_name["empty"].parameter_count == 0


def test_read_header_hand_written_bf16_subbyte_holes_padding(tmp_path: Path) -> None:
    header = {
        "w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [16, 28]},  # after a hole
        "q": {"dtype": "F4", "shape": [5], "data_offsets": [0, 3]},  # ceil(20 bits / 8)
        "s": {"dtype": "F6_E2M3", "shape": [4], "data_offsets": [3, 6]},
        "z": {"dtype": "F8_E4M3", "shape": [0], "data_offsets": [6, 6]},
    }
    path = raw_file(tmp_path / "x.safetensors", header, bytes(range(28)), pad=5)
    h = read_header(path)
    assert h.metadata == {}
    assert [t.name for t in h.tensors] == ["q", "s", "z", "w"]
    w = h.tensors[-1]
    assert (w.dtype, w.shape, w.nbytes, w.parameter_count) == ("BF16", (2, 3), 12, 6)
    assert w.begin == h.data_start + 16


def test_dtype_tables() -> None:
    assert DTYPE_BITS["BF16"] == 16 and DTYPE_BITS["F4"] == 4 and DTYPE_BITS["C64"] == 64
    assert {"F16", "BF16", "F32", "F64", "F8_E4M3", "F4"} <= FLOAT_DTYPES
    assert not {"C64", "I8", "U8", "BOOL", "I64"} & FLOAT_DTYPES


def ok_entry(**kw: Any) -> dict[str, Any]:
    return {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} | kw}


BAD_CASES: list[tuple[str, bytes, str]] = [
    ("empty file", b"", "too short"),
    ("short prefix", b"\x01\x00\x00", "too short"),
    ("zero length", struct.pack("<Q", 0) + b"{}", "header length is 0"),
    ("over limit", struct.pack("<Q", 100_000_001) + b"{}", "exceeds the 100000000-byte limit"),
    ("huge length", b"\xff" * 8 + b"{}", "exceeds the"),
    ("truncated header", struct.pack("<Q", 50) + b"{}", "header length 50 exceeds file size 10"),
    ("not utf-8", struct.pack("<Q", 2) + b"\xff\xfe", "not valid UTF-8"),
    ("not json", struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
    ("json list", struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ("deep nesting", struct.pack("<Q", 200_000) + b"[" * 200_000, "not valid JSON"),
    ("huge int", struct.pack("<Q", 5002) + b"9" * 5000 + b"  ", "not valid JSON"),
    ("duplicate key", struct.pack("<Q", 15) + b'{"a":1, "a":2 }', "duplicate key 'a'"),
]

BAD_HEADERS: list[tuple[str, Any, bytes, str]] = [
    ("metadata not object", {"__metadata__": ["x"]}, b"", "__metadata__"),
    ("metadata value not str", {"__metadata__": {"a": 1}}, b"", "__metadata__"),
    ("entry not object", {"t": [1, 2]}, b"", "tensor 't': entry is not an object"),
    ("missing keys", {"t": {"dtype": "F32"}}, b"", "missing shape, data_offsets"),
    ("unknown dtype", ok_entry(dtype="F128"), b"\0" * 8, "unknown dtype 'F128'"),
    ("dtype not str", ok_entry(dtype=5), b"\0" * 8, "unknown dtype of type int"),
    ("shape not list", ok_entry(shape="2"), b"\0" * 8, "shape must be"),
    ("shape negative", ok_entry(shape=[-2]), b"\0" * 8, "shape must be"),
    ("shape float", ok_entry(shape=[2.0]), b"\0" * 8, "shape must be"),
    ("shape bool", ok_entry(shape=[True]), b"\0" * 8, "shape must be"),
    ("offsets one int", ok_entry(data_offsets=[0]), b"\0" * 8, "data_offsets must be"),
    ("offsets reversed", ok_entry(data_offsets=[8, 0]), b"\0" * 8, "data_offsets must be"),
    ("offsets negative", ok_entry(data_offsets=[-8, 0]), b"\0" * 8, "data_offsets must be"),
    ("offsets str", ok_entry(data_offsets=["0", "8"]), b"\0" * 8, "data_offsets must be"),
    ("data truncated", ok_entry(), b"\0" * 5, "data section is only 5 bytes"),
    ("size mismatch", ok_entry(shape=[3]), b"\0" * 8, "needs 12 bytes but data_offsets span 8"),
    ("huge shape", ok_entry(shape=[1 << 62] * 40), b"\0" * 8, "needs more than 18446744073709551616 bytes"),
    (
        "overlap",
        {
            "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
            "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
        },
        b"\0" * 6,
        "tensors 'a' and 'b' overlap",
    ),
]


@pytest.mark.parametrize("blob,expected", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_read_header_bad_bytes(tmp_path: Path, blob: bytes, expected: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(blob)
    with pytest.raises(FormatError) as info:
        read_header(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("header,data,expected", [c[1:] for c in BAD_HEADERS],
                         ids=[c[0] for c in BAD_HEADERS])
def test_read_header_bad_headers(tmp_path: Path, header: Any, data: bytes, expected: str) -> None:
    path = raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(FormatError) as info:
        read_header(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_read_header_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(FormatError, match="not a regular file"):
        read_header(tmp_path)


def test_metadata_null_is_empty(tmp_path: Path) -> None:
    assert read_header(raw_file(tmp_path / "m.safetensors", {"__metadata__": None})).metadata == {}


def test_long_names_are_cut_in_messages(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "n.safetensors", {"x" * 10_000: 1})
    with pytest.raises(FormatError) as info:
        read_header(path)
    assert len(str(info.value)) < 300


# random input: only FormatError may escape

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
json_any = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12,
)
tensor_like = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*DTYPE_BITS, "X", 3]),
        "shape": st.lists(st.integers(-2, 5), max_size=3) | json_any,
        "data_offsets": st.lists(st.integers(-4, 70), min_size=0, max_size=3) | json_any,
    }
) | json_any
headers = st.dictionaries(
    st.sampled_from(["a", "b", "c", "__metadata__"]) | st.text(max_size=4),
    tensor_like | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    max_size=4,
)


def assert_only_format_error(path: Path, blob: bytes) -> None:
    h = header_or_none(read_header, path, blob)
    if h is None:
        return
    assert isinstance(h, SafetensorsHeader)
    for t in h.tensors:
        assert h.data_start <= t.begin <= t.end <= h.file_size


FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(blob=st.binary(max_size=64))
def test_fuzz_random_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    assert_only_format_error(tmp_path_factory.mktemp("f") / "r.safetensors", blob)


@FUZZ
@given(n=st.integers(0, 2**64 - 1) | st.integers(0, 80), body=st.binary(max_size=80))
def test_fuzz_random_lengths(tmp_path_factory: pytest.TempPathFactory, n: int, body: bytes) -> None:
    path = tmp_path_factory.mktemp("f") / "r.safetensors"
    assert_only_format_error(path, struct.pack("<Q", n) + body)


@FUZZ
@given(header=headers, data=st.binary(max_size=70), pad=st.integers(0, 7))
def test_fuzz_json_headers(tmp_path_factory: pytest.TempPathFactory, header: Any,
                           data: bytes, pad: int) -> None:
    path = tmp_path_factory.mktemp("f") / "r.safetensors"
    body = json.dumps(header).encode() + b" " * pad
    assert_only_format_error(path, struct.pack("<Q", len(body)) + body + data)


# --------------------------------------------------------------------------
# read_index


def test_read_index(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps({"metadata": {"total_size": 3},
                                "weight_map": {"a": "m-00002-of-00002.safetensors",
                                               "b": "m-00001-of-00002.safetensors"}}))
    idx = read_index(path)
    assert idx["metadata"] == {"total_size": 3}
    assert index_shards(idx) == ["m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"]


@pytest.mark.parametrize("text,expected", [
    ("{not json", "not valid JSON"),
    ("[]", "not a JSON object"),
    ('{"metadata": {}}', "no weight_map"),
    ('{"weight_map": []}', "no weight_map"),
    ('{"weight_map": {"a": 1}}', "shard file names"),
    ('{"weight_map": {}, "metadata": 3}', "metadata must be"),
])
def test_read_index_bad(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(text)
    with pytest.raises(FormatError) as info:
        read_index(path)
    assert str(path) in str(info.value) and expected in str(info.value)


# --------------------------------------------------------------------------
# naming


def test_names() -> None:
    assert shard_name("model", 1, 4) == "model-00001-of-00004.safetensors"
    assert index_name("model") == "model.safetensors.index.json"
    m = SHARD_RE.match("diffusion_pytorch_model-00002-of-00003.safetensors")
    assert m and m["stem"] == "diffusion_pytorch_model" and m["index"] == "00002"
    assert m["total"] == "00003"
    assert not SHARD_RE.match("model-1-of-4.safetensors")
    assert not SHARD_RE.match("model.safetensors")


# --------------------------------------------------------------------------
# split


def test_split_single_file(tmp_path: Path) -> None:
    tensors = source_tensors()
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    save_file(tensors, str(src), metadata={"format": "pt"})
    h = read_header(src)
    limit = 1000
    files = split([h], stem="model", directory="", max_shard_size=limit)
    assert len(files) >= 3  # at least two shards and the index
    index = check_split(files, tmp_path / "out", tensors, limit, "model", "")
    assert set(index) == {"metadata", "weight_map"}
    assert set(index["metadata"]) == {"total_size"}
    # the index is the documented serialization
    idx_bytes = files[-1].segments[0]
    assert isinstance(idx_bytes, Literal)
    assert idx_bytes.data == (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
    # shards: one header literal, then ranges of the source, in file order
    order: list[str] = []
    for vf in files[:-1]:
        assert isinstance(vf.segments[0], Literal)
        assert all(isinstance(s, FileRange) and s.path == src for s in vf.segments[1:])
        assert vf.origin == "model.safetensors"
        shard_h = read_header(materialize(vf, tmp_path / "o2"))
        order += [t.name for t in shard_h.tensors]
        assert len(vf.segments[0].data) == shard_header_size(shard_h.tensors, {"format": "pt"})
    assert order == [t.name for t in h.tensors]
    # deterministic
    again = split([read_header(src)], stem="model", directory="", max_shard_size=limit)
    assert again == files


def test_split_contiguous_tensors_coalesce(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    tensors = {f"t{i}": np.full(10, i, dtype=np.uint8) for i in range(6)}
    save_file(tensors, str(src), metadata={"format": "pt"})
    files = split([read_header(src)], stem="model", directory="text_encoder",
                  max_shard_size=10_000)
    assert [f.name for f in files] == [
        "text_encoder/model-00001-of-00001.safetensors",
        "text_encoder/model.safetensors.index.json",
    ]
    assert len(files[0].segments) == 2  # header + one coalesced range
    check_split(files, tmp_path / "out", tensors, 10_000, "model", "text_encoder")


def test_resplit_sharded_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    part1 = {f"a.{i}": rng.standard_normal(40).astype(np.float32) for i in range(4)}
    part2 = {f"b.{i}": rng.standard_normal(30).astype(np.float16) for i in range(5)}
    unet = tmp_path / "src" / "unet"
    unet.mkdir(parents=True)
    stem = "diffusion_pytorch_model"
    p1, p2 = unet / shard_name(stem, 1, 2), unet / shard_name(stem, 2, 2)
    save_file(part1, str(p1), metadata={"format": "pt"})
    save_file(part2, str(p2), metadata={"format": "pt"})
    old_index = {
        "metadata": {"total_size": 1, "format": "pt", "extra": {"keep": True}},
        "weight_map": {**dict.fromkeys(part1, p1.name), **dict.fromkeys(part2, p2.name)},
    }
    (unet / index_name(stem)).write_text(json.dumps(old_index))
    index_in = read_index(unet / index_name(stem))
    headers = [read_header(unet / n) for n in index_shards(index_in)]
    limit = 400
    files = split(headers, stem=stem, directory="unet", max_shard_size=limit, index=index_in)
    assert len(files) - 1 >= 3
    index = check_split(files, tmp_path / "out", part1 | part2, limit, stem, "unet")
    assert index["metadata"]["format"] == "pt"
    assert index["metadata"]["extra"] == {"keep": True}
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in (part1 | part2).values())
    assert index_in["metadata"]["total_size"] == 1  # input not mutated
    for vf in files[:-1]:
        shard_names = [t.name for t in read_header(tmp_path / "out" / vf.name).tensors]
        sources = dict.fromkeys(f"unet/{p1.name if n in part1 else p2.name}" for n in shard_names)
        assert vf.origin == ",".join(sources)
    assert any("," in vf.origin for vf in files[:-1])  # one shard spans both sources
    assert files[-1].origin == f"unet/{p1.name},unet/{p2.name}"
    # the order across files is kept: set order, then offsets
    names = []
    for vf in files[:-1]:
        names += [t.name for t in read_header(materialize(vf, tmp_path / "o")).tensors]
    assert names == [t.name for h in headers for t in h.tensors]


def test_split_tensor_too_large(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    save_file({"small": np.zeros(4, np.float32), "big": np.zeros(1000, np.float32)}, str(src))
    h = read_header(src)
    with pytest.raises(LayerTooLarge) as info:
        split([h], stem="model", directory="", max_shard_size=2000)
    msg = str(info.value)
    assert str(src) in msg and "big" in msg and "4000 bytes" in msg and "2000-byte" in msg
    assert "\n" not in msg
    # just big enough works: header + data
    need = shard_header_size([t for t in h.tensors if t.name == "big"], {}) + 4000
    files = split([h], stem="model", directory="", max_shard_size=need)
    assert max(f.size for f in files[:-1]) <= need


def test_split_exact_fit_boundary(tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    tensors = {"a": np.ones(64, np.uint8), "b": np.ones(64, np.uint8)}
    save_file(tensors, str(src), metadata={"format": "pt"})
    h = read_header(src)
    whole = len(serialize_header(h.tensors, h.metadata)) + 128
    assert len(split([h], stem="m", directory="", max_shard_size=whole)) == 2
    assert len(split([h], stem="m", directory="", max_shard_size=whole - 1)) == 3


def test_split_duplicate_tensor_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": np.zeros(2, np.int8)}, str(a))
    save_file({"x": np.zeros(2, np.int8)}, str(b))
    with pytest.raises(FormatError, match="also in"):
        split([read_header(a), read_header(b)], stem="m", directory="", max_shard_size=10**6)


def test_split_no_tensors(tmp_path: Path) -> None:
    src = raw_file(tmp_path / "e.safetensors", {"__metadata__": {"format": "pt"}})
    files = split([read_header(src)], stem="m", directory="", max_shard_size=1000)
    assert [f.name for f in files] == ["m-00001-of-00001.safetensors", "m.safetensors.index.json"]
    tensors, meta = load_all(materialize(files[0], tmp_path / "out"))
    assert tensors == {} and meta == {"format": "pt"}
    with pytest.raises(LayerTooLarge):
        split([read_header(src)], stem="m", directory="", max_shard_size=8)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    limit=st.integers(150, 1500),
)
def test_split_property(tmp_path_factory: pytest.TempPathFactory, sizes: list[int],
                        limit: int) -> None:
    root = tmp_path_factory.mktemp("p")
    tensors = {f"t.{i}": np.full(n, i, dtype=np.uint8) for i, n in enumerate(sizes)}
    src = root / "model.safetensors"
    save_file(tensors, str(src), metadata={"format": "pt"})
    try:
        files = split([read_header(src)], stem="model", directory="", max_shard_size=limit)
    except LayerTooLarge:
        assert any(
            shard_header_size([t], {"format": "pt"}) + t.nbytes > limit
            for t in read_header(src).tensors
        )
        return
    check_split(files, root / "out", tensors, limit, "model", "")


# --------------------------------------------------------------------------
# differential: against safetensors' own writer and transformers' sharded save

# numpy dtypes safetensors.numpy writes, of every width (1, 2, 4, 8 bytes; bool)
_NP_DTYPES = (np.float64, np.int64, np.uint64, np.float32, np.int32, np.uint32, np.float16, np.int16, np.uint16,
              np.int8, np.uint8, np.bool_)


@st.composite
def _state_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(1, 10))
    names = draw(st.lists(st.from_regex(r"[a-z]{1,3}(\.[a-z0-9_]{1,4}){0,3}", fullmatch=True),
                          min_size=n, max_size=n, unique=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    out = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(_NP_DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)))  # odd sizes, scalars, empty
        raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
        out[name] = raw.view(np.uint8 if dtype == np.bool_ else dtype).astype(dtype).reshape(shape)
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=_state_dicts(), meta=st.sampled_from([None, {"format": "pt"}, {"format": "mlx"}]),
       source_shards=st.integers(1, 3), frac=st.floats(0.0, 1.0))
def test_reshard_matches_upstream_writers(tmp_path_factory: pytest.TempPathFactory, state: dict[str, np.ndarray],
                                          meta: dict[str, str] | None, source_shards: int, frac: float) -> None:
    """For generated models, modelimage's reshard against safetensors'
    ``save_file`` and transformers' sharded save (huggingface_hub's
    grouping): each shard is byte for byte what ``save_file`` writes for its
    tensors and metadata (so the same tensor order, alignment and header
    padding), the shards are huggingface_hub's greedy grouping in state-dict
    order, every tensor's data is aligned to its element size, and the index
    is what transformers writes and loads back to the same tensors."""
    from . import upstream

    root = tmp_path_factory.mktemp("diff")
    src = root / "src"
    # the source: one file, or a transformers-sharded set
    if source_shards == 1:
        src.mkdir()
        save_file(state, str(src / "model.safetensors"), metadata=meta)
        sources, index = [src / "model.safetensors"], None
    else:
        per = max(1, sum(a.nbytes for a in state.values()) // source_shards)
        names = upstream.hf_save_sharded(state, src, per, metadata=meta)
        sources = [src / n for n in names]
        index = json.loads((src / "model.safetensors.index.json").read_text()) if len(names) > 1 else None
    headers = [read_header(p) for p in sources]
    meta = headers[0].metadata or None  # transformers' sharded save writes {"format": "pt"} whatever was asked
    order = [t.name for h in headers for t in h.tensors]  # the state-dict order a reader sees
    biggest = max(shard_header_size([t], meta or {}) + t.nbytes for h in headers for t in h.tensors)
    total = sum(h.file_size for h in headers)
    limit = biggest + int(frac * max(0, total - biggest))
    files = split(headers, stem="model", directory="", max_shard_size=limit, index=index)
    out = root / "out"
    for vf in files:
        materialize(vf, out)
    shards = [f.name for f in files[:-1]]

    # 1. each shard is what save_file writes for its tensors and metadata
    groups = []
    for name in shards:
        with safe_open(str(out / name), framework="np") as f:
            keys = list(f.keys())
            assert f.metadata() == meta
        groups.append(keys)
        expected = root / "expected.safetensors"
        save_file({k: state[k] for k in keys}, str(expected), metadata=meta)
        assert upstream.file_bytes(out / name) == upstream.file_bytes(expected), name
        assert (out / name).stat().st_size <= limit
        # 2. alignment: data starts 8-aligned, each tensor at a multiple of its element size
        start, offsets = upstream.tensor_offsets(out / name)
        assert start % 8 == 0
        for k, (_, begin, _) in offsets.items():
            assert begin % min(8, state[k].dtype.itemsize) == 0, (k, begin)
    # 3. huggingface_hub's grouping: consecutive runs of the state-dict order, each as full as fits
    flat = [k for g in groups for k in sorted(g, key=order.index)]
    assert flat == order
    for g, nxt in zip(groups, groups[1:]):
        grown = {k: state[k] for k in g + [min(nxt, key=order.index)]}
        expected = root / "grown.safetensors"
        save_file(grown, str(expected), metadata=meta)
        assert expected.stat().st_size > limit
    # 4. the index: as transformers writes it, and transformers' loader reads the same tensors
    index_bytes = upstream.file_bytes(out / "model.safetensors.index.json")
    written = json.loads(index_bytes)
    assert index_bytes == (json.dumps(written, indent=2, sort_keys=True) + "\n").encode()
    assert written["metadata"]["total_size"] == sum(a.nbytes for a in state.values())
    assert written["weight_map"] == {k: name for name, g in zip(shards, groups) for k in g}
    loaded = upstream.transformers_load(out)
    assert set(loaded) == set(state)
    for k, a in state.items():
        assert loaded[k].dtype == a.dtype and loaded[k].shape == a.shape and loaded[k].tobytes() == a.tobytes()


def test_shard_order_is_the_reference_writers(tmp_path: Path) -> None:
    """Every dtype the reference library knows, in its enum order (wider
    first, then by name) as save_file lays them out."""
    tensors = {f"t{i:02d}": np.zeros(8, dtype) for i, dtype in enumerate(_NP_DTYPES)}
    tensors["a"] = np.zeros(3, np.uint8)
    save_file(tensors, str(tmp_path / "x.safetensors"))
    h = read_header(tmp_path / "x.safetensors")
    from modelimage.formats.safetensors import shard_order

    assert [t.name for t in shard_order(list(reversed(h.tensors)))] == [t.name for t in h.tensors]
