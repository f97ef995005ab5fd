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


def test_probe_writeback_times_the_writes_past_the_page_cache_and_leaves_nothing(tmp_path):
    bps = probes.probe_writeback(tmp_path, cache_bytes=4 * MiB, beyond=8 * MiB)
    assert 1e6 < bps < 1e12
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelImageError, match="cannot measure the disk under .*missing"):
        probes.probe_writeback(tmp_path / "missing", cache_bytes=0, beyond=MiB)


def test_probe_writeback_refuses_a_disk_without_room_before_writing(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(ModelImageError, match=r"cannot measure the disk under .*: the probe writes .* GiB are free; "
                                              r"pass --disk-dir"):
        probes.probe_writeback(tmp_path, cache_bytes=free, beyond=MiB)
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.integration
def test_a_redirect_to_storage_that_fails_never_prints_its_signed_url(registry, faults, llama_dir, capsys):
    """A registry redirects blob GETs to storage with a signed URL
    (``X-Amz-Credential``, ``X-Amz-Signature``); when storage refused it,
    ``estimate --probe`` printed httpx's message with that URL whole."""
    import http.server
    import threading

    from modelimage.cli import main

    from .faultproxy import Rewrite, Rule

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(403)

        def log_message(self, *args):
            pass

    storage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=storage.serve_forever, daemon=True).start()
    try:
        assert main(["build", str(llama_dir), "--push", f"{registry.host}/probe/signed:v1", "-q"]) == 0
        signed = (f"http://127.0.0.1:{storage.server_address[1]}/bucket/blob?X-Amz-Credential=AKIA-SECRET-ID"
                  "&X-Amz-Signature=s3cret-signature")
        faults.add(Rule("GET", r"/blobs/sha256:", Rewrite(307, (("Location", signed),)), times=None))
        capsys.readouterr()
        assert main(["estimate", f"{faults.url.split('//')[1]}/probe/signed:v1", "--probe"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "SECRET" not in err and "s3cret" not in err and "X-Amz" not in err, err
        assert f"HTTP 403 from the blob's storage at 127.0.0.1:{storage.server_address[1]} (redirected)" in err
    finally:
        storage.shutdown()


@pytest.mark.integration
def test_probe_download_goes_through_the_environments_proxy(registry, monkeypatch):
    """estimate --probe's bulk ranges opened their own connections straight
    to the registry whatever HTTP_PROXY said (only the first request went
    through it): behind a proxy-only network the probe failed, elsewhere it
    measured another path than the pull's. Now every request of the probe,
    the first and one per connection, goes through the proxy (counted by a
    real forward proxy), with or without the registry's transport, and
    NO_PROXY exempts the registry's host."""
    from modelimage.registry.reference import Reference
    from modelimage.registry.transport import Transport

    from .test_registry_transport import _ForwardProxy

    blob = os.urandom(4 * MiB)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with httpx.Client(base_url=registry.url, timeout=30) as c:
        location = c.post("/v2/probe-proxy/blobs/uploads/").headers["location"]
        assert c.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=blob).status_code == 201
    url = f"{registry.url}/v2/probe-proxy/blobs/{digest}"
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = _ForwardProxy()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)

        def forwarded() -> list[str]:
            return [line for line in proxy.seen if line.startswith(f"GET {url}")]

        assert probes.probe_download(url, connections=4, max_bytes=4 * MiB) > 1e5
        assert len(forwarded()) == 1 + 4  # the first ranged GET, then one per connection
        transport = Transport(Reference.parse(f"{registry.host}/probe-proxy"))
        try:
            assert probes.probe_download(url, connections=2, max_bytes=4 * MiB, transport=transport) > 1e5
        finally:
            transport.close()
        assert len(forwarded()) == 5 + 1 + 2
        monkeypatch.setenv("NO_PROXY", registry.host.split(":")[0])
        assert probes.probe_download(url, connections=4, max_bytes=4 * MiB) > 1e5
        assert len(forwarded()) == 8  # straight to the registry
    finally:
        proxy.close()
