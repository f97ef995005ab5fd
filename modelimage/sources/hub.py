"""``hf://`` files read straight from the Hugging Face Hub, never staged on
disk: the Hub's counterpart of :mod:`.s3`.

huggingface_hub's rules decide the Hub's endpoint and token
(``HF_ENDPOINT``, ``HF_TOKEN``, the token ``hf auth login`` saved,
``HF_HUB_DISABLE_IMPLICIT_TOKEN``), and its errors word every answer but a
plain success; a revision is resolved to a commit (:func:`resolve_commit`)
and a commit's files listed with their sizes, git blob ids and LFS sha256
(:meth:`HubRepo.list_files`, the tree listing ``list_repo_tree`` reads)
through :mod:`.hubapi`, without huggingface_hub's HTTP stack on a
build's way. The bytes come through the same client (the registry transport's TLS
trust, proxy rule and retry policy): one ``GET`` per range of
``ENDPOINT/REPO/resolve/COMMIT/PATH`` (so every byte is of the one commit
the build resolved), the Hub's redirects to its storage (LFS and xet
bridges, CDNs) followed, with ``Authorization`` dropped whenever a redirect
leaves the endpoint's origin (httpx's rule). A connection dropped mid-body
is picked up where it stopped with ``Range: bytes=N-`` (the retry policy
decides how often and how long to wait), so a 20 GB file never starts over.

Each stream holds one network read at a time (64 KiB pieces): memory stays
the same whatever the file's size. Trust: an LFS file's bytes are checked
against the sha256 the Hub lists for it by the layer writer, which hashes
every file it packs anyway (:attr:`HubFile.expected_sha256`, see
:class:`modelimage.tarstream.Digester`); a small (non-LFS) file read whole
is checked here against its git blob id. Either mismatch is a
:class:`~modelimage.errors.SourceError` naming the file, raised before its
last bytes reach a sink.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from ..content import RangedObject
from ..errors import SourceError
from . import hubapi
from .hubapi import client

if TYPE_CHECKING:
    from .files import SourceFile

WHOLE_READ = 16 << 20  # bytes: a part of a non-LFS file up to this size is checked by reading it whole


class _Temporary(Exception):
    """An answer worth another attempt (429, 5xx), or a body cut short."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def auth_headers(endpoint: str) -> dict[str, str]:
    """The ``Authorization`` header huggingface_hub would send to the Hub
    (its token rules, :func:`.hubapi.token`), or nothing."""
    return hubapi.auth_headers()


