"""modelimage.tarstream: exact layer sizes, deterministic tars, digests, gzip."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from modelimage.content import FileRange, Literal, VirtualFile
from modelimage.errors import SourceError
from modelimage.tarstream import (
    DIR_MODE,
    FILE_MODE,
    Entry,
    LayerResult,
    LayerStream,
    entry_overhead,
    header,
    layer_size,
    parent_dirs,
    source_paths,
    write_layer,
)


class Sink:
    """The smallest BlobSink: collects bytes (memoryviews copied on write)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data: bytes | memoryview) -> None:
        self.buf.write(bytes(data))

    @property
    def data(self) -> bytes:
        return self.buf.getvalue()


def write(entries: list[Entry], **kw) -> tuple[bytes, LayerResult]:
    sink = Sink()
    res = write_layer(entries, sink, **kw)
    return sink.data, res


def make_file(path: Path, data: bytes, mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def whole(tar_path: str, src: Path) -> Entry:
    return Entry(tar_path, VirtualFile.whole(tar_path.rsplit("/", 1)[-1], src, src.stat().st_size))


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic non-repeating bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


LONG_NAME = "models/" + "/".join(["a-rather-long-directory-name"] * 4) + "/model-00001-of-00002.safetensors"
assert len(LONG_NAME) > 100


# (description, [(tar path, content bytes)])
CASES: list[tuple[str, list[tuple[str, bytes]]]] = [
    ("short names", [("models/x/config.json", b'{"a": 1}'), ("models/x/w.bin", payload(5000))]),
    ("no directory", [("top.txt", b"hello")]),
    ("long path (pax)", [(LONG_NAME, payload(1234))]),
    ("long file name (pax)", [("m/" + "n" * 150 + ".json", b"{}")]),
    ("non-ascii name (pax)", [("models/x/tokenizer-\u00e9\u00e8.json", b"{}")]),
    (
        "nested dirs",
        [
            ("models/x/a/b/c/deep.json", b"1" * 10),
            ("models/x/a/b/other.txt", b"2" * 700),
            ("models/x/z/last.txt", b"3" * 512),
        ],
    ),
    ("empty file", [("models/x/empty", b""), ("models/x/after", b"x")]),
    ("exact block", [("models/x/block", b"b" * 1024)]),
]


@pytest.fixture
def case_entries(tmp_path: Path, request: pytest.FixtureRequest) -> list[Entry]:
    files = request.param
    return [whole(name, make_file(tmp_path / "src" / f"f{i}", data)) for i, (name, data) in enumerate(files)]


@pytest.mark.parametrize("case_entries", [c[1] for c in CASES], ids=[c[0] for c in CASES], indirect=True)
@pytest.mark.parametrize("mtime", [0, 1_700_000_000])
def test_layer_size_is_exact(case_entries: list[Entry], mtime: int) -> None:
    data, res = write(case_entries, mtime=mtime)
    assert layer_size(case_entries, mtime) == len(data) == res.tar_size == res.size
    assert len(data) % 512 == 0
    assert data.endswith(b"\0" * 1024)


def test_layer_size_of_virtual_file_with_literals_and_ranges(tmp_path: Path) -> None:
    a = make_file(tmp_path / "a.bin", payload(10_000, 1))
    b = make_file(tmp_path / "b.bin", payload(3_000, 2))
    vf = VirtualFile(
        "shard.safetensors",
        (Literal(b"HEADER--"), FileRange(a, 100, 5000), Literal(b"\0" * 3), FileRange(b, 0, 3000), FileRange(a, 9000, 1000)),
        origin="a.bin,b.bin",
    )
    expected = b"HEADER--" + payload(10_000, 1)[100:5100] + b"\0" * 3 + payload(3_000, 2) + payload(10_000, 1)[9000:]
    assert vf.size == len(expected)
    entries = [Entry("models/x/shard.safetensors", vf)]
    data, res = write(entries, mtime=5)
    assert layer_size(entries, 5) == len(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        member = tf.getmember("models/x/shard.safetensors")
        assert tf.extractfile(member).read() == expected
    assert res.files[0].sha256 == "sha256:" + hashlib.sha256(expected).hexdigest()
    assert res.files[0].size == len(expected)
    assert source_paths(entries) == sorted([a, b])


def test_empty_layer_is_just_the_end_of_archive() -> None:
    data, res = write([])
    assert data == b"\0" * 1024
    assert layer_size([]) == 1024
    assert res.files == ()


def test_entry_overhead_matches_layer_size_difference(tmp_path: Path) -> None:
    src = make_file(tmp_path / "f", payload(777))
    e = whole("f.bin", src)
    assert layer_size([e]) == 1024 + 777 + entry_overhead("f.bin", 777)


def test_entries_share_their_padding_and_the_tar_is_unchanged(tmp_path: Path) -> None:
    """Files whose sizes need the same padding share one zero run (a model
    of 100,000 small files held 28 MB of identical ones), and the tar reads
    back as every file's bytes."""
    entries = [whole(f"f{i}.bin", make_file(tmp_path / f"f{i}", payload(700 + 512 * i))) for i in range(3)]
    stream = LayerStream(entries)
    pads = [p.data for p in stream.pieces if p.file == -1 and isinstance(p.data, bytes) and set(p.data) == {0}
            and 0 < len(p.data) < 512]
    assert len(pads) == 3 and pads[0] is pads[1] is pads[2]
    data, _ = write(entries)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [tf.extractfile(f"f{i}.bin").read() for i in range(3)] == \
            [payload(700 + 512 * i) for i in range(3)]


def test_header_is_single_block_for_short_names_and_pax_for_long() -> None:
    assert len(header("models/x/config.json", 10)) == 512
    assert len(header(LONG_NAME, 10)) > 512  # pax extended header + ustar header
    assert len(header("big", 9 * 2**30)) > 512  # over 8 GiB needs a pax size record
    assert header("a/b", 10, mtime=3) == header("a/b", 10, mtime=3)


def test_parent_dirs_sorted_parents_first() -> None:
    assert parent_dirs(["a/b/c/f", "a/x", "top", "z/y/f"]) == ["a", "a/b", "a/b/c", "z", "z/y"]
    assert parent_dirs(["f"]) == []


# ---------------------------------------------------------------- reading back


@pytest.fixture
def tree(tmp_path: Path) -> tuple[list[Entry], dict[str, bytes]]:
    contents = {
        "models/x/README.md": b"# readme\n",
        "models/x/config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "models/x/empty.txt": b"",
        LONG_NAME: payload(70_000, 3),
        "models/x/unet/diffusion_pytorch_model.safetensors": payload(100_000, 4),
        "models/x/unet/sub/config.json": b"{}",
    }
    entries = []
    for i, (name, data) in enumerate(sorted(contents.items())):
        src = make_file(tmp_path / "src" / f"{i}.dat", data, mtime=1_234_567)
        os.chmod(src, 0o600)  # source permissions must not leak into the layer
        entries.append(whole(name, src))
    return entries, contents


def test_tar_reads_back_with_fixed_metadata(tree: tuple[list[Entry], dict[str, bytes]]) -> None:
    entries, contents = tree
    mtime = 1_700_000_000
    data, res = write(entries, mtime=mtime)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        # directories first (sorted, parents before children), then the files in the given order
        dirs = parent_dirs(contents)
        assert names == dirs + [e.path for e in entries]
        seen: set[str] = set()
        for m in members:
            parts = m.name.split("/")
            for i in range(1, len(parts)):
                assert "/".join(parts[:i]) in seen, f"{m.name} before its parent"
            seen.add(m.name)
            assert m.uid == 0 and m.gid == 0
            assert m.uname == "" and m.gname == ""
            assert m.mtime == mtime
            if m.isdir():
                assert m.mode == DIR_MODE == 0o755
            else:
                assert m.isreg()
                assert m.mode == FILE_MODE == 0o644
                assert tf.extractfile(m).read() == contents[m.name]
                assert m.size == len(contents[m.name])
        assert {m.name for m in members if m.isreg()} == set(contents)
    # digests
    assert res.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert res.diff_id == res.digest
    assert res.size == len(data)
    assert [f.path for f in res.files] == [e.path for e in entries]
    for f in res.files:
        assert f.sha256 == "sha256:" + hashlib.sha256(contents[f.path]).hexdigest()
        assert f.size == len(contents[f.path])


def test_extracts_with_data_filter(tree: tuple[list[Entry], dict[str, bytes]], tmp_path: Path) -> None:
    entries, contents = tree
    data, _ = write(entries)
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(out, filter="data")
    for name, blob in contents.items():
        assert (out / name).read_bytes() == blob


def test_deterministic_across_source_paths_and_mtimes(tmp_path: Path) -> None:
    contents = {"models/x/a.json": b"{}", "models/x/w/weights.bin": payload(20_000, 9), LONG_NAME: b"long"}

    def build(where: str, src_mtime: int) -> tuple[bytes, LayerResult]:
        entries = [
            whole(name, make_file(tmp_path / where / f"{i}-{where}", data, mtime=src_mtime))
            for i, (name, data) in enumerate(sorted(contents.items()))
        ]
        return write(entries, mtime=42)

    d1, r1 = build("one", 1_000_000)
    d2, r2 = build("two", 2_000_000_000)
    assert d1 == d2
    assert r1 == r2
    # same source again: same bytes
    d3, r3 = build("one", 1_000_000)
    assert d3 == d1 and r3 == r1
    # a different layer mtime changes the bytes (and only the mtime fields)
    d4, r4 = write(
        [whole(name, tmp_path / "one" / f"{i}-one") for i, name in enumerate(sorted(contents))], mtime=43
    )
    assert d4 != d1 and len(d4) == len(d1)
    assert r4.files == r1.files


def test_progress_reports_every_byte(tree: tuple[list[Entry], dict[str, bytes]]) -> None:
    entries, _ = tree
    seen: list[int] = []
    data, res = write(entries, progress=seen.append)
    assert sum(seen) == len(data) == res.tar_size


# ---------------------------------------------------------------- gzip


def test_gzip_layer(tree: tuple[list[Entry], dict[str, bytes]]) -> None:
    entries, _ = tree
    plain, pres = write(entries, mtime=7)
    gz, gres = write(entries, mtime=7, compression="gzip")
    assert gz[:2] == b"\x1f\x8b"
    assert gres.digest == "sha256:" + hashlib.sha256(gz).hexdigest()
    assert gres.size == len(gz)
    assert gres.digest != gres.diff_id
    assert gres.diff_id == pres.digest
    assert gres.tar_size == len(plain) == layer_size(entries, 7)
    assert gzip.decompress(gz) == plain
    assert gres.files == pres.files
    # deterministic: no timestamp or file name in the gzip header
    gz2, gres2 = write(entries, mtime=7, compression="gzip")
    assert gz2 == gz and gres2 == gres
    assert gz[4:8] == b"\0\0\0\0"  # gzip MTIME field


def test_gzip_of_empty_layer() -> None:
    gz, res = write([], compression="gzip")
    assert gzip.decompress(gz) == b"\0" * 1024
    assert res.tar_size == 1024


# ---------------------------------------------------------------- source errors


def test_source_shorter_than_planned(tmp_path: Path) -> None:
    src = make_file(tmp_path / "w.bin", payload(1000))
    entry = Entry("models/x/w.bin", VirtualFile.whole("w.bin", src, 2000))
    with pytest.raises(SourceError, match="shorter than planned") as exc:
        write([entry])
    assert str(src) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_range_past_end_of_source(tmp_path: Path) -> None:
    src = make_file(tmp_path / "w.bin", payload(1000))
    entry = Entry("w", VirtualFile("w", (FileRange(src, 900, 200),)))
    with pytest.raises(SourceError):
        write([entry])


def test_missing_source(tmp_path: Path) -> None:
    entry = Entry("w", VirtualFile("w", (FileRange(tmp_path / "gone", 0, 10),)))
    with pytest.raises(SourceError, match="gone"):
        write([entry])


def test_raw_layer_hashes_each_byte_once(tmp_path, monkeypatch):
    """A raw layer (ModelPack, docker-model) is its file: the blob digest,
    the diff_id and the file's sha256 are one hash, computed once."""
    import modelimage.tarstream as ts

    data = os.urandom(3 * 1024 * 1024 + 7)
    (tmp_path / "w.gguf").write_bytes(data)
    hashed = [0]
    real = hashlib.sha256

    class Counting:
        def __init__(self):
            self._h = real()

        def update(self, b):
            hashed[0] += len(b)
            self._h.update(b)

        def hexdigest(self):
            return self._h.hexdigest()

        def copy(self):
            c = Counting()
            c._h = self._h.copy()
            return c

    monkeypatch.setattr(ts.hashlib, "sha256", Counting)
    stream = ts.LayerStream.raw("w.gguf", VirtualFile.whole("w.gguf", tmp_path / "w.gguf", len(data)))
    digester = ts.Digester(stream)
    out = io.BytesIO()
    for chunk in ts.blob_chunks(stream, digester):
        out.write(chunk)
    result = digester.result()
    want = "sha256:" + real(data).hexdigest()
    assert out.getvalue() == data
    assert result.digest == result.diff_id == result.files[0].sha256 == want
    assert (result.files[0].path, result.files[0].size, result.size, result.tar_size) == ("w.gguf", len(data),
                                                                                          len(data), len(data))
    assert hashed[0] == len(data)
