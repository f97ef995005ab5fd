"""The upload state machine of one blob (distribution-spec "Pushing
blobs"): a monolithic ``POST`` + ``PUT``, or a session of ``PATCH`` chunks
closed by a ``PUT ?digest=``, resumed from the offset the registry confirms,
restarted when the registry lost the session, retried with THE retry policy
of :mod:`modelimage.registry.transport`.

What it uploads is a :class:`BlobSource` (readable from any offset it can
rewind to, hashing as it goes); :mod:`modelimage.registry.push` has the
sources and the orchestration. Never prints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import httpx

from ..errors import ModelImageError
from .client import RegistryClient
from .transport import RegistryError, RetryPolicy

T = TypeVar("T")

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
    """How to push. ``concurrency``: blobs uploaded at once; ``upload``:
    ``auto`` | ``monolithic`` | ``chunked``; ``chunk_size``: bytes per PATCH
    at most (``None``: a whole blob in one PATCH); ``tags``: more tags for the
    manifest. ``retries``/``backoff``/``max_backoff`` (attempts, seconds)
    override the transport's :class:`RetryPolicy` when given."""

    concurrency: int = DEFAULT_CONCURRENCY
    retries: int | None = None
    backoff: float | None = None
    max_backoff: float | None = None
    upload: str = "auto"
    chunk_size: int | None = DEFAULT_CHUNK_SIZE
    tags: tuple[str, ...] = ()

    def retry_policy(self, base: RetryPolicy) -> RetryPolicy:
        """``base`` with this push's overrides."""
        overrides = {"retries": self.retries, "backoff": self.backoff, "max_backoff": self.max_backoff}
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


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


class BlobSource(Protocol):
    """A blob to upload, readable from any offset it can rewind to, with its digest state."""

    size: int | None  # None when not known in advance (compressed)
    resumable: bool  # can continue mid-way (else: only from byte 0)

    def body(self, start: int, end: int | None) -> Iterator[bytes | memoryview]: ...
    def rewind(self, offset: int) -> int: ...  # back to ``offset`` (or before); returns where it is
    def digest(self) -> str: ...


class Uploader:
    """Uploads blobs to one repository with the configured strategy."""

    def __init__(self, client: RegistryClient, repo: str, settings: PushSettings, stats: PushStats):
        self.client, self.repo, self.settings, self.stats = client, repo, settings, stats
        self.retry = settings.retry_policy(client.transport.retry)
        self.patch_refused = settings.upload == "monolithic"

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` (a request that can be sent again) under the retry policy, counting retries."""
        return self.retry.call(what, fn, on_retry=lambda: self.stats.add(retries=1), error=UploadFailed)

    def _wait(self, attempt: int, e: BaseException) -> None:
        self.stats.add(retries=1)
        self.retry.wait(attempt, e)

    def upload(self, source: BlobSource, known_digest: str | None) -> None:
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

    def _monolithic(self, source: BlobSource, known_digest: str | None, what: str) -> None:
        digest = known_digest
        if digest is None:  # a PUT needs the digest up front: hash first (a read, no upload)
            for _ in source.body(0, None):
                pass
            digest = source.digest()
        expired = False
        for attempt in range(1, self.retry.retries + 2):
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
                if not (retry_auth or self.retry.temporary(e)) or attempt > self.retry.retries:
                    raise self.retry.gave_up(f"{what}: uploading {digest[:19]}", e, attempt, UploadFailed) from None
                self._wait(attempt, e)

    def _resumable(self, source: BlobSource, what: str) -> None:
        url = self.call(f"{what}: starting an upload", lambda: self.client.start_upload(self.repo))
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
            if not (lost or retry_auth or self.retry.temporary(failure)) or attempt > self.retry.retries:
                raise self.retry.gave_up(f"{what}: uploading", failure, attempt, UploadFailed) from None
            self._wait(attempt, failure)
            url, offset = self._restart(source, what) if lost else self._resume_point(url, source, what)
            self.stats.add(resumes=1)
        digest = source.digest()
        self.call(f"{what}: committing {digest[:19]}", lambda: self.client.finish(url, digest))

    def _resume_point(self, url: str, source: BlobSource, what: str) -> tuple[str, int]:
        """Where to continue: the offset the registry confirms, or a new upload
        when it lost the session. (CNCF distribution 2.8 keeps the partial body
        of a cut PATCH, then finds its size disagrees with the upload state and
        drops the upload: only cuts between requests, or behind a proxy that
        buffers request bodies, can resume there.)"""
        if source.resumable:
            try:
                confirmed = self.call(f"{what}: upload status", lambda: self.client.upload_offset(url))
                return url, source.rewind(confirmed)
            except RegistryError as e:
                if not _session_lost(e):
                    raise
        return self._restart(source, what)

    def _restart(self, source: BlobSource, what: str) -> tuple[str, int]:
        source.rewind(0)
        return self.call(f"{what}: starting an upload", lambda: self.client.start_upload(self.repo)), 0


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
