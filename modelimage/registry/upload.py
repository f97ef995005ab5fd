"""The upload state machine of one blob (distribution-spec "Pushing
blobs"): a monolithic ``POST`` + ``PUT``, or a session of ``PATCH`` chunks
closed by a ``PUT ?digest=``, resumed from the offset the registry confirms,
restarted when the registry lost the session, retried with THE retry policy
of :mod:`modelimage.registry.transport`.

What it uploads is a :class:`BlobSource` (readable from any offset it can
rewind to, hashing as it goes); :mod:`modelimage.registry.push` has the
sources and the orchestration. Never prints.

Strategy per blob: one monolithic ``POST`` + ``PUT`` when the registry
refuses chunked uploads, or for a blob whose digest is known and that
fits one chunk; otherwise a session of ``PATCH`` chunks closed by ``PUT
?digest=``. What each answer means (distribution-spec "Pushing blobs"):

- a PATCH answered 405/415/501 or ``UNSUPPORTED``: no chunked uploads
  here (Google Artifact Registry): this and later blobs go in one PUT;
- a PATCH answered 201 or 204 instead of 202: accepted (ECR: kitops#821);
- ``OCI-Chunk-Min-Length`` on the session: chunks are at least that big,
  and a smaller last piece goes with the closing PUT;
- 413 (nginx ``client_max_body_size``, Cloudflare's 100 MB): a PATCH is
  cut in half and the upload resumes; a monolithic PUT gives way to
  chunks, as when a storage backend refuses a single PUT over its limit
  (``EntityTooLarge``: distribution#886);
- after a failed PATCH, the status ``GET``'s ``Range: 0-N`` says where to
  go on; ``0-0`` is "no bytes" unless a byte was confirmed before
  (distribution#2363), so a failed first PATCH resumes at byte 0;
- 404 / ``BLOB_UPLOAD_UNKNOWN`` / ``BLOB_UPLOAD_INVALID``: the session is
  gone, a new one starts at byte 0; 416: the offsets disagree, ask again;
- a commit answered ``DIGEST_INVALID`` (or a ``Docker-Content-Digest``
  that is not the digest sent): the blob is sent once more, from byte 0;
- 401 on a streamed body: its token expired; one new attempt fetches a
  new one (never two in a row);
- temporary failures (:class:`RetryPolicy`): waited for and retried.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

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
# A PATCH answered with one of these (or the spec code UNSUPPORTED) means the
# registry takes no chunked uploads (Google Artifact Registry: kitops#777,
# skopeo#1101). Decided from a PATCH's own answer only, never from a commit's.
UNSUPPORTED_PATCH = frozenset({405, 415, 501})
WRITE_PIECE = 64 << 10  # bytes handed to the socket at a time: 3 ms at 20 MB/s, so Ctrl-C acts at once
MIN_CHUNK = 64 << 10  # bytes: chunks are never cut smaller than this after a 413


def _nothing() -> None:
    pass


class UploadFailed(ModelImageError):
    """An upload that failed past the retry budget."""


class Interrupted(ModelImageError):
    """The push was interrupted (Ctrl-C): transfers stopped, nothing tagged."""

    exit_code = 130


class _PatchRefused(Exception):
    """The registry takes no chunked uploads (from a PATCH's own answer)."""


class _TooLarge(Exception):
    """A single request's body was refused for its size (413, or a storage backend's limit)."""


class _Corrupt(Exception):
    """The commit's digest did not match what the registry assembled: send the blob again."""

    def __init__(self, error: RegistryError):
        super().__init__(str(error))
        self.error = error


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
    """Uploads blobs to one repository: the upload state machine (its rules
    are in the module docstring). :meth:`cancel` (Ctrl-C) stops every
    transfer within one piece of its body and every wait at once:
    :class:`Interrupted`."""

    def __init__(self, client: RegistryClient, repo: str, settings: PushSettings, stats: PushStats):
        self.client, self.repo, self.settings, self.stats = client, repo, settings, stats
        self.retry = settings.retry_policy(client.transport.retry)
        self.patch_refused = settings.upload == "monolithic"
        self.chunk_size = settings.chunk_size
        self.put_limit: int | None = None  # single PUTs of this many bytes or more were refused
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop every transfer and wait of this uploader (from any thread):
        bodies stop at their next piece, requests waiting for an answer are
        cut (:meth:`Transport.interrupt`), waits end."""
        self.cancelled.set()
        self.client.transport.interrupt()

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` (a request that can be sent again) under the retry policy, counting retries."""
        self._check()
        policy = replace(self.retry, sleep=self._sleep)
        return policy.call(what, fn, on_retry=lambda: self.stats.add(retries=1), error=UploadFailed)

    def _check(self) -> None:
        if self.cancelled.is_set():
            raise Interrupted(f"{self.client.host}/{self.repo}: interrupted; rerun to resume")

    def _sleep(self, seconds: float) -> None:
        self.cancelled.wait(seconds)
        self._check()

    def _wait(self, attempt: int, e: BaseException) -> None:
        self.stats.add(retries=1)
        self._sleep(self.retry.delay(attempt, e))

    # -- strategy --------------------------------------------------------------

    def upload(self, source: BlobSource, known_digest: str | None, on_sent: Callable[[], None] = _nothing) -> None:
        """Upload ``source`` (its digest ``known_digest`` when known); ``on_sent()`` once a chunked
        upload's last byte is read and handed to the socket, and again before its commit (it must
        act once). Raises :class:`UploadFailed`, :class:`Interrupted` or the registry's error."""
        for again in (False, True):
            if again:
                source.rewind(0)
                self.stats.add(resumes=1)
            try:
                return self._upload(source, known_digest, on_sent)
            except _Corrupt as e:
                if again:
                    raise e.error from None

    def _upload(self, source: BlobSource, known_digest: str | None, on_sent: Callable[[], None]) -> None:
        what = f"{self.client.host}/{self.repo}"
        size, chunk = source.size, self.chunk_size
        small = size is not None and size <= (chunk or size) and (self.put_limit is None or size < self.put_limit)
        # a stream that cannot restart mid-way (a base layer fetched from elsewhere) goes in one PUT
        one_piece = known_digest is not None and not source.resumable
        if self.patch_refused or one_piece or (self.settings.upload == "auto" and known_digest and small):
            try:
                return self._monolithic(source, known_digest, what)
            except _TooLarge:
                if self.patch_refused or size is None:
                    raise UploadFailed(f"{what}: the registry refused a {size}-byte blob in one request, "
                                       "and takes no chunked uploads") from None
                self.put_limit = min(self.put_limit or size, size)
                source.rewind(0)
        try:
            return self._chunked(source, what, on_sent)
        except _PatchRefused:
            if self.settings.upload == "chunked":
                raise UploadFailed(f"{what}: the registry refuses chunked uploads (PATCH); "
                                   "push with --upload auto") from None
            self.patch_refused = True
            source.rewind(0)
            return self._monolithic(source, known_digest, what)

    # -- one PUT -------------------------------------------------------------------

    def _monolithic(self, source: BlobSource, known_digest: str | None, what: str) -> None:
        import httpx

        digest = known_digest
        if digest is None:  # a PUT needs the digest up front: hash first (a read, no upload)
            for _ in source.body(0, None):
                self._check()
            digest = source.digest()
        expired = False
        for attempt in range(1, self.retry.retries + 2):
            source.rewind(0)
            try:
                url = self.call(f"{what}: starting an upload", lambda: self.client.start_upload(self.repo))
                sent = _Counter(source.body(0, None), self._check)
                try:
                    self.client.finish(url, digest, sent, source.size)
                finally:
                    self.stats.add(bytes_sent=sent.n, resent_bytes=sent.n if attempt > 1 else 0)
                return
            except (httpx.TransportError, RegistryError) as e:
                if _too_large(e):
                    raise _TooLarge() from None
                if _corrupt(e):
                    raise _Corrupt(e) from None  # type: ignore[arg-type]
                retry_auth = _unauthorized(e) and not expired
                expired = _unauthorized(e)
                if not (retry_auth or self.retry.temporary(e)) or attempt > self.retry.retries:
                    raise self.retry.gave_up(f"{what}: uploading {digest[:19]}", e, attempt, UploadFailed) from None
                self._wait(attempt, e)

    # -- chunks ---------------------------------------------------------------------

    def _chunked(self, source: BlobSource, what: str, on_sent: Callable[[], None] = _nothing) -> None:
        import httpx

        url, min_chunk = self.call(f"{what}: starting an upload", lambda: self.client.open_upload(self.repo))
        size = source.size
        offset = attempt = high = 0  # high: the furthest byte ever sent
        expired = False  # the last failure was a 401
        tail = False  # the last bytes, under the registry's minimum chunk, go with the PUT
        while size is None or offset < size:
            chunk = self.chunk_size if self.chunk_size is None or not min_chunk else max(self.chunk_size, min_chunk)
            end = None if chunk is None or size is None else min(size, offset + chunk)
            if min_chunk and size is not None and size - offset < min_chunk:
                tail = True
                break
            length = None if size is None else (end if end is not None else size) - offset
            sent = _Counter(source.body(offset, end), self._check, _nothing if end and end < (size or 0) else on_sent)
            try:
                url, failure = self.client.patch(url, sent, offset, length), None
            except (httpx.TransportError, RegistryError) as e:
                failure = e
            self.stats.add(bytes_sent=sent.n, resent_bytes=max(0, min(high, offset + sent.n) - offset))
            high = max(high, offset + sent.n)
            if failure is None:
                offset, expired = offset + sent.n, False
                if size is None:
                    break
                continue
            if isinstance(failure, RegistryError) and (failure.status in UNSUPPORTED_PATCH
                                                       or failure.code == "UNSUPPORTED") and offset == 0:
                self.client.cancel(url)
                raise _PatchRefused()
            if _too_large(failure) and length and length // 2 >= max(MIN_CHUNK, min_chunk or 0):
                self.chunk_size = length // 2  # the registry caps request bodies: smaller chunks from now on
            else:
                attempt += 1
                lost = _session_lost(failure)
                retry_auth = _unauthorized(failure) and not expired
                expired = _unauthorized(failure)
                again = lost or retry_auth or self.retry.temporary(failure) or _out_of_step(failure)
                if not again or attempt > self.retry.retries:
                    raise self.retry.gave_up(f"{what}: uploading", failure, attempt, UploadFailed) from None
                self._wait(attempt, failure)
            url, offset = (self._restart(source, what) if _session_lost(failure)
                           else self._resume_point(url, source, what, offset, high))
            self.stats.add(resumes=1)
        digest = source.digest() if not tail else None
        if tail:
            body = b"".join(bytes(b) for b in source.body(offset, size))  # under one minimum chunk
            digest = source.digest()
            self.stats.add(bytes_sent=len(body))
            commit: Callable[[], None] = lambda: self.client.finish(url, digest, body, len(body))  # noqa: E731
        else:
            commit = lambda: self.client.finish(url, digest)  # noqa: E731
        on_sent()  # (if not said yet) the next blob may stream while the registry commits this one
        try:
            self.call(f"{what}: committing {digest[:19]}", commit)
        except RegistryError as e:
            if _corrupt(e):
                raise _Corrupt(e) from None
            raise

    def _resume_point(self, url: str, source: BlobSource, what: str, confirmed: int, high: int) -> tuple[str, int]:
        """Where to continue after a failed PATCH: the offset the registry's
        status ``Range`` confirms (``confirmed``: what our own PATCHes had
        confirmed; ``high``: the furthest byte sent), or a new upload when it
        lost the session or answers something impossible. (CNCF distribution
        2.8 keeps the partial body of a cut PATCH, then finds its size
        disagrees with the upload state and drops the upload: only cuts
        between requests, or behind a proxy that buffers request bodies, can
        resume there.)"""
        if source.resumable:
            try:
                last = self.call(f"{what}: upload status", lambda: self.client.upload_range(url))
            except RegistryError as e:
                if not _session_lost(e):
                    raise
            else:
                # "0-0" is "no bytes" unless a byte was confirmed before (distribution#2363)
                held = 0 if last is None or (last == 0 and confirmed < 1) else last + 1
                if held <= high:
                    return url, source.rewind(held)
        return self._restart(source, what)

    def _restart(self, source: BlobSource, what: str) -> tuple[str, int]:
        source.rewind(0)
        return self.call(f"{what}: starting an upload", lambda: self.client.start_upload(self.repo)), 0


def _too_large(e: BaseException) -> bool:
    """A body refused for its size: 413, or a storage backend's single-PUT
    limit surfacing as ``EntityTooLarge`` (S3: 5 GB; distribution#886)."""
    return isinstance(e, RegistryError) and (e.status == 413 or "EntityTooLarge" in e.detail)


def _corrupt(e: BaseException) -> bool:
    """The registry assembled something else than the digest we named."""
    return isinstance(e, RegistryError) and e.code == "DIGEST_INVALID"


def _out_of_step(e: BaseException) -> bool:
    """416: the registry holds another offset than the PATCH assumed: ask where it stands."""
    return isinstance(e, RegistryError) and e.status == 416


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
    """Counts the bytes an iterator hands to httpx, in pieces of at most
    :data:`WRITE_PIECE` bytes (views, no copies), and stops when ``check``
    raises: a send blocked on a slow link holds at most one piece, so a
    cancel takes effect within one piece's time on the wire. ``at_end()``
    once the iterator is exhausted (the last piece handed over)."""

    def __init__(self, it: Iterator[bytes | memoryview], check: Callable[[], None] = lambda: None,
                 at_end: Callable[[], None] = _nothing):
        self.it, self.n, self.check, self.at_end = it, 0, check, at_end

    def __iter__(self) -> Iterator[bytes | memoryview]:
        for chunk in self.it:
            view = memoryview(chunk)
            for i in range(0, len(view), WRITE_PIECE):
                self.check()
                piece = view[i : i + WRITE_PIECE]
                self.n += len(piece)
                yield piece
        self.at_end()  # every byte read and handed to the socket
