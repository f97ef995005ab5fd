"""The OCI distribution API, spoken plainly over httpx.

One :class:`RegistryClient` per registry host. It knows the endpoints
(HEAD/GET blobs, uploads, mounts, manifests), turns error responses into
:class:`RegistryError` (status, spec error code, message, whether a retry can
help), and never follows a redirect with credentials to another host. The
upload *strategy* (resume, retries, parallelism) lives in
:mod:`modelimage.registry.push`.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin

import httpx

from ..errors import ModelImageError
from ..oci import sha256_digest
from .auth import Credentials, RegistryAuth, credentials_for
from .reference import Reference

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "modelimage/0.1 (+https://github.com/modelimage)"


class RegistryError(ModelImageError):
    """An error answer from a registry, with what the spec says about it."""

    def __init__(self, what: str, status: int, code: str = "", message: str = "",
                 retry_after: float | None = None):
        self.status, self.code, self.detail, self.retry_after = status, code, message, retry_after
        text = f"{what}: {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        """Worth trying again: server trouble, rate limits, timeouts."""
        return self.status in RETRYABLE_STATUS


def tls_failure(e: BaseException) -> bool:
    """A TLS certificate that did not verify (self-signed, wrong host, expired)."""
    while e is not None:
        if isinstance(e, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def network_message(what: str, e: BaseException) -> str:
    """One line for a connection that failed (no request details, no headers)."""
    if tls_failure(e):
        return (f"{what}: the TLS certificate did not verify; fix the certificate (or the CA bundle), or use "
                "--insecure-registry HOST only for a registry you trust on a network you trust")
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{what}: cannot connect ({reason})"


def _error(what: str, r: httpx.Response) -> RegistryError:
    code = message = ""
    try:
        errors = r.json().get("errors") or []
        if errors:
            code = str(errors[0].get("code", ""))
            message = str(errors[0].get("message", ""))
            detail = errors[0].get("detail")
            if detail and isinstance(detail, (str, int, float)):
                message += f" ({detail})"
    except (ValueError, AttributeError, UnicodeDecodeError):
        message = r.reason_phrase
    if not message:
        message = r.reason_phrase
    if r.status_code == 401 and not code:
        code = "UNAUTHORIZED"
    return RegistryError(what, r.status_code, code, message[:300], _retry_after(r))


def _retry_after(r: httpx.Response) -> float | None:
    value = r.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True)
class Manifest:
    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


class RegistryClient:
    """Endpoints of one registry (``ref.api_host``), authenticated like docker."""

    def __init__(self, ref: Reference, *, insecure: frozenset[str] | set[str] = frozenset(),
                 credentials: Credentials | None = None, timeout: float = 60.0, pool: int = 8):
        self.host = ref.host
        self.base = ref.base_url(insecure)
        creds = credentials if credentials is not None else credentials_for(ref.host)
        # no timeout waiting for the answer to a final PUT: registries can take
        # minutes to commit a big blob (containerd's 30 s header timeout killed
        # ~2 GB uploads: unikraft-cloud/cli#511); connect/pool stay bounded.
        self.timeout = httpx.Timeout(timeout, read=timeout)
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        headers = {"User-Agent": USER_AGENT}
        # TLS is verified (httpx's default) for everything but loopback/--insecure-registry
        # hosts, which are spoken to in plain HTTP; token servers get the same treatment.
        self.token_client = httpx.Client(timeout=timeout, headers=headers, follow_redirects=True)
        self.auth = RegistryAuth(ref.host, creds, token_client=self.token_client)
        self.http = httpx.Client(
            base_url=self.base, auth=self.auth, timeout=self.timeout, limits=limits,
            follow_redirects=True, headers=headers,
        )

    def close(self) -> None:
        self.http.close()
        self.token_client.close()

    def url(self, path: str) -> str:
        return urljoin(self.base + "/", path.lstrip("/"))

    def absolute(self, location: str) -> str:
        """Registries may answer with a path-only Location: resolve it."""
        return urljoin(self.base + "/", location)

    # ---------------------------------------------------------------- checks

    def ping(self) -> None:
        r = self.http.get("/v2/")
        if r.status_code != 200:
            raise _error(f"{self.host}", r)

    def blob_exists(self, repo: str, digest: str) -> int | None:
        """The blob's size if ``repo`` has it, else None."""
        r = self.http.head(f"/v2/{repo}/blobs/{digest}")
        if r.status_code == 200:
            return int(r.headers.get("Content-Length", "0") or 0)
        if r.status_code == 404:
            return None
        raise _error(f"{self.host}/{repo}: checking {digest[:19]}", r)

    # ---------------------------------------------------------------- uploads

    def mount(self, repo: str, digest: str, source_repo: str) -> bool:
        """Cross-repository mount; True when the registry mounted it."""
        r = self.http.post(f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": source_repo},
                           headers={"Content-Length": "0"})
        if r.status_code == 201:
            return True
        if r.status_code == 202:  # mount refused, an upload was opened instead: close it
            self.cancel(self.absolute(r.headers["Location"]))
            return False
        if r.status_code in (401, 403, 404):
            return False
        raise _error(f"{self.host}/{repo}: mounting {digest[:19]} from {source_repo}", r)

    def start_upload(self, repo: str) -> str:
        r = self.http.post(f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        if r.status_code != 202 or "Location" not in r.headers:
            raise _error(f"{self.host}/{repo}: starting an upload", r)
        return self.absolute(r.headers["Location"])

    def upload_offset(self, url: str) -> int:
        """Bytes the registry holds of an upload (from its ``Range: 0-N``)."""
        r = self.http.get(url)
        if r.status_code not in (204, 200):
            raise _error(f"{self.host}: upload status", r)
        rng = r.headers.get("Range", "")
        if "-" not in rng:
            return 0
        return int(rng.rsplit("-", 1)[1]) + 1

    def patch(self, url: str, content: Iterable[bytes], start: int, length: int | None) -> str:
        """Append a stream at ``start``; returns the next upload URL."""
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Content-Length"] = str(length)
            headers["Content-Range"] = f"{start}-{start + length - 1}"
        r = self.http.patch(url, content=content, headers=headers,
                            timeout=httpx.Timeout(self.timeout.connect, read=None, write=self.timeout.write,
                                                  pool=self.timeout.pool))
        if r.status_code != 202:
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
                          timeout=httpx.Timeout(self.timeout.connect, read=None, write=self.timeout.write,
                                                pool=self.timeout.pool))
        if r.status_code != 201:
            raise _error(f"{self.host}: committing {digest[:19]}", r)

    def cancel(self, url: str) -> None:
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
        r = self.http.put(f"/v2/{repo}/manifests/{ref}", content=data, headers={"Content-Type": media_type})
        if r.status_code not in (200, 201):
            raise _error(f"{self.host}/{repo}:{ref}: pushing the manifest", r)
        return r.headers.get("Docker-Content-Digest", "")

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        r = self.http.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
        if r.status_code != 200:
            raise _error(f"{self.host}/{repo}:{ref}", r)
        digest = sha256_digest(r.content)
        if ref.startswith("sha256:") and digest != ref:
            raise RegistryError(f"{self.host}/{repo}@{ref}", 200, "DIGEST_INVALID", f"content hashes to {digest}")
        return Manifest(r.content, r.headers.get("Content-Type", "").split(";")[0], digest)

    def get_blob(self, repo: str, digest: str) -> bytes:
        r = self.http.get(f"/v2/{repo}/blobs/{digest}")
        if r.status_code != 200:
            raise _error(f"{self.host}/{repo}: blob {digest[:19]}", r)
        return r.content

    def stream_blob(self, repo: str, digest: str, start: int = 0, end: int | None = None) -> httpx.Response:
        """An open streaming response for a blob (or a byte range); close it."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        req = self.http.build_request("GET", f"/v2/{repo}/blobs/{digest}", headers=headers)
        r = self.http.send(req, stream=True)
        if r.status_code not in (200, 206):
            r.read()
            r.close()
            raise _error(f"{self.host}/{repo}: blob {digest[:19]}", r)
        return r
