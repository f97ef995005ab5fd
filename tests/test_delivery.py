"""modelimage.delivery: the other ways to ship a model (object storage at
start-up, lazily loaded images) against the image pull."""

from __future__ import annotations

import json

import pytest

from modelimage.delivery import storage_options
from modelimage.estimate import LayerSpec

MiB, GiB, GB = 2**20, 2**30, 10**9


@pytest.mark.parametrize("bw", [12.5e6, 125e6, 1.25e9, 5e9])
@pytest.mark.parametrize("files", [[GiB], [4 * GiB] * 4, [5 * GB, 5 * GB, 3 * GB, 10 * MiB, 2 * MiB]])
def test_storage_options_ordering(bw, files):
    opts = storage_options(files, bandwidth_bps=bw, disk_bps=1e9, write_cache_bytes=0)
    by = {o.name.split(" ")[0]: o for o in opts}
    assert set(by) == {"image", "object", "lazily"}
    assert [o.ready_seconds for o in opts] == sorted(o.ready_seconds for o in opts)
    total = sum(files)
    for o in opts:
        assert o.ready_seconds >= total / bw  # nothing beats the link
        assert o.first_byte_seconds <= o.ready_seconds
        assert o.disk_bytes >= total
    # no engine work: object storage is never slower than the pull
    assert by["object"].ready_seconds <= by["image"].ready_seconds
    # lazy loading starts at once but still has to read everything
    assert by["lazily"].first_byte_seconds < 1 < by["object"].ready_seconds
    assert by["image"].disk_bytes == 2 * total  # containerd keeps the blobs
    assert any("soci" in n.lower() for n in by["lazily"].notes)


def test_storage_options_uses_the_real_layers():
    files = [GiB]
    gz = [LayerSpec(int(GiB * 0.93), GiB + 2048, "gzip")]
    a = {o.name: o for o in storage_options(files, bandwidth_bps=1.25e9, engine="podman")}
    b = {o.name: o for o in storage_options(files, bandwidth_bps=1.25e9, engine="podman", layers=gz)}
    assert b["image layers (podman pull)"].ready_seconds > a["image layers (podman pull)"].ready_seconds
    assert json.dumps([o.to_json() for o in b.values()])


def test_object_storage_needs_connections_on_long_fat_links():
    files = [8 * GiB]
    one = storage_options(files, bandwidth_bps=1.25e9, connections=1, stream_bps=30e6)
    many = storage_options(files, bandwidth_bps=1.25e9, connections=16, stream_bps=30e6)
    get = lambda opts: next(o for o in opts if o.name.startswith("object"))  # noqa: E731
    assert get(many).ready_seconds < get(one).ready_seconds / 8
