"""Connections that can be cut from another thread: what makes Ctrl-C stop
a push at once.

A request waiting for the registry's answer (a commit, or a PATCH whose
body sits in the kernel's socket buffers while a slow link drains them)
blocks in ``recv`` with no timeout (see ``Transport.body_timeout``).
:class:`InterruptibleTransport` is httpx's own transport whose connections
are made through a network backend that keeps each one's socket;
:meth:`InterruptibleTransport.interrupt` shuts them all down
(``shutdown(SHUT_RDWR)`` wakes a blocked ``recv``/``send`` in any thread),
so every request in flight fails at once with a transport error.
"""

from __future__ import annotations

import socket
import ssl
import threading
import typing

import httpcore
import httpx


class _Stream(httpcore.NetworkStream):
    """A network stream whose socket the backend can shut down."""

    def __init__(self, inner: httpcore.NetworkStream, backend: _Backend):
        self.inner, self.backend = inner, backend
        backend.track(self)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, timeout)

    def close(self) -> None:
        self.backend.forget(self)
        self.inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:  # type: ignore[override]
        self.backend.forget(self)
        return _Stream(self.inner.start_tls(ssl_context, server_hostname, timeout), self.backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)

    def shutdown(self) -> None:
        sock = self.inner.get_extra_info("socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Backend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, keeping the streams it opened."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.streams: set[_Stream] = set()
        self.lock = threading.Lock()

    def track(self, stream: _Stream) -> None:
        with self.lock:
            self.streams.add(stream)

    def forget(self, stream: _Stream) -> None:
        with self.lock:
            self.streams.discard(stream)

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # type: ignore[override]
        return _Stream(self.inner.connect_tcp(host, port, timeout, local_address, socket_options), self)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # type: ignore[override]
        return _Stream(self.inner.connect_unix_socket(path, timeout, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)

    def shutdown_all(self) -> None:
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            stream.shutdown()


class InterruptibleTransport(httpx.HTTPTransport):
    """httpx's transport (same TLS context, limits, retries), whose open
    connections :meth:`interrupt` cuts from any thread."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits, proxy: str | None = None):
        """``proxy``: an ``http://`` or ``https://`` proxy URL (from
        ``HTTPS_PROXY``/``HTTP_PROXY``, :func:`environment_proxy`); its
        connections go through httpx's proxy pool, which :meth:`interrupt`
        does not reach (a Ctrl-C then waits for the current 64 KiB piece)."""
        super().__init__(verify=ssl_context, limits=limits, proxy=proxy)
        self._backend = _Backend()
        pool = getattr(self, "_pool", None)  # httpcore.HTTPProxy is a ConnectionPool too: keep it as it is
        if proxy is None and isinstance(pool, httpcore.ConnectionPool):  # as httpx builds it, direct
            self._pool = httpcore.ConnectionPool(
                ssl_context=ssl_context, max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry, network_backend=self._backend)

    def interrupt(self) -> None:
        """Shut down every open connection: requests in flight fail at once."""
        self._backend.shutdown_all()


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY``, any case), or None when there is none or
    ``NO_PROXY`` covers its host: the rules curl, docker and httpx follow
    (read with :func:`urllib.request.getproxies` and ``proxy_bypass``)."""
    import urllib.request

    parsed = httpx.URL(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parsed.host):
        return None
    return proxy if "://" in proxy else "http://" + proxy
