"""Durable writes (modelimage.durable): the writeback a pull starts while a
file streams in, so its fsync waits for the tail only."""

from __future__ import annotations

import os
import sys

import pytest

from modelimage import durable
from modelimage.errors import ModelImageError
from modelimage.pull import pull

from .pullkit import cut_after, info, layout, push_raw_artifact, sha, tar_of, tree


def recorded(monkeypatch) -> dict[str, list[tuple[int, int]]]:
    """Every writeback started, by the path of the file it was for: a list of
    (offset, length); the real call still runs."""
    real, calls = durable.start_writeback, {}

    def start(fd: int, offset: int, length: int) -> None:
        calls.setdefault(os.readlink(f"/proc/self/fd/{fd}"), []).append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(durable, "start_writeback", start)
    return calls


def covers_front_to_back(ranges: list[tuple[int, int]], size: int, start: int = 0) -> bool:
    """The ranges follow each other from ``start`` and leave less than one
    step of the ``size`` bytes unstarted (that tail is the fsync's)."""
    end = start
    for offset, length in ranges:
        if offset != end or length < durable.WRITEBACK_STEP:
            return False
        end += length
    return end <= size and size - end < durable.WRITEBACK_STEP


def test_writeback_is_asked_every_step_for_what_was_written_since(monkeypatch):
    calls = recorded(monkeypatch)
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        w = durable.Writeback(fd, offset=5, step=10)
        for n in (4, 4, 4, 9, 1, 30):
            w.wrote(n)
    finally:
        os.close(fd)
    assert calls["/dev/null"] == [(5, 12), (17, 10), (27, 30)]  # 2 bytes written last stay for the fsync


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range(2) is Linux's")
def test_on_linux_writeback_reaches_the_kernel_and_leaves_the_bytes_as_written(tmp_path):
    assert durable._starter() is not durable._no_writeback
    path = tmp_path / "f"
    data = os.urandom(3 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        durable.start_writeback(fd, 0, len(data))
        durable.start_writeback(fd, len(data), 1 << 20)  # past the end: nothing to write, no error
        durable.start_writeback(-1, 0, 1)  # a bad descriptor: no head start, and no error either
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


@pytest.mark.integration
def test_a_pull_starts_each_big_files_writeback_as_it_streams_in(tmp_path, monkeypatch):
    big, small = os.urandom(40 << 20), b"tokenizer"
    source = layout(tmp_path / "oci", [tar_of([(info("model.safetensors"), big), (info("tok.json"), small)])])
    calls = recorded(monkeypatch)
    dest = tmp_path / "dest"
    pull(source, dest)
    assert tree(dest) == {"model.safetensors": sha(big), "tok.json": sha(small)}
    (staged,) = calls.values()  # one staged file was big enough; the small one is all tail
    assert covers_front_to_back(staged, len(big)) and len(staged) == 2


@pytest.mark.integration
def test_a_pull_of_raw_layers_starts_their_writeback_too(registry, tmp_path, monkeypatch):
    big = os.urandom(33 << 20)
    ref = push_raw_artifact(registry, "durable/raw", {"model.gguf": big})
    calls = recorded(monkeypatch)
    dest = tmp_path / "dest"
    pull(ref, dest)
    assert tree(dest) == {"model.gguf": sha(big)}
    (staged,) = calls.values()
    assert covers_front_to_back(staged, len(big))


@pytest.mark.integration
def test_a_resumed_file_starts_its_writeback_where_the_pull_takes_it_up(registry, tmp_path, monkeypatch,
                                                                        small_pieces):
    big = os.urandom(40 << 20)
    ref = push_raw_artifact(registry, "durable/resume", {"model.gguf": big})
    cuts = cut_after(monkeypatch, 20 << 20)
    dest = tmp_path / "dest"
    with pytest.raises(ModelImageError):
        pull(ref, dest, concurrency=1, retries=0)
    (partial,) = (dest / ".modelimage-pull").glob("*.partial")
    have = partial.stat().st_size
    assert cuts and 0 < have < len(big)
    calls = recorded(monkeypatch)
    pull(ref, dest, concurrency=1, retries=0)  # the cut happens once
    assert tree(dest) == {"model.gguf": sha(big)}
    assert covers_front_to_back(calls[str(partial)], len(big), start=have)
