"""Naming a layout: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, or
either with ``@sha256:HEX`` for one manifest by digest (reading only)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..registry.reference import is_digest, is_tag

DEFAULT_TAG = "latest"
TRANSPORTS = ("oci", "oci-archive")
# image-spec annotations.md, org.opencontainers.image.ref.name: a tag or a
# full reference (podman save writes "localhost/NAME:TAG")
_ALNUM = r"[A-Za-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[-._:@+]|--){_ALNUM})*"
_REF_NAME_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")


@dataclass(frozen=True)
class LayoutRef:
    """``oci:DIR[:TAG]`` or ``oci-archive:FILE[:TAG]`` (skopeo's names).

    ``tag`` is what a build writes (``latest`` when none is given) and what
    a reader looks for when ``explicit_tag``; without one, a reader takes
    the layout's only image (as ``skopeo copy oci:DIR`` does), else the one
    tagged ``latest``. ``digest`` names one manifest of the layout instead
    (``oci:DIR@sha256:HEX``), for reading."""

    transport: str  # "oci" | "oci-archive"
    path: Path
    tag: str = DEFAULT_TAG
    explicit_tag: bool = True
    digest: str | None = None

    def __str__(self) -> str:
        if self.digest:
            return f"{self.transport}:{self.path}@{self.digest}"
        return f"{self.transport}:{self.path}:{self.tag}"

    @property
    def text(self) -> str:
        """As the user wrote it (for messages): without a tag they did not give."""
        return str(self) if self.explicit_tag or self.digest else f"{self.transport}:{self.path}"

    @classmethod
    def parse(cls, text: str) -> "LayoutRef":
        """Split as containers/image does (``SplitPathAndImage``): the path
        ends at the first ``:`` after the transport, and the rest is the
        tag, or the full reference some tools write as the name (``oci:DIR:
        localhost/app:v1``). Raises :class:`ConfigError` for another
        transport or a bad tag."""
        transport, sep, rest = text.partition(":")
        if not sep or transport not in TRANSPORTS or not rest:
            raise ConfigError(f"{text!r}: expected oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
        before, at, digest = rest.rpartition("@")
        if at and before and is_digest(digest):
            return cls(transport, Path(before), explicit_tag=False, digest=digest)
        path, colon, tag = rest.partition(":")
        if not path:
            raise ConfigError(f"{text!r}: expected oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
        if not colon:
            return cls(transport, Path(path), DEFAULT_TAG, False)
        if not (is_tag(tag) or (len(tag) <= 255 and _REF_NAME_RE.match(tag))):
            raise ConfigError(f"{text!r}: {tag!r} is not a valid tag")
        return cls(transport, Path(path), tag, True)

    @classmethod
    def is_layout(cls, text: str) -> bool:
        """Whether ``text`` names a layout (rather than a registry reference)."""
        return text.startswith(tuple(t + ":" for t in TRANSPORTS))
