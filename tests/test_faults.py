"""Pushing through trouble: a fault-injecting proxy (:mod:`tests.faultproxy`)
in front of the real CNCF registry cuts connections mid-upload, answers
5xx and 429, stalls, throttles and expires bearer tokens. Every push must
land the same manifest digest as a clean push, resume from the offset the
registry confirmed, and give up within its retry budget with one line.

Also: no secret (password, or its base64 ``user:password``) ever reaches
stdout, stderr, a log record or an exception message; and blob reads that
are redirected to another origin never carry ``Authorization`` there.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import secrets
import socket
import sys
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from modelimage.build import build_image
from modelimage.cache import DigestCache
from modelimage.cli import main
from modelimage.job import Options, prepare
from modelimage.registry.client import RegistryClient
from modelimage.registry.keychain import Credentials, store_credentials
from modelimage.registry.push import PushSettings, RegistrySink, UploadFailed
from modelimage.registry.reference import Reference
from modelimage.registry.transport import RegistryError

from .faultproxy import Cut, ExpireToken, FaultProxy, Respond, Rule, Stall, Throttle, too_many_requests

pytestmark = pytest.mark.integration

CHUNK = 256 << 10
UPLOAD = r"/blobs/uploads/[^?]+\?"  # an upload session URL (PATCH, GET status, PUT commit)
COMMIT = r"/blobs/uploads/.*[?&]digest=sha256:"  # the final PUT of a blob


def push(model: Path, ref_text: str, tmp: Path, *, client: RegistryClient | None = None,
         compression: str | None = None, **settings):
    """A library push with a fresh digest cache (so nothing is skipped or
    mounted), chunks of CHUNK bytes and one layer at a time (so "the third
    PATCH" is always the same one)."""
    ref = Reference.parse(ref_text)
    cache = DigestCache(tmp / f"cache-{time.monotonic_ns()}", enabled=True)
    job = prepare(str(model), Options(registry=ref.host, compression=compression))
    settings = {"backoff": 0.01, "chunk_size": CHUNK, "concurrency": 1, **settings}
    sink = RegistrySink(ref, client or RegistryClient(ref), settings=PushSettings(**settings), cache=cache)
    result = build_image(job.model, job.plan(), sink, settings=job.image_settings, reference=str(ref), cache=cache)
    return result, sink.stats


@pytest.fixture(scope="module")
def clean(proxy, llama_dir, tmp_path_factory):
    """The reference: the same model pushed through the proxy without faults."""
    proxy.reset()
    result, stats = push(llama_dir, f"{proxy.host}/faults/clean:v1", tmp_path_factory.mktemp("clean"))
    layers = [layer.descriptor.size for layer in result.layers]
    assert stats.bytes_sent == sum(layers) and stats.resent_bytes == 0 and stats.retries == 0
    # every byte went through the proxy (the rewritten Locations kept the client on it), once
    assert proxy.forwarded("PATCH") == sum(layers)
    assert len(proxy.requests("POST", "/blobs/uploads/")) == len(layers) + 1  # + the config
    assert all(s.status in (200, 201, 202, 404) for s in proxy.requests())
    proxy.reset()
    return result


def manifest_status(registry, repo: str, tag: str) -> int:
    """Asked of the registry itself, not through the proxy."""
    return httpx.get(f"{registry.url}/v2/{repo}/manifests/{tag}",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).status_code


def layer_bytes(result) -> int:
    return sum(layer.descriptor.size for layer in result.layers)


# --- connection cuts --------------------------------------------------------------------


def test_cut_behind_a_buffering_proxy_resends_only_the_chunk_in_flight(faults, clean, llama_dir, tmp_path,
                                                                         registry):
    """The third PATCH is reset after 100 kB, as a buffering proxy (nginx's
    ``proxy_request_buffering on``) does when it loses the client: the
    registry never sees that PATCH, confirms two chunks, and the upload goes
    on from there; only the chunk in flight is sent again."""
    faults.add(Rule("PATCH", UPLOAD, Cut(100_000, upstream=False), occurrence=3))
    result, stats = push(llama_dir, f"{faults.host}/faults/buffered:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert stats.resumes == 1 and stats.retries == 1
    assert 100_000 <= stats.resent_bytes <= CHUNK  # whatever httpx had handed the socket of that chunk
    assert stats.bytes_sent == layer_bytes(clean) + stats.resent_bytes
    cut = faults.requests("PATCH")[2]
    assert cut.fault == "Cut" and cut.received == 100_000 and cut.forwarded == 0
    # the resume asked where the upload stood, and carried on in the same upload session
    status = faults.requests("GET", UPLOAD)
    assert len(status) == 1 and status[0].status == 204
    assert len(faults.requests("POST", "/blobs/uploads/")) == len(clean.layers) + 1
    # the registry got every byte exactly once
    assert faults.forwarded("PATCH") == layer_bytes(clean)
    assert faults.received("PATCH") == layer_bytes(clean) + 100_000
    assert manifest_status(registry, "faults/buffered", "v1") == 200


def test_cut_reaching_the_registry_restarts_the_blob(faults, clean, llama_dir, tmp_path):
    """The third PATCH is cut after 100 kB that DID reach the registry.
    CNCF distribution 2.8 keeps that partial body, finds the upload's size no
    longer matches its state and drops the upload (status GET -> 404; see
    ``Uploader._resume_point``), so this blob starts over in a new upload:
    two chunks and the one in flight are sent again, and it still lands."""
    faults.add(Rule("PATCH", UPLOAD, Cut(100_000, upstream=True), occurrence=3))
    result, stats = push(llama_dir, f"{faults.host}/faults/upstream-cut:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert stats.resumes == 1
    # the two confirmed chunks and what httpx had taken of the third, again
    assert 2 * CHUNK + 100_000 <= stats.resent_bytes <= 3 * CHUNK
    assert stats.bytes_sent == layer_bytes(clean) + stats.resent_bytes
    cut = faults.requests("PATCH")[2]
    assert cut.received == cut.forwarded == 100_000
    assert [s.status for s in faults.requests("GET", UPLOAD)] == [404]  # the registry dropped the upload
    assert len(faults.requests("POST", "/blobs/uploads/")) == len(clean.layers) + 2  # one new upload
    # what reached the registry: the whole image once, plus the two chunks and the partial one
    assert faults.forwarded("PATCH") == layer_bytes(clean) + 2 * CHUNK + 100_000


def test_cut_in_a_gzip_layer_starts_it_again(faults, llama_dir, tmp_path):
    """A gzip layer has no size up front: one PATCH with a chunked body, and
    no resuming inside a compressed stream. A cut (buffering proxy) sends the
    blob again from its first byte, in a new upload, and the image is the
    same as a clean gzip push."""
    reference, _ = push(llama_dir, f"{faults.host}/faults/gzip-clean:v1", tmp_path, compression="gzip")
    assert faults.requests("PATCH")[0].headers.get("transfer-encoding") == "chunked"
    faults.reset()
    faults.add(Rule("PATCH", UPLOAD, Cut(100_000, upstream=False), occurrence=2))
    result, stats = push(llama_dir, f"{faults.host}/faults/gzip-cut:v1", tmp_path, compression="gzip")
    assert result.manifest.digest == reference.manifest.digest
    assert stats.resumes == 1
    cut = faults.requests("PATCH")[1]
    assert cut.fault == "Cut" and cut.forwarded == 0
    assert 100_000 <= stats.resent_bytes <= result.layers[1].descriptor.size
    assert faults.forwarded("PATCH") == layer_bytes(result)
    assert len(faults.requests("POST", "/blobs/uploads/")) == len(result.layers) + 2


# --- error answers ----------------------------------------------------------------------


@pytest.mark.parametrize("status, method, where, resent", [
    (500, "PATCH", UPLOAD, CHUNK),  # the chunk was read and dropped by the proxy: sent again
    (502, "PUT", COMMIT, 0),  # the commit was never forwarded: the PUT alone is repeated
    (503, "PUT", r"/manifests/v1$", 0),  # the tag
    (503, "POST", r"/blobs/uploads/$", 0),  # starting an upload
    (502, "HEAD", r"/blobs/sha256:", 0),  # checking for the config blob
])
def test_server_errors_are_retried(faults, clean, llama_dir, tmp_path, registry, status, method, where, resent):
    faults.add(Rule(method, where, Respond(status), occurrence=2 if method == "PATCH" else 1))
    repo = f"faults/status-{status}-{method.lower()}"
    result, stats = push(llama_dir, f"{faults.host}/{repo}:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert stats.retries == 1
    assert stats.resent_bytes == resent
    assert [s.status for s in faults.requests(method, where) if s.fault] == [status]
    assert faults.forwarded("PATCH") == layer_bytes(clean)
    assert manifest_status(registry, repo, "v1") == 200


def test_429_waits_for_retry_after(faults, clean, llama_dir, tmp_path):
    """``429 Retry-After: 1`` on the second PATCH: the next request of that
    upload comes at least a second later (backoff alone would be 10 ms)."""
    faults.add(Rule("PATCH", UPLOAD, too_many_requests(1), occurrence=2))
    result, stats = push(llama_dir, f"{faults.host}/faults/throttled:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert stats.retries == 1 and stats.resent_bytes == CHUNK
    seen = faults.requests()
    i = next(i for i, s in enumerate(seen) if s.status == 429)
    answered, following = seen[i].answered, seen[i + 1]
    assert following.method == "GET" and following.path == seen[i].path  # where does the upload stand?
    assert following.started - answered >= 1.0


@pytest.mark.parametrize("fault", [Respond(503), Cut(50_000, upstream=False)], ids=["503", "reset"])
def test_a_fault_that_never_clears_fails_in_one_line(faults, llama_dir, registry, tmp_path, monkeypatch, capsys,
                                                     fault):
    """Every PATCH fails: ``modelimage build --push`` gives up after the
    retry budget (6 attempts) with one line on stderr and exit code 1, and
    the registry holds no manifest for the tag."""
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("modelimage.registry.push.PushSettings", partial(PushSettings, backoff=0.01, chunk_size=CHUNK))
    faults.add(Rule("PATCH", UPLOAD, fault, times=None))
    repo = f"faults/never-{type(fault).__name__.lower()}"
    code = main(["build", str(llama_dir), "--push", f"{faults.host}/{repo}:v1", "--concurrency", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "gave up after 6 attempts" in err
    sessions: dict[str, int] = {}
    for s in faults.requests("PATCH"):
        sessions[s.path] = sessions.get(s.path, 0) + 1
    assert list(sessions.values())[0] == 6  # the budget, all in the first blob's upload session
    assert max(sessions.values()) == 6
    assert not faults.requests("PUT")  # nothing committed, no manifest
    assert manifest_status(registry, repo, "v1") == 404


def test_no_new_layer_starts_after_a_failure(faults, llama_dir, tmp_path):
    faults.add(Rule("PATCH", UPLOAD, Respond(503), times=None))
    with pytest.raises(UploadFailed):
        push(llama_dir, f"{faults.host}/faults/stop:v1", tmp_path)
    assert len(faults.requests("POST", "/blobs/uploads/")) == 1


# --- slow answers -----------------------------------------------------------------------


def test_a_stalled_final_put_is_waited_for(faults, clean, llama_dir, tmp_path):
    """The registry's answer to the first ``PUT ...?digest=`` is held for
    6 s, three times the client's 2 s timeout: the commit has no read
    timeout (registries take minutes to commit big blobs), so the push
    waits and succeeds without a retry. (A retried commit would fail: the
    registry had already committed that upload.)"""
    faults.add(Rule("PUT", COMMIT, Stall(6)))
    ref = Reference.parse(f"{faults.host}/faults/stalled:v1")
    result, stats = push(llama_dir, str(ref), tmp_path, client=RegistryClient(ref, timeout=2.0))
    assert result.manifest.digest == clean.manifest.digest
    assert stats.retries == 0
    stalled = next(s for s in faults.requests("PUT", COMMIT) if s.fault)
    assert stalled.status == 201 and stalled.finished - stalled.started >= 6


def test_a_stalled_check_times_out_and_is_retried(faults, clean, llama_dir, tmp_path):
    """An ordinary request keeps its read timeout: a HEAD held for 20 s with
    a 1 s timeout is given up and asked again (the bounds are far apart so
    that a loaded machine cannot blur them)."""
    faults.add(Rule("HEAD", r"/blobs/sha256:", Stall(20)))
    ref = Reference.parse(f"{faults.host}/faults/stalled-head:v1")
    result, stats = push(llama_dir, str(ref), tmp_path, client=RegistryClient(ref, timeout=1.0))
    assert result.manifest.digest == clean.manifest.digest
    assert stats.retries == 1
    stalled, again = faults.requests("HEAD")
    assert stalled.fault == "Stall" and again.fault is None and again.status == 404
    assert 1.0 <= again.started - stalled.started < 15  # asked again after the timeout, not after the stall


def test_a_slow_link_still_lands(faults, clean, llama_dir, tmp_path):
    """Request bodies throttled to 4 MB/s: slower, never a retry."""
    rate = 4e6
    faults.add(Rule("PATCH", UPLOAD, Throttle(rate), times=None))
    started = time.monotonic()
    result, stats = push(llama_dir, f"{faults.host}/faults/slow:v1", tmp_path)
    took = time.monotonic() - started
    assert result.manifest.digest == clean.manifest.digest
    assert stats.retries == 0 and stats.resent_bytes == 0
    assert took >= 0.9 * layer_bytes(clean) / rate


# --- tokens -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_proxy(token_registry):
    with FaultProxy(token_registry.host) as p:
        yield p


@pytest.mark.parametrize("upload", ["chunked", "monolithic"])
def test_token_expired_mid_upload_is_fetched_again(token_registry, token_proxy, clean, llama_dir, tmp_path,
                                                   upload):
    """The push token stops working mid-upload (``401 error="invalid_token"``
    for the request that carries it and every later one): at the third PATCH
    of a chunked upload, or at the second layer's streamed PUT of monolithic
    ones. The client drops it, gets a new one from the token server, and goes
    on: from the offset the registry confirmed (chunked), or with that blob
    again (monolithic)."""
    reg, proxy = token_registry, token_proxy
    server = reg.extra["token_server"]
    proxy.reset()
    server.clear()
    expire = ExpireToken(server.realm, server.service)
    if upload == "chunked":
        proxy.add(Rule("PATCH", UPLOAD, expire, occurrence=3))
    else:
        proxy.add(Rule("PUT", COMMIT, expire, occurrence=2))
    repo = f"faults/token-{upload}"
    ref = Reference.parse(f"{proxy.host}/{repo}:v1")
    client = RegistryClient(ref, credentials=Credentials(reg.username, reg.password))
    result, stats = push(llama_dir, str(ref), tmp_path, client=client, upload=upload)
    assert result.manifest.digest == clean.manifest.digest

    seen = proxy.requests()
    expired = [s for s in seen if s.status == 401 and s.fault]
    assert len(expired) == 1 and expired[0].method == ("PATCH" if upload == "chunked" else "PUT")
    revoked = expired[0].headers["authorization"]
    assert all(s.headers.get("authorization") != revoked for s in seen[seen.index(expired[0]) + 1:])
    push_scope = f"repository:{repo}:pull,push"
    asked = [r for r in server.log() if push_scope in r.scopes and r.status == 200]
    assert len(asked) == 2  # the first push token, and a new one after it expired
    assert stats.retries == 1
    if upload == "chunked":
        assert stats.resumes == 1 and 0 < stats.resent_bytes <= CHUNK
    else:
        assert stats.resent_bytes == clean.layers[1].descriptor.size
    token = server.issue(reg.username, [f"repository:{repo}:pull"])
    r = httpx.get(f"{reg.url}/v2/{repo}/manifests/v1", headers={
        "Authorization": f"Bearer {token}", "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == clean.manifest.digest


def test_a_token_refused_twice_in_a_row_fails(token_registry, token_proxy, llama_dir, tmp_path):
    """Every push token is refused: one new token is tried, then the push
    stops with the registry's 401, no retry loop."""
    reg, proxy = token_registry, token_proxy
    server = reg.extra["token_server"]
    proxy.reset()
    server.clear()
    proxy.add(Rule("PATCH", UPLOAD, ExpireToken(server.realm, server.service), times=None))
    ref = Reference.parse(f"{proxy.host}/faults/token-refused:v1")
    client = RegistryClient(ref, credentials=Credentials(reg.username, reg.password))
    with pytest.raises(RegistryError) as info:
        push(llama_dir, str(ref), tmp_path, client=client)
    assert info.value.status == 401 and "\n" not in str(info.value)
    sessions: dict[str, list[int]] = {}
    for s in proxy.requests("PATCH"):
        sessions.setdefault(s.path, []).append(s.status)
    # per upload: the first token and one fresh one, refused (a second layer may have started: see
    # test_no_new_layer_starts_after_a_failure)
    assert all(statuses == [401, 401] for statuses in sessions.values())
    asked = [r for r in server.log() if "repository:faults/token-refused:pull,push" in r.scopes]
    assert len(asked) == 2 * len(sessions)  # one token per attempt, each refused once
    token = server.issue(reg.username, ["repository:faults/token-refused:pull"])
    r = httpx.get(f"{reg.url}/v2/faults/token-refused/manifests/v1", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404


# --- secrets --------------------------------------------------------------------------


class ExceptionRecorder:
    """Every exception raised in any frame outside tests/ (this thread and
    threads started meanwhile), caught or not: its type, str() and repr()."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self.tests_dir = str(Path(__file__).parent)

    def _local(self, frame, event, arg):
        if event == "exception":
            try:
                e = arg[1]
                notes = " ".join(map(str, getattr(e, "__notes__", ())))
                self.seen.append((type(e).__name__, f"{e} {notes}", repr(e)))
            except Exception:  # noqa: BLE001 - a tracer must never raise
                self.seen.append((type(arg[1]).__name__, "<unprintable>", "<unprintable>"))
        return self._local

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename.startswith(self.tests_dir):
            return None
        frame.f_trace_lines = False
        return self._local

    def __enter__(self) -> ExceptionRecorder:
        self._before = sys.gettrace(), threading.gettrace()  # e.g. coverage's
        threading.settrace(self._global)
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._before[0])
        threading.settrace(self._before[1])  # type: ignore[arg-type]


def _secret_registries():
    from .registry import start_htpasswd_registry, start_token_registry

    user = "leak-" + secrets.token_hex(3)
    secret = "pw-" + secrets.token_urlsafe(18)
    return user, secret, {"htpasswd": partial(start_htpasswd_registry, user, secret),
                          "token": partial(start_token_registry, {user: secret})}


USER, SECRET, START = _secret_registries()
WRONG = "wrong-" + secrets.token_urlsafe(18)


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def secret_registry(request):
    reg = START[request.param]()
    yield reg
    reg.stop()


def forms(secret: str) -> list[str]:
    """The secret and what it looks like in a Basic header or docker's config."""
    return [secret, base64.b64encode(f"{USER}:{secret}".encode()).decode(),
            base64.b64encode(f"{USER}:{secret}".encode()).decode().rstrip("=")]


def test_no_secret_in_output_logs_or_errors(secret_registry, llama_dir, tmp_path, monkeypatch, capsys, caplog):
    """A unique password, stored with ``modelimage login --password-stdin``,
    then push, ``build --json``, ``limits``, ``estimate REF --json``
    (``--probe`` too: it copies the credentials onto http.client requests),
    ``pull REF DEST --json``, and the same with a wrong password stored
    (failing): neither password, nor ``base64(user:password)``, appears on
    stdout, stderr, in any log record (DEBUG, httpx and httpcore on), in any
    exception raised on the way (caught or not), or in the files written."""
    reg = secret_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("", "httpx", "httpcore", "modelimage"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    ref = f"{reg.host}/leak/llama"
    outputs: list[str] = []
    codes: dict[str, int] = {}

    def run(name: str, *argv: str, stdin: str | None = None) -> None:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        codes[name] = main(list(argv))
        out, err = capsys.readouterr()
        outputs.extend([out, err])

    with ExceptionRecorder() as raised:
        run("login", "login", reg.host, "-u", USER, "--password-stdin", stdin=SECRET + "\n")
        run("push", "build", str(llama_dir), "--push", f"{ref}:v1")
        run("build --json", "build", str(llama_dir), "--push", f"{ref}:v2", "--json")
        run("layout --json", "build", str(llama_dir), "-o", f"oci:{tmp_path / 'layout'}", "--json")
        run("limits", "limits", reg.host)
        run("limits --json", "limits", reg.host, "--json")
        run("estimate", "estimate", f"{ref}:v1", "--json")
        run("estimate --probe", "estimate", f"{ref}:v1", "--json", "--probe")
        run("pull", "pull", f"{ref}:v1", str(tmp_path / "pulled"), "--json")
        store_credentials(reg.host, USER, WRONG)
        run("wrong push", "build", str(llama_dir), "--push", f"{ref}:v3")
        run("wrong estimate", "estimate", f"{ref}:v1", "--json")
        run("wrong pull", "pull", f"{ref}:v1", str(tmp_path / "pulled-again"), "--json")
        library_errors = []
        for creds in (Credentials(USER, WRONG), Credentials(USER, SECRET)):
            r = Reference.parse(f"{reg.host}/leak/library:v1")
            client = RegistryClient(r, credentials=creds)
            try:
                client.get_manifest(r.repository, "missing")
            except Exception as e:  # noqa: BLE001
                library_errors.append(e)
            finally:
                client.close()
            library_errors.append(creds)  # its repr
            library_errors.append(client.auth)

    assert codes == {"login": 0, "push": 0, "build --json": 0, "layout --json": 0, "limits": 0,
                     "limits --json": 0, "estimate": 0, "estimate --probe": 0, "pull": 0,
                     "wrong push": 1, "wrong estimate": 1, "wrong pull": 1}, (codes, outputs)
    wrong, right = library_errors[0], library_errors[3]
    assert len(library_errors) == 6 and isinstance(wrong, Exception) and isinstance(right, RegistryError)
    assert "401" in str(wrong) or "refused" in str(wrong) or "rejected" in str(wrong)
    assert right.status == 404

    texts = {"stdout/stderr": outputs}
    texts["log records"] = [f"{r.name} {r.getMessage()} {r.msg!r} {r.args!r} {r.exc_text or ''} "
                            f"{logging.Formatter().format(r)}" for r in caplog.records]
    texts["exceptions"] = [" ".join(seen) for seen in raised.seen]
    texts["library errors"] = []
    for e in library_errors:
        chain = [e]
        while isinstance(chain[-1], BaseException) and (chain[-1].__cause__ or chain[-1].__context__):
            chain.append(chain[-1].__cause__ or chain[-1].__context__)
        texts["library errors"] += [f"{x} {x!r} {getattr(x, 'args', '')!r}" for x in chain]
    written = [p for d in (tmp_path / "cache", tmp_path / "pulled", tmp_path / "layout")
               for p in d.rglob("*") if p.is_file()]
    texts["files"] = [p.read_bytes().decode("latin-1") for p in written]
    assert caplog.records and raised.seen and written  # the scan looked at something
    assert any("HTTP Request" in t for t in texts["log records"])  # httpx's log was on
    for secret in (SECRET, WRONG):
        for where, items in texts.items():
            for form in forms(secret):
                leaks = [t for t in items if form in t]
                assert not leaks, f"{secret!r} ({form!r}) in {where}: {leaks[0][:300]!r}"


# --- redirects --------------------------------------------------------------------------


class _Recorder(ThreadingHTTPServer):
    """Object storage stand-in on another loopback port: serves ``data``
    (ranges too) and records every request's headers."""

    def __init__(self, data: bytes, cut_after: int | None = None):
        self.data, self.headers_seen = data, []
        self.cut_after = cut_after  # the first answer longer than this is cut after that many bytes
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                recorder.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                lo, hi, status = 0, len(recorder.data) - 1, 200
                if m := re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
                    lo, hi, status = int(m[1]), min(hi, int(m[2] or hi)), 206
                self.send_response(status)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(recorder.data)}")
                self.send_header("Content-Length", str(hi - lo + 1))
                self.end_headers()
                if recorder.cut_after is not None and hi - lo + 1 > recorder.cut_after:
                    self.wfile.write(recorder.data[lo:lo + recorder.cut_after])
                    self.wfile.flush()
                    recorder.cut_after = None
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(recorder.data[lo:hi + 1])

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_one_connection_streams_the_blob_and_goes_on_after_a_cut(registry):
    """``connections=1``: after the first piece, the rest of the blob comes in
    one streaming GET (not a request per piece); cut mid-way, it goes on with
    a ranged GET from the first byte it did not get."""
    from modelimage.registry.fetch import BlobReader

    data = secrets.token_bytes(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage = _Recorder(data, cut_after=120_000)
    try:
        with FaultProxy(registry.host) as proxy:
            location = f"http://127.0.0.1:{storage.server_address[1]}/bucket/blob?sig=presigned"
            proxy.add(Rule("GET", r"/blobs/sha256:", Respond(307, (("Location", location),)), times=None))
            client = RegistryClient(Reference.parse(f"{proxy.host}/stream/blob"))
            try:
                reader = BlobReader(client, "stream/blob", digest, len(data), connections=1, piece=50_000,
                                    backoff=0.01)
                assert b"".join(bytes(c) for c in reader.chunks()) == data
                assert reader.stats.retries == 1
            finally:
                client.close()
    finally:
        storage.shutdown()
        storage.server_close()
    # the first piece (which also finds where the bytes are), the rest in one GET, cut after
    # 120 000 bytes (pieces 50 000-99 999 and 100 000-149 999 arrived), then from 150 000 on
    assert [h.get("range") for h in storage.headers_seen] == [
        "bytes=0-49999", "bytes=50000-299999", "bytes=150000-299999"]


@pytest.fixture(params=["htpasswd", "token"])
def auth_registry(request):
    return request.getfixturevalue(f"{request.param}_registry")


@pytest.mark.parametrize("target_host", ["127.0.0.1", "localhost"])
def test_redirected_blob_reads_carry_no_credentials(auth_registry, target_host):
    """``get_blob``, ``stream_blob`` (with a range) and the pull's ranged
    reader, redirected (307) by the registry to another loopback port: the
    request to the registry carries ``Authorization``, the one to the other
    port does not."""
    from modelimage.registry.fetch import BlobReader

    reg = auth_registry
    data = secrets.token_bytes(5000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    storage = _Recorder(data)
    try:
        with FaultProxy(reg.host) as proxy:
            location = f"http://{target_host}:{storage.server_address[1]}/bucket/blob?sig=presigned"
            proxy.add(Rule("GET", r"/blobs/sha256:", Respond(307, (("Location", location),)), times=None))
            ref = Reference.parse(f"{proxy.host}/redirect/blob")
            client = RegistryClient(ref, credentials=Credentials(reg.username, reg.password))
            try:
                client.ping()  # learns the challenge: later requests are authorized up front
                assert client.get_blob(ref.repository, digest) == data
                r = client.stream_blob(ref.repository, digest, 100, 199)
                try:
                    assert r.read() == data[100:200]
                finally:
                    r.close()
                reader = BlobReader(client, ref.repository, digest, len(data), connections=2, piece=1000)
                assert b"".join(bytes(c) for c in reader.chunks()) == data
            finally:
                client.close()
            asked = proxy.requests("GET", r"/blobs/sha256:")
    finally:
        storage.shutdown()
        storage.server_close()
    assert len(asked) >= 3 and all(s.status == 307 for s in asked)
    scheme = "basic" if reg.extra.get("token_server") is None else "bearer"
    assert all(s.headers.get("authorization", "").lower().startswith(scheme) for s in asked)
    assert len(storage.headers_seen) >= 3 + 4  # get_blob, stream_blob, and the reader's pieces
    assert not [h for h in storage.headers_seen if "authorization" in h]
    assert all(not h.get("cookie") for h in storage.headers_seen)
