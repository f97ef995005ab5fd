"""Where an image goes, and the order it goes there in.

A sink stores blobs and, last, a manifest that points at them: an OCI
layout directory or an oci-archive file (:mod:`modelimage.layout`), a
registry (:class:`modelimage.registry.push.RegistrySink`). Whatever the
sink, :func:`write_layers_then_manifest` writes every layer first (several
at once when the sink allows), then the config, then the manifest, so that
nothing ever names a blob that is not stored yet; on any failure the sink
undoes what it can and nothing is tagged (go-containerregistry writes
``layout.WriteImage`` and ``remote.Write`` in the same order).

Layers come from the model's files (:func:`store_layer`: a tar or raw
stream, skipped when the digest cache knows its blob is there) or from an
existing image (a base's layers, through a :class:`BlobSource`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import nullcontext
from functools import partial
from typing import Any, Protocol

from .cache import DigestCache
from .errors import LayerTooLarge
from .oci import Descriptor
from .tarstream import LayerResult, LayerStream
from .units import format_size

# (config bytes, config descriptor, manifest bytes, manifest descriptor)
Assembled = tuple[bytes, Descriptor, bytes, Descriptor]


class BlobSource(Protocol):
    """Blobs of an existing image (a base): where it lives, for
    cross-repository mounts (``host``/``repository``, None when it is not
    in a registry), and each blob's bytes, verified against the digest as
    they stream (:meth:`modelimage.image.Image.fetch`)."""

    host: str | None
    repository: str | None

    def fetch(self, desc: Descriptor) -> Iterator[bytes]: ...


class Sink(Protocol):
    """Where an image goes: an OCI layout, an oci-archive, a registry.

    ``parallel``: how many layers it takes at once. ``put_layer`` streams a
    layer and returns its digests and what was done (``written``,
    ``uploaded``); ``put_existing`` stores a blob of another image
    (``copied``, ``mounted``); ``put_manifest`` stores the manifest and
    tags it, and is called last. ``abort`` undoes what can be undone;
    ``close`` ends a successful write."""

    parallel: int

    def has_blob(self, digest: str) -> bool: ...
    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]: ...
    def put_existing(self, desc: Descriptor, source: BlobSource) -> str: ...
    def put_blob(self, data: bytes, digest: str) -> None: ...
    def put_manifest(self, manifest: Descriptor, data: bytes) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


def store_layer(stream: LayerStream, sink: Sink, cache: DigestCache, *, compression: str, max_layer_size: int,
                title: str, progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
    """One layer stream (tar or raw) into the sink: skipped when the cache
    knows its digest and the sink already has that blob; otherwise streamed
    from the files. Returns the digests and what was done (``exists``,
    ``mounted``, or the sink's ``put_layer`` action). A stream holding
    pieces of a listed file spread over layers waits for the layers before
    it that hold pieces of that file, its cache entry is written only
    once that file checks (:mod:`modelimage.splitcheck`), and only an entry
    recording that check is reused for it. Raises
    :class:`LayerTooLarge` when the stored blob is over ``max_layer_size``
    bytes (a gzip layer that grew)."""
    key = cache.key(stream, compression)
    known = cache.get(key, split_checked=stream.split is not None)  # no proof of the whole-file check: streamed
    if known is not None and known.tar_size != stream.size:
        known = None
    # pieces of a listed file spread over layers: its layers one after another, in order (splitcheck)
    with stream.split.turn() if stream.split is not None else nullcontext():
        if known is not None and sink.has_blob(known.digest):
            result, action = known, "mounted" if known.digest in getattr(sink, "mounted", ()) else "exists"
            if progress is not None:
                progress(stream.size)
        else:
            result, action = sink.put_layer(stream, compression=compression, known=known, progress=progress)
            if stream.split is not None:  # remembered once those files check whole
                stream.split.after_check(partial(cache.put, key, result, split_checked=True))
            else:
                cache.put(key, result)
    if result.size > max_layer_size:
        raise LayerTooLarge(
            f"layer {title} is {format_size(result.size)} as stored, over the limit of "
            f"{format_size(max_layer_size)}"
        )
    return result, action


def left_behind(sink: Sink) -> str:
    """What a build that fails before its manifest leaves in ``sink``, in
    words for its error line (the sink's ``left_behind``, if it says)."""
    return getattr(sink, "left_behind", None) or "no manifest was written or tagged"


def copy_blob(desc: Descriptor, source: BlobSource, sink: Sink) -> str:
    """A blob of an existing image into the sink, unless it has it
    (``exists``); otherwise the sink's action (``copied``, ``mounted``)."""
    return "exists" if sink.has_blob(desc.digest) else sink.put_existing(desc, source)


class _Turns:
    """Layers take turns to stream: at most ``streams`` at once, started in
    the jobs' order (a layer holding pieces of a file may wait for the one
    before it, :mod:`modelimage.splitcheck`, so a later layer never takes a
    turn ahead of an earlier one). A layer gives its turn back when it
    ends, or earlier through :func:`layer_sent` once all its bytes are
    read and handed to the sink (a registry then still takes in what is in
    flight and commits the blob on its final ``PUT``: the next layer
    streams meanwhile, so the links do not idle between layers)."""

    def __init__(self, streams: int, stop: threading.Event):
        self.free, self.next, self.stop = streams, 0, stop
        self.cond = threading.Condition()

    def take(self, index: int) -> bool:
        """Wait for job ``index``'s turn; False when the write stopped meanwhile."""
        with self.cond:
            while True:
                if self.stop.is_set():
                    return False
                if self.next == index and self.free > 0:
                    break
                self.cond.wait(0.2)  # and notified at every turn given back or taken
            self.next, self.free = index + 1, self.free - 1
            self.cond.notify_all()
        _turn.release = self.give
        return True

    def give(self) -> None:
        with self.cond:
            self.free += 1
            self.cond.notify_all()


_turn = threading.local()


def layer_sent() -> None:
    """A sink's word, from the thread storing a layer, that every byte of
    it is read and handed over, and only the sink's end of it is left (the
    bytes in flight, a registry's final ``PUT``): in
    :func:`write_layers_then_manifest` the next layer starts streaming now.
    Only the first word per layer counts; elsewhere it does nothing."""
    release = getattr(_turn, "release", None)
    if release is not None:
        _turn.release = None
        release()


def write_layers_then_manifest(
    sink: Sink,
    jobs: Sequence[Callable[[], Any]],
    assemble: Callable[[list[Any]], Assembled],
    workers: int | None = None,
) -> tuple[list[Any], Descriptor, Descriptor]:
    """Run the layer jobs, ``workers`` streaming at once (None: as many as
    the sink takes; never more than the sink takes, nor than there are
    jobs), in order; a layer whose bytes are all handed over
    (:func:`layer_sent`) no longer counts while the sink finishes it, so up
    to ``workers`` more may be finishing (a retried upload reads again
    outside the count). Then store the config and the manifest that ``assemble``
    makes of their results. On any failure the sink undoes what it can (and
    nothing is tagged): the first failure stops jobs not started yet and is
    raised. On success the sink is closed. Returns the job results and the
    config and manifest descriptors."""
    workers = max(1, min(workers or sink.parallel, sink.parallel, len(jobs) or 1))
    try:
        stop = threading.Event()
        turns = _Turns(workers, stop)

        def guarded(index: int, job: Callable[[], Any]) -> Any:
            if not turns.take(index):  # another layer failed: do not start this one
                return None
            try:
                return job()
            except BaseException:
                stop.set()
                raise
            finally:
                layer_sent()  # the turn back, if the sink did not give it back earlier

        threads = min(len(jobs), 2 * workers) or 1
        with ThreadPoolExecutor(threads, thread_name_prefix="layer") as pool:
            futures = [pool.submit(guarded, i, job) for i, job in enumerate(jobs)]
            # stop at the first failure: layers not started yet never start
            try:
                finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: stop the transfers in flight before the pool waits for them
                stop.set()
                sink.abort()
                raise
            failed = next((f for f in futures if f in finished and f.exception() is not None), None)
            if failed is not None:
                for f in futures:
                    f.cancel()
                raise failed.exception()  # type: ignore[misc]
            done = [f.result() for f in futures]
        config_bytes, config_desc, manifest_bytes, manifest_desc = assemble(done)
        sink.put_blob(config_bytes, config_desc.digest)
        sink.put_manifest(manifest_desc, manifest_bytes)
    except BaseException:
        sink.abort()
        raise
    sink.close()
    return done, config_desc, manifest_desc
