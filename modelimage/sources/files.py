"""What every source lists: the files of a model (:class:`SourceFile`),
a folder that is not on a local disk (:class:`RemoteFolder`), and the one
include/exclude glob rule (:func:`selected`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..content import Source, is_remote
from ..formats import WEIGHT_SUFFIXES


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of the model: ``name`` is its POSIX path in the model root,
    ``path`` where its bytes are (a local file, or a remote object)."""

    name: str
    path: Source
    size: int
    mtime_ns: int = 0

    @property
    def stamp(self) -> tuple[int, int | str]:
        """(size, mtime in ns) of a local file; (size, ETag) of a remote object."""
        return self.path.stamp if is_remote(self.path) else (self.size, self.mtime_ns)

    @property
    def format(self) -> str | None:
        base = self.name.rpartition("/")[2]  # string ops, not PurePosixPath: asked for every file, often
        dot = base.rfind(".")
        return WEIGHT_SUFFIXES.get(base[dot:].lower()) if dot > 0 else None

    @property
    def is_weights(self) -> bool:
        return self.format is not None

    @property
    def directory(self) -> str:
        return self.name.rpartition("/")[0]


class RemoteFolder(Protocol):
    """A model folder that is not on a local disk (``s3://bucket/prefix``):
    it lists its files; their ``path`` is a remote object that reads by range."""

    @property
    def name(self) -> str: ...

    def list_files(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[SourceFile]: ...


def _glob_match(rel: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    if "/" in pattern:
        return fnmatchcase(rel, pattern)
    return fnmatchcase(rel.rsplit("/", 1)[-1], pattern)


def selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Globs without ``/`` match the file name anywhere, others the whole
    path. Include first (default: everything), then exclude."""
    if include and not any(_glob_match(rel, p) for p in include):
        return False
    return not any(_glob_match(rel, p) for p in exclude)
