"""Files whose source lists their sha256 (Hub LFS files), checked whole
when the plan spreads them over several layers.

A listed file that one layer holds whole is checked by the layer writer as
its last byte is hashed (:func:`modelimage.content.check_listed`). A file
the planner reshards (bigger than a layer, or ``--max-layer-size``) lands
in pieces: byte ranges of it in several layers, its header replaced. Here
each such file gets ONE running sha256 over its bytes in file order, fed
by the layers as they stream (no second download, nothing buffered):

* the layers holding pieces of one file are built one after another, in
  plan order (:meth:`LayerCheck.turn`; layers of other files run beside
  them), so its pieces arrive in file order as the planners lay them out
  (safetensors and GGUF shards keep the source's order);
* bytes that no layer holds (the old header, padding) are fetched when the
  hash reaches them, and hashed only;
* a piece that arrives out of order (a shard whose tensors the writer's
  order permutes, a layer the digest cache skipped before it) is hashed
  on its own as it is stored; once the running hash reaches it, those
  bytes are fetched again and must have that same digest;
* an upload that resumes from a snapshot rewinds the running hash with it
  (:meth:`Feed.copy`), so the hash always covers the bytes the blob holds.

:meth:`SplitChecks.verify` runs after every layer is stored and before the
config and manifest are: a file whose bytes disagree with its listing is
one :class:`~modelimage.errors.SourceError` naming it, so nothing is tagged.
Its layers' digest-cache entries are written only once it checks, and
record that it did (``split_checked``): a later build reuses no layer of
unchecked bytes, not even one an older modelimage cached before this check.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .content import FileRange, RemoteObject, listed_source
from .errors import SourceError
from .tarstream import LayerStream


def _sha256() -> Any:
    return hashlib.sha256()


@dataclass(frozen=True)
class _Mark:
    """Where a file's running hash stood: to rewind to."""

    pos: int
    sha: Any


class SplitFile:
    """One listed file spread over layers: its running sha256 (bytes
    ``[0, pos)``), which byte ranges some layer holds (``covered``), and the
    digests of the pieces stored out of order, checked in :meth:`finish`."""

    def __init__(self, obj: RemoteObject, covered: Sequence[tuple[int, int]]):
        self.obj = obj
        self.expected: str = obj.expected_sha256  # type: ignore[attr-defined]
        self.sha, self.pos = _sha256(), 0
        self.streamed = False  # some byte of it went into a blob this build
        self.lock = threading.Lock()
        merged: list[list[int]] = []
        for lo, hi in sorted(covered):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = [lo for lo, _ in merged]
        self.covered = [(lo, hi) for lo, hi in merged]
        self.apart: dict[tuple[int, int], tuple[int, int, str, str]] = {}  # piece -> (offset, length, digest, layer)

    def __str__(self) -> str:
        return str(self.obj)

    # ------------------------------------------------------------ fed by the layers

    def held_between(self, lo: int, hi: int) -> bool:
        """True when some layer holds a byte of ``[lo, hi)``."""
        i = bisect.bisect_right(self.starts, lo) - 1
        if i >= 0 and self.covered[i][1] > lo:
            return True
        return i + 1 < len(self.starts) and self.starts[i + 1] < hi

    def start_piece(self, offset: int) -> bool:
        """A piece starting at ``offset`` begins: True when the running hash
        can take it as it streams (it is at ``offset``, or only bytes no
        layer holds lie between: those are fetched and hashed now)."""
        self.streamed = True
        if self.pos < offset and not self.held_between(self.pos, offset):
            self._hash_fetched(offset)
        return self.pos == offset

    def take(self, offset: int, data: bytes | memoryview) -> None:
        if offset != self.pos:
            raise AssertionError(f"{self.obj}: running sha256 at byte {self.pos}, a layer fed byte {offset}")
        self.sha.update(data)
        self.pos += len(data)

    def mark(self) -> _Mark:
        return _Mark(self.pos, self.sha.copy())

    def restore(self, mark: _Mark) -> None:
        self.pos, self.sha = mark.pos, mark.sha.copy()

    # ------------------------------------------------------------ the check

    def _read(self, offset: int, end: int) -> Iterator[bytes | memoryview]:
        got = offset
        for data in self.obj.read(offset, end - offset):
            got += len(data)
            yield data
        if got != end:
            raise SourceError(f"{self.obj}: gave {got - offset} of {end - offset} bytes at byte {offset}")

    def _hash_fetched(self, end: int) -> None:
        """Fetch ``[pos, end)`` and hash it (bytes not stored, or stored and
        checked by :meth:`finish`)."""
        if end > self.pos:
            for data in self._read(self.pos, end):
                self.sha.update(data)
            self.pos = end

    def finish(self, left: str) -> None:
        """Fetch what the running hash has not seen (pieces stored out of
        order are compared with their stored digest), then compare the
        whole with the listed sha256. Raises :class:`SourceError`."""
        for offset, length, digest, layer in sorted(self.apart.values()):
            piece = _sha256()
            if offset < self.pos:  # overlaps bytes already hashed: compared on its own
                for data in self._read(offset, offset + length):
                    piece.update(data)
            else:
                self._hash_fetched(offset)
                for data in self._read(offset, offset + length):
                    piece.update(data)
                    self.sha.update(data)
                self.pos = offset + length
            if piece.hexdigest() != digest:
                raise SourceError(f"{self.obj}: bytes {offset}-{offset + length - 1} as stored in layer {layer} "
                                  f"have sha256 {digest}, the Hub now sends {piece.hexdigest()} (corrupted on "
                                  f"the way, or altered by a proxy); {left}")
        self._hash_fetched(self.obj.size)
        got = self.sha.hexdigest()
        if got != self.expected:
            raise SourceError(f"{self.obj}: the bytes the Hub sent have sha256 {got}, its listing says "
                              f"{self.expected} (corrupted on the way, or altered by a proxy); {left}")


