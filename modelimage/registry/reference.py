"""Image references: ``[HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]``.

One type owns the parsing and the URLs, the way docker resolves names:
no host means Docker Hub (``docker.io``, API at ``registry-1.docker.io``,
one-word names under ``library/``); plain HTTP only for loopback hosts or
hosts the user names as insecure; TLS verified everywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from ..errors import ConfigError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``[::1]``, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        raw = text.strip()
        for prefix in ("docker://", "oci://"):
            raw = raw.removeprefix(prefix)
        rest, digest = raw, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise ConfigError(f"{text!r}: {digest!r} is not a sha256 digest")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
            host, path = first, remainder
        else:
            host, path = DOCKER_HUB, rest
        tag = None
        last = path.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = path.rsplit(":", 1)
            if not _TAG_RE.match(tag):
                raise ConfigError(f"{text!r}: {tag!r} is not a valid tag")
        if host in ("index.docker.io", DOCKER_HUB_API):
            host = DOCKER_HUB
        if host == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if not _REPO_RE.match(path):
            raise ConfigError(
                f"{text!r}: {path!r} is not a valid repository name (lowercase letters, digits, . _ - and /)"
            )
        return cls(host, path, tag if tag or digest else "latest", digest)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def name(self) -> str:
        """``host/repository``."""
        return f"{self.host}/{self.repository}"

    @property
    def ref(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> "Reference":
        return replace(self, digest=digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def pinned(self) -> str:
        """``host/repository@sha256:...``."""
        return f"{self.name}@{self.digest}"

    def scheme(self, insecure: frozenset[str] | set[str] = frozenset()) -> str:
        return "http" if is_loopback(self.host) or self.host in insecure else "https"

    def base_url(self, insecure: frozenset[str] | set[str] = frozenset()) -> str:
        return f"{self.scheme(insecure)}://{self.api_host}"
