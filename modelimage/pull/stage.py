"""One layer fetched, checked against its digest and staged, nothing in DEST touched.

A tar layer streams through :class:`~modelimage.pull.extract.TarStager`
into the staging folder; a plain tar that lists its files keeps a journal,
so a cut can be taken up with a ``Range`` request (:mod:`.resume`).
A raw layer (the blob is one file) is written to ``<digest>.partial`` and
continued from its end. Either way the result is a
:class:`~modelimage.pull.extract.StagedLayer` that :mod:`.apply` applies.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..durable import Writeback
from ..errors import BadLayer, PullError, UnsafeLayer
from ..image import Image
from .extract import RESERVED, Entry, StagedLayer, TarStager
from .layers import Layer
from .resume import Journals
from .schedule import Task
from .state import hash_prefix
from .stream import Journal, Stream, decompressed


class Stopped(PullError):
    """A layer not fetched (or not to the end) because another one failed."""


class LayerStager:
    """Fetches and stages tasks into ``staging`` (a realpath folder);
    ``journals`` takes up what a cut pull left there; ``warnings`` collects
    one-line notes."""

    def __init__(self, image: Image, staging: Path, journals: Journals, warnings: list[str]):
        self.image, self.staging = image, staging
        self.journals = journals
        self.warnings = warnings
        self.abort = threading.Event()  # set: the other layers stop at their next chunk
        self.staged: list[StagedLayer] = []  # every layer staged so far (what they held, for messages)

    def partial(self, layer: Layer) -> Path:
        return self.staging / f"{layer.desc.hex}.partial"

    def stage(self, t: Task, progress: Callable[[int], None] | None) -> StagedLayer:
        """Fetch one layer, stage it and check its digest. Raises
        :class:`~modelimage.errors.PullError` (digest), BadLayer, UnsafeLayer,
        OSError (staging) or a registry error; nothing staged stays then,
        except what a journal or a partial raw blob keeps for the next run."""
        if self.abort.is_set():
            raise Stopped(f"{t.layer.label}: not fetched, another layer failed")
        try:
            staged = self._stage_raw(t, progress) if t.layer.kind == "raw" else self._stage_tar(t, progress)
        except BaseException:
            self.abort.set()  # no other layer starts, the running ones stop at their next chunk
            raise
        self.staged.append(staged)
        return staged

    def _counted(self, layer: Layer, start: int, h: Any, progress: Callable[[int], None] | None,
                 seen: list[int]) -> Iterator[memoryview]:
        blob = self.image.read(layer.desc, start)
        try:
            for view in blob:
                if self.abort.is_set():
                    raise Stopped(f"{layer.label}: stopped, another layer failed")
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
            journal, h = self.journals.take_up(t) or (Journal(), h)
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
            self.journals.path(layer).unlink(missing_ok=True)
            return staged
        except BaseException as e:
            keep[0] = (journal is not None and journal.valid and journal.pos > 0 and not complete
                       and not isinstance(e, BadLayer | UnsafeLayer))
            if keep[0]:
                assert journal is not None
                try:
                    writer.sync()  # the finished small files durable before a journal names them
                except OSError:
                    keep[0] = False
            if keep[0]:
                assert journal is not None
                keep[0] = self.journals.keep_cut(t, journal)
            else:
                self.journals.path(layer).unlink(missing_ok=True)
            writer.abort()
            raise
        finally:
            tar.close()
            chunks.close()

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
            flush = Writeback(fd, have)  # the disk writes while the rest streams: the fsync waits for the tail
            for view in chunks:
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    flush.wrote(n)
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
