"""The OCI distribution API's verbs (go-containerregistry's ``v1/remote``
requests), one method each.

One :class:`RegistryClient` per registry host. It knows the endpoints
(HEAD/GET blobs, uploads, mounts, manifests) and turns error answers into
:class:`~modelimage.registry.transport.RegistryError`. How requests travel
(TLS, auth, the retry policy) is :class:`~modelimage.registry.transport.Transport`'s;
the upload *strategy* (resume, retries, parallelism) is
:mod:`modelimage.registry.upload`'s. Never prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..oci import MAX_MANIFEST_BYTES, sha256_digest
from ..units import format_size
from .keychain import Credentials
from .reference import Reference, blob_path, manifest_path, name_at, uploads_path
from .transport import RegistryError, Transport, TransportOptions, current_options
from .transport import error_from_response as _error

if TYPE_CHECKING:
    import httpx

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


@dataclass(frozen=True)
class Manifest:
    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


_RANGE = re.compile(r"^\s*(?:bytes[= ])?\s*(\d+)-(\d+)\s*$")


def _check_digest(what: str, r: httpx.Response, sent: str) -> None:
    """The registry's ``Docker-Content-Digest`` must name what was sent."""
    stored = r.headers.get("Docker-Content-Digest", "").strip()
    if stored and stored != sent:
        raise RegistryError(what, r.status_code, "DIGEST_INVALID",
                            f"the registry says it stored {stored}, but {sent} was sent")


