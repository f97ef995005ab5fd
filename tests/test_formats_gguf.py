"""Tests for modelimage.formats.gguf: header reading and llama.cpp-style splitting.

Valid files are written with the real ``gguf.GGUFWriter``; outputs are checked
with the real ``gguf.GGUFReader``.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V
from gguf.quants import dequantize, quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelimage.content import Literal, VirtualFile
from modelimage.errors import FormatError, LayerTooLarge, SourceError
from modelimage.formats.gguf import (
    SPLIT_RE,
    ArraySummary,
    read_header,
    split,
    split_name,
)

from .tools import header_or_none, virtual_bytes, write_virtual

N_TOKENS = 2000
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"


# ---------------------------------------------------------------------------
# helpers


def _k_quant_bytes(rows: int, cols: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Valid raw blocks for a K-quant gguf-py cannot quantize to (Q4_K, Q6_K):
    random quants with small finite f16 scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scale = np.full(n_blocks, 0.01, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == Q.Q4_K:  # d, dmin first
        blocks[:, 0:2] = scale
        blocks[:, 2:4] = scale
    elif qtype == Q.Q6_K:  # d last
        blocks[:, -2:] = scale
    else:
        raise AssertionError(qtype)
    raw = blocks.reshape(rows, cols // block_size * type_size)
    assert np.isfinite(dequantize(raw, qtype)).all()
    return raw


def _add_tensors(w: gguf.GGUFWriter, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)

    def f32(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    w.add_tensor("token_embd.weight", _k_quant_bytes(64, 512, Q.Q4_K, rng), raw_dtype=Q.Q4_K)
    w.add_tensor("blk.0.attn_norm.weight", f32(256))
    w.add_tensor("blk.0.attn_q.weight", quantize(f32(128, 256), Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.ffn_down.weight", _k_quant_bytes(32, 512, Q.Q6_K, rng), raw_dtype=Q.Q6_K)
    w.add_tensor("blk.1.attn_norm.weight", f32(256))
    w.add_tensor("blk.1.attn_q.weight", quantize(f32(64, 256), Q.Q4_0), raw_dtype=Q.Q4_0)
    w.add_tensor("blk.1.ffn_down.weight", _k_quant_bytes(32, 256, Q.Q4_K, rng), raw_dtype=Q.Q4_K)
    w.add_tensor("output_norm.weight", f32(256))
    w.add_tensor("output.weight", f32(64, 256).astype(np.float16))


def write_llama(
    path: Path,
    *,
    alignment: int | None = None,
    n_tokens: int = N_TOKENS,
    split_max_tensors: int = 0,
) -> list[Path]:
    """A small llama-shaped Q4_K_M GGUF written by gguf-py; returns the file(s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    w.add_name("tiny-llama")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(2048)
    w.add_embedding_length(256)
    w.add_block_count(2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(n_tokens)])
    w.add_token_scores([float(-i) for i in range(n_tokens)])
    w.add_token_types([1] * n_tokens)
    w.add_chat_template(CHAT_TEMPLATE)
    _add_tensors(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if split_max_tensors:
        return sorted(path.parent.glob(f"{path.stem}-*-of-*.gguf"))
    return [path]


def materialize(files: Sequence[VirtualFile], root: Path) -> list[Path]:
    return [write_virtual(vf, root) for vf in files]


def field_values(reader: gguf.GGUFReader) -> dict[str, object]:
    """Real key/values of a reader (not the GGUF.* pseudo-fields), split.* dropped."""
    return {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and not name.startswith("split.")
    }


def tensor_bytes(readers: Sequence[gguf.GGUFReader]) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    return {
        t.name: (int(t.tensor_type), tuple(int(d) for d in t.shape), t.data.tobytes())
        for r in readers
        for t in r.tensors
    }


def split_field(reader: gguf.GGUFReader, key: str) -> tuple[object, list[V]]:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents(), field.types


# ---------------------------------------------------------------------------
# read_header


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama(tmp_path_factory.mktemp("llama") / "tiny.gguf")[0]


@pytest.fixture(scope="module")
def llama64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama(tmp_path_factory.mktemp("llama64") / "tiny64.gguf", alignment=64)[0]


@pytest.mark.parametrize("which", ["llama", "llama64"])
def test_read_header_matches_gguf_reader(which: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(which)
    h = read_header(path)
    reader = gguf.GGUFReader(path)

    assert h.path == path
    assert h.file_size == path.stat().st_size
    assert h.version == 3
    assert h.alignment == (64 if which == "llama64" else 32)
    assert h.alignment == reader.alignment
    assert h.data_start == reader.data_offset
    assert h.architecture == "llama"
    assert h.file_type_name == "Q4_K_M"
    assert h.split_no is None and h.split_count is None

    assert [t.name for t in h.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(h.tensors, reader.tensors):
        assert ours.offset == theirs.data_offset
        assert ours.nbytes == theirs.n_bytes == theirs.data.nbytes
        assert ours.type_id == int(theirs.tensor_type)
        assert ours.type_name == theirs.tensor_type.name
        assert list(ours.shape) == [int(d) for d in theirs.shape]
        assert ours.parameter_count == theirs.n_elements
        assert ours.offset % h.alignment == 0
    assert h.parameter_count == sum(t.n_elements for t in reader.tensors)
    types = {t.name: t.type_name for t in h.tensors}
    assert types["token_embd.weight"] == "Q4_K"
    assert types["blk.0.attn_q.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "Q6_K"
    assert types["blk.1.attn_q.weight"] == "Q4_0"
    assert types["output.weight"] == "F16"
    assert types["output_norm.weight"] == "F32"
    assert dict((t.name, t.shape) for t in h.tensors)["token_embd.weight"] == (512, 64)

    # metadata: decoded scalars/strings/small arrays, summaries for big arrays
    md = h.metadata
    assert md["general.name"] == "tiny-llama"
    assert md["llama.block_count"] == 2
    assert md["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert md["tokenizer.ggml.add_bos_token"] is True
    assert md["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert md["tokenizer.ggml.tokens"] == ArraySummary(V.STRING, N_TOKENS)
    assert md["tokenizer.ggml.scores"] == ArraySummary(V.FLOAT32, N_TOKENS)

    # raw key/value spans: same keys and byte spans as gguf-py's fields
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]
    assert [k for k, _, _ in h.kv_spans] == [f.name for f in fields]
    for (_key, start, end), f in zip(h.kv_spans, fields):
        assert start == f.offset
        assert end - start == sum(int(p.nbytes) for p in f.parts)
    assert h.kv_bytes() == sum(e - s for _, s, e in h.kv_spans)
    # the tokenizer dominates the metadata: ~3000 tokens of 8+6 bytes + scores + types
    assert h.tokenizer_bytes > N_TOKENS * (8 + 4 + 4 + 4)
    assert h.tokenizer_bytes == h.kv_bytes("tokenizer.")


def test_small_arrays_are_decoded(tmp_path: Path) -> None:
    path = write_llama(tmp_path / "small.gguf", n_tokens=5)[0]
    md = read_header(path).metadata
    assert md["tokenizer.ggml.tokens"] == [f"tok{i}" for i in range(5)]
    assert md["tokenizer.ggml.token_type"] == [1] * 5
    assert md["tokenizer.ggml.scores"] == [0.0, -1.0, -2.0, -3.0, -4.0]


def test_file_type_names(tmp_path: Path) -> None:
    def file_type(value: int | None) -> str | None:
        data = build(kvs=[] if value is None else [kv("general.file_type", V.UINT32, u32(value))])
        p = tmp_path / "ft.gguf"
        p.write_bytes(data)
        return read_header(p).file_type_name

    assert file_type(None) is None
    assert file_type(gguf.LlamaFileType.ALL_F32) == "F32"
    assert file_type(gguf.LlamaFileType.MOSTLY_F16) == "F16"
    assert file_type(gguf.LlamaFileType.MOSTLY_Q8_0) == "Q8_0"
    assert file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M) == "Q4_K_M"


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="missing.gguf"):
        read_header(tmp_path / "missing.gguf")


# ---------------------------------------------------------------------------
# hand-built files for bad input


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return u64(len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def tinfo(name: str | bytes, dims: Sequence[int], ggml_type: int, offset: int) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ggml_type) + u64(offset)


def build(
    *,
    kvs: Sequence[bytes] = (),
    tensors: Sequence[bytes] = (),
    data: bytes = b"",
    magic: bytes = b"GGUF",
    version: bytes = u32(3),
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    head = magic + version + u64(len(tensors) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors)
    head += bytes(-len(head) % alignment)
    return head + data


F32 = 0
ONE_F32 = [tinfo("w", [8], F32, 0)]

BAD_FILES: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "not a GGUF file"),
    "short": (b"GGU", "not a GGUF file"),
    "bad magic": (build(magic=b"GGML"), "not a GGUF file"),
    "safetensors-ish": (b"\x08\x00\x00\x00\x00\x00\x00\x00{}" + bytes(30), "not a GGUF file"),
    "version 1": (build(version=u32(1)), "unsupported GGUF version 1"),
    "version 4": (build(version=u32(4)), "unsupported GGUF version 4"),
    "big-endian": (build(version=struct.pack(">I", 3)), "big-endian"),
    "kv count too big": (build(n_kv=2**40), "cannot fit"),
    "tensor count too big": (build(n_tensors=2**63), "cannot fit"),
    "key length too big": (build(kvs=[u64(2**62) + b"abc"]), "truncated"),
    "truncated key": (build(kvs=[u64(20) + b"general"], alignment=1), "truncated"),
    "invalid utf-8 key": (build(kvs=[kv(b"bad\xff\xfekey", V.UINT8, b"\x01")]), "UTF-8"),
    "unknown value type": (build(kvs=[kv("a", 13, u32(0))]), "unknown value type 13"),
    "truncated scalar": (b"GGUF" + u32(3) + u64(0) + u64(1) + gstr("a") + u32(V.UINT64) + b"\x01\x02", "truncated"),
    "truncated string value": (build(kvs=[kv("a", V.STRING, u64(1000) + b"xyz")]), "truncated"),
    "truncated array": (
        build(kvs=[kv("a", V.ARRAY, u32(V.UINT32) + u64(1000) + u32(1) * 3)]),
        "truncated",
    ),
    "huge array count": (build(kvs=[kv("a", V.ARRAY, u32(V.STRING) + u64(2**61))]), "truncated"),
    "truncated string array": (
        build(kvs=[kv("a", V.ARRAY, u32(V.STRING) + u64(3) + gstr("x") + gstr("y") + u64(500))]),
        "truncated",
    ),
    "truncated long string array": (
        build(kvs=[kv("a", V.ARRAY, u32(V.STRING) + u64(1500) + gstr("x") * 1499 + u64(500))], alignment=1),
        "truncated",
    ),
    "unknown array element type": (build(kvs=[kv("a", V.ARRAY, u32(77) + u64(1))]), "unknown value type 77"),
    "duplicate key": (build(kvs=[kv("a", V.UINT8, b"\x01"), kv("a", V.UINT8, b"\x02")]), "duplicate key"),
    "alignment not power of two": (
        build(kvs=[kv("general.alignment", V.UINT32, u32(48))]),
        "not a power of two",
    ),
    "alignment zero": (build(kvs=[kv("general.alignment", V.UINT32, u32(0))]), "not a power of two"),
    "alignment wrong type": (
        build(kvs=[kv("general.alignment", V.UINT64, u64(64))]),
        "must be a UINT32",
    ),
    "too many dims": (build(tensors=[tinfo("w", [1, 1, 1, 1, 8], F32, 0)], data=bytes(32)), "5 dimensions"),
    "unknown ggml type (removed Q4_2)": (build(tensors=[tinfo("w", [8], 4, 0)], data=bytes(32)), "unknown ggml type 4"),
    "unknown ggml type": (build(tensors=[tinfo("w", [8], 999, 0)], data=bytes(32)), "unknown ggml type 999"),
    "invalid utf-8 tensor name": (build(tensors=[tinfo(b"\xc3(", [8], F32, 0)], data=bytes(32)), "UTF-8"),
    "truncated tensor info": (build(n_tensors=1, kvs=[kv("pad", V.STRING, gstr("x" * 40))]), "truncated"),
    "ne0 not a block multiple": (
        build(tensors=[tinfo("w", [100, 2], int(Q.Q4_K), 0)], data=bytes(1024)),
        "ne[0]=100 is not a multiple of the Q4_K block size 256",
    ),
    "misaligned offset": (
        build(tensors=[tinfo("a", [8], F32, 0), tinfo("b", [8], F32, 48)], data=bytes(128)),
        "tensor b: offset 48 is not a multiple of the alignment 32",
    ),
    "tensor past end of file": (
        build(tensors=[tinfo("w", [64], F32, 0)], data=bytes(100)),
        "truncated: tensor w ends at",
    ),
    "tensor offset past end of file": (
        build(tensors=[tinfo("w", [8], F32, 2**40)], data=bytes(32)),
        "truncated: tensor w ends at",
    ),
    "overlapping tensors": (
        build(tensors=[tinfo("a", [16], F32, 0), tinfo("b", [8], F32, 32)], data=bytes(128)),
        "tensors a and b overlap",
    ),
    "duplicate tensor name": (
        build(tensors=[tinfo("a", [8], F32, 0), tinfo("a", [8], F32, 32)], data=bytes(64)),
        "duplicate tensor name",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_input_is_a_format_error(case: str, tmp_path: Path) -> None:
    data, problem = BAD_FILES[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(FormatError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message
    assert problem in message
    assert "\n" not in message


def test_hand_built_file_is_valid(tmp_path: Path) -> None:
    """The builder used for the bad cases makes readable files when not corrupted."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(
        build(
            kvs=[
                kv("general.architecture", V.STRING, gstr("x")),
                kv("n", V.ARRAY, u32(V.ARRAY) + u64(1) + u32(V.UINT8) + u64(2) + b"\x01\x02"),
            ],
            tensors=[tinfo("a", [8], F32, 0), tinfo("s", [], F32, 32)],
            data=bytes(36),
        )
    )
    h = read_header(path)
    assert h.metadata == {"general.architecture": "x", "n": [[1, 2]]}
    assert [(t.name, t.shape, t.nbytes, t.parameter_count) for t in h.tensors] == [
        ("a", (8,), 32, 8),
        ("s", (), 4, 1),
    ]
    assert gguf.GGUFReader(path).tensors[0].data_offset == h.tensors[0].offset

    path.write_bytes(build(version=u32(2), tensors=[tinfo("a", [8], F32, 0)], data=bytes(32)))
    assert read_header(path).version == 2


# ---------------------------------------------------------------------------
# hypothesis: only FormatError escapes


def _small_valid_file() -> tuple[bytes, int]:
    """A tiny valid file exercising every value kind, and its data start."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "small.gguf"
        w = gguf.GGUFWriter(path, "llama")
        w.add_uint32("general.alignment", 32)
        w.add_string("tokenizer.chat_template", "t")
        w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
        w.add_array("tokenizer.ggml.scores", [0.5, 1.5, 2.5])
        w.add_array("nested", [[1, 2], [3]])
        w.add_array("tokenizer.ggml.merges", [f"m{i}" for i in range(1100)])  # summarised
        w.add_int64("some.count", 7)
        w.add_tensor("a", np.ones(8, dtype=np.float32))
        w.add_tensor("b", quantize(np.ones((1, 32), dtype=np.float32), Q.Q8_0), raw_dtype=Q.Q8_0)
        w.add_tensor("c", np.ones((2, 4), dtype=np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes(), read_header(path).data_start


SMALL, SMALL_HEADER_END = _small_valid_file()
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _check_only_format_errors(data: bytes, directory: Path) -> None:
    h = header_or_none(read_header, directory / "fuzz.gguf", data)
    if h is None:
        return
    # whatever parses is internally consistent and can be planned
    assert all(h.data_start <= t.offset and t.offset + t.nbytes <= h.file_size for t in h.tensors)
    split([h], prefix="m", directory="", max_shard_size=1 << 40)


def test_small_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "small.gguf"
    path.write_bytes(SMALL)
    h = read_header(path)
    assert h.metadata["nested"] == [[1, 2], [3]]
    assert [t.name for t in h.tensors] == ["a", "b", "c"]


@HYPOTHESIS
@given(cut=st.integers(min_value=0, max_value=len(SMALL) - 1))
def test_fuzz_truncation(tmp_path: Path, cut: int) -> None:
    _check_only_format_errors(SMALL[:cut], tmp_path)


@HYPOTHESIS
@given(
    edits=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(SMALL) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    )
)
def test_fuzz_mutation(tmp_path: Path, edits: list[tuple[int, int]]) -> None:
    data = bytearray(SMALL)
    for pos, value in edits:
        data[pos % SMALL_HEADER_END] = value  # the header is where parsing can go wrong
    _check_only_format_errors(bytes(data), tmp_path)


@HYPOTHESIS
@given(tail=st.binary(max_size=300), version=st.sampled_from([b"", u32(2), u32(3)]))
def test_fuzz_random_after_magic(tmp_path: Path, tail: bytes, version: bytes) -> None:
    _check_only_format_errors(b"GGUF" + version + tail, tmp_path)


# ---------------------------------------------------------------------------
# split


def check_split_set(
    paths: Sequence[Path], source: Sequence[Path], max_shard_size: int
) -> list[gguf.GGUFReader]:
    """The outputs are a valid llama.cpp split set holding exactly the source model."""
    readers = [gguf.GGUFReader(p) for p in paths]
    src = [gguf.GGUFReader(p) for p in source]
    n = len(paths)
    total = sum(len(r.tensors) for r in src)
    for i, (p, r) in enumerate(zip(paths, readers)):
        assert p.stat().st_size <= max_shard_size
        m = SPLIT_RE.match(p.name)
        assert m and int(m["no"]) == i + 1 and int(m["count"]) == n
        assert split_field(r, "split.no") == (i, [V.UINT16])
        assert split_field(r, "split.count") == (n, [V.UINT16])
        assert split_field(r, "split.tensors.count") == (total, [V.INT32])
        if i > 0:
            expected = {"split.no", "split.count", "split.tensors.count"}
            if src[0].alignment != 32:
                expected.add("general.alignment")
                assert split_field(r, "general.alignment") == (src[0].alignment, [V.UINT32])
            assert {k for k in r.fields if not k.startswith("GGUF.")} == expected
        assert r.alignment == src[0].alignment
    assert field_values(readers[0]) == field_values(src[0])
    # same order of the original keys, split keys last
    keys = [k for k in readers[0].fields if not k.startswith("GGUF.")]
    assert keys[-3:] == ["split.no", "split.count", "split.tensors.count"]
    assert keys[:-3] == [k for k in src[0].fields if not k.startswith(("GGUF.", "split."))]
    # every tensor byte-identical, in the original order
    assert list(tensor_bytes(readers).items()) == list(tensor_bytes(src).items())
    return readers


def test_split_small_shards(llama: Path, tmp_path: Path) -> None:
    h = read_header(llama)
    limit = 70_000  # the metadata (mostly tokenizer) is ~46 kB, the tensors ~116 kB
    files = split([h], prefix="tiny", directory="models/gguf", max_shard_size=limit)
    assert len(files) >= 3
    assert [f.name for f in files] == [
        f"models/gguf/{split_name('tiny', k + 1, len(files))}" for k in range(len(files))
    ]
    assert all(f.size <= limit for f in files)
    assert files[0].origin == "models/gguf/tiny.gguf"
    paths = materialize(files, tmp_path)
    check_split_set(paths, [llama], limit)
    # tensor data is streamed straight from the source, never copied into literals
    for f in files:
        assert sum(s.length for s in f.segments if isinstance(s, Literal)) < 8192 + h.alignment * 16

    # deterministic: same plan and same bytes from a fresh read
    again = split([read_header(llama)], prefix="tiny", directory="models/gguf", max_shard_size=limit)
    assert again == files
    assert [virtual_bytes(f) for f in again] == [p.read_bytes() for p in paths]


def test_split_is_greedy(llama: Path) -> None:
    h = read_header(llama)
    limit = 70_000
    files = split([h], prefix="m", directory="", max_shard_size=limit)
    counts = [struct.unpack_from("<Q", virtual_bytes(f), 8)[0] for f in files]
    assert sum(counts) == len(h.tensors)
    # each split but the last could not take the next split's first tensor
    done = 0
    for f, count in zip(files[:-1], counts[:-1]):
        nxt = h.tensors[done + count]
        extra = 8 + len(nxt.name) + 4 + 8 * len(nxt.shape) + 4 + 8 + -(-nxt.nbytes // 32) * 32
        assert f.size + extra > limit - 32  # allow for the header padding slack
        done += count


def test_split_alignment_64(llama64: Path, tmp_path: Path) -> None:
    h = read_header(llama64)
    limit = 50_000  # split 0 is metadata only
    files = split([h], prefix="a64", directory="", max_shard_size=limit)
    assert len(files) >= 3
    paths = materialize(files, tmp_path)
    readers = check_split_set(paths, [llama64], limit)
    for p, r in zip(paths, readers):
        split_header = read_header(p)
        assert split_header.alignment == 64
        assert all(t.offset % 64 == 0 for t in split_header.tensors)
        assert [t.offset for t in split_header.tensors] == [t.data_offset for t in r.tensors]


def test_split_metadata_only_first_split(llama: Path, tmp_path: Path) -> None:
    """When the tokenizer leaves no room, split 0 holds only metadata (as with
    gguf-split --no-tensor-first-split)."""
    h = read_header(llama)
    limit = h.kv_bytes() + 200
    assert h.tensors[0].nbytes > 200  # the first tensor does not fit next to it
    files = split([h], prefix="m", directory="", max_shard_size=limit)
    paths = materialize(files, tmp_path)
    readers = check_split_set(paths, [llama], limit)
    assert readers[0].tensors == []


def test_split_one_file(llama: Path, tmp_path: Path) -> None:
    h = read_header(llama)
    files = split([h], prefix="tiny", directory="", max_shard_size=10 * h.file_size)
    assert [f.name for f in files] == ["tiny-00001-of-00001.gguf"]
    check_split_set(materialize(files, tmp_path), [llama], 10 * h.file_size)


def test_resplit_gguf_py_split_set(tmp_path: Path) -> None:
    reference = write_llama(tmp_path / "ref" / "tiny.gguf", n_tokens=500)[0]
    (tmp_path / "set").mkdir()
    parts = write_llama(tmp_path / "set" / "tiny.gguf", n_tokens=500, split_max_tensors=5)
    assert [p.name for p in parts] == ["tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf"]
    headers = [read_header(p) for p in parts]
    assert [(x.split_no, x.split_count) for x in headers] == [(0, 2), (1, 2)]

    limit = 50_000
    files = split(headers, prefix="re", directory="", max_shard_size=limit)
    assert len(files) >= 3
    assert files[1].origin  # names the source split(s)
    paths = materialize(files, tmp_path / "out")
    check_split_set(paths, [reference], limit)
    check_split_set(paths, parts, limit)  # keys of the old split 0, minus split.*


def test_resplit_into_same_partition_is_byte_identical(tmp_path: Path) -> None:
    """Equal-size tensors and a limit of exactly the largest input file reproduce
    gguf-py's own split set byte for byte."""
    w = gguf.GGUFWriter(tmp_path / "eq.gguf", "llama", split_max_tensors=2)
    w.add_name("eq")
    for i in range(6):
        w.add_tensor(f"t{i}", np.full((1024,), i, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    parts = sorted(tmp_path.glob("eq-*-of-*.gguf"))
    assert len(parts) == 3
    limit = max(p.stat().st_size for p in parts)
    files = split([read_header(p) for p in parts], prefix="eq", directory="", max_shard_size=limit)
    assert [f.name for f in files] == [p.name for p in parts]
    assert [virtual_bytes(f) for f in files] == [p.read_bytes() for p in parts]


def test_resplit_own_output(llama64: Path, tmp_path: Path) -> None:
    planned = split([read_header(llama64)], prefix="m", directory="", max_shard_size=100_000)
    first = materialize(planned, tmp_path / "a")
    assert len(first) == 2
    files = split([read_header(p) for p in first], prefix="m", directory="", max_shard_size=50_000)
    assert len(files) >= 4
    check_split_set(materialize(files, tmp_path / "b"), [llama64], 50_000)


def test_tensor_too_large(llama: Path) -> None:
    h = read_header(llama)
    biggest = max(h.tensors, key=lambda t: t.nbytes)
    limit = biggest.nbytes  # no room for the split header
    with pytest.raises(LayerTooLarge) as info:
        split([h], prefix="m", directory="", max_shard_size=limit)
    message = str(info.value)
    assert str(llama) in message
    assert biggest.name in message
    assert str(biggest.nbytes) in message and str(limit) in message
    assert "\n" not in message


def test_metadata_too_large(llama: Path) -> None:
    h = read_header(llama)
    with pytest.raises(LayerTooLarge, match="metadata"):
        split([h], prefix="m", directory="", max_shard_size=h.kv_bytes())


def test_incomplete_or_misordered_split_set(tmp_path: Path) -> None:
    parts = write_llama(tmp_path / "tiny.gguf", n_tokens=10, split_max_tensors=3)
    headers = [read_header(p) for p in parts]
    assert len(headers) == 3
    with pytest.raises(FormatError, match="pass every split"):
        split(headers[:1], prefix="m", directory="", max_shard_size=1 << 30)
    with pytest.raises(FormatError, match="expected split 1 of 3"):
        split(headers[::-1], prefix="m", directory="", max_shard_size=1 << 30)
    with pytest.raises(FormatError, match="expected split 3 of 3"):
        split(headers[:2] + headers[:1], prefix="m", directory="", max_shard_size=1 << 30)


def test_split_names() -> None:
    assert split_name("model", 1, 3) == "model-00001-of-00003.gguf"
    m = SPLIT_RE.match("my-model-Q4_K_M-00002-of-00010.gguf")
    assert m and (m["prefix"], m["no"], m["count"]) == ("my-model-Q4_K_M", "00002", "00010")
    assert SPLIT_RE.match("model.gguf") is None
    with pytest.raises(ValueError):
        split_name("m", 0, 3)


# ---------------------------------------------------------------------------
# differential: against gguf-py's own writer and reader, general.alignment set

_GGUF_TYPES = (Q.F32, Q.F16, Q.BF16, Q.F64, Q.I8, Q.I16, Q.I32, Q.Q8_0, Q.Q4_0)


def _raw_tensor(rng: np.random.Generator, qtype: Q, rows: int, blocks: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Raw bytes (uint8, numpy-order byte shape) and ggml shape of a tensor."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    ne0 = blocks * block_size
    raw = rng.integers(0, 256, size=(rows, blocks * type_size), dtype=np.uint8)
    if qtype in (Q.Q8_0, Q.Q4_0):  # a finite f16 scale at the start of each block
        view = raw.reshape(rows * blocks, type_size)
        view[:, 0:2] = np.full((rows * blocks, 1), 0.01, np.float16).view(np.uint8)
    return raw, (ne0, rows)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), alignment=st.sampled_from([8, 32, 64, 128, 256]),
       types=st.lists(st.sampled_from(_GGUF_TYPES), min_size=1, max_size=8), frac=st.floats(0, 1))
def test_split_matches_gguf_writer_and_reader(tmp_path_factory: pytest.TempPathFactory, seed: int, alignment: int,
                                              types: list[Q], frac: float) -> None:
    """Generated models of every width and odd sizes, with general.alignment
    set: each split is byte for byte what gguf-py's GGUFWriter writes for the
    same key/values (the model's in split 0, then split.no/count/
    tensors.count as its own split writer adds them; later splits restate a
    non-default alignment) and tensors, and gguf-py's GGUFReader reads every
    tensor back identical, at an aligned offset."""
    root = tmp_path_factory.mktemp("gdiff")
    rng = np.random.default_rng(seed)
    src = root / "m.gguf"
    w = gguf.GGUFWriter(src, "llama")
    w.add_name("diff")
    w.add_custom_alignment(alignment)
    w.add_uint32("llama.block_count", len(types))
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(int(rng.integers(0, 50)))])
    w.add_float32("llama.rope.freq_base", 10000.5)
    for i, q in enumerate(types):
        raw, shape = _raw_tensor(rng, q, int(rng.integers(1, 5)), int(rng.integers(1, 7)))
        w.add_tensor(f"blk.{i}.w", raw, raw_shape=raw.shape, raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    h = read_header(src)
    assert h.alignment == alignment
    per = [len(t.name) + 64 + _pad(t.nbytes, alignment) for t in h.tensors]
    smallest = _pad(h.data_start + 64, alignment) + max(per)  # room for split 0's keys and any one tensor
    limit = smallest + int(frac * max(0, h.file_size + 4096 - smallest))
    files = split([h], prefix="m", directory="", max_shard_size=limit)
    paths = materialize(files, root / "out")
    src_reader = gguf.GGUFReader(src)
    n = len(files)
    for k, p in enumerate(paths):
        r = gguf.GGUFReader(p)
        assert r.alignment == alignment
        for t in r.tensors:
            assert t.data_offset % alignment == 0
        # the same split, written by gguf-py
        expected = root / f"expected-{k}.gguf"
        ew = gguf.GGUFWriter(expected, None)  # no general.architecture of its own: copy the fields
        ew.data_alignment = alignment
        if k == 0:
            for name, field in src_reader.fields.items():
                if name.startswith("GGUF."):
                    continue
                vtype = field.types[0]
                sub = field.types[-1] if vtype == V.ARRAY else None
                ew.add_key_value(name, field.contents(), vtype, sub_type=sub)
        ew.add_key_value("split.no", k, V.UINT16)
        ew.add_key_value("split.count", n, V.UINT16)
        ew.add_key_value("split.tensors.count", len(h.tensors), V.INT32)
        if k and alignment != 32:
            ew.add_key_value("general.alignment", alignment, V.UINT32)
        by_name = {t.name: t for t in src_reader.tensors}
        for t in r.tensors:
            s = by_name[t.name]
            assert bytes(t.data) == bytes(s.data)
            block_size, type_size = gguf.GGML_QUANT_SIZES[s.tensor_type]
            ne = [int(x) for x in s.shape]
            byte_shape = (*reversed(ne[1:]), ne[0] // block_size * type_size)
            ew.add_tensor(t.name, np.asarray(s.data).view(np.uint8).reshape(byte_shape),
                          raw_shape=byte_shape, raw_dtype=s.tensor_type)
        ew.write_header_to_file()
        ew.write_kv_data_to_file()
        ew.write_tensors_to_file()
        ew.close()
        assert p.read_bytes() == expected.read_bytes(), k
    assert sorted(t.name for p in paths for t in gguf.GGUFReader(p).tensors) == sorted(t.name for t in h.tensors)


def _pad(n: int, a: int) -> int:
    return -(-n // a) * a
