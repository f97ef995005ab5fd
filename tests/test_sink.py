"""sink: "layers then manifest" and store_layer, against a real OCI layout
sink and a recording one (the order of calls is what is tested)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from modelimage.cache import DigestCache
from modelimage.content import VirtualFile
from modelimage.errors import LayerTooLarge
from modelimage.layout import LayoutRef, open_sink
from modelimage.oci import MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST, Descriptor
from modelimage.sink import copy_blob, layer_sent, store_layer, write_layers_then_manifest
from modelimage.tarstream import Entry, LayerStream


class Recorder:
    """A sink that stores blobs in memory and records every call."""

    parallel = 2

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def _log(self, what: str) -> None:
        with self.lock:
            self.calls.append(what)

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    def put_layer(self, stream, *, compression, known, progress):
        from modelimage.tarstream import Digester, blob_chunks

        digester = Digester(stream, compression)
        data = b"".join(bytes(c) for c in blob_chunks(stream, digester, progress=progress))
        result = digester.result()
        self.blobs[result.digest] = data
        self._log(f"layer {result.digest[:15]}")
        return result, "written"

    def put_existing(self, desc, source):
        self.blobs[desc.digest] = b"".join(source.fetch(desc))
        self._log("existing")
        return "copied"

    def put_blob(self, data, digest):
        self.blobs[digest] = data
        self._log("blob")

    def put_manifest(self, manifest, data):
        self.blobs[manifest.digest] = data
        self._log("manifest")

    def abort(self):
        self._log("abort")

    def close(self):
        self._log("close")


def stream_of(tmp_path: Path, name: str, data: bytes) -> LayerStream:
    f = tmp_path / name
    f.write_bytes(data)
    return LayerStream([Entry(f"models/{name}", VirtualFile.whole(name, f, len(data)))])


def assemble(done):
    config = json.dumps({"layers": [r.digest for r in done]}).encode()
    cdesc = Descriptor.of_bytes(MEDIA_TYPE_CONFIG, config)
    manifest = json.dumps({"config": cdesc.digest}).encode()
    return config, cdesc, manifest, Descriptor.of_bytes(MEDIA_TYPE_MANIFEST, manifest)


def test_layers_then_config_then_manifest(tmp_path):
    sink, cache = Recorder(), DigestCache(tmp_path / "cache", enabled=False)
    streams = [stream_of(tmp_path, f"f{i}", bytes([i]) * 1000) for i in range(3)]
    jobs = [lambda s=s: store_layer(s, sink, cache, compression="none", max_layer_size=10**6, title="t",
                                    progress=None)[0] for s in streams]
    done, config, manifest = write_layers_then_manifest(sink, jobs, assemble, workers=2)
    assert [r.tar_size for r in done] == [s.size for s in streams]  # results in job order
    assert sink.calls[-3:] == ["blob", "manifest", "close"]
    assert all(c.startswith("layer") for c in sink.calls[:-3]) and len(sink.calls) == 6
    assert sink.blobs[manifest.digest] == json.dumps({"config": config.digest}).encode()


def test_a_failed_layer_stops_the_rest_and_nothing_is_tagged(tmp_path):
    sink = Recorder()
    ran = []

    def ok(i):
        ran.append(i)

    def fail():
        raise OSError("disk full")

    jobs = [lambda: ok(0), fail, lambda: ok(2), lambda: ok(3)]
    with pytest.raises(OSError, match="disk full"):
        write_layers_then_manifest(sink, jobs, assemble, workers=1)
    assert ran == [0]
    assert sink.calls == ["abort"]


def test_a_sent_layer_lets_the_next_one_stream_during_its_commit():
    """One layer at a time (workers=1): once the first says all its bytes
    are sent (layer_sent), the second starts while the first still waits
    for its commit; results stay in job order."""
    second_started = threading.Event()
    saw: list[bool] = []

    def first():
        layer_sent()
        saw.append(second_started.wait(30))  # the commit, still running when the next layer starts
        return "a"

    def second():
        second_started.set()
        return "b"

    done = write_layers_then_manifest(Recorder(), [first, second], lambda d: assemble_strings(d), workers=1)[0]
    assert saw == [True]
    assert done == ["a", "b"]


def test_layers_take_turns_in_order_and_at_most_workers_stream():
    """Layers start in job order, and never more than ``workers`` stream
    at once (between their start and layer_sent), however many commit."""
    lock = threading.Lock()
    started: list[int] = []
    streaming = [0, 0]  # now, most ever

    def job(i):
        with lock:
            started.append(i)
            streaming[0] += 1
            streaming[1] = max(streaming[1], streaming[0])
        with lock:
            streaming[0] -= 1
        layer_sent()
        layer_sent()  # a second word is ignored: the turn goes back once
        return i

    done = write_layers_then_manifest(Recorder(), [lambda i=i: job(i) for i in range(12)],
                                      lambda d: assemble_strings(d), workers=2)[0]
    assert done == list(range(12))
    assert started == list(range(12))
    assert streaming[1] <= 2


def assemble_strings(done):
    config = json.dumps(done).encode()
    cdesc = Descriptor.of_bytes(MEDIA_TYPE_CONFIG, config)
    return config, cdesc, config, Descriptor.of_bytes(MEDIA_TYPE_MANIFEST, config)


def test_a_failed_layer_leaves_no_new_layout(tmp_path):
    out = tmp_path / "new" / "oci"
    sink = open_sink(LayoutRef.parse(f"oci:{out}:v1"))
    cache = DigestCache(tmp_path / "cache", enabled=False)
    good = stream_of(tmp_path, "a", b"a" * 100)

    def bad():
        raise LayerTooLarge("too big")

    with pytest.raises(LayerTooLarge):
        write_layers_then_manifest(sink, [lambda: store_layer(good, sink, cache, compression="none",
                                                              max_layer_size=10**6, title="a", progress=None),
                                          bad], assemble, workers=1)
    assert not out.exists() and not out.parent.exists()


def test_store_layer_skips_what_the_cache_and_sink_know(tmp_path):
    sink, cache = Recorder(), DigestCache(tmp_path / "cache", enabled=True)
    s = stream_of(tmp_path, "w", b"w" * 5000)
    seen: list[int] = []
    first, action = store_layer(s, sink, cache, compression="none", max_layer_size=10**6, title="w",
                                progress=seen.append)
    assert action == "written" and sum(seen) == s.size
    again, action = store_layer(s, sink, cache, compression="none", max_layer_size=10**6, title="w",
                                progress=seen.append)
    assert (again, action) == (first, "exists")
    assert sum(seen) == 2 * s.size
    assert [c for c in sink.calls if c.startswith("layer")] == [f"layer {first.digest[:15]}"]
    blob = sink.blobs[first.digest]
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == first.digest


def test_store_layer_refuses_a_blob_over_the_limit(tmp_path):
    sink, cache = Recorder(), DigestCache(tmp_path / "cache", enabled=False)
    s = stream_of(tmp_path, "big", b"x" * 4096)
    with pytest.raises(LayerTooLarge, match="layer big is .* over the limit"):
        store_layer(s, sink, cache, compression="none", max_layer_size=1000, title="big", progress=None)


def test_copy_blob_only_when_missing(tmp_path):
    sink = Recorder()
    data = b"base layer"
    desc = Descriptor.of_bytes("application/vnd.oci.image.layer.v1.tar", data)

    class Source:
        host = repository = None

        def fetch(self, d):
            yield data

    assert copy_blob(desc, Source(), sink) == "copied"
    assert copy_blob(desc, Source(), sink) == "exists"
    assert sink.blobs[desc.digest] == data
