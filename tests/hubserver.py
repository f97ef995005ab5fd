"""A tiny Hugging Face Hub on a loopback port, for filling a real
huggingface_hub cache offline (``HF_ENDPOINT=http://127.0.0.1:PORT``).

It serves the few endpoints ``snapshot_download`` and ``hf_hub_download``
use, with the headers huggingface_hub checks:

* ``GET /api/models/{repo}[/revision/{rev}]``: ``{"id", "sha", "siblings"}``
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=...``: file entries
  (``type``, ``path``, ``size``, ``oid``, ``lfs`` for weight files)
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length`` (ranges honoured)

and answers unknown repositories, revisions and files the way the Hub does
(404 with ``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound``).
With ``rate`` set (bytes/s), what it serves is paced at that rate in
total across connections (:class:`tests.link.Pacer`): a node's link to the
Hub, for benchmarks. With ``page_size`` set, tree listings come in pages
of that many entries linked by ``Link: <...>; rel="next"``, as the Hub
pages them (1000).
Every request is logged in ``requests`` so tests can tell what was downloaded,
and its headers in ``seen`` (method, path, lower-case headers). With ``redirect`` set (the
base URL of another server, for example a second HubServer sharing
``repos``), a GET of an LFS file is answered ``302`` to
``REDIRECT/{repo}/resolve/{sha}/{path}``, the way the Hub sends LFS and xet
files to its storage. ``oid`` and a non-LFS file's ``ETag`` are git blob ids.
With ``gzip`` set, a GET of a non-LFS file is answered ``Content-Encoding:
gzip`` when the client accepts it, as the Hub's CDN does for text files
(huggingface_hub issue 3269); ``"always"``: even to a client that did not
accept it (a misbehaving proxy).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .link import Pacer

PIECE = 64 << 10  # bytes per paced write (with ``rate``)
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".onnx", ".pt")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch/tag -> sha
    # sha -> {path: (sha256, git blob id)}: hashed once at commit, as the Hub stores them (not per request)
    digests: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)


def git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub lists as a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_sha(files: dict[str, bytes], parent: str = "") -> str:
    h = hashlib.sha1(parent.encode())
    for path in sorted(files):
        h.update(path.encode() + b"\0" + hashlib.sha1(files[path]).digest())
    return h.hexdigest()


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # (method, path, lower-case headers)
        self.redirect: str | None = None  # base URL LFS file GETs are redirected to
        self.page_size: int | None = None  # tree listings in pages of this many entries, Link: rel="next" (Hub: 1000)
        self.rate: float | None = None  # bytes/s: what it serves, in total across connections (tests.link.Pacer)
        self.gzip: bool | str = False  # non-LFS GETs gzip-encoded when the client accepts gzip ("always": even if not)
        self.private: dict[str, str] = {}  # repo id -> its token: without "Authorization: Bearer TOKEN", 401
        self._lock = threading.Lock()
        self._pacer: Pacer | None = None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve(self, out, body: bytes) -> None:
        """Write ``body`` to a client, paced at :attr:`rate` when it is set
        (one link's rate shared by every connection, as a node's download
        link from the Hub would carry them)."""
        if self.rate is None:
            out.write(body)
            return
        with self._lock:
            if self._pacer is None or self._pacer.rate != self.rate:
                self._pacer = Pacer(self.rate)
            pacer = self._pacer
        view = memoryview(body)
        for i in range(0, len(view), PIECE):
            pacer.wait(len(view[i:i + PIECE]))
            out.write(view[i:i + PIECE])

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Add a commit with exactly ``files`` and point ``branch`` at it."""
        repo = self.repos.setdefault(repo_id, Repo())
        sha = commit_sha(files, repo.refs.get(branch, ""))
        repo.commits[sha] = dict(files)
        repo.digests[sha] = {p: (hashlib.sha256(b).hexdigest(), git_oid(b)) for p, b in files.items()}
        repo.refs[branch] = sha
        return sha

    def downloads(self) -> list[str]:
        """Paths of files whose bytes were served (GET .../resolve/...)."""
        return [p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p in self.requests
                if m == "GET" and "/resolve/" in p]

    # ------------------------------------------------------------ HTTP

    def _resolve(self, repo_id: str, rev: str) -> tuple[Repo | None, str | None]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None, None
        sha = repo.refs.get(rev, rev if rev in repo.commits else None)
        return repo, sha

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      head: bool = False) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    hub.serve(self.wfile, body)

            def _json(self, obj: object, headers: dict[str, str] | None = None) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _error(self, code: str, message: str, head: bool = False) -> None:
                self._send(404, json.dumps({"error": message}).encode(),
                           {"Content-Type": "application/json", "X-Error-Code": code,
                            "X-Error-Message": message}, head)

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _route(self, head: bool) -> None:
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                with hub._lock:
                    hub.requests.append((self.command, path))
                    hub.seen.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
                token = next((t for r, t in hub.private.items() if path.startswith((f"/api/models/{r}/", f"/{r}/"))
                              or path == f"/api/models/{r}"), None)
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    # the Hub's answer for a private repository (or none) asked without its token
                    return self._send(401, b'{"error": "Invalid username or password."}',
                                      {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound",
                                       "X-Error-Message": "Invalid username or password."}, head)
                if path.startswith("/api/models/"):
                    return self._api(path[len("/api/models/"):], parts.query)
                if "/resolve/" in path:
                    repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                    rev, _, file = rest.partition("/")
                    return self._file(repo_id, rev, file, head)
                self._send(404)

            def _api(self, rest: str, query: str) -> None:
                if "/tree/" in rest:
                    repo_id, tail = rest.split("/tree/", 1)
                    rev, _, sub = tail.partition("/")
                elif "/revision/" in rest:
                    repo_id, rev = rest.split("/revision/", 1)
                    sub = None
                else:
                    repo_id, rev, sub = rest, "main", None
                repo, sha = hub._resolve(repo_id, rev)
                if repo is None:
                    return self._error("RepoNotFound", f"Repository {repo_id} not found")
                if sha is None:
                    return self._error("RevisionNotFound", f"Invalid rev id: {rev}")
                files = repo.commits[sha]
                if sub is None:
                    return self._json({"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                                       "siblings": [{"rfilename": p} for p in sorted(files)]})
                entries = []
                for p in sorted(files):
                    if sub and not p.startswith(sub.rstrip("/") + "/"):
                        continue
                    data = files[p]
                    sha256, oid = repo.digests[sha][p]
                    e = {"type": "file", "path": p, "size": len(data), "oid": oid}
                    if p.endswith(LFS_SUFFIXES):
                        e["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
                    entries.append(e)
                start = int(parse_qs(query).get("cursor", ["0"])[0])
                if hub.page_size is None:
                    return self._json(entries)
                end = start + hub.page_size
                rest_query = "&".join(q for q in query.split("&") if q and not q.startswith("cursor="))
                link = (f'<http://{self.headers["Host"]}{urlsplit(self.path).path}?{rest_query}&cursor={end}>; '
                        'rel="next"')
                self._json(entries[start:end], {"Link": link} if end < len(entries) else None)

            def _file(self, repo_id: str, rev: str, file: str, head: bool) -> None:
                repo, sha = hub._resolve(repo_id, rev)
                if repo is None:
                    return self._error("RepoNotFound", f"Repository {repo_id} not found", head)
                if sha is None:
                    return self._error("RevisionNotFound", f"Invalid rev id: {rev}", head)
                data = repo.commits[sha].get(file)
                if data is None:
                    return self._error("EntryNotFound", f"{file} does not exist at {rev}", head)
                lfs = file.endswith(LFS_SUFFIXES)
                if lfs and hub.redirect and not head:
                    where = f"{hub.redirect}/{repo_id}/resolve/{sha}/{quote(file)}"
                    return self._send(302, b"", {"Location": where})
                etag = repo.digests[sha][file][0 if lfs else 1]
                headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream",
                           "Accept-Ranges": "bytes"}
                if lfs:
                    headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
                status, body = 200, data
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and not head:
                    start_s, _, end_s = rng[len("bytes="):].partition("-")
                    start = int(start_s)
                    end = int(end_s) if end_s else len(data) - 1
                    body = data[start:end + 1]
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
                accepts = "gzip" in self.headers.get("Accept-Encoding", "") or hub.gzip == "always"
                if hub.gzip and not lfs and not head and accepts:
                    body = gzip.compress(body, mtime=0)  # the Hub's CDN compresses text files when allowed
                    headers.update({"Content-Encoding": "gzip", "Vary": "accept-encoding"})
                headers["Content-Length"] = str(len(body) if not head else len(data))
                self._send(status, body, headers, head)

        return Handler
