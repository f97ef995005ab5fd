"""What a pull leaves for the next run: resume state and tar journals.

``DEST/.modelimage-pull/state.json`` (:class:`State`) holds the manifest
pulled, the selection, the layers applied in order, and each file written
with its size, sha256 and stat signature (:func:`signature`): a second run
skips files whose signature still matches. ``partial/<hex>.tarjournal``
(:func:`save_journal`, :func:`read_journal`) describes the prefix of a plain
tar layer a cut pull consumed, so the next run hashes it again from disk
(:func:`hash_prefix`) and continues with a ``Range`` request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATE_VERSION = 1
JOURNAL_VERSION = 1
READ_CHUNK = 8 << 20


def signature(st: os.stat_result) -> tuple[int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode): unchanged as long as nobody touched the file."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class State:
    """``DEST/.modelimage-pull/state.json``: what earlier runs applied and wrote."""

    def __init__(self, root: Path, digest: str, selection: dict[str, Any]):
        self.path = root / "state.json"
        self.lock = threading.Lock()
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.matches = (data.get("version") == STATE_VERSION and data.get("manifest") == digest
                        and data.get("selection") == selection)
        self.files: dict[str, dict[str, Any]] = dict(data.get("files") or {}) if isinstance(data, dict) else {}
        self.applied: list[str] = list(data.get("applied") or []) if self.matches else []
        self.digest, self.selection = digest, selection

    def file_ok(self, rel: str, sha256: str | None, dest: str) -> bool:
        """Whether ``rel`` is as recorded (same sha256 if given, same stat signature)."""
        rec = self.files.get(rel)
        if not rec or (sha256 is not None and rec.get("sha256") != sha256):
            return False
        try:
            return list(signature(os.lstat(os.path.join(dest, rel)))) == rec.get("stat")
        except OSError:
            return False

    def record(self, rel: str, size: int, sha256: str | None, stat: Sequence[int]) -> None:
        with self.lock:
            self.files[rel] = {"size": size, "sha256": sha256, "stat": list(stat)}

    def forget(self, rel: str) -> None:
        """``rel`` and everything below it is gone (``""``: everything)."""
        with self.lock:
            for key in [k for k in self.files if k == rel or not rel or k.startswith(rel + "/")]:
                del self.files[key]

    def save(self) -> None:
        with self.lock:
            data = {"version": STATE_VERSION, "manifest": self.digest, "selection": self.selection,
                    "applied": self.applied, "files": self.files}
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, separators=(",", ":"), sort_keys=True)
            os.replace(tmp, self.path)


# ---------------------------------------------------------------- journals


def read_journal(path: Path) -> dict | None:
    """A ``.tarjournal`` read back, or None if it is not one this version wrote."""
    try:
        data = json.loads(path.read_text())
        ok = (data.get("version") == JOURNAL_VERSION and isinstance(data.get("pos"), int)
              and isinstance(data.get("segments"), list) and isinstance(data.get("wanted"), list)
              and all(seg[0] == "meta" or (seg[0] == "file" and isinstance(seg[1], dict)
                                           and plain_name(seg[1].get("temp"))) for seg in data["segments"]))
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return data if ok else None


def save_journal(path: Path, digest: str, wanted: Sequence[str], pos: int, segments: Sequence[list]) -> None:
    """Write a ``.tarjournal`` (header bytes base64, staged files by name)."""
    encoded = [["meta", base64.b64encode(seg[1]).decode()] if seg[0] == "meta" else seg for seg in segments]
    data = {"version": JOURNAL_VERSION, "digest": digest, "wanted": sorted(wanted), "pos": pos,
            "segments": encoded}
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def plain_name(name: object) -> bool:
    """A staged file's name: no folder, no way out of the staging folder."""
    return isinstance(name, str) and name.endswith(".tmp") and "/" not in name and name not in (".", "..")


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
            buf = bytearray(READ_CHUNK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def load_journals(staging: Path, layer_hexes: set[str]) -> dict[str, dict]:
    """The journals in ``staging`` that belong to one of these layers (hex
    digest -> journal, read back); others are removed, and so are staged
    files no journal names."""
    journals: dict[str, dict] = {}
    for j in staging.glob("*.tarjournal"):
        data = read_journal(j)
        if data is not None and j.stem in layer_hexes:
            journals[j.stem] = data
        else:
            j.unlink(missing_ok=True)
    needed = {seg[1]["temp"] for data in journals.values() for seg in data["segments"] if seg[0] == "file"}
    for stale in staging.glob("*.tmp"):
        if stale.name not in needed:
            stale.unlink(missing_ok=True)
    return journals
