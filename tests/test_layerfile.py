"""modelimage.layerfile: a layer written into a file, big ranges copied by
the kernel in a thread beside their hashing: the same bytes and digests as
the plain stream, errors that name the disk or the source, no copy thread
left behind."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelimage.layerfile as layerfile
import modelimage.tarstream as tarstream
from modelimage.content import FileRange, Literal, VirtualFile
from modelimage.errors import SourceError
from modelimage.tarstream import Digester, Entry, LayerStream, write_layer

KIB = 1 << 10


@pytest.fixture(autouse=True)
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Background copies from 64 KiB on, in 16 KiB steps, read in 32 KiB chunks: every path runs on small files."""
    monkeypatch.setattr(tarstream, "BACKGROUND_COPY", 64 * KIB)
    monkeypatch.setattr(tarstream, "CHUNK", 32 * KIB)
    monkeypatch.setattr(layerfile, "STEP", 16 * KIB)


def payload(n: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n] if n else b""


def source(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def whole(tmp_path: Path, name: str, data: bytes) -> VirtualFile:
    return VirtualFile.whole(name, source(tmp_path, name, data), len(data))


def into_file(stream: LayerStream, path: Path, lead: bytes = b"") -> tuple[bytes, object]:
    """``stream`` written by write_layer_fd into ``path`` after ``lead`` bytes: (the blob's bytes, result)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, lead)
        digester = Digester(stream)
        layerfile.write_layer_fd(stream, digester, fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == len(lead) + stream.size  # left where the layer ends
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert data[: len(lead)] == lead
    return data[len(lead):], digester.result()


class Collect:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self.parts.append(bytes(data))


def copy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "copy"]


def test_raw_file_copied_beside_its_hash_is_the_file(tmp_path: Path) -> None:
    data = payload(300 * KIB + 7)
    vf = whole(tmp_path, "model.safetensors", data)
    blob, result = into_file(LayerStream.raw(vf.name, vf), tmp_path / "blob")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert blob == data
    assert result.digest == result.diff_id == result.files[0].sha256 == digest  # type: ignore[attr-defined]
    assert copy_threads() == []


@given(sizes=st.lists(st.integers(0, 200 * KIB), min_size=1, max_size=4), lead=st.integers(0, 3000),
       literal=st.binary(max_size=600))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tar_layer_same_bytes_as_the_stream(tmp_path: Path, sizes: list[int], lead: int, literal: bytes) -> None:
    """Headers, small files inline, big files in the background, a file made
    of a literal and two ranges, written after ``lead`` bytes of something
    else: byte for byte what write_layer streams, with the same digests."""
    entries = [Entry(f"models/m/f{i}.bin", whole(tmp_path, f"f{i}.bin", payload(n, i))) for i, n in enumerate(sizes)]
    big = source(tmp_path, "big.bin", payload(150 * KIB, 99))
    entries.append(Entry("models/m/resharded.bin", VirtualFile("resharded.bin", (
        Literal(literal), FileRange(big, 10, 80 * KIB), FileRange(big, 90 * KIB, 60 * KIB)) if literal else (
        FileRange(big, 10, 80 * KIB), FileRange(big, 90 * KIB, 60 * KIB)))))
    want = Collect()
    expected = write_layer(entries, want)
    blob, result = into_file(LayerStream(entries), tmp_path / "blob", b"L" * lead)
    assert blob == b"".join(want.parts)
    assert result == expected
    assert copy_threads() == []


def test_without_copy_file_range_the_thread_reads_and_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot(*a: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", cannot)
    data = payload(200 * KIB, 3)
    vf = whole(tmp_path, "w.bin", data)
    blob, result = into_file(LayerStream.raw(vf.name, vf), tmp_path / "blob")
    assert blob == data and result.digest == "sha256:" + hashlib.sha256(data).hexdigest()  # type: ignore[attr-defined]


def test_a_full_disk_in_the_background_copy_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.copy_file_range
    calls = []

    def full(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        calls.append(threading.current_thread().name)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", full)
    vf = whole(tmp_path, "w.bin", payload(500 * KIB))
    with pytest.raises(OSError) as e:
        into_file(LayerStream.raw(vf.name, vf), tmp_path / "blob")
    assert e.value.errno == errno.ENOSPC
    assert set(calls) == {"copy"}  # the big file went through the background copy
    assert copy_threads() == []


def test_a_file_that_changed_is_refused_and_its_copy_stopped(tmp_path: Path) -> None:
    data = payload(400 * KIB)
    path = source(tmp_path, "w.bin", data)
    st_ = path.stat()
    vf = VirtualFile("w.bin", (FileRange(path, 0, len(data), (st_.st_size, st_.st_mtime_ns)),))
    stream = LayerStream.raw(vf.name, vf)
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)
    seen = []

    def progress(n: int) -> None:  # the file is rewritten once the copy is under way
        seen.append(n)
        if len(seen) == 1:
            os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000_000))

    try:
        with pytest.raises(SourceError, match="changed while building"):
            layerfile.write_layer_fd(stream, Digester(stream), fd, progress)
    finally:
        os.close(fd)
    assert copy_threads() == []


def test_a_layer_given_up_halfway_stops_its_copy(tmp_path: Path) -> None:
    vf = whole(tmp_path, "w.bin", payload(2 << 20))
    stream = LayerStream.raw(vf.name, vf)
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)

    def progress(n: int) -> None:
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            layerfile.write_layer_fd(stream, Digester(stream), fd, progress)
    finally:
        os.close(fd)
    assert copy_threads() == []


def test_a_source_that_ends_early_under_the_copy_is_a_source_error(tmp_path: Path) -> None:
    path = source(tmp_path, "w.bin", payload(100 * KIB))
    dst = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT, 0o600)
    src = os.open(path, os.O_RDONLY)
    try:
        copier = layerfile.RangeCopier(dst, 10)
        copier.start(src, 0, 0, 150 * KIB, "w.bin")  # 50 KiB more than there is
        copier.join()
        with pytest.raises(SourceError, match="w.bin ended early"):
            copier.check()
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "blob").read_bytes()[10:] == path.read_bytes()


@pytest.mark.parametrize("fmt", ["modelpack", "docker-model", "image"])
def test_layouts_are_the_same_with_and_without_background_copies(llama_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """The same manifest digest whichever way the bytes are copied, and every blob is its digest."""
    from modelimage.api import build

    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    digests = []
    for threshold in (64 * KIB, 1 << 62):
        monkeypatch.setattr(tarstream, "BACKGROUND_COPY", threshold)
        out = tmp_path / f"oci-{threshold}"
        digests.append(build(llama_dir, f"oci:{out}:v1", format=fmt).digest)  # type: ignore[union-attr]
        for blob in (out / "blobs" / "sha256").iterdir():
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert digests[0] == digests[1]
    assert copy_threads() == []
