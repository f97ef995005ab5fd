"""A fault-injecting HTTP/1.1 proxy for tests, in front of a real registry.

:class:`FaultProxy` listens on ``127.0.0.1`` (loopback, so modelimage talks
plain HTTP to it) and forwards every request to the upstream registry,
streaming bodies both ways. It sends the registry ``Host: UPSTREAM`` (so the
registry builds its URLs for itself) and rewrites ``Location`` headers that
point at the upstream back to the proxy, so the client keeps talking to the
proxy.

Faults are :class:`Rule` objects: a method, a regex searched in the request
target (path and query), which matching request is the first to get the
fault (``occurrence``, 1-based) and for how many (``times``; ``None``: every
one from then on). The faults:

* :class:`Cut` -- reset the connection after ``after`` body bytes.
  ``upstream=True``: those bytes were forwarded and the registry's connection
  is reset too, so it sees a partial PATCH. ``upstream=False``: a *buffering*
  proxy (nginx's default ``proxy_request_buffering on``) reads the whole body
  before forwarding, so a client cut there never reaches the registry.
* :class:`Respond` -- answer ``status`` (500/502/503, or 429 with
  ``Retry-After``: :func:`too_many_requests`) instead of forwarding (the
  request body is read and dropped first).
* :class:`Stall` -- forward, then wait ``seconds`` before relaying the
  registry's answer.
* :class:`Throttle` -- forward with both bodies slowed to ``rate`` bytes/s.
* :class:`BodySize` -- answer instead of forwarding when the request body is
  over or under a size (413 body limits, chunk caps, minimum chunks).
* :class:`Rewrite` -- forward (with request headers changed or removed:
  a server that ignores ``Range``), then change the answer's status or add
  headers.
* :class:`Spoil` -- forward, then relay the answer's body with one byte
  changed (a corrupting middlebox) or the connection closed after some
  bytes (a download dropped mid-file).
* :class:`ExpireToken` -- the bearer token the request carries is expired
  from now on: this request and every later one that carries it get ``401``
  with ``WWW-Authenticate: Bearer realm=..,service=..,scope=..,
  error="invalid_token"``. A request without a bearer token is let through
  (and does not count as an occurrence).

Every request is recorded as a :class:`Seen` in :attr:`FaultProxy.seen`
(method, target, headers, status, body bytes received from the client and
forwarded to the registry, times) so tests can count bytes and time retries.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}
PIECE = 64 << 10


# --- faults ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """Reset the connection after ``after`` request body bytes."""

    after: int
    upstream: bool = True  # True: forward those bytes, then reset the registry's connection too


@dataclass(frozen=True)
class Respond:
    """Answer instead of the registry (distribution's JSON error body by default)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    code: str = "UNAVAILABLE"
    message: str = "injected by the fault proxy"


def too_many_requests(retry_after: int) -> Respond:
    return Respond(429, (("Retry-After", str(retry_after)),), "TOOMANYREQUESTS", "slow down (injected)")


@dataclass(frozen=True)
class Stall:
    """Forward, then sit on the registry's answer for ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Throttle:
    """Forward both bodies at ``rate`` bytes per second."""

    rate: float


@dataclass(frozen=True)
class ExpireToken:
    """The request's bearer token stops working (see the module docstring)."""

    realm: str
    service: str


@dataclass(frozen=True)
class BodySize:
    """Answer ``respond`` (instead of forwarding) when the request's
    ``Content-Length`` is over ``max_bytes`` or under ``min_bytes``; forward
    it otherwise. Emulates nginx's ``client_max_body_size`` (413), a registry
    capping its chunks, a storage backend refusing big single PUTs, or one
    enforcing ``OCI-Chunk-Min-Length`` (416)."""

    respond: Respond
    max_bytes: int | None = None
    min_bytes: int | None = None

    def violated(self, headers: list[tuple[str, str]]) -> bool:
        length = int(_get(headers, "content-length") or 0)
        return (self.max_bytes is not None and length > self.max_bytes) or \
            (self.min_bytes is not None and length < self.min_bytes)


@dataclass(frozen=True)
class Rewrite:
    """Forward, then relay the registry's answer with ``status`` instead of its
    own (``None``: keep it) and ``headers`` set (ECR's 201 to a chunk PATCH;
    ``OCI-Chunk-Min-Length`` on a new upload session)."""

    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    request: tuple[tuple[str, str | None], ...] = ()  # request headers set (None: removed) before forwarding


@dataclass(frozen=True)
class Spoil:
    """Forward, then relay the answer's body with the byte at ``flip_at``
    inverted, and/or close the connection once ``cut_after`` body bytes
    were relayed (short of its Content-Length: a dropped download)."""

    flip_at: int | None = None
    cut_after: int | None = None


Fault = Cut | Respond | Stall | Throttle | ExpireToken | BodySize | Rewrite | Spoil


@dataclass
class Rule:
    method: str  # "*" for any
    path: str  # regex, searched in the request target (path and query)
    fault: Fault
    occurrence: int = 1  # the first matching request (1-based) that gets the fault
    times: int | None = 1  # how many get it; None: every one from ``occurrence`` on
    matched: int = 0
    fired: int = 0

    def matches(self, method: str, target: str) -> bool:
        return (self.method == "*" or self.method == method) and re.search(self.path, target) is not None

    def take(self) -> bool:
        """Count one matching request; whether it gets the fault."""
        self.matched += 1
        n = self.matched - self.occurrence
        if n < 0 or (self.times is not None and n >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class Seen:
    """One request as the proxy saw it."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    started: float  # time.monotonic() when the request head arrived
    answered: float | None = None  # when the proxy began to send the answer
    finished: float | None = None  # when the answer was relayed (or the connection reset)
    status: int | None = None  # what the client got (None: a reset)
    received: int = 0  # body bytes read from the client
    forwarded: int = 0  # body bytes written to the registry
    fault: str | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class _Reset(Exception):
    """Drop the client connection with a TCP reset."""


def _reset(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# --- HTTP/1.1 framing ----------------------------------------------------------------


def _read_head(f) -> tuple[str, list[tuple[str, str]]] | None:
    line = f.readline(65537)
    if not line:
        return None
    start = line.decode("latin-1").rstrip("\r\n")
    headers = []
    while True:
        h = f.readline(65537)
        if not h:
            raise ConnectionError("connection closed in the headers")
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return start, headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _body(f, headers: list[tuple[str, str]], *, until_close: bool = False):
    """The body's pieces (de-chunked), as framed by ``headers``."""
    if "chunked" in (_get(headers, "transfer-encoding") or "").lower():
        while True:
            size = int(f.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while f.readline(65537) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return
            while size:
                data = f.read(min(PIECE, size))
                if not data:
                    raise ConnectionError("connection closed in a chunk")
                size -= len(data)
                yield data
            f.readline(16)
    elif (length := _get(headers, "content-length")) is not None:
        left = int(length)
        while left:
            data = f.read1(min(PIECE, left)) if hasattr(f, "read1") else f.read(min(PIECE, left))
            if not data:
                raise ConnectionError(f"connection closed with {left} body bytes to go")
            left -= len(data)
            yield data
    elif until_close:
        while data := f.read1(PIECE):
            yield data


def _spoiled(fault: Spoil, data: bytes, at: int) -> bytes:
    """``data`` (answer body bytes from offset ``at``) as :class:`Spoil` relays them."""
    if fault.cut_after is not None:
        data = data[: max(0, fault.cut_after - at)]
    if fault.flip_at is not None and at <= fault.flip_at < at + len(data):
        i = fault.flip_at - at
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    return data


def _head_bytes(start: str, headers: list[tuple[str, str]]) -> bytes:
    return (start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


def _throttled(pieces, rate: float | None):
    for data in pieces:
        if rate is None:
            yield data
            continue
        for i in range(0, len(data), 16 << 10):
            part = data[i : i + (16 << 10)]
            time.sleep(len(part) / rate)
            yield part


# --- the proxy -----------------------------------------------------------------------


class FaultProxy:
    """A proxy on ``127.0.0.1:PORT`` (:attr:`host`) in front of ``upstream`` (``HOST:PORT``)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.revoked: set[str] = set()  # bearer tokens expired by ExpireToken
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    # -- API -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add(self, *rules: Rule) -> None:
        with self._lock:
            self.rules.extend(rules)

    def reset(self) -> None:
        """No rules, no records, no expired tokens."""
        with self._lock:
            self.rules.clear()
            self.seen.clear()
            self.revoked.clear()

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        """The recorded requests (of ``method``, with ``path`` regex in the target)."""
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and re.search(path, s.target)]

    def received(self, method: str | None = None, path: str = "") -> int:
        return sum(s.received for s in self.requests(method, path))

    def forwarded(self, method: str | None = None, path: str = "") -> int:
        return sum(s.forwarded for s in self.requests(method, path))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- serving ---------------------------------------------------------------

    def _fault_for(self, method: str, target: str, headers: list[tuple[str, str]]) -> Fault | None:
        auth = _get(headers, "authorization") or ""
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, target):
                    continue
                if isinstance(rule.fault, ExpireToken) and token is None:
                    continue
                if rule.take():
                    if isinstance(rule.fault, ExpireToken):
                        self.revoked.add(token)  # type: ignore[arg-type]
                    return rule.fault
            if token is not None and token in self.revoked:
                return next(r.fault for r in self.rules if isinstance(r.fault, ExpireToken))
        return None

    def _serve(self, client: socket.socket) -> None:
        cf = client.makefile("rb")
        try:
            while True:
                head = _read_head(cf)
                if head is None:
                    return
                start, headers = head
                method, target, _version = start.split(" ", 2)
                seen = Seen(method, target, {k.lower(): v for k, v in headers}, time.monotonic())
                with self._lock:
                    self.seen.append(seen)
                fault = self._fault_for(method, target, headers)
                seen.fault = type(fault).__name__ if fault else None
                try:
                    keep = self._one(client, cf, method, target, headers, fault, seen)
                except _Reset:
                    seen.finished = time.monotonic()
                    _reset(client)
                    return
                seen.finished = time.monotonic()
                if not keep:
                    return
        except (OSError, ValueError, ConnectionError):
            return
        finally:
            cf.close()
            try:
                client.close()
            except OSError:
                pass

    def _answer(self, client: socket.socket, seen: Seen, status: int, headers: list[tuple[str, str]],
                body: bytes) -> None:
        seen.status, seen.answered = status, time.monotonic()
        headers = [*headers, ("Content-Length", str(len(body)))]
        if seen.method == "HEAD":  # the length of the body a GET would get, and no body
            body = b""
        client.sendall(_head_bytes(f"HTTP/1.1 {status} {_REASONS.get(status, 'Fault')}", headers) + body)

    def _one(self, client, cf, method, target, headers, fault, seen) -> bool:
        """Handle one request; whether the client connection stays open."""
        body = _body(cf, headers)
        if isinstance(fault, BodySize):
            fault = fault.respond if fault.violated(headers) else None
            seen.fault = type(fault).__name__ if fault else None
        if isinstance(fault, Cut) and not fault.upstream:  # buffering proxy: the registry never hears of it
            for data in body:
                seen.received += min(len(data), fault.after - seen.received)
                if seen.received >= fault.after:
                    break
            raise _Reset
        if isinstance(fault, (Respond, ExpireToken)):
            for data in body:
                seen.received += len(data)
            if isinstance(fault, Respond):
                payload = json.dumps({"errors": [{"code": fault.code, "message": fault.message}]}).encode()
                self._answer(client, seen, fault.status, [("Content-Type", "application/json"), *fault.headers],
                             payload)
            else:
                m = re.match(r"^/v2/(.+?)/(?:blobs|manifests|tags)/", target)
                actions = "pull" if method in ("GET", "HEAD") else "pull,push"
                scope = f' scope="repository:{m.group(1)}:{actions}",' if m else ""
                challenge = (f'Bearer realm="{fault.realm}",service="{fault.service}",{scope}'
                             'error="invalid_token"')
                payload = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "token expired (injected)"}]})
                self._answer(client, seen, 401, [("Content-Type", "application/json"),
                                                 ("WWW-Authenticate", challenge)], payload.encode())
            return True
        rate = fault.rate if isinstance(fault, Throttle) else None

        # forward
        chunked = "chunked" in (_get(headers, "transfer-encoding") or "").lower()
        up_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "host"]
        if isinstance(fault, Rewrite) and fault.request:  # a server that ignores or misreads a header
            names = {k.lower() for k, _ in fault.request}
            up_headers = [(k, v) for k, v in up_headers if k.lower() not in names] + \
                [(k, v) for k, v in fault.request if v is not None]
        up_headers = [("Host", self.upstream), *up_headers, ("Connection", "close")]
        if chunked:
            up_headers.append(("Transfer-Encoding", "chunked"))
        host, port = self.upstream.rsplit(":", 1)
        try:
            up = socket.create_connection((host, int(port)), timeout=120)
        except OSError:
            for data in body:
                seen.received += len(data)
            self._answer(client, seen, 502, [], b"upstream unreachable\n")
            return True
        uf = up.makefile("rb")
        try:
            up.sendall(_head_bytes(f"{method} {target} HTTP/1.1", up_headers))
            for data in _throttled(body, rate):
                if isinstance(fault, Cut) and seen.received + len(data) >= fault.after:
                    data = data[: fault.after - seen.received]
                    seen.received += len(data)
                    up.sendall(data)
                    seen.forwarded += len(data)
                    time.sleep(0.05)  # let the registry read them before the reset
                    _reset(up)
                    raise _Reset
                seen.received += len(data)
                up.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                seen.forwarded += len(data)
            if chunked:
                up.sendall(b"0\r\n\r\n")
            if isinstance(fault, Cut):  # a body shorter than `after`: cut before the answer
                _reset(up)
                raise _Reset
            head = _read_head(uf)
            if head is None:
                raise _Reset
            status_line, r_headers = head
            if isinstance(fault, Rewrite):
                if fault.status is not None:
                    status_line = f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Rewritten')}"
                names = {k.lower() for k, _ in fault.headers}
                r_headers = [(k, v) for k, v in r_headers if k.lower() not in names] + list(fault.headers)
            status = int(status_line.split(" ", 2)[1])
            if isinstance(fault, Stall):
                time.sleep(fault.seconds)
            no_body = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            framed = no_body or _get(r_headers, "content-length") is not None or \
                "chunked" in (_get(r_headers, "transfer-encoding") or "").lower()
            r_chunked = not no_body and "chunked" in (_get(r_headers, "transfer-encoding") or "").lower()
            out = []
            for k, v in r_headers:
                if k.lower() in HOP_BY_HOP:
                    continue
                if k.lower() == "location" and v.startswith(f"http://{self.upstream}/"):
                    v = f"http://{self.host}/" + v[len(f"http://{self.upstream}/"):]
                out.append((k, v))
            if r_chunked:
                out.append(("Transfer-Encoding", "chunked"))
            if not framed:
                out.append(("Connection", "close"))
            seen.status, seen.answered = status, time.monotonic()
            client.sendall(_head_bytes(status_line, out))
            if not no_body:
                relayed = 0
                for data in _throttled(_body(uf, r_headers, until_close=True), rate):
                    if isinstance(fault, Spoil):
                        data = _spoiled(fault, data, relayed)
                    relayed += len(data)
                    client.sendall(b"%x\r\n%s\r\n" % (len(data), data) if r_chunked else data)
                    if isinstance(fault, Spoil) and fault.cut_after is not None and relayed >= fault.cut_after:
                        return False  # closed (FIN) short of the Content-Length: the client has every byte sent
                if r_chunked:
                    client.sendall(b"0\r\n\r\n")
            return framed and (_get(headers, "connection") or "").lower() != "close"
        finally:
            uf.close()
            up.close()


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 405: "Method Not Allowed", 413: "Payload Too Large",
            416: "Range Not Satisfiable", 401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
