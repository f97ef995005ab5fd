"""Image references: ``[HOST[:PORT]/]REPOSITORY[:TAG][@DIGEST]``, and the
URLs of the distribution API (go-containerregistry's ``pkg/name``).

One type owns the parsing and the URLs, the way docker resolves names:
no host means Docker Hub (``docker.io``, API at ``registry-1.docker.io``,
one-word names under ``library/``); plain HTTP allowed only for loopback
hosts or hosts the user names as insecure (HTTPS asked first even there);
TLS verified everywhere else.
:func:`resolve_location` turns a ``Location`` header (registries may send a
path only) into an absolute URL. No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import urljoin

from ..errors import ConfigError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# skopeo's (containers/image) transports that are not registries, OCI layouts or archives
FOREIGN_TRANSPORTS = ("docker-archive", "docker-daemon", "containers-storage", "ostree", "sif")
# [SCHEME://]USERINFO@HOST...: an "@" before the first "/" that no digest follows (NAME@sha256:... is a digest)
_USERINFO_RE = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.-]*://)?)([^/@]*)@(?![A-Za-z][A-Za-z0-9]*:[0-9a-fA-F]{32,}\s*$)")


# Endings of files a model is made of: text ending so is a path, never an image name.
MODEL_FILE_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".json", ".tar")
_HOST_RE = re.compile(r"^(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*"
                      r"[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is a file system path rather than an image
    reference: it starts with ``/``, ``./``, ``../`` or ``~``, is ``.`` or
    ``..``, or ends like a model file (``.safetensors``, ``.gguf``...).
    Docker refuses each of these as a reference; we say "no such file"."""
    t = text.strip()
    return (t in (".", "..") or t.startswith(("/", "./", "../", "~"))
            or t.lower().rsplit(":", 1)[0].endswith(MODEL_FILE_SUFFIXES))


def has_credentials(text: str) -> bool:
    """``[SCHEME://]USER[:PASSWORD]@HOST[/...]``: credentials written into a
    reference, a mirror's location or a ``docker-daemon:`` name, which are
    refused without echoing them (``NAME@sha256:...`` is a digest, not them)."""
    return _USERINFO_RE.match(text) is not None


def redacted(text: str) -> str:
    """``text`` as messages and logs may show it: credentials written into it
    (:func:`has_credentials`) replaced by ``***``. THE one redaction of
    names and locations (references, mirrors, ``docker-daemon:`` names)."""
    return _USERINFO_RE.sub(lambda m: m.group(1) + "***@", text, count=1)


def names_host(first: str) -> bool:
    """Whether ``first``, the part of a name before its first ``/``, is a
    registry host rather than a Docker Hub repository's first component:
    it has a dot or a port, is ``localhost`` or an IPv6 literal ``[...]``
    (docker's rule: distribution/reference ``splitDockerDomain``); ``.``
    and ``..`` (paths) are not."""
    return first not in (".", "..") and ("." in first or ":" in first or first == "localhost"
                                         or first.startswith("["))


def is_host(text: str) -> bool:
    """``HOST[:PORT]``: a DNS name, ``localhost``, or an IP address (IPv6 in brackets)."""
    return _HOST_RE.match(text) is not None


def is_repository(path: str) -> bool:
    """A repository path (distribution's grammar: lowercase components
    joined by ``.``, ``_``, ``__`` or dashes, separated by ``/``)."""
    return _REPO_RE.match(path) is not None


def is_tag(text: str) -> bool:
    """A tag: up to 128 of ``[A-Za-z0-9_.-]``, not starting with ``.`` or ``-``."""
    return _TAG_RE.match(text) is not None


def is_digest(text: str) -> bool:
    """``sha256:`` and 64 lowercase hex digits."""
    return _DIGEST_RE.match(text) is not None


def name_at(name: str, ref: str) -> str:
    """``NAME:TAG``, or ``NAME@sha256:...`` when ``ref`` is a digest (a tag
    never holds a colon), the way docker writes them."""
    return f"{name}@{ref}" if ":" in ref else f"{name}:{ref}"


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


def registry_host(key: str) -> str:
    """The registry a host or config key names, spelled one way: ``https://Host:443/v1/``
    -> ``host``; Docker Hub's aliases -> ``docker.io``."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip(), flags=re.I).split("/", 1)[0].lower()
    host = re.sub(r":(443|80)$", "", host)
    return DOCKER_HUB if host in DOCKER_HUB_HOSTS else host


def resolve_location(base: str, location: str) -> str:
    """An absolute URL for a ``Location`` header answered by the registry at
    ``base`` (``scheme://host``): registries may send a path only, or a path
    with a query (RFC 9110 10.2.2 resolves it against the request's URL)."""
    return urljoin(base + "/", location)


def api_url(base: str, path: str) -> str:
    """``base`` (``scheme://host``) + an API path such as ``/v2/REPO/blobs/DIGEST``."""
    return urljoin(base + "/", path.lstrip("/"))


def blob_path(repository: str, digest: str) -> str:
    """``/v2/REPOSITORY/blobs/DIGEST`` (distribution-spec, "Pulling blobs")."""
    return f"/v2/{repository}/blobs/{digest}"


def manifest_path(repository: str, ref: str) -> str:
    """``/v2/REPOSITORY/manifests/TAG-OR-DIGEST``."""
    return f"/v2/{repository}/manifests/{ref}"


def uploads_path(repository: str) -> str:
    """``/v2/REPOSITORY/blobs/uploads/``: where an upload session starts."""
    return f"/v2/{repository}/blobs/uploads/"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. ``host`` as written (``docker.io`` for Docker
    Hub), ``repository`` without the host, ``tag`` and/or ``digest``."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        raw = text.strip()
        if userinfo := _USERINFO_RE.match(raw):  # USER:PASSWORD@HOST/...: never echoed (logs keep errors)
            host = raw[userinfo.end():].split("/", 1)[0]
            raise ConfigError(f"{redacted(raw)}: credentials do not go in an image reference (errors and logs "
                              f"would show them); store them with: modelimage login {host} -u USER --password-stdin")
        transport, colon, after = raw.partition(":")
        if colon and (transport in FOREIGN_TRANSPORTS or (transport == "dir" and after[:1] in ("/", ".", "~"))):
            # docker-archive:x.tar reads as Docker Hub's library/docker-archive, tag x.tar: a network error
            raise ConfigError(f"{raw}: {transport}: is a transport of skopeo's that modelimage does not use "
                              "(it reads HOST/REPO[:TAG], oci:DIR[:TAG], oci-archive:FILE[:TAG]); convert it: "
                              f"skopeo copy {raw} oci-archive:IMAGE.tar")
        for prefix in ("docker://", "oci://"):
            raw = raw.removeprefix(prefix)
        rest, digest = raw, None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST_RE.match(digest):
                raise ConfigError(f"{text!r}: {digest!r} is not a sha256 digest")
        if looks_like_path(raw):
            raise ConfigError(f"{text}: a file system path, not an image reference (HOST/REPO[:TAG])")
        first, slash, remainder = rest.partition("/")
        if slash and names_host(first):
            if not _HOST_RE.match(first):
                raise ConfigError(f"{text!r}: {first!r} is not a registry host (a name, an IP address, "
                                  "optionally :PORT)")
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

    def plain_http_allowed(self, insecure: frozenset[str] | set[str] = frozenset()) -> bool:
        """Whether the registry may answer in plain HTTP: loopback hosts, or
        hosts named insecure. HTTPS is still asked first
        (:func:`modelimage.registry.transport.probe_scheme`)."""
        return is_loopback(self.host) or self.host in insecure
