"""Model files out of an image or model artifact, onto a disk: ``modelimage
pull`` and ``modelimage verify``.

What it reads: images modelimage builds (uncompressed tar layers that list
their files in ``dev.modelimage.files``), ModelPack and Docker Model Runner
artifacts (raw layers whose blob IS one file, named by
``org.cncf.model.filepath`` or ``org.opencontainers.image.title``; tar layers
such as Docker's ``vnd.docker.ai.vllm.config.tar``), and any image other
tools built (gzip, zstd or plain tar layers, whiteouts, a model on a base),
from a registry or an OCI layout (``oci:DIR[:TAG]``).

Where files land: for modelimage's images, the recorded target
(``dev.modelimage.target``, e.g. ``/models/llama``) becomes DEST; other
images' whole root filesystem does; ``path`` picks another subtree; a raw
layer lands at ``DEST/<filepath>``. In a modelimage image on a base, layers
that list no files are the base's and are not fetched (unless ``path`` is
given).

How: blobs are fetched several at a time (``concurrency``), big ones over
several connections with ranged GETs (:mod:`modelimage.registry.fetch`);
each blob's sha256 is checked as it streams; tar layers are extracted as
their bytes arrive (:mod:`modelimage.unpack`: staged inside DEST, renamed in
once the digest matched; nothing outside DEST, ever). Layers that list their
files and do not overlap go in parallel; as soon as a layer's content is
unknown (it lists no files: it may overwrite or white out what lies below),
it is applied alone, in manifest order.

Resuming: DEST/.modelimage-pull/ holds the puller's state (``state.json``:
the manifest pulled, the selection, layers applied in order, and each file
written with its size, sha256 and stat signature) and a ``partial/`` folder
(staged files; a raw blob cut mid-way is kept as ``<digest>.partial`` and
continued with a ``Range`` request after its prefix is hashed again; a
plain tar layer that lists its files, cut mid-way, keeps its staged files
and a ``<digest>.tarjournal`` of the header bytes between them, so it too is
hashed again from disk and continued with a ``Range`` request). A
second run skips files whose signature still matches what was recorded, or,
without a record, whose sha256 matches the layer's file list; layers of
unknown content are skipped when every layer before them was and nothing they
wrote has changed since. Delete the folder to start afresh; ``verify``
ignores it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelImageError
from .image import ANNOTATION_TARGET, Image, open_image
from .oci import ANNOTATION_FILES, ANNOTATION_TITLE, Descriptor
from .registry.auth import Credentials
from .registry.fetch import DEFAULT_RETRIES, FetchStats
from .unpack import (
    RESERVED,
    BadLayer,
    Journal,
    LayerWriter,
    Node,
    Selection,
    Stream,
    TreeModel,
    UnsafeLayer,
    decompressed,
    dest_files,
    glob_match,
    normalize,
    paths_overlap,
    signature,
)

ANNOTATION_FILEPATH = "org.cncf.model.filepath"  # ModelPack (modelpack/model-spec annotations.go)
DEFAULT_CONCURRENCY = 3  # blobs at once; each also over image.default_connections(host) connections
STATE_VERSION = 1
JOURNAL_VERSION = 1
READ_CHUNK = 8 << 20

__all__ = ["PullError", "PullResult", "PulledFile", "VerifyResult", "pull", "prepare_pull", "verify",
           "UnsafeLayer", "BadLayer", "VerifyFailed"]


class PullError(ModelImageError):
    """A pull that cannot go on: a blob that does not match its digest, a
    destination that cannot be written, a source that is not an image."""


class VerifyFailed(ModelImageError):
    """``verify`` found missing, extra or changed files."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class PulledFile:
    path: str  # relative to DEST
    size: int
    sha256: str | None  # None only for files of unlisted layers pulled before this version

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class PullResult:
    source: str
    digest: str  # the manifest's
    dest: str
    files: tuple[PulledFile, ...]
    bytes_fetched: int  # received over the network (or read from a layout), retries included
    seconds: float
    layers_fetched: int
    layers_skipped: int
    warnings: tuple[str, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "digest": self.digest, "dest": self.dest,
            "files": [f.to_json() for f in self.files], "bytes": self.bytes,
            "bytes_fetched": self.bytes_fetched, "seconds": round(self.seconds, 3),
            "layers_fetched": self.layers_fetched, "layers_skipped": self.layers_skipped,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class VerifyResult:
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


def _prefix(path: str | None, image: Image) -> str:
    """The subtree that becomes DEST: ``path``, else the recorded target, else the root."""
    if path is not None:
        return normalize(path.strip().strip("/"), f"--path {path!r}")
    if image.target is not None:
        return normalize(image.target.strip().strip("/"), f"{image.name}: {ANNOTATION_TARGET}")
    return ""


# ---------------------------------------------------------------- layers


@dataclass(frozen=True)
class _Listed:
    name: str  # root-relative
    size: int
    sha256: str


@dataclass(frozen=True)
class _Layer:
    index: int
    desc: Descriptor
    kind: str  # "tar" | "raw" | "other"
    listed: tuple[_Listed, ...] | None  # what the layer says it holds; None: unknown
    label: str

    @property
    def known(self) -> bool:
        return self.listed is not None


def is_tar(media_type: str) -> bool:
    """``...tar``, ``...tar+gzip``, ``...tar.gzip``, ``...tar+zstd``: the
    media type of a tar layer (image, ModelPack ``.tar``, Docker's config tar)."""
    tokens = media_type.replace("+", ".").split(".")
    return "tar" in tokens or media_type.endswith("/tar")


def _classify(i: int, d: Descriptor, source: str) -> _Layer:
    label = f"{source}: layer {i + 1} ({d.digest[:19]})"
    if is_tar(d.media_type):
        raw = d.annotations.get(ANNOTATION_FILES)
        listed = None
        if raw:
            try:
                listed = tuple(_Listed(normalize(str(f["path"]).lstrip("/"), label), int(f["size"]), str(f["sha256"]))
                               for f in json.loads(raw))
            except (ValueError, KeyError, TypeError):
                listed = None  # not ours after all: read the tar
        return _Layer(i, d, "tar", listed, label)
    title = d.annotations.get(ANNOTATION_FILEPATH) or d.annotations.get(ANNOTATION_TITLE)
    if title:
        return _Layer(i, d, "raw", (_Listed(normalize(title.lstrip("/"), label), d.size, d.digest),), label)
    return _Layer(i, d, "other", (), label)


# ---------------------------------------------------------------- state


class _State:
    """``DEST/.modelimage-pull/state.json`` (see the module docstring)."""

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


def _read_journal(path: Path) -> dict | None:
    """A ``.tarjournal`` read back, or None if it is not one this version wrote."""
    try:
        data = json.loads(path.read_text())
        ok = (data.get("version") == JOURNAL_VERSION and isinstance(data.get("pos"), int)
              and isinstance(data.get("segments"), list) and isinstance(data.get("wanted"), list)
              and all(seg[0] == "meta" or (seg[0] == "file" and isinstance(seg[1], dict)
                                           and _plain_name(seg[1].get("temp"))) for seg in data["segments"]))
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return data if ok else None


def _plain_name(name: object) -> bool:
    """A staged file's name: no folder, no way out of the staging folder."""
    return isinstance(name, str) and name.endswith(".tmp") and "/" not in name and name not in (".", "..")


def _hash_prefix(fd: int, n: int, h: Any) -> int:
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


def _hash_file(path: str) -> str | None:
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


# ---------------------------------------------------------------- the pull


@dataclass
class _Task:
    layer: _Layer
    selection: Selection
    files: dict[str, _Listed] = field(default_factory=dict)  # rel -> listing, for known layers


class PullJob:
    """A pull, planned: what is fetched (``total_bytes``) and what is skipped.
    :meth:`run` does it. Use :func:`prepare_pull` (or :func:`pull`)."""

    def __init__(self, image: Image, dest: Path, *, path: str | None, include: Sequence[str],
                 concurrency: int, stats: FetchStats):
        self.image, self.stats = image, stats
        self.include = tuple(include)
        self.concurrency = max(1, concurrency)
        self.warnings: list[str] = []
        self._abort = threading.Event()
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
        ours = image.target is not None
        prefix = _prefix(path, image)
        self.prefix = prefix
        self.layers = [_classify(i, d, image.name) for i, d in enumerate(image.layers)]
        self.journals: dict[str, dict] = {}  # layer hex -> its journal, read back
        for j in self.staging.glob("*.tarjournal"):
            data = _read_journal(j)
            if data is not None and any(layer.desc.hex == j.stem for layer in self.layers):
                self.journals[j.stem] = data
            else:
                j.unlink(missing_ok=True)
        needed = {seg[1]["temp"] for data in self.journals.values() for seg in data["segments"] if seg[0] == "file"}
        for stale in self.staging.glob("*.tmp"):
            if stale.name not in needed:
                stale.unlink(missing_ok=True)
        self.state = _State(self.root, image.digest, {"path": prefix, "include": sorted(self.include)})

        self.tasks: list[_Task] = []
        self.skipped = 0
        base = 0
        for layer in self.layers:
            if layer.kind == "other":
                self.warnings.append(f"layer {layer.index + 1} ({layer.desc.media_type}) is neither a tar "
                                     "nor a named file; left out")
                self.skipped += 1
                continue
            if not layer.known and ours and path is None and layer.kind == "tar":
                base += 1  # a base image's layer: the model is in the layers that list their files
                self.skipped += 1
                continue
            task = _Task(layer, Selection(prefix, self.include))
            if layer.known:
                for f in layer.listed or ():
                    rel = task.selection.relative(f.name)
                    if rel and task.selection.wants(rel):
                        task.files[rel] = f
                if not task.files:
                    self.skipped += 1
                    continue
                task.selection = Selection(prefix, self.include, frozenset(task.files))
            self.tasks.append(task)
        if base:
            self.warnings.append(f"{base} base-image layer{'s' if base > 1 else ''} left out "
                                 f"(the model is under {image.target}; --path / pulls everything)")

        known_paths = [rel for t in self.tasks for rel in t.files]
        self.ordered = (any(not t.layer.known for t in self.tasks) or paths_overlap(known_paths)
                        or any(rel.rsplit("/", 1)[-1].startswith(".wh.") for rel in known_paths))
        self.groups = self._groups(paths_overlap(known_paths))
        if not self.state.matches:
            self.state.applied = []
        self._plan_resume()
        self.total_bytes = sum(self._fetch_size(t) for g in self.groups for t in g)

    def _groups(self, overlap: bool) -> list[list[_Task]]:
        """Layers that may go at once: runs of layers that list disjoint files,
        cut by every layer of unknown content (applied alone, in order)."""
        groups: list[list[_Task]] = []
        run: list[_Task] = []
        for t in self.tasks:
            if t.layer.known and not overlap:
                run.append(t)
                continue
            if run:
                groups.append(run)
                run = []
            groups.append([t])
        if run:
            groups.append(run)
        return groups

    def _plan_resume(self) -> None:
        dest, state = self.dest, self.state
        if self.ordered:
            # layers apply in order: skip the ones a previous run applied, as
            # long as every file it wrote is unchanged and no earlier layer runs again
            intact = state.matches and all(state.file_ok(rel, None, dest) for rel in list(state.files))
            keep: list[list[_Task]] = []
            still = intact
            for group in self.groups:
                todo = [t for t in group if not (still and t.layer.desc.digest in state.applied)]
                if still and todo:
                    still = False
                self.skipped += len(group) - len(todo)
                if todo:
                    keep.append(todo)
            self.groups = keep
            if not intact:
                state.applied = []
                state.files = {}
            return
        # disjoint listed files: each file on its own, by its recorded signature or its sha256
        if not state.matches:
            state.files = {}
        keep = []
        for group in self.groups:
            todo = []
            for t in group:
                missing = {}
                for rel, f in t.files.items():
                    if state.file_ok(rel, f.sha256, dest):
                        continue
                    full = os.path.join(dest, rel)
                    if (os.path.isfile(full) and not os.path.islink(full) and os.path.getsize(full) == f.size
                            and _hash_file(full) == f.sha256):
                        state.record(rel, f.size, f.sha256, signature(os.lstat(full)))
                        continue
                    missing[rel] = f
                if not missing:
                    self.skipped += 1
                    continue
                t.files = missing
                t.selection = Selection(self.prefix, self.include, frozenset(missing))
                todo.append(t)
            if todo:
                keep.append(todo)
        self.groups = keep

    def _partial(self, layer: _Layer) -> Path:
        return self.staging / f"{layer.desc.hex}.partial"

    def _fetch_size(self, t: _Task) -> int:
        if t.layer.kind == "raw":
            try:
                have = self._partial(t.layer).stat().st_size
            except OSError:
                have = 0
            return t.layer.desc.size - have if have <= t.layer.desc.size else t.layer.desc.size
        journal = self.journals.get(t.layer.desc.hex)
        if journal is not None and journal["wanted"] == sorted(t.files):
            return t.layer.desc.size - journal["pos"]
        return t.layer.desc.size

    # ------------------------------------------------------------ running

    def run(self, progress: Callable[[int], None] | None = None) -> PullResult:
        started = time.perf_counter()
        fetched = 0
        try:
            for group in self.groups:
                workers = min(self.concurrency, len(group))
                if workers == 1:
                    for t in group:
                        self._apply(t, progress)
                else:
                    with ThreadPoolExecutor(workers, thread_name_prefix="pull") as pool:
                        futures = [pool.submit(self._apply, t, progress) for t in group]
                        try:
                            for f in futures:
                                f.result()
                        except BaseException:
                            self._abort.set()  # the other layers stop at their next chunk
                            for f in futures:
                                f.cancel()
                            raise
                fetched += len(group)
            self._tidy()
        finally:
            self.state.save()
            self.close()
        files = tuple(PulledFile(rel, int(rec["size"]), rec.get("sha256"))
                      for rel, rec in sorted(self.state.files.items()))
        return PullResult(self.image.name, self.image.digest, self.dest, files, self.stats.bytes,
                          time.perf_counter() - started, fetched, self.skipped, tuple(self.warnings))

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

    def _apply(self, t: _Task, progress: Callable[[int], None] | None) -> None:
        if t.layer.kind == "raw":
            self._apply_raw(t, progress)
        else:
            self._apply_tar(t, progress)
        with self.state.lock:
            self.state.applied.append(t.layer.desc.digest)
        self.state.save()

    def _counted(self, layer: _Layer, start: int, h: Any, progress: Callable[[int], None] | None,
                 seen: list[int]) -> Iterator[memoryview]:
        blob = self.image.read(layer.desc, start)
        try:
            for view in blob:
                if self._abort.is_set():
                    raise PullError(f"{layer.label}: stopped, another layer failed")
                h.update(view)
                seen[0] += len(view)
                if progress is not None:
                    progress(len(view))
                yield view
        finally:
            blob.close()  # type: ignore[attr-defined]

    def _check_digest(self, layer: _Layer, h: Any, size: int, what: str) -> None:
        got = "sha256:" + h.hexdigest()
        if got != layer.desc.digest or size != layer.desc.size:
            raise PullError(f"{layer.label}: {what} does not match its digest ({size} bytes hashing to "
                            f"{got[:19]}); nothing of it was kept, run again")

    def _journal(self, layer: _Layer) -> Path:
        return self.staging / f"{layer.desc.hex}.tarjournal"

    def _apply_tar(self, t: _Task, progress: Callable[[int], None] | None) -> None:
        layer = t.layer
        keep = [False]  # on failure: leave the staged files and the journal for the next run
        writer = LayerWriter(self.dest, str(self.staging), t.selection, layer.label, ordered=not layer.known,
                             hash_files=not layer.known, known={rel: f.sha256 for rel, f in t.files.items()},
                             keep_staged=lambda: keep[0])
        h, seen = hashlib.sha256(), [0]
        journal = None
        if layer.known:
            journal, h = self._take_up(t) or (Journal(), h)
        start = journal.pos if journal is not None else 0

        def kind(k: str) -> None:
            if k != "none" and journal is not None:
                journal.valid = False  # offsets in a compressed blob cannot be taken up again

        chunks = self._counted(layer, start, h, progress, seen)
        # a journal continues a plain tar mid-way: no magic bytes to sniff there
        tar = chunks if start else decompressed(chunks, layer.desc.media_type, kind)
        complete = False
        try:
            stream = Stream(tar, start=start, journal=journal)
            if start:
                assert journal is not None
                writer.resume(journal, stream)
            writer.apply(stream)
            stream.drain()
            for _ in chunks:  # bytes after the compressed stream still count for the digest
                pass
            complete = True
            self._check_digest(layer, h, start + seen[0], "the blob")
            if layer.known:
                wrote = {rel for rel in writer.pending}
                lost = sorted(set(t.files) - wrote)
                if lost:
                    raise BadLayer(f"{layer.label}: lists {lost[0]} but does not hold it")
            for rel in writer.removed:
                self.state.forget(rel)
            for w in writer.commit():
                self.state.record(w.path, w.size, w.sha256, w.stat)
            self._journal(layer).unlink(missing_ok=True)
        except BaseException as e:
            keep[0] = (journal is not None and journal.valid and journal.pos > 0 and not complete
                       and not isinstance(e, BadLayer | UnsafeLayer))
            if keep[0]:
                assert journal is not None
                self._save_journal(t, journal)
            else:
                self._journal(layer).unlink(missing_ok=True)
            writer.abort()
            raise
        finally:
            tar.close()
            chunks.close()

    def _save_journal(self, t: _Task, journal: Journal) -> None:
        segments = [["meta", base64.b64encode(seg[1]).decode()] if seg[0] == "meta" else seg
                    for seg in journal.segments]
        data = {"version": JOURNAL_VERSION, "digest": t.layer.desc.digest, "wanted": sorted(t.files),
                "pos": journal.pos, "segments": segments}
        path = self._journal(t.layer)
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _take_up(self, t: _Task) -> tuple[Journal, Any] | None:
        """The journal a cut pull of this layer left, and the blob's prefix
        hashed again from disk (header bytes from the journal, file bytes from
        the staged files); None (and nothing kept) if there is none or it does
        not match what is on disk."""
        data = self.journals.pop(t.layer.desc.hex, None)
        path = self._journal(t.layer)
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
                    if _hash_prefix(fd, n, h) != n:
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

    def _apply_raw(self, t: _Task, progress: Callable[[int], None] | None) -> None:
        layer = t.layer
        (rel,) = t.files
        checker = LayerWriter(self.dest, str(self.staging), t.selection, layer.label)
        if rel.split("/", 1)[0] == RESERVED:
            raise UnsafeLayer(f"{layer.label}: {rel!r} would overwrite the puller's own {RESERVED} folder")
        checker.check_parent(rel, rel)
        partial = self._partial(layer)
        h, seen = hashlib.sha256(), [0]
        have = 0
        if partial.is_file() and not partial.is_symlink():
            have = partial.stat().st_size
            if have > layer.desc.size:
                partial.unlink()
                have = 0
            elif have:
                with open(partial, "rb", buffering=0) as f:  # the prefix is hashed again, not trusted
                    _hash_prefix(f.fileno(), have, h)
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
        finally:
            os.close(fd)
            chunks.close()
        try:
            self._check_digest(layer, h, have + seen[0], rel)
        except PullError:
            partial.unlink(missing_ok=True)
            raise
        final = os.path.join(self.dest, rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if os.path.isdir(final) and not os.path.islink(final):
            import shutil

            shutil.rmtree(final)
        os.replace(partial, final)
        self.state.record(rel, layer.desc.size, layer.desc.digest, signature(os.lstat(final)))


def prepare_pull(source: str, dest: str | os.PathLike, *, path: str | None = None, include: Sequence[str] = (),
                 platform: str | None = None, concurrency: int = DEFAULT_CONCURRENCY,
                 connections: int | None = None, retries: int = DEFAULT_RETRIES,
                 insecure: frozenset[str] | set[str] = frozenset(),
                 credentials: Credentials | None = None) -> PullJob:
    """Resolve ``source``, read DEST's state and plan the pull (no layer is fetched yet)."""
    stats = FetchStats()
    image = open_image(source, platform=platform, insecure=frozenset(insecure), credentials=credentials,
                       connections=connections, retries=retries, stats=stats)
    try:
        return PullJob(image, Path(dest), path=path, include=include, concurrency=concurrency, stats=stats)
    except BaseException:
        image.close()
        raise


def pull(source: str, dest: str | os.PathLike, *, include: Sequence[str] = (), path: str | None = None,
         platform: str | None = None, concurrency: int = DEFAULT_CONCURRENCY, connections: int | None = None,
         retries: int = DEFAULT_RETRIES, insecure: frozenset[str] | set[str] = frozenset(),
         credentials: Credentials | None = None, progress: Callable[[int], None] | None = None) -> PullResult:
    """Put the files of ``source`` (``HOST/REPO[:TAG|@DIGEST]`` or
    ``oci:DIR[:TAG]``) into ``dest``; see the module docstring.

    ``include``: globs (``*.gguf``, ``config.json``, ``tokenizer*``; without
    ``/`` they match file names anywhere); only layers holding matching
    files are fetched when the layers list their files. ``path``: the
    subtree of the image that becomes ``dest``. ``concurrency``: blobs at
    once; ``connections``: ranged GETs at once per big blob. ``progress``
    receives byte counts as blobs arrive."""
    job = prepare_pull(source, dest, path=path, include=include, platform=platform, concurrency=concurrency,
                       connections=connections, retries=retries, insecure=insecure, credentials=credentials)
    return job.run(progress)


# ---------------------------------------------------------------- verify


def verify(source: str, dest: str | os.PathLike, *, include: Sequence[str] = (), path: str | None = None,
           platform: str | None = None, connections: int | None = None,
           insecure: frozenset[str] | set[str] = frozenset(), credentials: Credentials | None = None,
           workers: int = 4) -> VerifyResult:
    """Compare ``dest`` with what pulling ``source`` would put there: every
    file re-hashed. Layers that list their files (and raw file layers) are
    compared by their lists; others are streamed (their digest checked) and
    each regular file hashed on the way."""
    stats = FetchStats()
    image = open_image(source, platform=platform, insecure=frozenset(insecure), credentials=credentials,
                       connections=connections, stats=stats)
    try:
        ours = image.target is not None
        prefix = _prefix(path, image)
        selection = Selection(prefix, tuple(include))
        model = TreeModel(selection)
        for i, d in enumerate(image.layers):
            layer = _classify(i, d, image.name)
            if layer.kind == "other" or (not layer.known and ours and path is None):
                continue
            if layer.known:
                for f in layer.listed or ():
                    rel = selection.relative(f.name)
                    if rel and selection.wants(rel):
                        model.add(rel, Node("file", f.size, f.sha256))
                continue
            h, seen = hashlib.sha256(), 0

            def counted(layer: _Layer = layer, h: Any = h) -> Iterator[memoryview]:
                nonlocal seen
                for view in image.read(layer.desc, 0):
                    h.update(view)
                    seen += len(view)
                    yield view

            chunks = counted()
            stream = Stream(decompressed(chunks, d.media_type))
            model.apply(stream, layer.label)
            stream.drain()
            for _ in chunks:
                pass
            if "sha256:" + h.hexdigest() != d.digest or seen != d.size:
                raise PullError(f"{layer.label}: the blob does not match its digest")
    finally:
        image.close()

    root = os.path.realpath(dest)
    if not os.path.isdir(root):
        raise PullError(f"{dest}: no such folder")
    on_disk = {rel: st for rel, st in dest_files(Path(root)).items()
               if not include or any(glob_match(rel, p) for p in include)}
    missing, changed = [], []

    def check(item: tuple[str, Node]) -> str | None:
        rel, node = item
        st = on_disk.get(rel)
        if st is None:
            return "missing"
        full = os.path.join(root, rel)
        if node.kind == "symlink":
            return None if os.path.islink(full) and os.readlink(full) == node.link else "changed"
        if os.path.islink(full) or not os.path.isfile(full) or st.st_size != node.size:
            return "changed"
        return None if _hash_file(full) == node.sha256 else "changed"

    items = sorted(model.nodes.items())
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for (rel, _), verdict in zip(items, pool.map(check, items)):
            if verdict == "missing":
                missing.append(rel)
            elif verdict == "changed":
                changed.append(rel)
    extra = sorted(set(on_disk) - set(model.nodes))
    return VerifyResult(source, image.digest, str(dest), len(items), tuple(missing), tuple(extra), tuple(changed))
