"""Pushing to a registry: layers streamed from the files, resumable uploads,
retries that honour ``Retry-After``, blobs skipped or mounted when the
registry already has them, manifest last, then tags.

:class:`RegistrySink` is the registry as a build sink: ``build --push``
streams each layer straight from the source files into an upload (files
read once, nothing staged on disk). :func:`push_layout` pushes an OCI layout
that is already on disk.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from ..cache import DigestCache
from ..errors import ModelImageError
from ..oci import MEDIA_TYPE_INDEX, Descriptor
from ..tarstream import Digester, LayerResult, LayerStream
from .client import RegistryClient, RegistryError, network_message, tls_failure
from .reference import Reference

if TYPE_CHECKING:
    from ..sink import BlobSource

# Measured on loopback (docs/benchmarks.md): 3 uploads at once keep a
# registry busy without starving the hashing on 2 cores.
DEFAULT_CONCURRENCY = 3
# Bytes per PATCH. A registry confirms only whole requests: CNCF distribution
# drops the partial body of a cut PATCH, so one PATCH per blob would resend
# everything after a cut. 256 MiB chunks bound that, for one round trip each.
DEFAULT_CHUNK_SIZE = 256 << 20
SNAPSHOT_EVERY = 64 << 20  # digest state kept every 64 MiB so a resume re-reads at most that
UNSUPPORTED_PATCH = {400, 405, 415, 501}  # registries that refuse chunked uploads answer one of these


class UploadFailed(ModelImageError):
    """An upload that failed past the retry budget."""


@dataclass(frozen=True)
class PushSettings:
    concurrency: int = DEFAULT_CONCURRENCY
    retries: int = 5  # attempts after the first, per request
    backoff: float = 1.0  # seconds, doubled each attempt, capped at max_backoff
    max_backoff: float = 30.0
    upload: str = "auto"  # auto | monolithic | chunked
    chunk_size: int | None = DEFAULT_CHUNK_SIZE  # max bytes per PATCH (None: the whole blob in one PATCH)
    tags: tuple[str, ...] = ()


@dataclass
class PushStats:
    """What a push did, for reports and tests."""

    bytes_sent: int = 0
    resumes: int = 0
    retries: int = 0
    resent_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)


class _Retrier:
    """Bounded retries with exponential backoff and ``Retry-After``."""

    def __init__(self, settings: PushSettings, stats: PushStats, sleep: Callable[[float], None] = time.sleep):
        self.settings, self.stats, self.sleep = settings, stats, sleep

    def wait(self, attempt: int, error: Exception) -> None:
        delay = min(self.settings.max_backoff, self.settings.backoff * 2 ** (attempt - 1))
        delay *= 0.75 + random.random() / 2
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, 300.0))
        self.stats.add(retries=1)
        self.sleep(delay)

    def retryable(self, e: Exception) -> bool:
        if tls_failure(e):  # a certificate that does not verify will not verify next time either
            return False
        return isinstance(e, httpx.TransportError) or (isinstance(e, RegistryError) and e.retryable)

    def call(self, what: str, fn: Callable[[], object]) -> object:
        for attempt in range(1, self.settings.retries + 2):
            try:
                return fn()
            except (httpx.TransportError, RegistryError) as e:
                if not self.retryable(e) or attempt > self.settings.retries:
                    raise _failed(what, e, attempt) from None
                self.wait(attempt, e)
        raise AssertionError("unreachable")


def _failed(what: str, e: Exception, attempts: int) -> ModelImageError:
    if isinstance(e, RegistryError) and not e.retryable:
        return e
    if tls_failure(e):
        return ModelImageError(network_message(what, e))
    reason = str(e) if isinstance(e, RegistryError) else f"{type(e).__name__}: {e}"
    return UploadFailed(f"{what}: gave up after {attempts} attempt{'s' if attempts > 1 else ''} ({reason})")


class _Source:
    """A blob to upload, readable from any offset, with its digest state."""

    size: int | None  # None when not known in advance (compressed)
    resumable: bool

    def body(self, start: int, end: int | None) -> Iterator[bytes | memoryview]: ...
    def rewind(self, offset: int) -> int: ...  # back to ``offset`` (or before); returns where it is
    def digest(self) -> str: ...


class _LayerSource(_Source):
    """A layer generated from the source files, hashed as it goes."""

    def __init__(self, stream: LayerStream, compression: str, progress: Callable[[int], None] | None):
        self.stream, self.compression, self.progress = stream, compression, progress
        self.resumable = compression == "none"
        self.size = stream.size if self.resumable else None
        self.digester = Digester(stream, compression)  # type: ignore[arg-type]
        self.snapshots: list[Digester] = [self.digester.copy()] if self.resumable else []
        self.reported = 0  # progress high-water mark: resent bytes are not counted twice

    def body(self, start: int, end: int | None) -> Iterator[bytes | memoryview]:
        if start != self.digester.offset:
            raise AssertionError(f"source at {self.digester.offset}, upload wants {start}")
        next_snapshot = start + SNAPSHOT_EVERY
        for data, file in self.stream.chunks(start, end):
            out = self.digester.feed(data, file)
            if self.resumable and self.digester.offset >= next_snapshot:
                self.snapshots.append(self.digester.copy())
                next_snapshot = self.digester.offset + SNAPSHOT_EVERY
            if self.progress is not None and self.digester.offset > self.reported:
                self.progress(self.digester.offset - max(self.reported, self.digester.offset - len(data)))
                self.reported = self.digester.offset
            if out:
                yield out
        if end is None or end >= self.stream.size:
            tail = self.digester.flush()
            if tail:
                yield tail

    def rewind(self, offset: int) -> int:
        if not self.resumable:
            self.digester = Digester(self.stream, self.compression)  # type: ignore[arg-type]
            return 0
        snap = max((s for s in self.snapshots if s.offset <= offset), key=lambda s: s.offset)
        self.snapshots = [s for s in self.snapshots if s.offset <= snap.offset]
        d = snap.copy()
        for data, file in self.stream.chunks(d.offset, offset):  # re-hash, not re-send
            d.feed(data, file)
        self.digester = d
        return offset

    def digest(self) -> str:
        return self.digester.result().digest

    def result(self) -> LayerResult:
        return self.digester.result()


class _FileSource(_Source):
    """A blob already on disk (an OCI layout), digest known."""

    resumable = True

    def __init__(self, path: Path, digest: str, size: int, progress: Callable[[int], None] | None):
        self.path, self._digest, self.size, self.progress = path, digest, size, progress

    def body(self, start: int, end: int | None) -> Iterator[bytes]:
        end = self.size if end is None else end
        with open(self.path, "rb") as f:
            f.seek(start)
            left = end - start
            while left:
                data = f.read(min(4 << 20, left))
                if not data:
                    raise ModelImageError(f"{self.path}: shorter than its descriptor says")
                left -= len(data)
                if self.progress is not None:
                    self.progress(len(data))
                yield data

    def rewind(self, offset: int) -> int:
        return offset

    def digest(self) -> str:
        return self._digest


class _FetchSource(_Source):
    """A blob streamed from elsewhere (a base image), digest known."""

    resumable = False

    def __init__(self, fetch: Callable[[], Iterator[bytes]], digest: str, size: int):
        self.fetch, self._digest, self.size = fetch, digest, size

    def body(self, start: int, end: int | None) -> Iterator[bytes]:
        if start:
            raise AssertionError("a fetched blob can only be sent from the start")
        yield from self.fetch()

    def rewind(self, offset: int) -> int:
        return 0

    def digest(self) -> str:
        return self._digest


class Uploader:
    """Uploads blobs to one repository with the configured strategy."""

    def __init__(self, client: RegistryClient, repo: str, settings: PushSettings, stats: PushStats):
        self.client, self.repo, self.settings, self.stats = client, repo, settings, stats
        self.retry = _Retrier(settings, stats)
        self.patch_refused = settings.upload == "monolithic"

    def upload(self, source: _Source, known_digest: str | None) -> None:
        """Monolithic PUT when the registry refuses PATCH, or for a blob whose
        digest is known and that fits one chunk; resumable PATCHes otherwise."""
        what = f"{self.client.host}/{self.repo}"
        small = source.size is not None and source.size <= (self.settings.chunk_size or source.size)
        # a stream that cannot restart mid-way (a base layer fetched from elsewhere) goes in one PUT
        one_piece = known_digest is not None and not source.resumable
        if self.patch_refused or one_piece or (self.settings.upload == "auto" and known_digest and small):
            return self._monolithic(source, known_digest, what)
        try:
            return self._resumable(source, what)
        except RegistryError as e:
            if e.status not in UNSUPPORTED_PATCH or self.settings.upload == "chunked":
                raise
            # e.g. Google Artifact Registry: no chunked uploads; fall back to one PUT
            self.patch_refused = True
            source.rewind(0)
            return self._monolithic(source, known_digest, what)

    def _monolithic(self, source: _Source, known_digest: str | None, what: str) -> None:
        digest = known_digest
        if digest is None:  # a PUT needs the digest up front: hash first (a read, no upload)
            for _ in source.body(0, None):
                pass
            digest = source.digest()
        expired = False
        for attempt in range(1, self.settings.retries + 2):
            source.rewind(0)
            try:
                url = self.client.start_upload(self.repo)
                sent = _Counter(source.body(0, None))
                try:
                    self.client.finish(url, digest, sent, source.size)
                finally:
                    self.stats.add(bytes_sent=sent.n, resent_bytes=sent.n if attempt > 1 else 0)
                return
            except (httpx.TransportError, RegistryError) as e:
                retry_auth = _unauthorized(e) and not expired
                expired = _unauthorized(e)
                if not (retry_auth or self.retry.retryable(e)) or attempt > self.settings.retries:
                    raise _failed(f"{what}: uploading {digest[:19]}", e, attempt) from None
                self.retry.wait(attempt, e)

    def _resumable(self, source: _Source, what: str) -> None:
        url = str(self.retry.call(f"{what}: starting an upload", lambda: self.client.start_upload(self.repo)))
        offset, attempt, high = 0, 0, 0  # high: the furthest byte ever sent
        expired = False  # the last failure was a 401
        while True:
            end = None
            if self.settings.chunk_size and source.size is not None:
                end = min(source.size, offset + self.settings.chunk_size)
            length = ((end if end is not None else source.size) - offset) if source.size is not None else None
            sent = _Counter(source.body(offset, end))
            try:
                url = self.client.patch(url, sent, offset, length)
                failure = None
            except (httpx.TransportError, RegistryError) as e:
                failure = e
            self.stats.add(bytes_sent=sent.n, resent_bytes=max(0, min(high, offset + sent.n) - offset))
            high = max(high, offset + sent.n)
            if failure is None:
                offset, expired = offset + sent.n, False
                if source.size is None or offset >= source.size:
                    break
                continue
            attempt += 1
            lost = _session_lost(failure)
            retry_auth = _unauthorized(failure) and not expired
            expired = _unauthorized(failure)
            if not (lost or retry_auth or self.retry.retryable(failure)) or attempt > self.settings.retries:
                raise _failed(f"{what}: uploading", failure, attempt) from None
            self.retry.wait(attempt, failure)
            url, offset = self._restart(source, what) if lost else self._resume_point(url, source, what)
            self.stats.add(resumes=1)
        digest = source.digest()
        self.retry.call(f"{what}: committing {digest[:19]}", lambda: self.client.finish(url, digest))

    def _resume_point(self, url: str, source: _Source, what: str) -> tuple[str, int]:
        """Where to continue: the offset the registry confirms, or a new upload
        when it lost the session. (CNCF distribution 2.8 keeps the partial body
        of a cut PATCH, then finds its size disagrees with the upload state and
        drops the upload: only cuts between requests, or behind a proxy that
        buffers request bodies, can resume there.)"""
        if source.resumable:
            try:
                confirmed = int(self.retry.call(f"{what}: upload status", lambda: self.client.upload_offset(url)))
                return url, source.rewind(confirmed)
            except RegistryError as e:
                if not _session_lost(e):
                    raise
        return self._restart(source, what)

    def _restart(self, source: _Source, what: str) -> tuple[str, int]:
        source.rewind(0)
        return str(self.retry.call(f"{what}: starting an upload", lambda: self.client.start_upload(self.repo))), 0


def _unauthorized(e: Exception) -> bool:
    """A 401 to a streamed body: the token it carried expired or was revoked.
    :class:`RegistryAuth` cannot replay a stream, but it dropped that token,
    so one new attempt (not two in a row) fetches a fresh one."""
    return isinstance(e, RegistryError) and e.status == 401


def _session_lost(e: Exception) -> bool:
    """The registry no longer has the upload (expired, cancelled, invalid)."""
    return isinstance(e, RegistryError) and (
        e.status == 404 or e.code in ("BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"))


class _Counter:
    """Counts the bytes an iterator hands to httpx."""

    def __init__(self, it: Iterator[bytes | memoryview]):
        self.it, self.n = it, 0

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for chunk in self.it:
            self.n += len(chunk)
            yield chunk


class RegistrySink:
    """A registry repository as a build sink (``build --push``)."""

    def __init__(self, ref: Reference, client: RegistryClient, *, settings: PushSettings = PushSettings(),
                 cache: DigestCache | None = None):
        self.ref, self.client, self.settings = ref, client, settings
        self.cache = cache or DigestCache()
        self.stats = PushStats()
        self.uploader = Uploader(client, ref.repository, settings, self.stats)
        self.parallel = max(1, settings.concurrency)
        self.mounted: set[str] = set()
        self.pushed_digest: str | None = None

    def has_blob(self, digest: str) -> bool:
        repo = self.ref.repository
        if self.uploader.retry.call(f"{self.ref.name}: checking {digest[:19]}",
                                    lambda: self.client.blob_exists(repo, digest)) is not None:
            return True
        for other in self.cache.repositories(digest, self.ref.host):
            if other != repo and self.client.mount(repo, digest, other):
                self.mounted.add(digest)
                self.cache.remember(digest, self.ref.host, repo)
                return True
        return False

    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
        source = _LayerSource(stream, compression, progress)
        self.uploader.upload(source, known.digest if known else None)
        result = source.result()
        self.cache.remember(result.digest, self.ref.host, self.ref.repository)
        return result, "uploaded"

    def put_existing(self, desc: Descriptor, base: "BlobSource") -> str:
        """A base layer: mounted from the base's repository on the same
        registry, otherwise streamed through from wherever the base lives."""
        if base.host == self.ref.host and base.repository and base.repository != self.ref.repository:
            if self.client.mount(self.ref.repository, desc.digest, base.repository):
                return "mounted"
        self.uploader.upload(_FetchSource(lambda: base.fetch(desc), desc.digest, desc.size), desc.digest)
        return "copied"

    def put_blob(self, data: bytes, digest: str) -> None:
        self.uploader.retry.call(f"{self.ref.name}: uploading the config",
                                 lambda: self.client.put_blob(self.ref.repository, data, digest))

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        """The manifest last (by digest), then each tag pointing at it."""
        repo = self.ref.repository
        for ref in (manifest.digest, *self._tags()):
            self.uploader.retry.call(f"{self.ref.name}:{ref}: pushing the manifest",
                                     lambda ref=ref: self.client.put_manifest(repo, ref, data, manifest.media_type))
        self.pushed_digest = manifest.digest

    def _tags(self) -> list[str]:
        tags = [self.ref.tag] if self.ref.tag else []
        return tags + [t for t in self.settings.tags if t not in tags]

    def abort(self) -> None:
        """Nothing to undo: no manifest was pushed, so nothing points at the
        blobs that made it; the registry's garbage collection takes them."""

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True)
class PushedLayout:
    reference: str  # host/repo@sha256:...
    digest: str
    blobs: tuple[dict, ...]


