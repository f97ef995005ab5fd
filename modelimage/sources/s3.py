"""``s3://BUCKET/PREFIX``: model files read straight from S3 or an
S3-compatible store (Cloudflare R2, Tigris, MinIO, Ceph), never copied to
local disk.

Credentials, region and endpoint come from the standard AWS configuration
through boto3 (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE`` and ``~/.aws/config``, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``); a model entry's ``endpoint`` in modelimage.toml wins
over them. Every file of the prefix is an :class:`S3Object`: a frozen
(bucket, key, size, ETag) that inspect reads headers from with ranged GETs
(:meth:`S3Object.open`) and the layer writer streams from with several
ranged GETs in flight (:meth:`S3Object.read`). Every GET carries
``If-Match: ETAG``, so an object overwritten while an image is built fails
the build instead of mixing two versions.
"""

from __future__ import annotations

import mmap
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from ..content import RangedObject
from ..errors import SourceError

if TYPE_CHECKING:
    from .files import SourceFile

# One ranged GET. Big enough that request overhead vanishes (S3 serves a
# GET at tens of MB/s per connection), small enough that PARALLEL of them
# in flight per layer keep memory bounded: PARALLEL + 1 parts per stream.
PART_SIZE = 8 << 20
PARALLEL = 4  # ranged GETs in flight per stream
READAHEAD = RangedObject.READAHEAD  # bytes per GET of a header; bigger reads (a GGUF vocabulary): one GET each
ATTEMPTS = 3  # per part, on a connection cut mid-body (botocore retries failed requests itself)
MAX_POOL = 32  # connections per endpoint: 3 layers x PARALLEL, with room
BODY_PIECE = 1 << 20  # bytes per read from a GET's body into the part's buffer


def parse_url(url: str) -> tuple[str, str]:
    """``("bucket", "prefix/of/model")`` for ``s3://bucket/prefix/of/model``."""
    if not url.startswith("s3://"):
        raise SourceError(f"{url}: not an s3:// URL")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise SourceError(f"{url}: expected s3://BUCKET/PREFIX")
    return bucket, prefix


_clients: dict[str | None, Any] = {}
_clients_lock = threading.Lock()


def client(endpoint: str | None) -> Any:
    """One boto3 S3 client per endpoint (clients are thread-safe; sessions
    are not, so each client gets its session once, under a lock)."""
    with _clients_lock:
        if endpoint not in _clients:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            _clients[endpoint] = session.client(
                "s3", endpoint_url=endpoint or None, config=Config(max_pool_connections=MAX_POOL))
        return _clients[endpoint]


def _where(endpoint: str | None) -> str:
    return f" at {endpoint}" if endpoint else ""


def _error(what: str, e: Exception, endpoint: str | None) -> SourceError:
    """A one-line SourceError for a boto3 failure, saying what to fix."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return SourceError(f"{what}: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "or AWS_PROFILE")
    if isinstance(e, NoRegionError):
        return SourceError(f"{what}: no AWS region configured; set AWS_REGION (R2 takes 'auto')")
    if isinstance(e, EndpointConnectionError):
        return SourceError(f"{what}: cannot connect{_where(endpoint)} ({e}); check the endpoint "
                           "(modelimage.toml `endpoint`, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)")
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceError(f"{what}: changed while building (its ETag is no longer the one inspected); "
                               "run again once it is stable")
        if code in ("NoSuchBucket", "NoSuchKey", "404") or status == 404:
            return SourceError(f"{what}: not found{_where(endpoint)}")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
            return SourceError(f"{what}: access denied{_where(endpoint)} ({code}); check the credentials "
                               "(AWS_PROFILE, AWS_ACCESS_KEY_ID) and the bucket policy")
        return SourceError(f"{what}: {code or status}: {err.get('Message', '')}".rstrip(": "))
    return SourceError(f"{what}: {type(e).__name__}: {e}")


@dataclass(frozen=True)
class S3Object(RangedObject):
    """One version of one object: its bytes by range, never all at once."""

    bucket: str
    key: str
    size: int
    etag: str  # as S3 gives it, quotes included; "md5-N" for multipart uploads
    endpoint: str | None = None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def stamp(self) -> tuple[int, str]:
        return (self.size, self.etag)

    @property
    def identity(self) -> list[str | int]:
        """What the digest cache keys on instead of os.stat: same bucket,
        key, size and ETag means the same bytes."""
        return ["s3", self.endpoint or "", self.bucket, self.key, self.size, self.etag]

    # ------------------------------------------------------------ reading

    def get(self, offset: int, length: int) -> bytes | memoryview:
        """One ranged GET of exactly ``length`` bytes at ``offset``, of this
        version only (If-Match); a body cut short is fetched again."""
        if length <= 0:
            return memoryview(b"")
        self.check_range(offset, length)
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = client(self.endpoint)
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            try:
                r = s3.get_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag,
                                  Range=f"bytes={offset}-{offset + length - 1}")
                if r.get("ETag") not in (None, self.etag):
                    raise SourceError(f"{self}: changed while building (ETag {r['ETag']}, inspected "
                                      f"{self.etag}); run again once it is stable")
                got = _read_body(r["Body"], length)
                if got is not None:
                    return got
                last = SourceError(f"{self}: asked for {length} bytes at {offset}, got fewer")
            except ClientError as e:
                raise _error(str(self), e, self.endpoint) from None
            except (BotoCoreError, OSError) as e:  # a cut mid-body (IncompleteRead, ReadTimeout, ...)
                last = e
        assert last is not None
        raise last if isinstance(last, SourceError) else _error(str(self), last, self.endpoint)

    def read(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        """The bytes of ``[offset, offset + length)`` in order, as parts of
        at most PART_SIZE bytes, PARALLEL ranged GETs in flight: a bounded
        reorder buffer, so memory stays at (PARALLEL + 1) x PART_SIZE
        whatever the object's size."""
        parts = [(o, min(PART_SIZE, offset + length - o)) for o in range(offset, offset + length, PART_SIZE)]
        if len(parts) <= 1:
            for o, n in parts:
                yield self.get(o, n)
            return
        pool = ThreadPoolExecutor(min(PARALLEL, len(parts)), thread_name_prefix="s3-get")
        pending: deque[Future[bytes | memoryview]] = deque()
        todo = iter(parts)
        try:
            for o, n in todo:
                pending.append(pool.submit(self.get, o, n))
                if len(pending) >= PARALLEL:
                    break
            while pending:
                data = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self.get, *nxt))
                yield data
                del data
        finally:
            pool.shutdown(wait=False, cancel_futures=True)



