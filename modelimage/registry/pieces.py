"""The machinery under :class:`~modelimage.registry.fetch.BlobReader`: where
bulk reads go (:class:`Target`), one thread's keep-alive ``http.client``
connections (:class:`Connections`), ranged reads into a buffer, and the
reorder window that hands pieces fetched in parallel to the caller in
order (:func:`in_order`). No retry decisions here: the caller's policy.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ModelImageError
from .transport import RegistryError

if TYPE_CHECKING:
    import httpx

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


class FetchError(ModelImageError):
    """A blob that could not be read, past the retry budget."""


class Stale(Exception):
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
class Target:
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


def origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def proxied(url: httpx.URL) -> bool:
    """Whether the environment sends ``url`` through a proxy: the same rule
    as the registry transport's (:func:`~modelimage.registry.transport.sockets.environment_proxy`)."""
    from .transport.sockets import environment_proxy

    return environment_proxy(str(url)) is not None


class Connections:
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
class OpenStream:
    """A worker's streaming GET (one connection): the response, the blob
    offset its next byte has, and the target it was asked of."""

    response: http.client.HTTPResponse | None = None
    at: int = -1
    target: Target | None = None


def content_range_start(label: str, value: str | None, lo: int, hi: int, size: int) -> int:
    """Where the body of a 206 answer starts in the blob, from its
    ``Content-Range``: any range that covers bytes ``lo-hi`` (a server may
    send more than asked; the caller skips to ``lo``). Raises
    :class:`FetchError` for one that does not cover them, or names another
    size than the manifest's (RFC 9110 section 14.4)."""
    m = _CONTENT_RANGE.match(value or "")
    if not m or int(m.group(1)) > lo or int(m.group(2)) < hi:
        raise FetchError(f"{label}: asked for bytes {lo}-{hi}, got Content-Range {value!r}")
    if m.group(3) != "*" and int(m.group(3)) != size:
        raise FetchError(f"{label}: the server says the blob has {m.group(3)} bytes, the manifest says {size}")
    return int(m.group(1))


def check_content_range(label: str, value: str | None, lo: int, hi: int, size: int) -> None:
    """Raise :class:`FetchError` unless ``Content-Range`` says bytes ``lo-hi`` of ``size``."""
    m = _CONTENT_RANGE.match(value or "")
    if not m or int(m.group(1)) != lo or int(m.group(2)) != hi:
        raise FetchError(f"{label}: asked for bytes {lo}-{hi}, got Content-Range {value!r}")
    if m.group(3) != "*" and int(m.group(3)) != size:
        raise FetchError(f"{label}: the server says the blob has {m.group(3)} bytes, the manifest says {size}")


def bad_status(what: str, status: int, target: Target, registry_base: str) -> None:
    """Raise for a bulk read's unexpected ``status``: :class:`Stale` when the
    URL or credentials no longer work (401/403, a redirect, a 404 from
    storage elsewhere), else the :class:`RegistryError`."""
    import httpx

    redirected = origin(target.url) != origin(httpx.URL(registry_base))
    if status in (401, 403) or (status == 404 and redirected) or status in (301, 302, 303, 307, 308):
        raise Stale(f"HTTP {status}")
    raise RegistryError(what, status)


def read_into(r: http.client.HTTPResponse, view: memoryview, stats: FetchStats) -> None:
    """Fill ``view`` from the response (its bytes counted in ``stats``)."""
    got = 0
    while got < len(view):
        n = r.readinto(view[got:])
        if not n:
            raise http.client.IncompleteRead(b"", len(view) - got)
        got += n
        stats.add(n)


def read_range_httpx(label: str, target: Target, lo: int, hi: int, view: memoryview, *, size: int,
                     timeout: float, context: ssl.SSLContext, stats: FetchStats, registry_base: str) -> None:
    """Bytes ``lo..hi`` into ``view`` through httpx (which honours the
    environment's proxies); anything but 206 raises (:func:`bad_status`)."""
    import httpx

    with httpx.Client(timeout=timeout, follow_redirects=False, verify=context) as c:
        with c.stream("GET", str(target.url), headers={**target.headers, "Range": f"bytes={lo}-{hi}"}) as r:
            if r.status_code != 206:
                bad_status(f"{label}: bytes {lo}-{hi}", r.status_code, target, registry_base)
            check_content_range(label, r.headers.get("Content-Range"), lo, hi, size)
            got = 0
            for data in r.iter_raw(1 << 20):
                if got + len(data) > len(view):
                    raise FetchError(f"{label}: the server sent more bytes than asked for")
                view[got : got + len(data)] = data
                got += len(data)
                stats.add(len(data))
            if got != len(view):
                raise http.client.IncompleteRead(b"", len(view) - got)


Fetch = Callable[[int, int, memoryview, Callable[[], bool]], None]


def in_order(count: int, bounds: Callable[[int], tuple[int, int]], piece: int, workers: int,
              make_worker: Callable[[], tuple[Fetch, Callable[[], None]]], first: bytearray | None,
              name: str) -> Iterator[memoryview]:
    """Pieces ``0..count-1`` (byte ranges ``bounds(i)``, at most ``piece``
    bytes) fetched by ``workers`` threads, handed out strictly in order
    through a reorder window of ``workers + 2`` buffers (memory stays
    bounded). Each thread gets ``(fetch, shutdown)`` from ``make_worker``:
    ``fetch(lo, hi, view, aborted)`` fills ``view``; ``shutdown()`` (called
    from any thread) interrupts it. ``first``: piece 0, already read. The
    first error of any thread is raised to the consumer; leaving early
    stops every thread."""
    cond = threading.Condition()
    ready: dict[int, bytearray] = {}
    free: list[bytearray] = []
    errors: list[BaseException] = []
    state = {"next": 0, "consumed": 0, "abort": False}
    window = workers + 2
    if first is not None:
        ready[0] = first
        state["next"] = 1
    shutdowns: list[Callable[[], None]] = []

    def run() -> None:
        fetch, shutdown = make_worker()
        with cond:
            shutdowns.append(shutdown)
        try:
            while True:
                with cond:
                    while not state["abort"] and state["next"] < count and state["next"] >= state["consumed"] + window:
                        cond.wait()
                    if state["abort"] or state["next"] >= count:
                        return
                    i = state["next"]
                    state["next"] += 1
                    buf = free.pop() if free else None
                lo, hi = bounds(i)
                if buf is None or len(buf) < hi - lo + 1:
                    buf = bytearray(piece)
                fetch(lo, hi, memoryview(buf)[: hi - lo + 1], lambda: bool(state["abort"]))
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
            shutdown()

    threads = [threading.Thread(target=run, name=f"{name}-{k}", daemon=True)
               for k in range(min(workers, count - int(state["next"])))]
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
            for shutdown in shutdowns:
                shutdown()
        for t in threads:
            t.join(timeout=10)