def push_layout(root: Path, tag: str, sink: RegistrySink, progress: Callable[[int], None] | None = None
                ) -> PushedLayout:
    """Push the image (or index) tagged ``tag`` in the OCI layout ``root``."""
    from ..layout import LayoutRef, read_layout

    desc, _ = read_layout(LayoutRef("oci", root, tag))
    report: list[dict] = []

    def blob_path(digest: str) -> Path:
        return root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def push_blob(d: dict) -> None:
        digest, size = d["digest"], int(d["size"])
        if sink.has_blob(digest):
            report.append({"digest": digest, "size": size, "action": "mounted" if digest in sink.mounted else "exists"})
            if progress is not None:
                progress(size)
            return
        sink.uploader.upload(_FileSource(blob_path(digest), digest, size, progress), digest)
        sink.cache.remember(digest, sink.ref.host, sink.ref.repository)
        report.append({"digest": digest, "size": size, "action": "uploaded"})

    def push_manifest(digest: str, media_type: str, tags: list[str]) -> None:
        data = blob_path(digest).read_bytes()
        m = json.loads(data)
        if media_type == MEDIA_TYPE_INDEX or "manifests" in m:
            for child in m.get("manifests", []):
                push_manifest(child["digest"], child.get("mediaType", ""), [])
        else:
            push_blob(m["config"])
            with ThreadPoolExecutor(sink.parallel) as pool:
                list(pool.map(push_blob, m.get("layers", [])))
        for ref in [digest, *tags]:
            sink.uploader.retry.call(
                f"{sink.ref.name}:{ref}: pushing the manifest",
                lambda ref=ref: sink.client.put_manifest(sink.ref.repository, ref, data, media_type
                                                         or m.get("mediaType", ""))
            )

    try:
        push_manifest(desc.digest, desc.media_type, sink._tags())
    finally:
        sink.close()
    return PushedLayout(f"{sink.ref.name}@{desc.digest}", desc.digest, tuple(report))