class RegistryClient:
    """Endpoints of one registry (``ref.api_host``), authenticated like docker.

    ``options``: how to reach it (TLS, plain HTTP, timeout, retry policy);
    ``insecure`` and ``timeout`` override those fields. ``credentials``: as
    given, else the keychain's. ``pool``: idle connections kept.
    ``namespace``: the registry a mirror stands for (``?ns=``, see
    :class:`~modelimage.registry.transport.Transport`).
    """

    def __init__(self, ref: Reference, *, options: TransportOptions | None = None,
                 insecure: frozenset[str] | set[str] | None = None, credentials: Credentials | None = None,
                 timeout: float | None = None, pool: int = 8, namespace: str | None = None):
        options = options or current_options()
        if insecure:
            options = replace(options, insecure=options.insecure | frozenset(insecure))
        if timeout is not None:
            options = replace(options, timeout=timeout)
        self.transport = Transport(ref, options, credentials=credentials, pool=pool, namespace=namespace)
        self.host, self.base = ref.host, self.transport.base
        self.http, self.auth, self.timeout = self.transport.http, self.transport.auth, self.transport.timeout

    def close(self) -> None:
        self.transport.close()

    def url(self, path: str) -> str:
        return self.transport.url(path)

    def absolute(self, location: str) -> str:
        """Registries may answer with a path-only Location: resolve it."""
        return self.transport.resolve(location)

    # ---------------------------------------------------------------- checks

    def ping(self) -> None:
        """``GET /v2/``: the registry answers and accepts the credentials
        (learning its auth challenge). Retried under the transport's policy."""
        def once() -> None:
            r = self.http.get("/v2/")
            if r.status_code != 200:
                raise _error(f"{self.host}", r)

        self.transport.retry.call(self.host, once)

    def blob_exists(self, repo: str, digest: str) -> int | None:
        """The blob's size if ``repo`` has it, else None."""
        r = self.http.head(blob_path(repo, digest))
        if r.status_code == 200:
            return int(r.headers.get("Content-Length", "0") or 0)
        if r.status_code == 404:
            return None
        raise _error(f"{self.host}/{repo}: checking {digest[:19]}", r)

    # ---------------------------------------------------------------- uploads

    def mount(self, repo: str, digest: str, source_repo: str) -> bool:
        """Cross-repository mount; True when the registry mounted it."""
        r = self.http.post(uploads_path(repo), params={"mount": digest, "from": source_repo},
                           headers={"Content-Length": "0"})
        if r.status_code == 201:
            return True
        if r.status_code == 202:  # mount refused, an upload was opened instead: close it
            self.cancel(self.absolute(r.headers["Location"]))
            return False
        if r.status_code in (401, 403, 404):
            return False
        raise _error(f"{self.host}/{repo}: mounting {digest[:19]} from {source_repo}", r)

    def open_upload(self, repo: str) -> tuple[str, int | None]:
        """``POST .../blobs/uploads/``: a new upload session. Returns its URL and
        the smallest chunk the registry accepts (``OCI-Chunk-Min-Length``,
        distribution-spec 1.1; ``None`` when it names none)."""
        r = self.http.post(uploads_path(repo), headers={"Content-Length": "0"})
        if r.status_code != 202 or "Location" not in r.headers:
            raise _error(f"{self.host}/{repo}: starting an upload", r)
        try:
            min_chunk = int(r.headers.get("OCI-Chunk-Min-Length", "")) or None
        except ValueError:
            min_chunk = None
        return self.absolute(r.headers["Location"]), min_chunk

    def start_upload(self, repo: str) -> str:
        """The URL of a new upload session (see :meth:`open_upload`)."""
        return self.open_upload(repo)[0]

    def upload_range(self, url: str) -> int | None:
        """``GET`` an upload's status: the last byte index ``N`` of its ``Range:
        0-N`` (``bytes=0-N`` from some registries), ``None`` without one. What
        ``0-0`` means is the caller's to decide (distribution#2363: "no bytes"
        as well as "one byte")."""
        r = self.http.get(url)
        if r.status_code not in (204, 200):
            raise _error(f"{self.host}: upload status", r)
        m = _RANGE.match(r.headers.get("Range", ""))
        return int(m.group(2)) if m else None

    def patch(self, url: str, content: Iterable[bytes], start: int, length: int | None) -> str:
        """Append a stream at ``start``; returns the next upload URL. Accepts
        202 (the spec), and 201 or 204 (ECR answers 201: kitops#821)."""
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        r = self.http.patch(url, content=content, headers=headers, timeout=self.transport.body_timeout)
        if r.status_code not in (201, 202, 204):
            raise _error(f"{self.host}: uploading at byte {start}", r)
        return self.absolute(r.headers.get("Location", url))

    def finish(self, url: str, digest: str, content: Iterable[bytes] | bytes = b"",
               length: int | None = 0) -> None:
        """Close an upload (``PUT ?digest=``), with the last bytes or all of them."""
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
        sep = "&" if "?" in url else "?"
        r = self.http.put(f"{url}{sep}digest={digest}", content=content, headers=headers,
                          timeout=self.transport.body_timeout)
        if r.status_code not in (201, 204):
            raise _error(f"{self.host}: committing {digest[:19]}", r)
        _check_digest(f"{self.host}: committing {digest[:19]}", r, digest)

    def cancel(self, url: str) -> None:
        import httpx

        try:
            self.http.delete(url)
        except httpx.HTTPError:
            pass

    def put_blob(self, repo: str, data: bytes, digest: str) -> None:
        """A small blob (config) in one go, unless the registry has it."""
        if self.blob_exists(repo, digest) is not None:
            return
        self.finish(self.start_upload(repo), digest, data, len(data))

    # ---------------------------------------------------------------- manifests

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """``PUT`` a manifest under a tag or its digest; returns its digest.
        200, 201 and 202 all mean stored (go-containerregistry accepts 202); a
        ``Docker-Content-Digest`` that is not the digest of ``data`` is an error."""
        what = f"{name_at(f'{self.host}/{repo}', ref)}: pushing the manifest"
        r = self.http.put(manifest_path(repo, ref), content=data, headers={"Content-Type": media_type})
        if r.status_code not in (200, 201, 202):
            raise _error(what, r)
        digest = sha256_digest(data)
        _check_digest(what, r, digest)
        return digest

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        """A manifest or index by tag or digest (one by digest is checked
        against it). A body over :data:`~modelimage.oci.MAX_MANIFEST_BYTES`
        is refused before it is all read. Raises :class:`RegistryError`."""
        what, limit = name_at(f"{self.host}/{repo}", ref), MAX_MANIFEST_BYTES
        with self.http.stream("GET", manifest_path(repo, ref), headers={"Accept": MANIFEST_ACCEPT}) as r:
            if r.status_code != 200:
                r.read()
                raise _error(what, r)
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise RegistryError(what, 200, "SIZE_INVALID", f"the manifest is over {format_size(limit)} "
                                        "(registries keep them under 4 MB); not read")
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and digest != ref:
            raise RegistryError(f"{self.host}/{repo}@{ref}", 200, "DIGEST_INVALID", f"content hashes to {digest}")
        return Manifest(bytes(data), r.headers.get("Content-Type", "").split(";")[0], digest)

    def get_blob(self, repo: str, digest: str) -> bytes:
        r = self.http.get(blob_path(repo, digest))
        if r.status_code != 200:
            raise _error(f"{self.host}/{repo}: blob {digest[:19]}", r)
        return r.content

    def stream_blob(self, repo: str, digest: str, start: int = 0, end: int | None = None) -> httpx.Response:
        """An open streaming response for a blob (or a byte range); close it."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        req = self.http.build_request("GET", blob_path(repo, digest), headers=headers)
        r = self.http.send(req, stream=True)
        if r.status_code not in (200, 206):
            r.read()
            r.close()
            raise _error(f"{self.host}/{repo}: blob {digest[:19]}", r)
        return r
