"""Taking up a cut pull: tar journals and what they name in the staging folder.

A plain tar layer that lists its files and is cut mid-way (or verified but
not applied) leaves a ``<hex>.tarjournal`` in ``DEST/.modelimage-pull/``:
the header bytes it consumed and, between them, how many bytes of which
staged file (:class:`~modelimage.pull.stream.Journal`). The next run hashes
that prefix again from disk (:meth:`Journals.take_up`), so nothing is
trusted that is not checked against the layer's digest, and continues the
blob with a ``Range`` request. Raw layers need no journal: their
``<hex>.partial`` is the blob's prefix.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..durable import write_durably
from .extract import StagedLayer
from .layers import Layer
from .schedule import Task
from .state import hash_prefix
from .stream import Journal

JOURNAL_VERSION = 1


class Journals:
    """The journals in ``staging`` (read back by :func:`load_journals`: layer
    hex -> journal), taken up once each; ``warnings`` collects one-line notes."""

    def __init__(self, staging: Path, found: dict[str, dict], warnings: list[str]):
        self.staging, self.found, self.warnings = staging, found, warnings

    def path(self, layer: Layer) -> Path:
        return self.staging / f"{layer.desc.hex}.tarjournal"

    def prefix_bytes(self, t: Task) -> int:
        """How much of the layer's blob a journal already holds (0: none)."""
        journal = self.found.get(t.layer.desc.hex)
        return journal["pos"] if journal is not None and journal["wanted"] == sorted(t.files) else 0

    def take_up(self, t: Task) -> tuple[Journal, Any] | None:
        """The journal a cut pull of this layer left, and the blob's prefix
        hashed again from disk (header bytes from the journal, file bytes from
        the staged files); None (and nothing kept) if there is none or it does
        not match what is on disk."""
        data = self.found.pop(t.layer.desc.hex, None)
        path = self.path(t.layer)
        if data is None or data["digest"] != t.layer.desc.digest or data["wanted"] != sorted(t.files):
            path.unlink(missing_ok=True)
            return None
        journal, h = Journal(), hashlib.sha256()
        try:
            for seg in data["segments"]:
                if seg[0] == "meta":
                    raw = base64.b64decode(seg[1], validate=True)
                    h.update(raw)
                    journal.meta(journal.pos, raw)
                    continue
                tag, n = seg[1], int(seg[2])
                staged = os.path.join(self.staging, tag["temp"])
                fd = os.open(staged, os.O_RDWR | os.O_NOFOLLOW)
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode) or st.st_size < n:
                        raise ValueError(f"{tag['temp']} is not what the journal says")
                    os.ftruncate(fd, n)
                    if hash_prefix(fd, n, h) != n:
                        raise ValueError("a staged file is shorter than the journal says")
                finally:
                    os.close(fd)
                journal.data(journal.pos, n, tag)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            self.warnings.append(f"{t.layer.label}: the cut pull's journal does not match the staged files ({e}); "
                                 "fetching the layer from its start")
            path.unlink(missing_ok=True)
            return None
        if journal.pos != data["pos"] or not journal.valid:
            path.unlink(missing_ok=True)
            return None
        return journal, h

    def keep_cut(self, t: Task, journal: Journal) -> bool:
        """Save the journal of a cut layer. On a full disk, give back the
        last MiB of the staged file it was cut in (the journal then ends
        earlier) and try once more. False: nothing could be kept."""
        for attempt in range(2):
            try:
                self.save(t, journal)
                return True
            except OSError as e:
                cut = journal.trim(1 << 20) if attempt == 0 and e.errno in (errno.ENOSPC, errno.EDQUOT) else None
                if cut is None:
                    break
                tag, n = cut
                try:
                    os.truncate(self.staging / tag["temp"], n)
                except OSError:
                    break
        self.path(t.layer).unlink(missing_ok=True)
        return False

    def keep_whole(self, t: Task, staged: StagedLayer) -> bool:
        """A verified layer that was not applied: keep what it staged for the
        next run (a raw layer's complete partial blob, a plain tar's staged
        files with a journal of the whole blob). False: it was discarded."""
        if t.layer.kind == "raw":
            return True
        j = staged.journal
        if j is not None and j.valid and j.pos == t.layer.desc.size:
            try:
                self.save(t, j)
                return True
            except OSError:
                self.path(t.layer).unlink(missing_ok=True)
        staged.discard()
        return False

    def save(self, t: Task, journal: Journal) -> None:
        save_journal(self.path(t.layer), t.layer.desc.digest, list(t.files), journal.pos, journal.segments)


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
    """Write a ``.tarjournal`` (header bytes base64, staged files by name), durably."""
    encoded = [["meta", base64.b64encode(seg[1]).decode()] if seg[0] == "meta" else seg for seg in segments]
    data = {"version": JOURNAL_VERSION, "digest": digest, "wanted": sorted(wanted), "pos": pos,
            "segments": encoded}
    write_durably(path, json.dumps(data).encode())


def plain_name(name: object) -> bool:
    """A staged file's name: no folder, no way out of the staging folder."""
    return isinstance(name, str) and name.endswith(".tmp") and "/" not in name and name not in (".", "..")


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
