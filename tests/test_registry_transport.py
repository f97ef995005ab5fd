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
