"""Reading blobs fast: ranged GETs over several connections, in order.

One :class:`BlobReader` per blob. Its first request goes through the
:class:`~modelimage.registry.client.RegistryClient` (docker-style auth;
redirects followed, and ``Authorization`` never sent to another host), which
tells where the bytes really are (often object storage behind a redirect).
The rest of the blob is read in pieces of :data:`PIECE` bytes by up to
``connections`` threads over keep-alive ``http.client`` connections to that
place (``readinto`` a reused buffer: 1.2 GB/s on one loopback connection,
where httpx tops out at 0.5-0.9 GB/s; see ``probes.probe_download``), and
handed to the caller strictly in order through a reorder window of at most
``connections + 2`` pieces: memory stays bounded whatever the blob's size,
and a tar stream is still consumed front to back.

Credentials go with the bulk requests only when they go to the registry's own
origin (scheme, host, port); a redirect target gets none (its URL is
presigned). A piece that fails (a cut connection, a 5xx, an expired token or
URL) is fetched again, up to ``retries`` times with backoff, re-resolving the
URL through the client after a ``401``/``403`` (or a ``404`` from a redirect
target). Which failures are worth another attempt, how long to wait, and the
TLS trust of the bulk connections are the client's
:class:`~modelimage.registry.transport.Transport`'s (one retry policy, one
TLS configuration for every request). The caller verifies the digest: this
module only moves bytes.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import httpx

from ..errors import ModelImageError
from .client import RegistryClient
from .transport import USER_AGENT, RegistryError, RetryPolicy

PIECE = 8 << 20  # bytes per ranged GET: few round trips, bounded memory
# Two ranged GETs per blob, three blobs at once (pull.DEFAULT_CONCURRENCY): on a
# loopback registry 3x4, 2x2, 2x1 and 1x4 connections pulled 2.15 GB in the
# same 4.7-7.6 s (2-core VM, 2026-11-25: the machine's CPU is the limit, not
# the streams), and 3x2 keeps the pull's peak RSS under 200 MB (188 MB; 3x4: 239 MB).
DEFAULT_CONNECTIONS = 2
DEFAULT_RETRIES = RetryPolicy().retries


class FetchError(ModelImageError):
    """A blob that could not be read, past the retry budget."""


class _Stale(Exception):
    """The URL or the credentials of the bulk requests no longer work: resolve again."""


@dataclass
class FetchStats:
    """Bytes received over the network (every attempt counts) and retries."""

    bytes: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, nbytes: int = 0, retries: int = 0) -> None:
        with self.lock:
            self.bytes += nbytes
            self.retries += retries


@dataclass(frozen=True)
class _Target:
    """Where the bulk requests go, and the headers they carry."""

    url: httpx.URL
    headers: dict[str, str]
    generation: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.url.scheme, self.url.host, self.url.port or (443 if self.url.scheme == "https" else 80)

    @property
    def target(self) -> str:
        return self.url.raw_path.decode("ascii")


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def _proxied(url: httpx.URL) -> bool:
    """Whether the environment sends ``url`` through a proxy (then httpx reads it)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme)) and not urllib.request.proxy_bypass(url.host)


_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class _Connections:
    """One thread's keep-alive connections, by origin."""

    def __init__(self) -> None:
        self.conns: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def get(self, origin: tuple[str, str, int], timeout: float, context: ssl.SSLContext) -> http.client.HTTPConnection:
        conn = self.conns.get(origin)
        if conn is None:
            scheme, host, port = origin
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            self.conns[origin] = conn
        return conn

    def drop(self, origin: tuple[str, str, int]) -> None:
        conn = self.conns.pop(origin, None)
        if conn is not None:
            conn.close()

    def shutdown(self) -> None:
        """Interrupt reads in progress (from another thread) and close."""
        for conn in list(self.conns.values()):
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(2)
                except OSError:
                    pass
            conn.close()
        self.conns.clear()


@dataclass
class _Open:
    """A worker's streaming GET (one connection): the response, the blob
    offset its next byte has, and the target it was asked of."""

    response: http.client.HTTPResponse | None = None
    at: int = -1
    target: _Target | None = None


