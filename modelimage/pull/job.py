"""A pull, from a resolved image to files in DEST: lock DEST, plan what to
fetch (:mod:`.schedule`), run the groups of layers (several blobs at once
where layers list disjoint files; layers of unknown content alone, in
manifest order) through the :class:`~modelimage.pull.apply.Applier`, save
the state and report.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import PullError
from ..image import Image, open_image
from ..registry.fetch import DEFAULT_RETRIES, FetchStats
from ..registry.keychain import Credentials
from .apply import Applier
from .extract import RESERVED
from .layers import classify, subtree
from .result import PulledFile, PullResult
from .schedule import Task, plan_resume, plan_tasks
from .state import State, load_journals

DEFAULT_CONCURRENCY = 3  # blobs at once; each also over image.default_connections(host) connections


class PullJob:
    """A pull, planned: what is fetched (``total_bytes``) and what is skipped.
    :meth:`run` does it. Use :func:`prepare_pull` (or :func:`pull`).

    Raises :class:`~modelimage.errors.PullError` when DEST cannot be written
    or another pull holds it."""

    def __init__(self, image: Image, dest: Path, *, path: str | None, include: Sequence[str],
                 concurrency: int, stats: FetchStats):
        self.image, self.stats = image, stats
        self.include = tuple(include)
        self.concurrency = max(1, concurrency)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            self.dest = os.path.realpath(dest)
            self.root = Path(self.dest) / RESERVED
            self.staging = self.root / "partial"
            self.staging.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PullError(f"{dest}: cannot write there ({e.strerror or e})") from None
        self._lock_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise PullError(f"{dest}: another pull is writing there right now") from None
        try:
            self._plan(image, path)
        except BaseException:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise

    def _plan(self, image: Image, path: str | None) -> None:
        prefix = subtree(path, image)
        self.layers = classify(image)
        journals = load_journals(self.staging, {layer.desc.hex for layer in self.layers})
        self.state = State(self.root, image.digest, {"path": prefix, "include": sorted(self.include)})
        self.schedule = plan_tasks(self.layers, prefix=prefix, include=self.include, ours=image.target is not None,
                                   whole_image=path is not None, target=image.target)
        plan_resume(self.schedule, self.state, self.dest, prefix, self.include)
        self.warnings = self.schedule.warnings
        self.applier = Applier(image, self.dest, self.staging, self.state, journals, self.warnings)
        self.total_bytes = sum(self._fetch_size(t, journals) for g in self.schedule.groups for t in g)

    def _fetch_size(self, t: Task, journals: dict[str, dict]) -> int:
        if t.layer.kind == "raw":
            try:
                have = self.applier.partial(t.layer).stat().st_size
            except OSError:
                have = 0
            return t.layer.desc.size - have if have <= t.layer.desc.size else t.layer.desc.size
        journal = journals.get(t.layer.desc.hex)
        if journal is not None and journal["wanted"] == sorted(t.files):
            return t.layer.desc.size - journal["pos"]
        return t.layer.desc.size

    def run(self, progress: Callable[[int], None] | None = None) -> PullResult:
        """Fetch and apply every planned layer; ``progress`` receives byte
        counts as blobs arrive. Raises :class:`~modelimage.errors.PullError`,
        :class:`~modelimage.errors.UnsafeLayer`, :class:`~modelimage.errors.BadLayer`
        or a registry error; the state is saved either way."""
        started = time.perf_counter()
        fetched = 0
        try:
            for group in self.schedule.groups:
                self._run_group(group, progress)
                fetched += len(group)
            self._tidy()
        finally:
            self.state.save()
            self.close()
        files = tuple(PulledFile(rel, int(rec["size"]), rec.get("sha256"))
                      for rel, rec in sorted(self.state.files.items()))
        return PullResult(self.image.name, self.image.digest, self.dest, files, self.stats.bytes,
                          time.perf_counter() - started, fetched, self.schedule.skipped, tuple(self.warnings))

    def _run_group(self, group: list[Task], progress: Callable[[int], None] | None) -> None:
        workers = min(self.concurrency, len(group))
        if workers == 1:
            for t in group:
                self.applier.apply(t, progress)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
            futures = [pool.submit(self.applier.apply, t, progress) for t in group]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                self.applier.abort.set()  # the other layers stop at their next chunk
                for f in futures:
                    f.cancel()
                raise

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self.image.close()

    def _tidy(self) -> None:
        keep = {f"{layer.desc.hex}.partial" for layer in self.layers}
        for p in self.staging.iterdir():
            if p.name not in keep or p.suffix == ".tmp":
                p.unlink(missing_ok=True)


def prepare_pull(source: str, dest: str | os.PathLike, *, path: str | None = None, include: Sequence[str] = (),
                 platform: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 connections: int | None = None, retries: int = DEFAULT_RETRIES,
                 insecure: frozenset[str] | set[str] = frozenset(),
                 credentials: Credentials | None = None) -> PullJob:
    """Resolve ``source``, read DEST's state and plan the pull (no layer is
    fetched yet); see :func:`modelimage.pull.pull` for the arguments."""
    stats = FetchStats()
    image = open_image(source, platform=platform, insecure=frozenset(insecure), credentials=credentials,
                       connections=connections, retries=retries, stats=stats)
    try:
        return PullJob(image, Path(dest), path=path, include=include, concurrency=concurrency, stats=stats)
    except BaseException:
        image.close()
        raise
