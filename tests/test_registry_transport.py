"""modelimage.registry.transport: THE retry policy, the spec error type, the
TLS trust, and the one client factory every request goes through."""

from __future__ import annotations

import http.client
import ssl

import httpx
import pytest

from modelimage.errors import ModelImageError
from modelimage.registry.reference import Reference
from modelimage.registry.transport import (
    RegistryError,
    RetriesExhausted,
    RetryPolicy,
    Transport,
    TransportOptions,
    error_from_response,
    retry_after,
    ssl_context,
)


def test_retry_after_is_honoured():
    slept = []
    policy = RetryPolicy(backoff=0.01, sleep=slept.append)
    policy.wait(1, RegistryError("x", 429, "TOOMANYREQUESTS", "slow down", retry_after=7.0))
    policy.wait(1, RegistryError("x", 503, "", "unavailable"))
    assert slept[0] >= 7.0 and slept[1] < 1.0


def test_backoff_doubles_with_jitter_and_is_capped():
    policy = RetryPolicy(backoff=1.0, max_backoff=5.0, max_retry_after=60.0)
    for attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        assert 0.75 * nominal <= policy.delay(attempt) <= 1.25 * nominal
    assert policy.delay(1, RegistryError("x", 429, retry_after=3600.0)) == 60.0


@pytest.mark.parametrize(("error", "temporary"), [
    (RegistryError("x", 503), True),
    (RegistryError("x", 429, "TOOMANYREQUESTS"), True),
    (RegistryError("x", 500, "UNKNOWN"), True),
    (RegistryError("x", 400, "UNAVAILABLE"), True),
    (RegistryError("x", 404, "BLOB_UNKNOWN"), False),
    (RegistryError("x", 401, "UNAUTHORIZED"), False),
    (RegistryError("x", 400, "DIGEST_INVALID"), False),
    (httpx.ConnectError("refused"), True),
    (httpx.ReadTimeout("slow"), True),
    (ConnectionResetError("reset"), True),
    (http.client.IncompleteRead(b"", 10), True),
    (ssl.SSLCertVerificationError("certificate verify failed"), False),
    (httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), False),
    (FileNotFoundError("gone"), False),
    (ValueError("a bug"), False),
])
def test_what_is_temporary(error, temporary):
    assert RetryPolicy().temporary(error) is temporary


def test_call_retries_temporary_failures_then_gives_up_in_one_line():
    slept, calls, retried = [], [], []

    def fails():
        calls.append(1)
        raise httpx.ConnectError("refused")

    policy = RetryPolicy(retries=2, sleep=slept.append)
    with pytest.raises(RetriesExhausted) as info:
        policy.call("host/repo: checking", fails, on_retry=lambda: retried.append(1))
    assert len(calls) == 3 and len(slept) == 2 and len(retried) == 2
    assert str(info.value) == "host/repo: checking: gave up after 3 attempts (ConnectError: refused)"


def test_call_raises_a_final_answer_at_once():
    calls = []

    def denied():
        calls.append(1)
        raise RegistryError("host/repo", 403, "DENIED", "requested access to the resource is denied")

    with pytest.raises(RegistryError) as info:
        RetryPolicy(sleep=lambda s: None).call("x", denied)
    assert calls == [1] and info.value.status == 403 and not info.value.temporary


def test_a_certificate_error_is_never_retried():
    calls = []

    def bad_cert():
        calls.append(1)
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed")

    with pytest.raises(ModelImageError, match="TLS certificate did not verify"):
        RetryPolicy(sleep=lambda s: None).call("registry.test", bad_cert)
    assert calls == [1]


def test_error_from_response_keeps_status_code_and_message():
    r = httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown",
                                              "detail": "v9"}]}, headers={"Retry-After": "2"})
    e = error_from_response("host/repo:v9", r)
    assert (e.status, e.code, e.detail, e.retry_after) == (404, "MANIFEST_UNKNOWN", "manifest unknown (v9)", 2.0)
    assert str(e) == "host/repo:v9: 404 MANIFEST_UNKNOWN: manifest unknown (v9)"
    bare = error_from_response("host", httpx.Response(502, text="<html>bad gateway</html>"))
    assert (bare.status, bare.code, bare.detail, bare.temporary) == (502, "", "Bad Gateway", True)
    assert error_from_response("host", httpx.Response(401)).code == "UNAUTHORIZED"


def test_retry_after_as_seconds_or_a_date():
    assert retry_after({"Retry-After": "120"}) == 120.0
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after({}) is None and retry_after({"Retry-After": "soon"}) is None


def test_one_tls_context_for_httpx_and_the_bulk_reads():
    """The transport's httpx clients and fetch's http.client connections use
    the same context object: one trust for every request."""
    t = Transport(Reference.parse("registry.example/a/b"), TransportOptions())
    try:
        assert t.ssl_context is ssl_context("registry.example")
        assert t.ssl_context.verify_mode == ssl.CERT_REQUIRED and t.ssl_context.check_hostname
        assert t.base == "https://registry.example"
        assert t.url("/v2/a/b/blobs/uploads/") == "https://registry.example/v2/a/b/blobs/uploads/"
        assert t.resolve("/v2/a/b/blobs/uploads/u1?_state=x") == \
            "https://registry.example/v2/a/b/blobs/uploads/u1?_state=x"
        assert t.resolve("https://storage.example/u1") == "https://storage.example/u1"
    finally:
        t.close()
    unverified = ssl_context("registry.example", verify=False)
    assert unverified.verify_mode == ssl.CERT_NONE and not unverified.check_hostname


class _ForwardProxy:
    """A plain-HTTP forward proxy (absolute-URI requests, as HTTP_PROXY
    clients send them) that records each request line it forwards."""

    def __init__(self) -> None:
        import http.server
        import threading
        import urllib.parse

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                seen.append(f"{self.command} {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "host")}
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body or None,
                             headers={**headers, "Host": url.netloc})
                answer = conn.getresponse()
                data = answer.read() if self.command != "HEAD" else b""
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", answer.getheader("Content-Length", str(len(data)))
                                 if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
def test_registry_requests_go_through_the_environments_proxy(pushed_llama, tmp_path, monkeypatch):
    """HTTP_PROXY/HTTPS_PROXY were ignored for registry requests (httpx reads
    the environment only when no transport is given, and ours is given): behind
    a proxy-only network inspect, pull and push could not connect (as oras#155).
    Now the manifest and blob requests of a pull go through the proxy, and
    NO_PROXY still exempts a host."""
    from modelimage.cli import main
    from modelimage.registry.transport.sockets import environment_proxy

    ref, files, _ = pushed_llama
    proxy = _ForwardProxy()
    try:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        host = ref.split("/", 1)[0]
        assert environment_proxy(f"http://{host}/v2/") == proxy.url
        assert main(["pull", ref, str(tmp_path / "dest"), "-q"]) == 0
        assert {p for p in files} <= {str(p.relative_to(tmp_path / "dest")) for p in (tmp_path / "dest").rglob("*")}
        assert any(line.startswith("GET ") and f"//{host}/v2/" in line and "/manifests/" in line for line in proxy.seen)
        assert any(f"//{host}/v2/" in line and "/blobs/" in line for line in proxy.seen)
        monkeypatch.setenv("NO_PROXY", host.split(":")[0])
        assert environment_proxy(f"http://{host}/v2/") is None
    finally:
        proxy.close()