class BlobReader:
    """The bytes of one blob in ``repo``, from any offset, in order.

    ``size``: bytes (from the descriptor); ``connections``: parallel ranged
    GETs; ``piece``: bytes per GET; ``retries``/``backoff`` (attempts,
    seconds) override the client transport's retry policy; ``timeout``:
    seconds without a byte before a connection counts as cut. Raises
    :class:`FetchError` (or the registry's :class:`RegistryError`)."""

    def __init__(self, client: RegistryClient, repo: str, digest: str, size: int, *,
                 connections: int = DEFAULT_CONNECTIONS, retries: int | None = None,
                 stats: FetchStats | None = None, piece: int | None = None, backoff: float | None = None,
                 timeout: float = 60.0):
        self.client, self.repo, self.digest, self.size = client, repo, digest, size
        self.connections = max(1, connections)
        overrides = {"retries": None if retries is None else max(0, retries), "backoff": backoff}
        self.retry = replace(client.transport.retry, **{k: v for k, v in overrides.items() if v is not None})
        self.retries = self.retry.retries
        self.stats = stats if stats is not None else FetchStats()
        self.piece, self.timeout = piece or PIECE, timeout
        self.label = f"{client.host}/{repo}: blob {digest[:19]}"
        self._target: _Target | None = None
        self._resolve_lock = threading.Lock()

    # ------------------------------------------------------------ resolving

    def _resolve(self, lo: int, hi: int, stale: _Target | None = None) -> tuple[_Target, httpx.Response | None]:
        """A ranged GET through the registry client (auth, redirects): where
        the bytes are and which headers the bulk requests may carry. Returns
        the open response too, the first time (its bytes are piece 0)."""
        with self._resolve_lock:
            if stale is not None and self._target is not None and self._target.generation != stale.generation:
                return self._target, None  # another thread already resolved again
            attempt = 0
            while True:
                try:
                    r = self.client.stream_blob(self.repo, self.digest, lo, hi)
                    break
                except (httpx.TransportError, RegistryError) as e:
                    attempt += 1
                    if not self.retry.temporary(e) or attempt > self.retries:
                        raise self.retry.gave_up(self.label, e, attempt, FetchError) from None
                    self._wait(attempt, e)
            final = r.url
            headers = {"User-Agent": USER_AGENT}
            auth = r.request.headers.get("Authorization")
            # credentials only ever go back to the registry's own origin
            if auth and _origin(final) == _origin(httpx.URL(self.client.base)):
                headers["Authorization"] = auth
            generation = (self._target.generation + 1) if self._target else 0
            self._target = _Target(final, headers, generation)
            return self._target, r

    def _wait(self, attempt: int, e: BaseException | None) -> None:
        """Count a retry, then wait as the retry policy says (``attempt`` from 1)."""
        self.stats.add(retries=1)
        self.retry.wait(attempt, e)

    # ------------------------------------------------------------ reading

    def chunks(self, start: int = 0) -> Iterator[memoryview]:
        """The blob's bytes from ``start`` to its end, in order. Each view is
        valid until the next one is asked for."""
        if start >= self.size:
            return
        piece = self.piece
        count = -(-(self.size - start) // piece)

        def bounds(i: int) -> tuple[int, int]:
            lo = start + i * piece
            return lo, min(self.size, lo + piece) - 1

        lo0, hi0 = bounds(0)
        target, r = self._resolve(lo0, hi0)
        assert r is not None
        try:
            if r.status_code == 200:  # the server ignores Range: one stream, skipping to ``start``
                yield from self._whole(r, start)
                return
            first = bytearray(hi0 - lo0 + 1)
            self._check_range(r.headers.get("Content-Range"), lo0, hi0)
            got = 0
            for data in r.iter_raw(1 << 20):
                n = len(data)
                if got + n > len(first):
                    raise FetchError(f"{self.label}: the server sent more bytes than asked for")
                first[got : got + n] = data
                got += n
            self.stats.add(got)
            if got != len(first):
                raise FetchError(f"{self.label}: the server sent {got} of {len(first)} bytes at {lo0}")
        except httpx.TransportError as e:
            # the first piece failed mid-way: it is fetched again like any other piece
            first = None  # type: ignore[assignment]
            self.stats.add(retries=1)
            del e
        finally:
            r.close()
        yield from self._pieces(count, bounds, first)

    def _whole(self, r: httpx.Response, start: int) -> Iterator[memoryview]:
        skip, got = start, 0
        for data in r.iter_raw(1 << 20):
            got += len(data)
            self.stats.add(len(data))
            if skip:
                cut = min(skip, len(data))
                data, skip = data[cut:], skip - cut
            if data:
                yield memoryview(data)
        if got != self.size:
            raise FetchError(f"{self.label}: the server sent {got} bytes, the manifest says {self.size}")

    def _check_range(self, value: str | None, lo: int, hi: int) -> None:
        m = _CONTENT_RANGE.match(value or "")
        if not m or int(m.group(1)) != lo or int(m.group(2)) != hi:
            raise FetchError(f"{self.label}: asked for bytes {lo}-{hi}, got Content-Range {value!r}")
        if m.group(3) != "*" and int(m.group(3)) != self.size:
            raise FetchError(f"{self.label}: the server says the blob has {m.group(3)} bytes, "
                             f"the manifest says {self.size}")

    def _pieces(self, count: int, bounds: Callable[[int], tuple[int, int]],
                first: bytearray | None) -> Iterator[memoryview]:
        cond = threading.Condition()
        ready: dict[int, bytearray] = {}
        free: list[bytearray] = []
        errors: list[BaseException] = []
        state = {"next": 0, "consumed": 0, "abort": False}
        window = self.connections + 2
        if first is not None:
            ready[0] = first
            state["next"] = 1
        conns: list[_Connections] = []

        # one connection: its pieces are consecutive, so they come from one streaming GET
        # to the end of the blob instead of a request each (a ranged GET per piece costs the
        # registry a request: distribution 2.8 spent 2.5-3.6 CPU-s serving 2.15 GB in 8 MiB
        # ranges, 1.4-1.6 CPU-s in whole-blob GETs; 2-core VM, 2026-11-25)
        streamed = self.connections == 1 and self._target is not None and not _proxied(self._target.url)

        def worker() -> None:
            mine = _Connections()
            stream = _Open() if streamed else None
            with cond:
                conns.append(mine)
            try:
                while True:
                    with cond:
                        while (not state["abort"] and state["next"] < count
                               and state["next"] >= state["consumed"] + window):
                            cond.wait()
                        if state["abort"] or state["next"] >= count:
                            return
                        i = state["next"]
                        state["next"] += 1
                        buf = free.pop() if free else None
                    lo, hi = bounds(i)
                    if buf is None or len(buf) < hi - lo + 1:
                        buf = bytearray(self.piece)
                    self._fetch_piece(mine, lo, hi, memoryview(buf)[: hi - lo + 1], lambda: state["abort"], stream)
                    with cond:
                        ready[i] = buf
                        cond.notify_all()
            except BaseException as e:  # handed to the consumer
                with cond:
                    if not state["abort"]:
                        errors.append(e)
                    state["abort"] = True
                    cond.notify_all()
            finally:
                mine.shutdown()

        threads = [threading.Thread(target=worker, name=f"fetch-{self.digest[7:15]}-{k}", daemon=True)
                   for k in range(min(self.connections, count - state["next"]))]
        for t in threads:
            t.start()
        try:
            for i in range(count):
                with cond:
                    while i not in ready and not errors:
                        cond.wait()
                    if i not in ready:
                        raise errors[0]
                    buf = ready.pop(i)
                lo, hi = bounds(i)
                yield memoryview(buf)[: hi - lo + 1]
                with cond:
                    free.append(buf)
                    state["consumed"] = i + 1
                    cond.notify_all()
        finally:
            with cond:
                state["abort"] = True
                cond.notify_all()
                for c in conns:
                    c.shutdown()
            for t in threads:
                t.join(timeout=10)

    def _fetch_piece(self, conns: _Connections, lo: int, hi: int, view: memoryview,
                     aborted: Callable[[], bool], stream: "_Open | None" = None) -> None:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if aborted():
                raise FetchError(f"{self.label}: cancelled")
            target = self._target
            assert target is not None
            try:
                if stream is None:
                    self.read_range(conns, target, lo, hi, view)
                else:
                    self._read_streamed(conns, target, lo, hi, view, stream)
                return
            except _Stale as e:
                last = e
                if stream is not None:
                    stream.response = None
                conns.drop(target.origin)
                if attempt < self.retries:
                    self.stats.add(retries=1)
                    _, r = self._resolve(lo, lo, stale=target)
                    if r is not None:
                        r.close()
                continue
            except (OSError, http.client.HTTPException, RegistryError) as e:
                last = e
                if stream is not None:
                    stream.response = None
                conns.drop(target.origin)
                if not self.retry.temporary(e):
                    raise self.retry.gave_up(f"{self.label}: bytes {lo}-{hi}", e, attempt + 1, FetchError) from None
            if attempt < self.retries:
                self._wait(attempt + 1, last)
        raise self.retry.gave_up(f"{self.label}: bytes {lo}-{hi}", last, self.retries + 1, FetchError)

    def read_range(self, conns: _Connections, target: _Target, lo: int, hi: int, view: memoryview) -> None:
        """Bytes ``lo..hi`` (inclusive) into ``view``: one ranged GET."""
        if _proxied(target.url):
            return self._read_range_httpx(target, lo, hi, view)
        r = self._open_range(conns, target, lo, hi)
        self._read_into(r, view[: hi - lo + 1])
        if r.length:  # more than asked for: the connection cannot be reused
            r.close()
            conns.drop(target.origin)

    def _read_streamed(self, conns: _Connections, target: _Target, lo: int, hi: int, view: memoryview,
                       stream: "_Open") -> None:
        """Bytes ``lo..hi`` into ``view`` from the open GET of ``stream`` when
        it stands at ``lo``, else from a new one: ``lo`` to the end of the blob."""
        if stream.response is None or stream.at != lo or stream.target is not target:
            stream.response = self._open_range(conns, target, lo, self.size - 1)
            stream.at, stream.target = lo, target
        self._read_into(stream.response, view[: hi - lo + 1])
        stream.at = hi + 1

    def _read_into(self, r: http.client.HTTPResponse, view: memoryview) -> None:
        """Fill ``view`` from the response (its bytes counted in the stats)."""
        got = 0
        while got < len(view):
            n = r.readinto(view[got:])
            if not n:
                raise http.client.IncompleteRead(b"", len(view) - got)
            got += n
            self.stats.add(n)

    def _open_range(self, conns: _Connections, target: _Target, lo: int, hi: int) -> http.client.HTTPResponse:
        """A ranged GET of bytes ``lo..hi`` on this thread's connection, its status and range checked."""
        conn = conns.get(target.origin, self.timeout, self.client.transport.ssl_context)
        conn.request("GET", target.target, headers={**target.headers, "Range": f"bytes={lo}-{hi}"})
        r = conn.getresponse()
        if r.status != 206:
            r.read(4096)
            r.close()
            self._bad_status(r.status, target, lo, hi)
        self._check_range(r.getheader("Content-Range"), lo, hi)
        return r

    def _read_range_httpx(self, target: _Target, lo: int, hi: int, view: memoryview) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False,
                          verify=self.client.transport.ssl_context) as c:
            with c.stream("GET", str(target.url), headers={**target.headers, "Range": f"bytes={lo}-{hi}"}) as r:
                if r.status_code != 206:
                    self._bad_status(r.status_code, target, lo, hi)
                self._check_range(r.headers.get("Content-Range"), lo, hi)
                got = 0
                for data in r.iter_raw(1 << 20):
                    if got + len(data) > len(view):
                        raise FetchError(f"{self.label}: the server sent more bytes than asked for")
                    view[got : got + len(data)] = data
                    got += len(data)
                    self.stats.add(len(data))
                if got != len(view):
                    raise http.client.IncompleteRead(b"", len(view) - got)

    def _bad_status(self, status: int, target: _Target, lo: int, hi: int) -> None:
        redirected = _origin(target.url) != _origin(httpx.URL(self.client.base))
        if status in (401, 403) or (status == 404 and redirected) or status in (301, 302, 303, 307, 308):
            raise _Stale(f"HTTP {status}")
        raise RegistryError(f"{self.label}: bytes {lo}-{hi}", status)
