"""What a pull owns in DEST and leaves for the next run.

- :class:`Record`, ``DEST/.modelimage-pull.json``: every path modelimage
  wrote into DEST (files, symlinks, the directories it created) with its
  size, sha256 and stat signature, the manifest they belong to, the
  selection, and the layers applied in order. It is the ownership record:
  paths not in it are never modified or removed; paths in it that the next
  image does not hold are removed once that image is in. It is also the
  resume state: a second run skips files whose signature still matches.
- The staging folder ``DEST/.modelimage-pull/`` (:data:`STAGING`), where
  a cut pull leaves what the next one takes up (:mod:`.resume`).

Every file here is written whole or not at all (:func:`modelimage.durable.write_durably`:
temporary file, fsync, rename, fsync of the folder); a write that fails
leaves the previous version and no temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..durable import write_durably

RECORD = ".modelimage-pull.json"  # the ownership record, at DEST's root
STAGING = ".modelimage-pull"  # the staging folder, at DEST's root while a pull runs or waits to resume
RECORD_VERSION = 2
READ_CHUNK = 8 << 20


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode): unchanged as long as nobody touched the file."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def fsync_files(paths: Sequence[str], folder: str) -> None:
    """Make the contents of ``paths`` (files written in ``folder``, closed
    without an fsync of their own) durable: one ``syncfs`` of ``folder``'s
    filesystem (Linux) when there are many, else one fsync each. A layer of
    100,000 small files took 4.7 ms a file with an fsync each (one journal
    commit each, docs/benchmarks.md); ``syncfs`` writes them in one pass.
    Raises OSError."""
    if len(paths) > SYNCFS_AFTER and _syncfs(folder):
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


SYNCFS_AFTER = 16  # files: past this many, one syncfs instead of an fsync each


def _syncfs(folder: str) -> bool:
    """syncfs(2) of the filesystem holding ``folder``; False where there is none."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return False
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), folder)
    finally:
        os.close(fd)
    return True


