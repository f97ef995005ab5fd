"""modelimage.pull.stream: the stream journal that lets a cut tar layer be taken up again."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from modelimage.oci import MEDIA_TYPE_LAYER_TAR, Descriptor
from modelimage.pull.extract import TarStager
from modelimage.pull.layers import Layer, Selection
from modelimage.pull.stream import Journal, Stream

LAYER = Layer(0, Descriptor(MEDIA_TYPE_LAYER_TAR, "sha256:" + "0" * 64, 0), "tar", (), "test")


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _replay(journal: Journal, staging: str) -> bytes:
    """The blob prefix the journal describes, from its header bytes and the staged files."""
    out = bytearray()
    for kind, what, *n in journal.segments:
        if kind == "meta":
            out += what
        else:
            with open(os.path.join(staging, what["temp"]), "rb") as f:
                out += f.read(n[0])
    return bytes(out)


def test_the_journal_and_the_staged_files_are_the_blob(tmp_path):
    files = {"a.bin": os.urandom(5000), "b/c.json": b"{}", "d.bin": os.urandom(70000)}
    blob = _tar(files)
    staging = tmp_path / "staging"
    staging.mkdir()
    journal = Journal()
    writer = TarStager(str(staging), Selection("", ()), "test", LAYER, ordered=False)
    stream = Stream(_chunks(blob, 777), journal=journal)  # chunks that cut headers and files anywhere
    writer.apply(stream)
    stream.drain()
    assert journal.valid and journal.pos == len(blob)
    assert _replay(journal, str(staging)) == blob
    assert [seg[1]["rel"] for seg in journal.segments if seg[0] == "file"] == list(files)


def test_a_cut_journal_ends_where_the_stream_stopped_and_can_be_taken_up(tmp_path):
    files = {"a.bin": os.urandom(5000), "big.bin": os.urandom(300_000), "z.txt": b"end"}
    blob = _tar(files)
    staging = tmp_path / "staging"
    staging.mkdir()
    cut = 100_000

    def cut_chunks():
        yield from _chunks(blob[:cut], 4096)
        raise ConnectionResetError("cut")

    journal = Journal()
    writer = TarStager(str(staging), Selection("", ()), "test", LAYER, ordered=False, keep_staged=lambda: True)
    stream = Stream(cut_chunks(), journal=journal)
    try:
        writer.apply(stream)
    except ConnectionResetError:
        writer.abort()
    assert 0 < journal.pos <= cut
    assert _replay(journal, str(staging)) == blob[: journal.pos]

    # the next run: the rest of the blob from journal.pos
    again = TarStager(str(staging), Selection("", ()), "test", LAYER, ordered=False)
    rest = Stream(_chunks(blob[journal.pos :], 4096), start=journal.pos, journal=journal)
    again.resume(journal, rest)
    again.apply(rest)
    rest.drain()
    assert _replay(journal, str(staging)) == blob
    staged = {e.rel: open(e.temp, "rb").read() for e in again.staged.entries if e.kind == "file"}
    assert staged == files


def test_header_bytes_read_again_are_recorded_once():
    journal = Journal()
    journal.meta(0, b"abcdef")
    journal.meta(4, b"efgh")  # a short backward seek re-read "ef"
    assert journal.segments == [["meta", b"abcdefgh"]] and journal.pos == 8
    journal.meta(20, b"x")  # a gap: the journal cannot describe the blob any more
    assert not journal.valid


def test_a_journal_stops_recording_past_its_limit():
    journal = Journal(max_meta=10)
    journal.meta(0, b"12345")
    journal.meta(5, b"678901")
    assert not journal.valid and journal.segments == []


def test_a_zstd_blob_that_starts_with_a_skippable_frame_is_zstd():
    """Nullus157/async-compression#271, facebook/zstd#904: zstd:chunked and
    pzstd write skippable frames (RFC 8878 3.1.2), which a reader must skip,
    and a sniffer must still see as zstd."""
    import zstandard

    from modelimage.pull.stream import decompressed, sniff

    blob = _tar({"model.bin": os.urandom(3000)})
    skippable = b"\x5e\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"metadata"
    data = skippable + zstandard.ZstdCompressor().compress(blob) + skippable
    assert sniff(data[:4]) == "zstd" and sniff(b"\x5a\x2a\x4d\x18") == "zstd" and sniff(b"\x60\x2a\x4d\x18") == "none"
    seen = []
    assert b"".join(bytes(c) for c in decompressed(_chunks(data, 100), "application/octet-stream", seen.append)) == blob
    assert seen == ["zstd"]


def _unterminated(files: dict[str, bytes]) -> bytes:
    """A tar as umoci < 0.4.8 ``insert`` writes it (umoci#436): the last
    file's data, then nothing (no padding, no end-of-archive blocks)."""
    blob = _tar(files)
    with tarfile.open(fileobj=io.BytesIO(blob)) as t:
        last = t.getmembers()[-1]
    return blob[: last.offset_data + last.size]


def test_a_tar_without_its_end_of_archive_blocks_is_read_whole(tmp_path):
    """umoci#436/#534: Go readers (podman, containerd, umoci) take a layer
    that stops right after its last file's data; so does pull. One that
    stops inside a file's data is still refused."""
    from modelimage.errors import BadLayer
    from modelimage.pull.stream import members

    files = {"a.bin": os.urandom(1000), "dir/b.json": b'{"x": 1}', "z.txt": b"the end"}
    blob = _unterminated(files)
    assert len(blob) % 512 != 0
    for chunk in (64, 700, len(blob)):
        staging = tmp_path / f"s{chunk}"
        staging.mkdir()
        writer = TarStager(str(staging), Selection("", ()), "test", LAYER, ordered=True, hash_files=True)
        stream = Stream(_chunks(blob, chunk))
        staged = writer.apply(stream)
        stream.drain()
        got = {e.rel: open(e.temp, "rb").read() for e in staged.entries if e.kind == "file"}
        assert got == files
    # only the names, data skipped by tarfile's own seek
    assert [m.name for m in members(Stream(_chunks(blob, 100)), "t")] == list(files)
    with pytest.raises(BadLayer, match="ends in the middle of a file"):
        list(members(Stream(_chunks(blob[:-3], 100)), "t"))
