"""The digest cache: an unchanged model rebuilds without reading weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import modelimage.tarstream
from modelimage.build import build_image
from modelimage.cache import DigestCache
from modelimage.content import VirtualFile
from modelimage.job import Options, prepare
from modelimage.layout import LayoutRef, open_sink
from modelimage.tarstream import Entry, LayerStream


def build(src: Path, out: Path, cache: DigestCache, tag: str = "v1"):
    job = prepare(str(src), Options(max_layer_size=10**6))
    ref = LayoutRef.parse(f"oci:{out}:{tag}")
    return build_image(job.model, job.plan(), open_sink(ref), settings=job.image_settings,
                       reference=str(ref), cache=cache)


def test_rebuild_reads_no_weights(llama_dir, tmp_path, monkeypatch):
    cache = DigestCache(tmp_path / "cache")
    first = build(llama_dir, tmp_path / "oci", cache)
    assert {layer.action for layer in first.layers} == {"written"}

    def no_reads(*a, **kw):
        raise AssertionError("a weight file was read")

    monkeypatch.setattr(modelimage.tarstream, "_read_range", no_reads)
    again = build(llama_dir, tmp_path / "oci", cache, tag="v2")
    assert again.manifest.digest == first.manifest.digest
    assert {layer.action for layer in again.layers} == {"exists"}


def test_changed_file_misses_the_cache(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    cache = DigestCache(tmp_path / "cache")
    stream = LayerStream([Entry("m/w.bin", VirtualFile.whole("w.bin", f, 1000))])
    key = cache.key(stream, "none")
    assert key == cache.key(LayerStream(stream.entries), "none")
    assert key != cache.key(stream, "gzip")
    os.utime(f, ns=(1, 1))
    assert cache.key(stream, "none") != key
    f.unlink()
    assert cache.key(stream, "none") is None


def test_disabled_by_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELIMAGE_NO_CACHE", "1")
    assert DigestCache(tmp_path).enabled is False


def test_remembers_repositories(tmp_path):
    cache = DigestCache(tmp_path)
    cache.remember("sha256:ab", "reg:5000", "team/a")
    cache.remember("sha256:ab", "reg:5000", "team/b")
    cache.remember("sha256:ab", "reg:5000", "team/a")
    assert cache.repositories("sha256:ab", "reg:5000") == ["team/a", "team/b"]
    assert cache.repositories("sha256:ab", "other") == []


def test_a_layer_of_a_split_file_needs_an_entry_recording_its_check(tmp_path):
    """An entry as modelimage wrote it before split files were checked whole
    (no ``split_checked``) serves an ordinary layer, never a layer holding
    pieces of a split listed file; one put after the check serves both."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    cache = DigestCache(tmp_path / "cache")
    stream = LayerStream([Entry("m/w.bin", VirtualFile.whole("w.bin", f, 1000))])
    key = cache.key(stream, "none")
    result = modelimage.tarstream.LayerResult("sha256:" + "1" * 64, 2048, "sha256:" + "1" * 64, 2048, ())
    entry = cache.root / "layers" / f"{key}.json"
    entry.parent.mkdir(parents=True)
    entry.write_text(json.dumps(result.to_json()))  # the old format: the layer's digests, nothing more
    assert cache.get(key) == result
    assert cache.get(key, split_checked=True) is None
    cache.put(key, result, split_checked=True)
    assert json.loads(entry.read_bytes())["split_checked"] is True
    assert cache.get(key) == result and cache.get(key, split_checked=True) == result


@pytest.mark.parametrize("cut", [0, 1, 511, 512, 513, 4096, 99_999])
def test_stream_resumes_from_any_offset_with_copied_digest_state(tmp_path, cut):
    """Bytes from a confirmed offset, hashed from a snapshot, give the
    same digests as one uninterrupted pass."""
    from modelimage.tarstream import Digester, blob_chunks

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(os.urandom(60_000))
    b.write_bytes(os.urandom(40_000))
    stream = LayerStream([Entry("m/a", VirtualFile.whole("a", a, 60_000)),
                          Entry("m/b", VirtualFile.whole("b", b, 40_000))])
    whole = Digester(stream)
    data = b"".join(bytes(c) for c in blob_chunks(stream, whole))
    expected = whole.result()

    d = Digester(stream)
    for chunk, file in stream.chunks(0, cut):
        d.feed(chunk, file)
    snap = d.copy()
    rest = b"".join(bytes(c) for c in blob_chunks(stream, snap, start=cut))
    assert data[cut:] == rest
    assert snap.result() == expected
