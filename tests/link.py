"""A network link's rate on loopback, for benchmarks that compare tools as a
real node would run them (benchmarks/bench_modelcar.py ``--link``).

:class:`Pacer` hands out one rate (bytes/s) shared by every connection and
thread that sends through it, the way one link's capacity is shared by the
connections on it. :class:`ShapedProxy` is a plain TCP proxy on
``127.0.0.1`` in front of a server (a registry) whose two directions are
each paced at the rate, as a full-duplex link carries each direction at its
rate: what clients send to the server (uploads) and what it answers
(downloads) do not slow each other. The loopback Hub paces what it serves
with a :class:`Pacer` of its own (:attr:`tests.hubserver.HubServer.rate`).
No latency and no loss are added: only the rate.
"""

from __future__ import annotations

import socket
import threading
import time

PIECE = 64 << 10  # bytes per paced send: 0.5 ms at 1 Gbit/s


class Pacer:
    """``rate`` bytes/s in total across every caller of :meth:`wait`.

    Each caller asks before sending ``n`` bytes and is held until the link
    would have carried the bytes scheduled before them: sends are put one
    after another on one timeline. A timeline that fell behind the clock
    (an idle link, a caller's sleep that overshot) lets up to ``burst``
    bytes through at once, no more: a link does not save up idle time."""

    def __init__(self, rate: float, burst: int = 4 * PIECE):
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = float(rate)
        self.burst = burst
        self._next = 0.0  # monotonic time at which the link is free again
        self._lock = threading.Lock()

    def wait(self, n: int) -> None:
        """Block until ``n`` more bytes fit in the rate."""
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now - self.burst / self.rate)
            self._next = start + n / self.rate
        if start > now:
            time.sleep(start - now)


class ShapedProxy:
    """A TCP proxy on ``127.0.0.1:PORT`` (:attr:`host`) in front of
    ``upstream`` (``HOST:PORT``), each direction paced at ``rate`` bytes/s
    in total across connections. HTTP passes through untouched (``Host``
    names the proxy, so a registry's ``Location`` URLs point back at it)."""

    def __init__(self, upstream: str, rate: float):
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.to_server = Pacer(rate)
        self.to_client = Pacer(rate)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            for s in list(self._sockets):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets |= {client, server}
            pair = [client, server, 2]  # the sockets, and how many of its two directions still run
            threading.Thread(target=self._pump, args=(client, server, self.to_server, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.to_client, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pacer: Pacer, pair: list) -> None:
        buf = bytearray(PIECE)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    dst.shutdown(socket.SHUT_WR)  # the other side's end, passed on
                    return
                pacer.wait(n)
                dst.sendall(view[:n])
        except OSError:  # a reset or a stopped proxy: end both directions
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        finally:
            with self._lock:
                pair[2] -= 1
                if pair[2] == 0:
                    for s in pair[:2]:
                        self._sockets.discard(s)
                        s.close()
