"""Measurements of this machine and its link, for the pull-time model
(:mod:`modelimage.estimate`) that need no container engine: the download
speed from a registry, the disk's write speed, the page cache. What the
engine costs is measured by calibrating it (:mod:`modelimage.calibrate`).

Every function here does I/O and takes time (a fraction of a second to a
few seconds); :mod:`modelimage.estimate` stays pure and takes their results
as arguments.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, ModelImageError

if TYPE_CHECKING:  # httpx is only needed by probe_download
    import ssl

    import httpx

    from .registry.transport import Transport

MiB = 2**20


def probe_writeback(directory: str | os.PathLike, *, cache_bytes: int | None = None, beyond: int = 512 * MiB,
                    chunk: int = 8 * MiB, busy: int = 2) -> float:
    """The pace, in bytes/s, at which this machine takes writes under
    ``directory`` once the page cache is full of dirty data: what an engine
    that leaves its writes to the kernel (podman, containerd) gets for every
    byte past :func:`probe_write_cache`. Writes ``cache_bytes`` (default:
    :func:`probe_write_cache`) plus ``beyond`` bytes of incompressible data
    to a temporary file, as an engine does (no fsync), times the last
    ``beyond`` bytes and removes the file (its dirty pages are dropped, not
    written). Takes a few seconds: about ``beyond`` over the disk's pace,
    after the page cache filled. Meanwhile ``busy`` threads keep cores busy
    hashing, as a pull keeps them (the engine's hashing and unpacking, a
    loopback registry): the kernel's flusher threads, which write the dirty
    pages back, get the cores that are left, and that sets the pace.

    Why so: on the project's 2-core VM a 64 MiB fsync'ed write went at
    1.0-1.4 GB/s (the host caches the disk), this probe with idle cores at
    355-472 MB/s, with 2 busy threads at 235 MB/s, and podman's 2 GiB pulls
    past the page cache implied 163-223 MB/s (2026-11-30, run 6 in
    docs/benchmarks.md). Not pure: this is the probe. Raises
    ``ModelImageError`` naming ``directory`` when it cannot be written or
    has less free space than the probe needs (and 1 GiB to spare).
    """
    if beyond < 1 or chunk < 1 or (cache_bytes is not None and cache_bytes < 0):
        raise ConfigError("probe_writeback needs a positive size")
    cache = probe_write_cache() if cache_bytes is None else cache_bytes
    total, chunk = cache + beyond, min(chunk, max(1, beyond // 8))  # the timed part spans 8 writes or more
    data = memoryview(os.urandom(chunk))  # incompressible, in case the filesystem compresses
    try:
        st = os.statvfs(directory)
        if st.f_bavail * st.f_frsize < total + 2**30:
            raise ModelImageError(f"cannot measure the disk under {directory}: the probe writes "
                                  f"{total / 2**30:.1f} GiB (what the page cache takes, then "
                                  f"{beyond / 2**30:.1f} GiB) and {st.f_bavail * st.f_frsize / 2**30:.1f} GiB "
                                  "are free; pass --disk-dir DIR on a disk with room")
        fd, name = tempfile.mkstemp(prefix=".modelimage-writeback-probe-", dir=Path(directory))
    except OSError as e:
        raise ModelImageError(f"cannot measure the disk under {directory}: {e}") from e
    stop = threading.Event()

    def keep_a_core_busy() -> None:  # hashlib releases the GIL for big buffers: a core each
        while not stop.is_set():
            hashlib.sha256(data).digest()

    workers = [threading.Thread(target=keep_a_core_busy, daemon=True) for _ in range(busy)]
    try:
        for w in workers:
            w.start()
        written, crossed, at = 0, None, 0
        while written < total:
            written += os.write(fd, data[: min(chunk, total - written)])
            if crossed is None and written >= cache:
                crossed, at = time.perf_counter(), written
        elapsed = time.perf_counter() - (crossed or time.perf_counter())
    except OSError as e:
        raise ModelImageError(f"cannot measure the disk under {directory}: {e}") from e
    finally:
        stop.set()
        for w in workers:
            w.join()
        os.close(fd)
        os.unlink(name)
    return (written - at) / max(elapsed, 1e-9)


def probe_download(url: str, *, client: httpx.Client | None = None, connections: int = 4,
                   max_bytes: int = 512 * MiB, transport: Transport | None = None) -> float:
    """Bytes/s of ``connections`` parallel ranged GETs of one blob URL (e.g.
    ``http://HOST/v2/REPO/blobs/sha256:...``), reading at most ``max_bytes``
    of it in equal ranges. Not pure: this is the probe.

    ``client`` (httpx, default a fresh one) makes the first ranged request,
    so registry auth (pass a client that carries it) and redirects to blob
    storage work as they do for a puller. The bulk ranges are then read with
    ``http.client`` from the URL and credentials that request ended with:
    httpx's pure-Python reads top out at 0.5-0.9 GB/s here, below loopback
    (http.client ``readinto``: 1.2 GB/s on one connection, 1.45 GB/s on
    four; 2026-11-25). Those bulk connections are the pull's own
    (:class:`~modelimage.registry.pieces.Connections`, what
    :class:`~modelimage.registry.fetch.BlobReader` reads with, with its
    ``User-Agent``), so the probe measures the path a pull's bytes take. A
    server that ignores ``Range`` still gives a fair number: each connection
    reads its share of bytes from the start.

    ``transport`` (a registry's :class:`~modelimage.registry.transport.Transport`)
    stands for ``client``: its auth, its retry policy for the first request
    and its TLS context for the bulk ones (the one TLS trust of every
    registry request, :func:`~modelimage.registry.transport.ssl_context`,
    is used in any case).

    Proxies: the requests it opens follow the registry transport's one rule
    (:func:`~modelimage.registry.transport.sockets.environment_proxy`:
    ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, ``NO_PROXY``). When it
    names a proxy for the blob's final URL, the bulk ranges go through that
    proxy with httpx, as a pull's ranged reads then do
    (:func:`~modelimage.registry.pieces.read_range_httpx`): the probe
    measures the path through the proxy. Raises :class:`ModelImageError`
    (the HTTP status or the connection error, never a signed URL).
    """
    import httpx

    from .registry.pieces import Connections, origin
    from .registry.transport import USER_AGENT, ssl_context
    from .registry.transport.sockets import environment_proxy

    if connections < 1 or max_bytes < 1:
        raise ConfigError("probe_download needs at least one connection and one byte")
    if transport is not None:
        client = transport.http
    own = client is None
    host = httpx.URL(url).netloc.decode("ascii")
    c = client or httpx.Client(timeout=httpx.Timeout(60.0), follow_redirects=True, verify=ssl_context(host),
                               proxy=environment_proxy(url), trust_env=False)  # the transport's proxy rule
    try:
        if transport is not None:
            first = transport.retry.call(f"probing {url}", lambda: c.get(url, headers={"Range": "bytes=0-0"}))
        else:
            first = c.get(url, headers={"Range": "bytes=0-0"})
        first.raise_for_status()
        total = _content_range_total(first.headers.get("content-range")) or len(first.content) or max_bytes
        final = first.url
        carry = {k: v for k, v in first.request.headers.items() if k.lower() in ("authorization", "cookie")}
    except httpx.HTTPError as e:
        raise ModelImageError(f"cannot measure the download speed of {url}: {_why(e, host)}") from None
    finally:
        if own:
            c.close()

    want = min(total, max_bytes)
    n = max(1, min(connections, want // MiB))
    bounds = [(want * k // n, want * (k + 1) // n - 1) for k in range(n)]
    got = [0] * n
    errors: list[BaseException] = []
    target = final.raw_path.decode("ascii")
    context = transport.ssl_context if transport is not None else ssl_context(final.netloc.decode("ascii"))
    proxy = environment_proxy(str(final))

    def fetch(k: int) -> None:
        lo, hi = bounds[k]
        headers = {**carry, "User-Agent": USER_AGENT, "Range": f"bytes={lo}-{hi}"}
        goal = hi - lo + 1
        if proxy is not None:  # through the proxy, as the pull's ranged reads go
            try:
                got[k] = _read_through_proxy(url, final, headers, goal, proxy=proxy, context=context)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
            return
        conns = Connections()
        try:
            conn = conns.get(origin(final), 60, context)
            conn.request("GET", target, headers=headers)
            r = conn.getresponse()
            if r.status not in (200, 206):
                raise ModelImageError(f"cannot measure the download speed of {url}: HTTP {r.status} {r.reason}")
            buf = memoryview(bytearray(MiB))
            while got[k] < goal:
                m = r.readinto(buf[: min(MiB, goal - got[k])])
                if not m:
                    break
                got[k] += m
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
        finally:
            conns.shutdown()

    threads = [threading.Thread(target=fetch, args=(k,), daemon=True) for k in range(n)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    if errors:
        e = errors[0]
        if isinstance(e, ModelImageError):
            raise e
        raise ModelImageError(f"cannot measure the download speed of {url}: {e}") from e
    return sum(got) / max(elapsed, 1e-9)


def _read_through_proxy(url: str, final: httpx.URL, headers: dict[str, str], goal: int, *, proxy: str,
                        context: ssl.SSLContext) -> int:
    """Bytes received (at most ``goal``) of one GET of ``final`` with
    ``headers`` (its ``Range``), sent through the HTTP(S) proxy ``proxy``
    with httpx and the TLS context ``context``. Raises
    :class:`ModelImageError` naming ``url`` (not a redirect's signed URL)."""
    import httpx

    got = 0
    try:
        with (httpx.Client(timeout=60, verify=context, proxy=proxy, trust_env=False) as c,
              c.stream("GET", str(final), headers=headers) as r):
            if r.status_code not in (200, 206):
                raise ModelImageError(f"cannot measure the download speed of {url}: "
                                      f"HTTP {r.status_code} {r.reason_phrase}")
            for data in r.iter_raw(MiB):
                got += min(len(data), goal - got)
                if got >= goal:
                    break
    except httpx.HTTPError as e:
        raise ModelImageError(f"cannot measure the download speed of {url}: "
                              f"{_why(e, final.netloc.decode('ascii'))}") from None
    return got


def _why(e: Exception, host: str) -> str:
    """An HTTP failure in a few words, never the URL it happened at: a blob
    redirected to storage has a signed URL (``X-Amz-Signature=...``,
    ``X-Amz-Credential=...``) that httpx's own message would print."""
    import httpx

    if isinstance(e, httpx.HTTPStatusError):
        netloc = e.request.url.netloc.decode("ascii")
        where = netloc if netloc != host else None
        return f"HTTP {e.response.status_code}" + (f" from the blob's storage at {where} (redirected)" if where else "")
    return f"{type(e).__name__}" + (f" ({e.__context__})" if isinstance(e.__context__, OSError) else "")


def _content_range_total(value: str | None) -> int | None:
    """``bytes 0-0/1234`` -> 1234."""
    m = re.match(r"^\s*bytes\s+\S+/([0-9]+)\s*$", value or "")
    return int(m.group(1)) if m else None


def probe_write_cache() -> int:
    """Bytes the page cache can take right now before writes slow to the
    disk's pace: the kernel's background writeback threshold
    (``vm.dirty_background_bytes``, or ``vm.dirty_background_ratio`` percent
    of available memory) minus what is already dirty or under writeback.

    Why the background threshold and not ``vm.dirty_ratio``: pulling 2 GiB
    here (2-core VM, 24 GiB), Dirty climbed to ~2.2 GB (10 %) and stayed
    there while the flusher threads wrote back; the extraction ran 2-3x
    slower from then on, long before writers are throttled at 20 %
    (/proc/meminfo sampled every 0.5 s, 2026-11-25). 0 where /proc does not
    say (not Linux). Not pure: this is a probe.
    """
    try:
        background = int(Path("/proc/sys/vm/dirty_background_bytes").read_text())
        ratio = int(Path("/proc/sys/vm/dirty_background_ratio").read_text())
        meminfo = Path("/proc/meminfo").read_text()
    except (OSError, ValueError):
        return 0

    def kib(field: str) -> int:
        m = re.search(rf"^{field}:\s+([0-9]+) kB", meminfo, re.M)
        return int(m.group(1)) * 1024 if m else 0

    threshold = background or kib("MemAvailable") * ratio // 100
    return max(0, threshold - kib("Dirty") - kib("Writeback"))