def git_blob_id(size: int) -> Any:
    """A sha1 primed with git's blob header: fed the file's bytes, its
    hexdigest is the file's git blob id (what the Hub lists as ``oid``)."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % size)
    return h


@dataclass(frozen=True)
class HubFile(RangedObject):
    """One file of one commit of a Hub repository: its bytes by range,
    never all at once. ``size`` (bytes), ``blob_id`` (git's sha1) and
    ``sha256`` (LFS files only) as the Hub lists them."""

    endpoint: str
    repo: str
    commit: str
    path: str
    size: int
    blob_id: str = ""
    sha256: str | None = None
    headers: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __str__(self) -> str:
        return f"hf://{self.repo}@{self.commit}/{self.path}"

    @property
    def url(self) -> str:
        """``ENDPOINT/REPO/resolve/COMMIT/PATH``: this commit's bytes only."""
        return f"{self.endpoint.rstrip('/')}/{self.repo}/resolve/{self.commit}/{quote(self.path)}"

    @property
    def etag(self) -> str:
        """The file's content id: its LFS sha256, else its git blob id."""
        return self.sha256 or self.blob_id

    @property
    def stamp(self) -> tuple[int, str]:
        return (self.size, self.etag)

    @property
    def identity(self) -> list[str | int]:
        """What the digest cache keys on: endpoint, repository, path, size
        and content id (LFS sha256 or git blob id) name the bytes exactly,
        so a later commit that left a file alone still finds its layer."""
        return ["hf", self.endpoint, self.repo, self.path, self.size, self.etag]

    @property
    def expected_sha256(self) -> str | None:
        """The sha256 the Hub lists for an LFS file (None for others): the
        layer writer checks the bytes it packs against it."""
        return self.sha256

    def mismatch(self, what: str, got: str, listed: str) -> SourceError:
        return SourceError(f"{self}: the bytes the Hub sent have {what} {got}, its listing says {listed} "
                           "(corrupted on the way, or altered by a proxy); nothing was pushed or tagged")

    # ------------------------------------------------------------ reading

    def get(self, offset: int, length: int) -> bytes | memoryview:
        """Exactly ``length`` bytes at ``offset`` (one ranged GET, resumed if cut)."""
        if length <= 0:
            return memoryview(b"")
        buf = bytearray(length)
        pos = 0
        for data in self.read(offset, length):
            buf[pos:pos + len(data)] = data
            pos += len(data)
        return memoryview(buf)

    def read(self, offset: int, length: int) -> Iterator[bytes | memoryview]:
        """The bytes of ``[offset, offset + length)`` in order, in the pieces
        the network gives (at most 64 KiB each), from one streaming GET;
        a connection cut mid-way is resumed from the next byte. A whole
        non-LFS file is checked against its git blob id before its last
        piece is handed out; so is a part of one (up to :data:`WHOLE_READ`
        bytes: the Hub keeps bigger files in LFS), read whole for it and
        handed out once it checks (a chunked upload or a resumed one reads
        a layer by parts). Raises :class:`SourceError` (the file named)."""
        if length <= 0:
            return
        self.check_range(offset, length)
        if self.sha256 is None and self.blob_id and length < self.size <= WHOLE_READ:
            yield self._checked_part(offset, length)
            return
        blob = git_blob_id(self.size) if (offset == 0 and length == self.size and self.sha256 is None
                                          and self.blob_id) else None
        held: bytes | None = None  # the last piece, handed out once the whole file checks
        for data in self._stream(offset, length):
            if blob is not None:
                blob.update(data)
                if held is not None:
                    yield held
                held = data
            else:
                yield data
        if blob is not None:
            if blob.hexdigest() != self.blob_id:
                raise self.mismatch("git blob id", blob.hexdigest(), self.blob_id)
            if held is not None:
                yield held

    def _checked_part(self, offset: int, length: int) -> bytes:
        """``[offset, offset + length)`` of a small non-LFS file, out of the
        whole file once it matches its git blob id."""
        blob, part, pos = git_blob_id(self.size), bytearray(), 0
        for data in self._stream(0, self.size):
            blob.update(data)
            lo, hi = max(offset, pos), min(offset + length, pos + len(data))
            if lo < hi:
                part += data[lo - pos:hi - pos]
            pos += len(data)
        if blob.hexdigest() != self.blob_id:
            raise self.mismatch("git blob id", blob.hexdigest(), self.blob_id)
        return bytes(part)

    def _stream(self, offset: int, length: int) -> Iterator[bytes]:
        from ..registry.transport import current_options, describe

        policy = current_options().retry
        end = offset + length
        pos, attempt = offset, 0
        http = client(self.endpoint)
        while pos < end:
            try:
                # identity: the Hub's CDN gzips text files for a client that accepts it (httpx's default
                # does), and raw gzip bytes are not the file's (huggingface_hub issue 3269)
                with http.stream("GET", self.url, headers={**self.headers, "Accept-Encoding": "identity",
                                                           "Range": f"bytes={pos}-{end - 1}"}) as r:
                    skip = self._check_answer(r, pos, end)
                    for data in r.iter_raw():
                        if skip:
                            cut = min(skip, len(data))
                            data, skip = data[cut:], skip - cut
                        if len(data) > end - pos:
                            data = data[:end - pos]
                        if data:
                            pos += len(data)
                            attempt = 0  # progress: the budget is for failures in a row
                            yield data
                        if pos >= end:
                            break
                    if pos < end:
                        raise _Temporary(f"the answer ended at byte {pos} of {end}")
            except httpx.TooManyRedirects:
                raise SourceError(f"{self}: the Hub's redirects for it loop (more than "
                                  f"{http.max_redirects} in a row); try again later, or report it to the "
                                  "Hub's operator") from None
            except (httpx.TransportError, _Temporary) as e:
                attempt += 1
                temporary = isinstance(e, _Temporary) or policy.temporary(e)
                if not temporary or attempt > policy.retries:
                    raise SourceError(f"{self}: gave up after {attempt} attempt{'s' if attempt > 1 else ''} "
                                      f"at byte {pos} of {self.size} ({describe(e)})") from None
                policy.wait(attempt, e)

    def _check_answer(self, r: httpx.Response, pos: int, end: int) -> int:
        """Bytes to skip at the start of ``r``'s body (a server that ignored
        the Range sends the file from byte 0); raises for an error answer."""
        status = r.status_code
        encoding = r.headers.get("Content-Encoding", "identity").strip().lower()
        if status in (200, 206) and encoding not in ("", "identity"):
            raise SourceError(f"{self}: the Hub answered Content-Encoding {encoding!r} though only the "
                              "file's own bytes (identity) were accepted; a proxy in between re-encodes it?")
        if status == 206:
            got = r.headers.get("Content-Range", "")
            start, _, total = got.removeprefix("bytes ").partition("/")
            first = start.partition("-")[0]
            if not first.isdigit() or int(first) != pos or (total.isdigit() and int(total) != self.size):
                raise SourceError(f"{self}: asked for bytes {pos}-{end - 1} of {self.size}, "
                                  f"the Hub answered Content-Range {got!r}")
            return 0
        if status == 200:
            total = r.headers.get("Content-Length")
            if total is not None and total.isdigit() and int(total) != self.size:
                raise SourceError(f"{self}: the Hub sends {total} bytes, its listing says {self.size} "
                                  "(the file changed at a pinned commit?)")
            return pos
        if status in (408, 425, 429) or status >= 500:
            from ..registry.transport import retry_after  # delta-seconds or an HTTP-date

            raise _Temporary(f"HTTP {status}", retry_after(r.headers))
        if status in (401, 403):
            raise SourceError(f"{self}: HTTP {status}: access denied; set HF_TOKEN (or `hf auth login`) "
                              "for a private or gated repository")
        if status == 404:
            raise SourceError(f"{self}: HTTP 404: not found at that commit")
        raise SourceError(f"{self}: HTTP {status} from {r.url.host}")


def resolve_commit(repo: str, revision: str | None, endpoint: str) -> str:
    """The commit sha ``revision`` (a branch, tag or sha; None: the default
    branch) names now, asked of the Hub: the request ``HfApi.model_info``
    makes (``GET /api/models/REPO[/revision/REV]``), with
    huggingface_hub's token rules and error mapping (:func:`_hub_api`). Raises huggingface_hub's errors (the caller
    words them)."""
    info = _hub_api(endpoint, hubapi.info_path(repo, revision))
    sha = info.get("sha") if isinstance(info, dict) else None
    if not sha:
        raise SourceError(f"hf://{repo}: the Hub gave no commit for revision {revision or 'main'!r}")
    return sha


def _hub_api(endpoint: str, path: str) -> Any:
    """The JSON answer to ``GET ENDPOINT/PATH`` of the Hub's API
    (:func:`.hubapi.get_json`: this project's client with huggingface_hub's
    token; huggingface_hub's session, errors and messages for any answer but
    a plain 200)."""
    return hubapi.get_json(endpoint, path)


def _hub_api_pages(endpoint: str, path: str, params: dict[str, Any]) -> Iterator[Any]:
    """The items of a listing of the Hub's API, every page
    (:func:`.hubapi.get_pages`)."""
    return hubapi.get_pages(endpoint, path, params)


@dataclass(frozen=True)
class HubRepo:
    """The files of one commit of a Hub repository, as a remote folder
    (:class:`~modelimage.sources.files.RemoteFolder`): listed by the Hub's
    API (:func:`_hub_api_pages`), read by range (:class:`HubFile`)."""

    repo: str
    commit: str
    endpoint: str

    def __str__(self) -> str:
        return f"hf://{self.repo}@{self.commit}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.repo).name

    def list_files(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list["SourceFile"]:
        """The commit's files (the Hub's tree listing, every page: the
        request ``HfApi.list_repo_tree(recursive=True)`` makes), hidden names
        skipped and include/exclude applied as for a local folder, sorted
        by path."""
        from .files import SourceFile, selected

        headers = auth_headers(self.endpoint)
        out: list[SourceFile] = []
        for f in _hub_api_pages(self.endpoint, hubapi.tree_path(self.repo, self.commit), hubapi.TREE_PARAMS):
            if not isinstance(f, dict) or f.get("type") != "file":
                continue
            rel, size = f.get("path"), f.get("size")
            if not isinstance(rel, str) or not isinstance(size, int) or size < 0:
                raise SourceError(f"{self}: the Hub lists a file without a path and size: {str(f)[:200]}")
            parts = rel.split("/")
            if rel.startswith("/") or "" in parts or ".." in parts:  # git forbids them; a listing must not smuggle
                raise SourceError(f"{self}: the Hub lists a file named {rel!r}, not a path inside the repository")
            if any(p.startswith(".") for p in parts) or not selected(rel, include, exclude):
                continue
            lfs = f.get("lfs")
            obj = HubFile(self.endpoint, self.repo, self.commit, rel, size, f.get("oid") or "",
                          lfs.get("oid") if isinstance(lfs, dict) else None, headers)
            out.append(SourceFile(rel, obj, obj.size))
        out.sort(key=lambda s: s.name)
        if not out:
            raise SourceError(f"{self}: no files to pack" + (" (after include/exclude)" if include or exclude else ""))
        return out