@dataclass(frozen=True)
class _Piece:
    start: int  # offset in the layer stream
    end: int
    file: SplitFile
    offset: int  # offset in the file
    key: tuple[int, int]  # (layer, piece): names it among the file's pieces


class Feed:
    """One layer writer's share (:class:`modelimage.tarstream.Digester`):
    takes the stream's bytes by stream offset and hands the pieces of split
    files to their running hash. Copied with the digester's snapshots; a
    copy fed after the hash moved on rewinds it first."""

    def __init__(self, check: "LayerCheck"):
        self.check = check
        self.pieces = check.pieces
        self.starts = [p.start for p in self.pieces]
        self.state: dict[int, Any] = {}  # piece index -> True (in order) or its own sha256 (apart)
        self.rewind: dict[SplitFile, _Mark] | None = dict(check.start_marks)

    def copy(self) -> "Feed":
        f = object.__new__(Feed)
        f.check, f.pieces, f.starts = self.check, self.pieces, self.starts
        f.state = {i: (s if s is True else s.copy()) for i, s in self.state.items()}
        f.rewind = self.rewind if self.rewind is not None else {p.file: p.file.mark() for p in self.pieces}
        return f

    def feed(self, at: int, data: bytes | memoryview) -> None:
        """``data`` lies at stream offset ``at``."""
        if self.rewind is not None:
            for file, mark in self.rewind.items():
                file.restore(mark)
            self.rewind = None
        end = at + len(data)
        i = max(0, bisect.bisect_right(self.starts, at) - 1)
        while i < len(self.pieces) and self.pieces[i].start < end:
            p = self.pieces[i]
            lo, hi = max(at, p.start), min(end, p.end)
            if lo < hi:
                self._piece(i, p, lo, memoryview(data)[lo - at:hi - at], hi == p.end)
            i += 1

    def _piece(self, i: int, p: _Piece, lo: int, data: memoryview, last: bool) -> None:
        state = self.state.get(i)
        if lo == p.start:
            state = self.state[i] = True if p.file.start_piece(p.offset) else _sha256()
        elif state is None:
            raise AssertionError(f"{p.file}: a layer resumed inside a piece it never started")
        if state is True:
            p.file.take(p.offset + lo - p.start, data)
        else:
            state.update(data)
            if last:
                p.file.apart[p.key] = (p.offset, p.end - p.start, state.hexdigest(), self.check.title)


