"""One layer fetched, checked against its digest and staged, nothing in DEST touched.

A tar layer streams through :class:`~modelimage.pull.extract.TarStager`
into the staging folder; a plain tar that lists its files keeps a journal,
so a cut can be taken up with a ``Range`` request (:meth:`LayerStager.take_up`).
A raw layer (the blob is one file) is written to ``<digest>.partial`` and
continued from its end. Either way the result is a
:class:`~modelimage.pull.extract.StagedLayer` that :mod:`.apply` applies.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import BadLayer, PullError, UnsafeLayer
from ..image import Image
from .extract import RESERVED, Entry, StagedLayer, TarStager
from .layers import Layer
from .schedule import Task
from .state import hash_prefix, save_journal
from .stream import Journal, Stream, decompressed


class LayerStager:
    """Fetches and stages tasks into ``staging`` (a realpath folder).
    ``journals``: cut tar layers' journals read back (layer hex -> journal),
    taken up once each; ``warnings`` collects one-line notes."""

    def __init__(self, image: Image, staging: Path, journals: dict[str, dict], warnings: list[str]):
        self.image, self.staging = image, staging
        self.journals = journals
        self.warnings = warnings
        self.abort = threading.Event()  # set: the other layers stop at their next chunk
        self.staged: list[StagedLayer] = []  # every layer staged so far (what they held, for messages)

    def partial(self, layer: Layer) -> Path:
        return self.staging / f"{layer.desc.hex}.partial"

    def journal_path(self, layer: Layer) -> Path:
        return self.staging / f"{layer.desc.hex}.tarjournal"

    def stage(self, t: Task, progress: Callable[[int], None] | None) -> StagedLayer:
        """Fetch one layer, stage it and check its digest. Raises
        :class:`~modelimage.errors.PullError` (digest), BadLayer, UnsafeLayer,
        OSError (staging) or a registry error; nothing staged stays then,
        except what a journal or a partial raw blob keeps for the next run."""
        if self.abort.is_set():
            raise PullError(f"{t.layer.label}: not fetched, another layer failed")
        try:
            staged = self._stage_raw(t, progress) if t.layer.kind == "raw" else self._stage_tar(t, progress)
        except BaseException:
            self.abort.set()  # no other layer starts, the running ones stop at their next chunk
            raise
        self.staged.append(staged)
        return staged

    def keep(self, t: Task, staged: StagedLayer) -> bool:
        """A verified layer that was not applied: keep what it staged for the
        next run (a raw layer's complete partial blob, a plain tar's staged
        files with a journal of the whole blob). False: it was discarded."""
        if t.layer.kind == "raw":
            return True
        j = staged.journal
        if j is not None and j.valid and j.pos == t.layer.desc.size:
            try:
                self._save_journal(t, j)
                return True
            except OSError:
                self.journal_path(t.layer).unlink(missing_ok=True)
        staged.discard()
        return False

    def _counted(self, layer: Layer, start: int, h: Any, progress: Callable[[int], None] | None,
                 seen: list[int]) -> Iterator[memoryview]:
        blob = self.image.read(layer.desc, start)
        try:
            for view in blob:
                if self.abort.is_set():
                    raise PullError(f"{layer.label}: stopped, another layer failed")
                h.update(view)
                seen[0] += len(view)
                if progress is not None:
                    progress(len(view))
                yield view
        finally:
            blob.close()  # type: ignore[attr-defined]

    def _check_digest(self, layer: Layer, h: Any, size: int, what: str) -> None:
        got = "sha256:" + h.hexdigest()
        if got != layer.desc.digest or size != layer.desc.size:
            raise PullError(f"{layer.label}: {what} does not match its digest ({size} bytes hashing to "
                            f"{got[:19]}); nothing of it was applied or kept, run again")

    def _stage_tar(self, t: Task, progress: Callable[[int], None] | None) -> StagedLayer:
        layer = t.layer
        keep = [False]  # on failure: leave the staged files and the journal for the next run
        writer = TarStager(str(self.staging), t.selection, layer.label, layer, ordered=not layer.known,
                           hash_files=not layer.known, known={rel: f.sha256 for rel, f in t.files.items()},
                           keep_staged=lambda: keep[0])
        h, seen = hashlib.sha256(), [0]
        journal = None
        if layer.known:
            journal, h = self.take_up(t) or (Journal(), h)
        start = journal.pos if journal is not None else 0

        def kind(k: str) -> None:
            if k != "none" and journal is not None:
                journal.valid = False  # offsets in a compressed blob cannot be taken up again

        chunks = self._counted(layer, start, h, progress, seen)
        staged = writer.staged
        staged.journal = journal
        # a journal continues a plain tar mid-way: no magic bytes to sniff there
        tar = chunks if start else decompressed(chunks, layer.desc.media_type, kind)
        complete = False
        try:
            stream = Stream(tar, start=start, journal=journal)
            if start:
                assert journal is not None
                writer.resume(journal, stream)
            if start < layer.desc.size:  # a journal of the whole blob: nothing is left to read
                writer.apply(stream)
                stream.drain()
            for _ in chunks:  # bytes after the compressed stream still count for the digest
                pass
            complete = True
            self._check_digest(layer, h, start + seen[0], "the blob")
            if layer.known:
                wrote = {e.rel for e in staged.entries if e.kind == "file"}
                lost = sorted(set(t.files) - wrote)
                if lost:
                    raise BadLayer(f"{layer.label}: lists {lost[0]} but does not hold it")
            self.journal_path(layer).unlink(missing_ok=True)
            return staged
        except BaseException as e:
            keep[0] = (journal is not None and journal.valid and journal.pos > 0 and not complete
                       and not isinstance(e, BadLayer | UnsafeLayer))
            if keep[0]:
                assert journal is not None
                keep[0] = self._keep_journal(t, journal)
            else:
                self.journal_path(layer).unlink(missing_ok=True)
            writer.abort()
            raise
        finally:
            tar.close()
            chunks.close()

    def _keep_journal(self, t: Task, journal: Journal) -> bool:
        """Save the journal of a cut layer. On a full disk, give back the
        last MiB of the staged file it was cut in (the journal then ends
        earlier) and try once more. False: nothing could be kept."""
        for attempt in range(2):
            try:
                self._save_journal(t, journal)
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
        self.journal_path(t.layer).unlink(missing_ok=True)
        return False

    def _save_journal(self, t: Task, journal: Journal) -> None:
        save_journal(self.journal_path(t.layer), t.layer.desc.digest, list(t.files), journal.pos, journal.segments)

    def take_up(self, t: Task) -> tuple[Journal, Any] | None:
        """The journal a cut pull of this layer left, and the blob's prefix
        hashed again from disk (header bytes from the journal, file bytes from
        the staged files); None (and nothing kept) if there is none or it does
        not match what is on disk."""
        data = self.journals.pop(t.layer.desc.hex, None) if self.journals is not None else None
        path = self.journal_path(t.layer)
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

    def _stage_raw(self, t: Task, progress: Callable[[int], None] | None) -> StagedLayer:
        layer = t.layer
        (rel,) = t.files
        if rel.split("/", 1)[0] in RESERVED:
            raise UnsafeLayer(f"{layer.label}: {rel!r} would overwrite the puller's own {rel.split('/', 1)[0]}")
        partial = self.partial(layer)
        h, seen = hashlib.sha256(), [0]
        have = 0
        if partial.is_file() and not partial.is_symlink():
            have = partial.stat().st_size
            if have > layer.desc.size:
                partial.unlink()
                have = 0
            elif have:
                with open(partial, "rb", buffering=0) as f:  # the prefix is hashed again, not trusted
                    hash_prefix(f.fileno(), have, h)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        chunks = self._counted(layer, have, h, progress, seen)
        try:
            os.lseek(fd, have, os.SEEK_SET)
            os.ftruncate(fd, have)
            for view in chunks:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        except BaseException as e:
            if isinstance(e, OSError):
                e.filename = e.filename or str(partial)
                e.pull_doing = f"staging {rel} ({layer.desc.size:,} bytes)"  # type: ignore[attr-defined]
            if os.fstat(fd).st_size == 0:
                partial.unlink()  # nothing to take up
            raise
        finally:
            os.close(fd)
            chunks.close()
        try:
            self._check_digest(layer, h, have + seen[0], rel)
        except PullError:
            partial.unlink(missing_ok=True)
            raise
        return StagedLayer(layer, [Entry("file", rel, rel, str(partial), layer.desc.size, layer.desc.digest, 0o644)],
                           files_seen=1)