class Record:
    """``DEST/.modelimage-pull.json`` (see the module docstring).

    ``entries`` maps DEST-relative paths to ``{"kind": "file"|"symlink"|"dir",
    "size", "sha256", "stat", "link"}`` plus two flags: ``old`` (written for
    another manifest: removed once the new image is in, unless rewritten)
    and ``adopted`` (a file that was already in DEST with the image's bytes:
    counted as the image's, never modified or removed)."""

    def __init__(self, dest: str, manifest: str, selection: dict[str, Any]):
        self.dest = dest
        self.path = Path(dest) / RECORD
        self.manifest, self.selection = manifest, selection
        data = _load(self.path) or _load_v1(Path(dest) / STAGING / "state.json") or {}
        entries = data.get("entries")
        # only clean DEST-relative paths: a record edited by hand, or planted by someone who could
        # write DEST, never names anything outside DEST (or the puller's own files)
        self.entries: dict[str, dict[str, Any]] = {
            k: v for k, v in (entries.items() if isinstance(entries, dict) else ()) if isinstance(v, dict)
            and inside(k)}
        same_image = data.get("manifest") == manifest
        if not same_image:
            for e in self.entries.values():
                if not e.get("adopted"):
                    e["old"] = True
            self.entries = {k: e for k, e in self.entries.items() if not e.get("adopted")}
        self.matches = same_image and data.get("selection") == selection
        self.applied: list[str] = list(data.get("applied") or []) if self.matches else []
        self.changed = False  # something was recorded that DEST shows (put, intend, forget)

    # -- questions

    def owned(self, rel: str) -> bool:
        """Written by modelimage (for any image): may be replaced or removed."""
        e = self.entries.get(rel)
        return e is not None and not e.get("adopted")

    def current(self, rel: str) -> bool:
        """Put there by this image's layers (what its whiteouts may remove)."""
        e = self.entries.get(rel)
        return e is not None and not e.get("old") and not e.get("adopted")

    def current_under(self, rel: str) -> list[str]:
        """This image's paths at or below ``rel`` (``""``: all), deepest first."""
        inside = [k for k in self.entries if (not rel or k == rel or k.startswith(rel + "/")) and self.current(k)]
        return sorted(inside, key=lambda k: (-k.count("/"), k))

    def old(self) -> list[str]:
        """Paths written for another manifest and not rewritten, deepest first."""
        return sorted((k for k, e in self.entries.items() if e.get("old")), key=lambda k: (-k.count("/"), k))

    def image_files(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """This image's regular files (written or adopted), by path."""
        for rel in sorted(self.entries):
            e = self.entries[rel]
            if e.get("kind") == "file" and not e.get("old"):
                yield rel, e

    def file_ok(self, rel: str, sha256: str | None) -> bool:
        """Whether ``rel`` is as recorded (same sha256 if given, same stat signature)."""
        e = self.entries.get(rel)
        if not e or e.get("old") or (sha256 is not None and e.get("sha256") != sha256):
            return False
        try:
            return list(signature(os.lstat(os.path.join(self.dest, rel)))) == e.get("stat")
        except OSError:
            return False

    def intact(self) -> bool:
        """Every file and symlink of this image is as recorded."""
        return all(self.file_ok(rel, None) for rel, e in self.entries.items()
                   if e.get("kind") in ("file", "symlink") and not e.get("old"))

    # -- changes

    def put(self, rel: str, kind: str, *, size: int = 0, sha256: str | None = None, link: str | None = None,
            adopted: bool = False, stat: Sequence[int] | None = None) -> None:
        """``rel`` now holds what this image put there (or an adopted file)."""
        self.changed = True
        e: dict[str, Any] = {"kind": kind}
        if kind == "file":
            e["size"], e["sha256"] = size, sha256
        if link is not None:
            e["link"] = link
        if stat is None:
            try:
                stat = signature(os.lstat(os.path.join(self.dest, rel)))
            except OSError:
                stat = None
        if stat is not None:
            e["stat"] = list(stat)
        if adopted:
            e["adopted"] = True
        self.entries[rel] = e

    def intend(self, rel: str, kind: str) -> None:
        """``rel`` is about to be written: owned from now on, even if the
        run is cut before it is recorded properly."""
        self.changed = True
        if rel not in self.entries or self.entries[rel].get("adopted"):
            self.entries[rel] = {"kind": kind}
        else:
            self.entries[rel].pop("old", None)

    def forget(self, rel: str) -> None:
        self.changed = True
        self.entries.pop(rel, None)

    def drop_stale_temps(self) -> None:
        """Remove the temporary files a run killed while saving the record
        left beside it (``..modelimage-pull.json.*.new``: only :func:`write_durably`
        makes those). Call with DEST locked."""
        for p in Path(self.dest).glob(f".{RECORD}.*.new"):
            if p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)

    def save(self) -> None:
        """Write the record durably (see :func:`write_durably`)."""
        data = {"version": RECORD_VERSION, "manifest": self.manifest, "selection": self.selection,
                "applied": self.applied, "entries": self.entries}
        write_durably(self.path, json.dumps(data, separators=(",", ":"), sort_keys=True).encode())

    def remove(self) -> None:
        """No record (modelimage owns nothing in DEST)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def inside(rel: object) -> bool:
    """``rel`` is a clean path inside DEST (relative, no ``.``/``..``/empty
    parts, no NUL) and not the puller's own record or staging folder."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and parts[0] not in (RECORD, STAGING)


def _load(path: Path) -> dict[str, Any] | None:
    if path.is_symlink():
        return None  # not a record modelimage wrote (it writes a file, renamed into place)
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == RECORD_VERSION else None


def _load_v1(path: Path) -> dict[str, Any] | None:
    """The state an earlier version kept in ``DEST/.modelimage-pull/state.json``:
    its files are modelimage's too."""
    if path.is_symlink():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("files"), dict):
        return None
    entries = {rel: {"kind": "file", "size": f.get("size"), "sha256": f.get("sha256"), "stat": f.get("stat")}
               for rel, f in data["files"].items() if isinstance(f, dict)}
    return {"manifest": data.get("manifest"), "selection": data.get("selection"), "applied": data.get("applied"),
            "entries": entries}


# ---------------------------------------------------------------- hashing what is on disk


def hash_prefix(fd: int, n: int, h: Any) -> int:
    """Feed the first ``n`` bytes of the file ``fd`` to ``h`` (fewer if it
    ends sooner); the bytes hashed."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    at = 0
    while at < n:
        got = os.preadv(fd, [view[: min(len(buf), n - at)]], at)
        if not got:
            break
        h.update(view[:got])
        at += got
    return at


def hash_file(path: str) -> str | None:
    """``sha256:HEX`` of the file at ``path``, or None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb", buffering=0) as f:
            # no 8 MiB buffer (zeroed each time) for a small file: 20,000 of them took 13 s to verify
            buf = bytearray(min(READ_CHUNK, os.fstat(f.fileno()).st_size + 1))
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
    except OSError:
        return None
    return "sha256:" + h.hexdigest()