class LayerCheck:
    """What one layer stream shares with the build's :class:`SplitChecks`
    (``LayerStream.split``): its pieces of split files, its turn, and the
    digest-cache entries held back until those files check."""

    def __init__(self, checks: "SplitChecks", index: int, pieces: list[_Piece], title: str):
        self.checks, self.index, self.pieces, self.title = checks, index, pieces, title
        self.files = list(dict.fromkeys(p.file for p in pieces))
        self.done = threading.Event()
        self.failed = False
        self.start_marks: dict[SplitFile, _Mark] = {}

    def feeder(self) -> Feed:
        return Feed(self)

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for the layers before this one that hold pieces of its
        files, then run the body (the layer is stored or skipped)."""
        try:
            for before in self.checks.before(self):
                before.done.wait()
                if before.failed:
                    raise SourceError(f"layer {self.title}: not written, an earlier layer of the same file failed")
            self.start_marks = {f: f.mark() for f in self.files}
            yield
        except BaseException:
            self.failed = True
            raise
        finally:
            self.done.set()

    def after_check(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every split file checks (a digest-cache entry)."""
        with self.checks.lock:
            self.checks.deferred.append(fn)


class SplitChecks:
    """The split listed files of one build, over its layer streams (in the
    order the build starts them): :meth:`of` attaches a
    :class:`LayerCheck` to each stream holding pieces of one."""

    def __init__(self) -> None:
        self.files: list[SplitFile] = []
        self.layers: list[LayerCheck] = []
        self.deferred: list[Callable[[], None]] = []
        self.lock = threading.Lock()

    @classmethod
    def of(cls, streams: Sequence[LayerStream], titles: Sequence[str] = ()) -> "SplitChecks":
        checks = cls()
        ranges: dict[Any, list[tuple[int, int]]] = {}
        for stream in streams:
            for p in stream.pieces:
                obj = _split_object(stream, p.data, p.file)
                if obj is not None:
                    ranges.setdefault(obj, []).append((p.data.offset, p.data.offset + p.data.length))
        if not ranges:
            return checks
        files = {obj: SplitFile(obj, covered) for obj, covered in ranges.items()}
        checks.files = list(files.values())
        for n, stream in enumerate(streams):
            pieces = [_Piece(p.offset, p.offset + p.length, files[obj], p.data.offset, (n, i))  # type: ignore[union-attr]
                      for i, p in enumerate(stream.pieces)
                      if (obj := _split_object(stream, p.data, p.file)) is not None]
            if pieces:
                title = titles[n] if n < len(titles) else str(n + 1)
                layer = LayerCheck(checks, len(checks.layers), pieces, title)
                checks.layers.append(layer)
                stream.split = layer
        return checks

    def before(self, layer: LayerCheck) -> list[LayerCheck]:
        """The last earlier layer holding pieces of each of ``layer``'s files."""
        out: dict[int, LayerCheck] = {}
        for f in layer.files:
            prior = [x for x in self.layers[:layer.index] if f in x.files]
            if prior:
                out[prior[-1].index] = prior[-1]
        return list(out.values())

    def verify(self, left: str = "no manifest was pushed or tagged") -> None:
        """Check every split file that streamed into a blob (one whose
        layers all came from the digest cache was checked when they were
        stored), then write the held-back cache entries. Raises
        :class:`SourceError` naming the file; ``left`` says what is left
        behind."""
        for f in self.files:
            if f.streamed:
                f.finish(left)
        with self.lock:
            deferred, self.deferred = self.deferred, []
        for fn in deferred:
            fn()


def _split_object(stream: LayerStream, data: object, file: int) -> Any:
    """The listed remote object a stream piece is part of, when that piece
    is not a whole listed file (which the layer writer checks itself)."""
    if not isinstance(data, FileRange) or not getattr(data.path, "expected_sha256", None):
        return None
    if file >= 0 and listed_source(stream.entries[file].content) is not None:
        return None
    return data.path
