"""modelimage.probes: real, small measurements of this machine (disk, sync
latency, cores, page cache) and of a real registry's download speed."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest

from modelimage import probes
from modelimage.errors import ModelImageError

MiB = 2**20


def test_probe_disk(tmp_path):
    bps = probes.probe_disk(tmp_path, 8 * MiB)
    assert 1e6 < bps < 1e12
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelImageError, match="cannot measure the disk"):
        probes.probe_disk(tmp_path / "missing", MiB)


def test_probe_write_cache():
    cache = probes.probe_write_cache()
    assert cache >= 0
    if os.path.exists("/proc/meminfo"):
        assert cache > 0


@pytest.mark.integration
def test_probe_download_against_a_real_registry():
    from .registry import start_registry

    reg = start_registry()
    try:
        blob = os.urandom(16 * MiB)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        with httpx.Client(base_url=reg.url, timeout=30) as c:
            r = c.post("/v2/probe/blobs/uploads/")
            assert r.status_code == 202, r.text
            location = r.headers["location"]
            r = c.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=blob)
            assert r.status_code == 201, r.text
        url = f"{reg.url}/v2/probe/blobs/{digest}"
        for conns in (1, 4):
            assert probes.probe_download(url, connections=conns, max_bytes=8 * MiB) > 1e6
        with httpx.Client() as c:
            assert probes.probe_download(url, client=c) > 1e6
        with pytest.raises(ModelImageError, match="404"):
            probes.probe_download(f"{reg.url}/v2/probe/blobs/sha256:{'0' * 64}")
    finally:
        reg.stop()
