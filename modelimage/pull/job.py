"""A pull, from a resolved image to files in DEST.

:class:`PullJob` locks DEST, reads its ownership record, plans what to
fetch (:mod:`.schedule`) and checks, before anything is fetched, that no
file the layers list would replace one modelimage did not write. :meth:`run`
fetches and stages several layers at once (:mod:`.stage`; nothing in DEST
changes while a blob is checked) and applies them one by one in manifest
order (:mod:`.apply`). Once the image is in, what an earlier pull of another
image wrote and this one does not hold is removed, the record is saved and
the staging folder ``DEST/.modelimage-pull/`` is removed: after a
successful pull DEST holds the image's files, the files modelimage did not
write, and ``DEST/.modelimage-pull.json``.

Staging lives inside DEST (same filesystem, so a staged file is renamed
into place; DEST is known to be writable; DEST may be a mount point whose
parent is neither) and only while a pull runs or waits to be resumed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ..errors import ModelImageError, PullError
from ..image import Chooser, Image, open_image
from ..registry.fetch import DEFAULT_RETRIES, FetchStats
from ..registry.keychain import Credentials
from ..units import format_size
from .apply import DestWriter
from .extract import Entry, StagedLayer
from .layers import classify, glob_match, subtree
from .result import PulledFile, PullResult
from .resume import Journals, load_journals
from .schedule import Task, plan_resume, plan_tasks
from .stage import LayerStager, Stopped
from .state import STAGING, Record

DEFAULT_CONCURRENCY = 3  # blobs at once; each also over image.default_connections(host) connections


class NothingWritten(PullError):
    """The image holds files, but none under the selection: DEST was left as it was."""


class PullJob:
    """A pull, planned: what is fetched (``total_bytes``) and what is skipped.
    :meth:`run` does it. Use :func:`prepare_pull` (or :func:`~modelimage.pull.pull`).

    Raises :class:`~modelimage.errors.PullError` when DEST cannot be written,
    another pull holds it, or too little space is free there, and
    :class:`~modelimage.errors.PullConflict` when a listed file would replace
    one modelimage did not write (unless ``overwrite``)."""

    def __init__(self, image: Image, dest: Path, *, path: str | None, include: Sequence[str],
                 concurrency: int, stats: FetchStats, overwrite: bool = False):
        self.image, self.stats = image, stats
        self.include = tuple(include)
        self.concurrency = max(1, concurrency)
        self.overwrite = overwrite
        self.dest, self._created, self._lock_fd = lock_dest(dest)
        try:
            self._plan(image, path)
        except OSError as e:
            self.close(failed=True)
            raise PullError(describe(e, "reading DEST")) from None
        except BaseException:
            self.close(failed=True)
            raise

    def _plan(self, image: Image, path: str | None) -> None:
        self.prefix = subtree(path, image)
        self.layers = classify(image)
        self.staging = Path(self.dest) / STAGING
        if self.staging.is_symlink() or (self.staging.exists() and not self.staging.is_dir()):
            raise PullError(f"{self.staging}: not the staging folder modelimage makes (a symlink or a file is "
                            "there); move it away")
        found = load_journals(self.staging, {la.desc.hex for la in self.layers}) if self.staging.is_dir() else {}
        self.record = Record(self.dest, image.digest, {"path": self.prefix, "include": sorted(self.include)})
        self.record.drop_stale_temps()  # a run killed while saving the record
        self.schedule = plan_tasks(self.layers, prefix=self.prefix, include=self.include,
                                   ours=image.target is not None, whole_image=path is not None,
                                   target=image.target, config=image.config)
        plan_resume(self.schedule, self.record)
        self.warnings = self.schedule.warnings
        self.writer = DestWriter(self.dest, self.record, str(self.staging), overwrite=self.overwrite)
        listed = [Entry("file", rel, rel, size=f.size, sha256=f.sha256)
                  for t in self.schedule.tasks for rel, f in t.files.items()]
        blocked, _ = self.writer.owned.conflicts(listed, image.name)
        if blocked and not self.overwrite:
            self.writer.owned.refuse(blocked, image.name)  # before anything is fetched
        self.journals = Journals(self.staging, found, self.warnings)
        self.stager = LayerStager(image, self.staging, self.journals, self.warnings)
        self.total_bytes = sum(self._fetch_size(t) for t in self.schedule.tasks)
        self._check_space(listed)

    def _fetch_size(self, t: Task) -> int:
        if t.layer.kind == "raw":
            try:
                have = self.stager.partial(t.layer).stat().st_size
            except OSError:
                have = 0
            return t.layer.desc.size - have if have <= t.layer.desc.size else t.layer.desc.size
        return t.layer.desc.size - self.journals.prefix_bytes(t)

    def _check_space(self, listed: list[Entry]) -> None:
        """Fail before fetching when the listed files cannot fit."""
        need = sum(e.size for e in listed)
        if self.staging.is_dir():
            need -= sum(p.stat().st_size for p in self.staging.iterdir() if p.is_file())
        st = os.statvfs(self.dest)
        free = st.f_bavail * st.f_frsize
        if st.f_blocks and need > free:
            raise PullError(f"{self.dest}: the files to pull need {format_size(need)}, and {format_size(free)} "
                            "is free there; free some space (or pull fewer files with --include)")

    # ------------------------------------------------------------ running

    def run(self, progress: Callable[[int], None] | None = None) -> PullResult:
        """Fetch, check and apply every planned layer; ``progress`` receives
        byte counts as blobs arrive. Raises PullError (a digest, a full disk,
        a path in the way: one line naming the path, saying what is kept
        for the next run), UnsafeLayer, BadLayer or a registry error."""
        started = time.perf_counter()
        tasks = self.schedule.tasks
        applied = 0
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pull")
        futures: list[Future[StagedLayer]] = []
        try:
            if tasks:
                self.staging.mkdir(exist_ok=True)
            futures = [pool.submit(self.stager.stage, t, progress) for t in tasks]
            for t, fut in zip(tasks, futures):
                staged = fut.result()
                self.writer.apply(staged)
                self.journals.path(t.layer).unlink(missing_ok=True)
                applied += 1
            self._finish()
        except BaseException as e:
            self.stager.abort.set()  # the other layers stop at their next chunk
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True)
            if isinstance(e, Stopped):  # say what failed, not what stopped because of it
                e = next((x for f in futures if not f.cancelled() and (x := f.exception()) is not None
                          and not isinstance(x, Stopped)), e)
            kept = self._keep_verified(tasks, futures, applied)
            self._save_quietly()
            if isinstance(e, OSError):
                note = self._kept_note(applied, len(tasks), kept)
                raise PullError(describe(e, "writing DEST", self.dest) + note) from None
            if (isinstance(e, ModelImageError) and applied and len(e.args) == 1 and isinstance(e.args[0], str)
                    and not isinstance(e, NothingWritten)):
                e.args = (e.args[0] + self._kept_note(applied, len(tasks), kept),)
            self.close(failed=True)
            raise e from None
        finally:
            pool.shutdown(wait=True)
            self.close()
        files = tuple(PulledFile(rel, int(e.get("size") or 0), e.get("sha256"))
                      for rel, e in self.record.image_files()
                      if not self.include or any(glob_match(rel, p) for p in self.include))
        return PullResult(self.image.name, self.image.digest, self.dest, files, self.stats.bytes,
                          time.perf_counter() - started, applied, self.schedule.skipped, tuple(self.warnings),
                          self.image.served_by,
                          self.image.host if self.image.served_by != self.image.host else None)

    def _finish(self) -> None:
        """The image is in: refuse a pull that selected nothing, remove what
        an earlier pull of another image wrote, save the record, drop staging."""
        selected = any(t.files for t in self.schedule.tasks) or any(
            e.kind in ("file", "symlink", "link") for s in self._staged for e in s.entries)
        if not selected and not any(e.get("kind") in ("file", "symlink") and not e.get("old")
                                    for e in self.record.entries.values()):
            self._nothing_written()
        self.writer.owned.remove_old()
        if self.record.entries:
            self.record.save()
        else:
            self.record.remove()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _nothing_written(self) -> None:
        seen = sum(s.files_seen for s in self._staged)
        if not (self.schedule.listed_files or seen or self.schedule.skipped):
            return  # an image without files
        where = f"/{self.prefix}" if self.prefix else "/"
        what = f"no file under {where} matches --include {' '.join(self.include)}" if self.include else \
            f"its layers hold nothing under {where}"
        elsewhere = sorted({d for s in self._staged for d in s.elsewhere})
        hint = f" (they hold files under {', '.join('/' + d for d in elsewhere[:4])}: pick one with --path)" \
            if elsewhere else ""
        shutil.rmtree(self.staging, ignore_errors=True)
        raise NothingWritten(f"{self.image.name}: the pull wrote no file: {what}{hint}; DEST was left as it was")

    @property
    def _staged(self) -> list[StagedLayer]:
        return self.stager.staged

    def _keep_verified(self, tasks: list[Task], futures: list[Future[StagedLayer]], applied: int) -> int:
        """After a failure: keep what was verified but not applied (for the
        next run), drop the rest. Returns the bytes kept in staging."""
        for t, f in list(zip(tasks, futures))[applied:]:
            if f.cancelled() or not f.done() or f.exception() is not None:
                continue
            self.journals.keep_whole(t, f.result())
        try:
            kept = sum(p.stat().st_size for p in self.staging.iterdir() if p.is_file())
        except OSError:
            return 0
        if not kept:
            shutil.rmtree(self.staging, ignore_errors=True)
        return kept

    def _kept_note(self, applied: int, total: int, kept: int) -> str:
        note = f"; {applied} of {total} layers are in DEST (recorded)" if applied else ""
        if kept:
            note += f"; {format_size(kept)} fetched is kept in {self.staging} for the next run (hashed again then)"
        return note

    def _save_quietly(self) -> None:
        try:
            if self.record.changed and self.record.entries:
                self.record.save()
        except OSError:
            pass  # the error being raised says what went wrong; the intent saved before each layer stands

    def close(self, failed: bool = False) -> None:
        """Unlock DEST; after a failure, remove DEST again if this pull made it and it is empty."""
        if self._lock_fd >= 0:
            unlock_dest(self.dest, self._lock_fd, remove=self._created if failed else ())
            self._lock_fd = -1
        self.image.close()


def lock_dest(dest: Path) -> tuple[str, tuple[str, ...], int]:
    """Make DEST (and its parents) if needed and take its lock (``flock`` on
    the folder itself, so two pulls never write one DEST). Returns (DEST's
    real path, the folders this call made, outermost first, the locked
    descriptor). Raises
    :class:`PullError` for DEST ``/``, an unwritable DEST, or one another
    pull holds."""
    if os.path.realpath(dest) == "/":
        raise PullError(f"{dest}: is the file system's root; pull into a folder of its own (e.g. /models/NAME)")
    missing, up = [], Path(os.path.abspath(dest))
    while not os.path.lexists(up) and up != up.parent:  # removed again if a failed pull leaves them empty
        missing.append(up)
        up = up.parent
    try:
        dest.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(dest)
        created = tuple(os.path.realpath(p) for p in reversed(missing))
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PullError(f"{dest}: cannot write there ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise PullError(f"{dest}: another pull is writing there right now") from None
    return real, created, fd


def unlock_dest(dest: str, fd: int, *, remove: Sequence[str] = ()) -> None:
    """Release :func:`lock_dest`'s lock; ``remove``: the folders it made
    (outermost first), removed from the innermost while nothing is in them
    (a failed pull into a DEST it made, parents included)."""
    for folder in reversed(remove):
        try:
            os.rmdir(folder)
        except OSError:
            break  # it holds something: a partial pull to resume
    os.close(fd)


def describe(e: OSError, doing: str, dest: str = ".") -> str:
    """One line for an OSError: the path, what went wrong, what was needed."""
    path = e.filename or "DEST"
    doing = getattr(e, "pull_doing", doing)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            st = os.statvfs(dest)
            free = f"; {format_size(st.f_bavail * st.f_frsize)} free there"
        except OSError:
            free = ""
        return f"{path}: no space left on the device while {doing}{free}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{path}: permission denied while {doing} (the pull needs write permission there)"
    if e.errno == errno.EROFS:
        return f"{path}: read-only file system (the pull needs to write there)"
    return f"{path}: {e.strerror or e} while {doing}"


def prepare_pull(source: str, dest: str | os.PathLike, *, path: str | None = None, include: Sequence[str] = (),
                 platform: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 connections: int | None = None, retries: int = DEFAULT_RETRIES,
                 insecure: frozenset[str] | set[str] = frozenset(),
                 credentials: Credentials | None = None, overwrite: bool = False,
                 choose: Chooser | None = None) -> PullJob:
    """Resolve ``source``, read DEST's record and plan the pull (no layer is
    fetched yet); see :func:`modelimage.pull.pull` for the arguments."""
    stats = FetchStats()
    image = open_image(source, platform=platform, insecure=frozenset(insecure), credentials=credentials,
                       connections=connections, retries=retries, stats=stats, choose=choose)
    try:
        return PullJob(image, Path(dest), path=path, include=include, concurrency=concurrency, stats=stats,
                       overwrite=overwrite)
    except BaseException:
        image.close()
        raise
