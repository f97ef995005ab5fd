"""An uncompressed layer written into a file (a blob of an OCI layout):
each byte read and hashed once, copied by the kernel, big files in a
thread of their own while the same bytes are hashed.

A layer written into an OCI layout (:func:`write_layer_fd`) needs each
byte of a weight file hashed once and copied once. Done one
after the other, that costs the sum of the two; here the copy
(``copy_file_range``: page cache to page cache, no trip through Python,
a reflink where the filesystem shares extents) runs beside the hashing,
reading the same open file, so on two cores a big file costs about the
larger of the two. The layer writer still checks the file's size and
mtime before and after both (a file that changes while it is built is
refused, as for every read), and waits for the copy before it closes the
source.

Each copied step also asks the kernel to start writing the blob's new
pages to the disk (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which waits
for nothing), so the ``fsync`` that commits the blob waits for the tail
only instead of the whole file: the disk works while the CPU hashes. The
durability guarantee is unchanged: a blob is renamed to its digest only
after its ``fsync`` (:class:`modelimage.layout.durable.BlobFile`).

Where ``copy_file_range`` cannot copy between the two files (another
filesystem on an old kernel, a filesystem without it), the thread reads
and writes the bytes itself, through one reused buffer.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from .durable import start_writeback
from .errors import SourceError
from .tarstream import COPYING, Digester, LayerStream

STEP = 64 << 20  # bytes per copy_file_range call: how soon a stop or a full disk is seen
FALLBACK_BUFFER = 1 << 20  # bytes per read+write where the kernel cannot copy
# copy_file_range's errors that mean "not between these files", not "the disk failed"
UNSUPPORTED = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


def write_layer_fd(stream: LayerStream, digester: Digester, fd: int,
                   progress: Callable[[int], None] | None = None) -> None:
    """Write an uncompressed layer into the file ``fd`` at its position.

    Every byte is still read once and hashed, but the copy into the blob is
    done by the kernel (``copy_file_range``) from the source file's page
    cache, instead of a second trip through Python: measured here, 512 MiB
    went from 2.0-3.0 s to 1.3 s (docs/benchmarks.md). A range of
    :data:`~modelimage.tarstream.BACKGROUND_COPY` bytes or more is copied in a thread of its own
    while it is hashed (:class:`RangeCopier`), so a
    big file costs about the larger of the hash and the copy, not their sum.
    Raises ``OSError`` when the blob cannot be written, :class:`SourceError`
    when a source cannot be read or changed.
    """
    if digester.gz is not None or digester.offset:
        raise ValueError("write_layer_fd writes whole uncompressed layers")
    base = os.lseek(fd, 0, os.SEEK_CUR)
    copier = RangeCopier(fd, base)
    kernel_copy = hasattr(os, "copy_file_range")
    at = 0  # stream offset of the file position of fd (background copies do not move it)
    chunks = stream.located_chunks(copier=copier)
    try:
        for data, file, where in chunks:
            digester.feed(data, file)
            if where is COPYING:
                copier.check()  # a full disk stops the hashing too
            else:
                if at != digester.offset - len(data):
                    at = os.lseek(fd, base + digester.offset - len(data), os.SEEK_SET) - base
                if where is not None and kernel_copy:
                    kernel_copy = _kernel_copy(where, fd, data)
                else:
                    _write_all(fd, data)
                at = digester.offset
            if progress is not None:
                progress(len(data))
    finally:
        chunks.close()  # a range given up halfway stops its copy before its source closes
        copier.stop()
    copier.check()
    os.lseek(fd, base + stream.size, os.SEEK_SET)


def _kernel_copy(where: tuple[int, int], fd: int, data: bytes | memoryview) -> bool:
    """``data``, which lies at ``where`` (source fd, offset), appended to
    ``fd`` by the kernel; False when it cannot (then written from ``data``,
    and from now on by the caller)."""
    src, pos = where
    left = len(data)
    try:
        while left:
            n = os.copy_file_range(src, fd, left, pos)
            if not n:
                raise OSError("copy_file_range copied nothing")
            pos += n
            left -= n
    except OSError as e:
        if left != len(data) or e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        _write_all(fd, data)  # a filesystem that cannot: copy through Python from now on
        return False
    return True


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class RangeCopier:
    """Copies one source range at a time into ``dst`` (an open file
    descriptor) at ``base + offset``, in a background thread.

    :meth:`start` begins a copy; :meth:`join` waits for it (the source
    descriptor must stay open until then); :meth:`stop` abandons it (after
    the step in flight, at most :data:`STEP` bytes) and waits; :meth:`check`
    raises the copy's ``OSError`` (a full disk, an I/O error) in the caller's
    thread once there is one. The destination's file position is never
    used or moved."""

    def __init__(self, dst: int, base: int = 0):
        self.dst, self.base = dst, base
        self.kernel = hasattr(os, "copy_file_range")
        self.error: OSError | SourceError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, src: int, src_offset: int, offset: int, length: int, name: str = "the source") -> None:
        """Copy ``length`` bytes of ``src`` (``name``, for messages) from
        ``src_offset`` to the destination's ``base + offset``, in the background."""
        if self._thread is not None:
            raise RuntimeError("one range at a time: join() the last one first")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(src, src_offset, self.base + offset, length, name),
                                        name="copy", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the copy in flight, if any."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def stop(self) -> None:
        """Abandon the copy in flight after its current step, and wait for it."""
        self._stop.set()
        self.join()

    def check(self) -> None:
        """Raise the error a copy ended with, if any: ``OSError`` (writing),
        :class:`SourceError` (the source ended early)."""
        if self.error is not None:
            raise self.error

    def _run(self, src: int, src_offset: int, dst_offset: int, length: int, name: str) -> None:
        try:
            while length and not self._stop.is_set():
                n = self._step(src, src_offset, dst_offset, min(length, STEP))
                if not n:
                    self.error = SourceError(f"{name} ended early (changed while building)")
                    return
                start_writeback(self.dst, dst_offset, n)
                src_offset, dst_offset, length = src_offset + n, dst_offset + n, length - n
        except OSError as e:
            self.error = e

    def _step(self, src: int, src_offset: int, dst_offset: int, count: int) -> int:
        if self.kernel:
            try:
                return os.copy_file_range(src, self.dst, count, src_offset, dst_offset)
            except OSError as e:
                if e.errno not in UNSUPPORTED:
                    raise
                self.kernel = False  # these two files cannot: read and write from now on
        return _read_write(src, src_offset, self.dst, dst_offset, count)


def _read_write(src: int, src_offset: int, dst: int, dst_offset: int, count: int) -> int:
    """Up to ``count`` bytes copied through one buffer; the bytes copied."""
    buf = bytearray(min(count, FALLBACK_BUFFER))
    view = memoryview(buf)
    done = 0
    while done < count:
        n = os.preadv(src, [view[: min(count - done, len(buf))]], src_offset + done)
        if not n:
            break
        written = 0
        while written < n:
            written += os.pwrite(dst, view[written:n], dst_offset + done + written)
        done += n
    return done
