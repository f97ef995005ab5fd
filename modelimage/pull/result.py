"""What ``pull`` and ``verify`` return: plain frozen records with ``to_json``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PulledFile:
    """A file a pull put in DEST: ``path`` relative to DEST, ``size`` in bytes."""

    path: str  # relative to DEST
    size: int
    sha256: str | None  # None only for files of unlisted layers pulled before this version

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class PullResult:
    """What :func:`~modelimage.pull.pull` did: every file now in DEST from
    the image, bytes fetched (over the network or read from a layout),
    wall-clock ``seconds``, layers fetched and skipped, warnings (one line
    each), and ``served_by``: the host that answered (a registry mirror, or
    the registry itself; None for a layout) and ``mirror_of`` (the registry,
    when a mirror answered)."""

    source: str
    digest: str  # the manifest's
    dest: str
    files: tuple[PulledFile, ...]
    bytes_fetched: int  # received over the network (or read from a layout), retries included
    seconds: float
    layers_fetched: int
    layers_skipped: int
    warnings: tuple[str, ...] = ()
    served_by: str | None = None  # the registry host or mirror its manifest and blobs came from (None: a layout)
    mirror_of: str | None = None  # the registry host, when ``served_by`` is a mirror of it

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "digest": self.digest, "dest": self.dest,
            "files": [f.to_json() for f in self.files], "bytes": self.bytes,
            "bytes_fetched": self.bytes_fetched, "seconds": round(self.seconds, 3),
            "layers_fetched": self.layers_fetched, "layers_skipped": self.layers_skipped,
            "warnings": list(self.warnings), "served_by": self.served_by, "mirror_of": self.mirror_of,
        }


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`~modelimage.pull.verify` found: paths relative to DEST
    that are missing, extra (not from the image) or changed; ``ok`` if none."""

    source: str
    digest: str
    dest: str
    checked: int  # files expected
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "digest": self.digest, "dest": self.dest, "ok": self.ok,
                "checked": self.checked, "missing": list(self.missing), "extra": list(self.extra),
                "changed": list(self.changed)}
