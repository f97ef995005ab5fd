"""A model in a local folder (or one weight file): its files, listed with
the rules a Hugging Face cache needs.

Hidden entries (``.git``, ``.cache``, ``.gitattributes``) are skipped and
the include/exclude globs applied (:func:`~.files.selected`). Symlinks are
followed (a Hugging Face cache snapshot is made of them) when they resolve
inside the folder, or inside the cached repository for a snapshot
(``models--ORG--NAME/snapshots/REV`` links into ``../../blobs``); the
file's content is stored, never the link. Links that lead outside, devices,
fifos, sockets and names that are not UTF-8 are refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..errors import SourceError
from .files import SourceFile, selected


def list_files(root: Path, include: Sequence[str] = (), exclude: Sequence[str] = (), *,
               links_within: Path | None = None) -> list[SourceFile]:
    """Regular files under ``root`` (sorted), hidden entries (``.git``,
    ``.cache``, ``.gitattributes``) skipped, include/exclude globs applied.

    Symlinks are followed (the Hugging Face cache is made of them) when they
    resolve inside ``links_within`` (default: ``root``); the file's content
    is stored, never the link. Links that lead outside, devices, fifos,
    sockets and names that are not UTF-8 are refused.
    """
    if not root.exists():
        raise SourceError(f"{root}: no such file or directory")
    if root.is_file():
        s = root.stat()
        _check_name(root, root.name)
        return [SourceFile(root.name, root.resolve(), s.st_size, s.st_mtime_ns)]
    if not root.is_dir():
        raise SourceError(f"{root}: not a regular file or directory")
    fence = (links_within or hf_cache_repo(root) or root).resolve()
    fence_s = str(fence)
    base = os.fspath(root)
    out: list[SourceFile] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a link loop: do not walk it twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        # a folder whose real path is inside the fence holds only files inside it,
        # but for links: those alone need resolving (one lstat a file, not one a path part)
        fenced = real == fence_s or real.startswith(fence_s + os.sep)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if not fenced or os.path.islink(os.path.join(dirpath, d)):
                _check_link(Path(dirpath) / d, fence)
            keep.append(d)
        dirnames[:] = keep
        prefix = os.path.relpath(dirpath, base).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for fn in filenames:
            if fn.startswith("."):
                continue
            path = os.path.join(dirpath, fn)
            rel = prefix + fn
            _check_name(path, rel)
            if not selected(rel, include, exclude):
                continue
            try:
                s = os.lstat(path)
                if stat.S_ISLNK(s.st_mode) or not fenced:
                    _check_link(Path(path), fence)
                    s = os.stat(path)
            except OSError as e:
                raise SourceError(f"{path}: cannot read: {e.strerror or e}") from e
            if not stat.S_ISREG(s.st_mode):
                raise SourceError(f"{path}: not a regular file (device, fifo or socket)")
            out.append(SourceFile(rel, Path(os.path.abspath(path)), s.st_size, s.st_mtime_ns))
    out.sort(key=lambda f: f.name)
    if not out:
        raise SourceError(f"{root}: no files to pack" + (" (after include/exclude)" if include or exclude else ""))
    return out


def hf_cache_repo(root: Path) -> Path | None:
    """``.../models--ORG--NAME`` when ``root`` is a Hugging Face cache
    snapshot (``.../models--ORG--NAME/snapshots/REV``), whose files are
    symlinks into ``../../blobs``: links may lead anywhere inside the repo."""
    r = root.absolute()
    if r.parent.name == "snapshots" and r.parent.parent.name.startswith(("models--", "datasets--")):
        return r.parent.parent
    return None


def _check_name(p: Path | str, rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError(f"{os.fsencode(p)!r}: file names must be UTF-8 (image layers store UTF-8 paths)") from None


def _check_link(p: Path, fence: Path) -> None:
    """Refuse ``p`` when it resolves outside ``fence`` (through a symlink of
    its own or of a folder above it)."""
    target = p.resolve()
    if target != fence and fence not in target.parents:
        raise SourceError(f"{p}: symlink leads outside the model folder (to {target}); copy the file in instead")