def _read_body(body: Any, length: int) -> memoryview | None:
    """The ``length`` bytes of a GET's body, read a piece at a time into
    one buffer of their own, or None when the body ends early.
    (``body.read()`` would hold the pieces and their join, twice the part.)
    The buffer is an anonymous mmap, unmapped as soon as the last view of it
    goes: parts of several MiB from several threads would otherwise stay in
    malloc's per-thread arenas and grow the process by more than they hold."""
    buf = mmap.mmap(-1, length)
    view = memoryview(buf)
    pos = 0
    with body:
        while pos < length:
            piece = body.read(min(BODY_PIECE, length - pos))
            if not piece:
                return None
            view[pos:pos + len(piece)] = piece
            pos += len(piece)
        if body.read(1):
            return None
    return view


@dataclass(frozen=True)
class S3Prefix:
    """``s3://bucket/prefix``: every object under ``prefix/`` is a file of
    the model, named by the rest of its key (or the one object ``prefix``
    names, for a single weight file)."""

    bucket: str
    prefix: str
    endpoint: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint: str | None = None) -> "S3Prefix":
        bucket, prefix = parse_url(url)
        return cls(bucket, prefix, endpoint)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def name(self) -> str:
        """The last part of the prefix (the bucket for a whole bucket)."""
        return PurePosixPath(self.prefix).name or self.bucket

    def list_files(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list["SourceFile"]:
        """The objects under the prefix (every page of the listing), hidden
        names skipped and include/exclude applied as for a local folder."""
        from botocore.exceptions import BotoCoreError, ClientError

        from .files import SourceFile, selected

        s3 = client(self.endpoint)
        folder = self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"
        out: list[SourceFile] = []
        listed = 0
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
                for o in page.get("Contents", []):
                    rel = o["Key"][len(folder):]
                    listed += 1
                    if not rel or rel.endswith("/") or any(p.startswith(".") for p in rel.split("/")):
                        continue  # folder markers and hidden files (.gitattributes, .cache/)
                    if not selected(rel, include, exclude):
                        continue
                    obj = S3Object(self.bucket, o["Key"], int(o["Size"]), o["ETag"], self.endpoint)
                    out.append(SourceFile(rel, obj, obj.size, _ns(o.get("LastModified"))))
            if not listed and self.prefix and not self.prefix.endswith("/"):
                single = self._single(s3)
                if single is not None and selected(single.name, include, exclude):
                    out.append(single)
        except (ClientError, BotoCoreError) as e:
            raise _error(str(self), e, self.endpoint) from None
        out.sort(key=lambda f: f.name)
        if not out:
            raise SourceError(f"{self}: no objects to pack{_where(self.endpoint)}"
                              + (" (after include/exclude)" if (include or exclude) and listed else ""))
        return out

    def _single(self, s3: Any) -> "SourceFile | None":
        """The object named by the prefix itself, when there is one."""
        from botocore.exceptions import ClientError

        from .files import SourceFile

        try:
            h = s3.head_object(Bucket=self.bucket, Key=self.prefix)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise
        obj = S3Object(self.bucket, self.prefix, int(h["ContentLength"]), h["ETag"], self.endpoint)
        return SourceFile(obj.name, obj, obj.size, _ns(h.get("LastModified")))


def _ns(when: Any) -> int:
    return int(when.timestamp() * 1e9) if when is not None else 0
