"""``-o docker-daemon:NAME[:TAG]``: the built image loaded into a container
engine that speaks the Docker Engine API (docker, or podman's
Docker-compatible socket), as ``docker buildx build --load`` does.

:class:`DaemonSink` is a build sink (:class:`modelimage.sink.Sink`) that
writes the image as a ``docker save`` archive (``manifest.json``, the config,
one tar per layer) straight into the body of one ``POST /images/load``
request, through the ``docker`` package: each layer streams from the model's
files into the request as it is hashed, and nothing is written to local
disk (what the engine does with the upload is its own: docker unpacks it,
podman stages it in its temporary directory). The engine is the one the
``docker`` package finds: ``DOCKER_HOST`` (``unix:///run/podman/podman.sock``
for podman's service), else docker's default socket.

Layers go uncompressed (a local engine stores them so anyway), and the
archive's layer names are their positions, so nothing has to be hashed
before it is sent.
"""

from __future__ import annotations

import json
import os
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ModelImageError, OutputError
from .oci import Descriptor
from .registry.reference import is_host, is_repository, is_tag, names_host, redacted
from .sink import BlobSource
from .tarstream import Digester, LayerResult, LayerStream, blob_chunks

PREFIX = "docker-daemon:"
QUEUE_PIECES = 8  # pieces of the archive in flight between the build and the upload


class DaemonError(ModelImageError):
    """The engine cannot be reached or refused the image."""


@dataclass(frozen=True)
class DaemonRef:
    """``docker-daemon:NAME[:TAG]`` (skopeo's transport name)."""

    name: str  # [HOST[:PORT]/]REPO
    tag: str = "latest"
    explicit_tag: bool = False

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"

    @classmethod
    def is_daemon(cls, text: str) -> bool:
        return text.startswith(PREFIX)

    @classmethod
    def parse(cls, text: str) -> "DaemonRef":
        rest = text.removeprefix(PREFIX)
        name, tag, explicit = rest, "latest", False
        head, colon, tail = rest.rpartition(":")
        if colon and "/" not in tail:
            name, tag, explicit = head, tail, True
        host, slash, path = name.partition("/")
        ok = is_repository(path) and is_host(host) if slash and names_host(host) else is_repository(name)
        if not ok or not is_tag(tag):
            shown = redacted(rest)  # USER:PASSWORD@HOST/...: never echoed
            why = ("credentials do not go in a name" if shown != rest
                   else "an image is loaded under a tag, not a digest" if "@sha256:" in rest
                   else "lowercase NAME, as docker names images")
            raise ConfigError(f"{PREFIX + shown!r}: expected docker-daemon:NAME[:TAG] ({why})")
        return cls(name, tag, explicit)


class _Pipe:
    """Bytes from the build thread to the upload's request body, a bounded
    queue in between; :meth:`fail` makes the body end in an error, so the
    engine never sees a whole archive."""

    _END = object()

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue(QUEUE_PIECES)
        self.closed = threading.Event()

    def put(self, data: bytes | memoryview) -> None:
        if data:
            while not self.closed.is_set():
                try:
                    self.q.put(bytes(data), timeout=0.5)
                    return
                except queue.Full:
                    continue
            raise DaemonError("the engine stopped reading the image")

    def end(self, error: BaseException | None = None) -> None:
        while not self.closed.is_set():
            try:
                self.q.put(error or self._END, timeout=0.5)
                return
            except queue.Full:
                continue

    def body(self) -> Iterator[bytes]:
        try:
            while True:
                item = self.q.get()
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.closed.set()


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def engine(client: Any = None) -> Any:
    """The ``docker`` package's client for the engine (``DOCKER_HOST``), pinged.
    Raises :class:`DaemonError` in one line when it is missing or unreachable."""
    try:
        import docker
    except ImportError:
        raise ConfigError("docker-daemon: needs the docker package: pip install 'modelimage[docker]'") from None
    if client is None:
        try:
            client = docker.from_env()
        except docker.errors.DockerException as e:
            raise DaemonError(f"docker-daemon: the engine at {where()} does not answer ({_first_line(e)}); "
                              "start it, or point DOCKER_HOST at its socket (podman: podman system service)") from None
    try:
        client.ping()
    except Exception as e:  # docker.errors.APIError, requests' ConnectionError
        raise DaemonError(f"docker-daemon: the engine at {where()} does not answer ({_first_line(e)}); "
                          "start it, or point DOCKER_HOST at its socket (podman: podman system service)") from None
    return client


def where() -> str:
    """The engine's address as the user set it (``DOCKER_HOST``), for messages."""
    return os.environ.get("DOCKER_HOST") or "docker's default socket (DOCKER_HOST is not set)"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class DaemonSink:
    """A build sink that loads the image into a container engine as it is built."""

    parallel = 1  # one archive, written front to back

    def __init__(self, ref: DaemonRef, client: Any = None):
        self.ref = ref
        self.client = engine(client)
        self.pipe = _Pipe()
        self.layers: list[str] = []  # member names, in order
        self.config: str | None = None
        self.error: BaseException | None = None
        self.loaded: list[str] = []
        self.thread = threading.Thread(target=self._load, name="docker-load", daemon=True)
        self.thread.start()

    def _load(self) -> None:
        try:
            for message in self.client.api.load_image(self.pipe.body()):
                if "errorDetail" in message or "error" in message:
                    detail = (message.get("errorDetail") or {}).get("message") or message.get("error")
                    raise DaemonError(f"{self.ref}: the engine refused the image: {detail}")
                self.loaded.append(str(message.get("stream", "")).strip())
        except BaseException as e:  # noqa: BLE001 (handed to the build thread)
            self.error = e
        finally:
            self.pipe.closed.set()

    def _write(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            raise self._failure()
        self.pipe.put(data)

    def _failure(self) -> ModelImageError:
        e = self.error
        if isinstance(e, ModelImageError):
            return e
        return DaemonError(f"{self.ref}: the engine at {where()} did not load the image "
                           f"({_first_line(e) if e else 'it stopped reading'})")

    def has_blob(self, digest: str) -> bool:
        return False

    def put_layer(self, stream: LayerStream, *, compression: str, known: LayerResult | None,
                  progress: Callable[[int], None] | None) -> tuple[LayerResult, str]:
        if compression != "none":
            raise ConfigError("docker-daemon: layers go to the engine uncompressed (it stores them so); "
                              f"drop --compression {compression}")
        name = f"layers/{len(self.layers) + 1}.tar"
        self._write(_member(name, stream.size))
        digester = Digester(stream)
        for data in blob_chunks(stream, digester, progress=progress):
            self._write(data)
        self._write(_padding(stream.size))
        self.layers.append(name)
        return digester.result(), "loaded"

    def put_existing(self, desc: Descriptor, source: BlobSource) -> str:
        name = f"layers/{len(self.layers) + 1}.tar"
        self._write(_member(name, desc.size))
        for chunk in source.fetch(desc):
            self._write(chunk)
        self._write(_padding(desc.size))
        self.layers.append(name)
        return "copied"

    def put_blob(self, data: bytes, digest: str) -> None:
        self.config = digest.split(":", 1)[1] + ".json"
        self._write(_member(self.config, len(data)) + data + _padding(len(data)))

    def put_manifest(self, manifest: Descriptor, data: bytes) -> None:
        index = json.dumps([{"Config": self.config, "RepoTags": [str(self.ref)], "Layers": self.layers}]).encode()
        self._write(_member("manifest.json", len(index)) + index + _padding(len(index)))
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self.pipe.end()
        self.thread.join()
        if self.error is not None:
            raise self._failure()

    def abort(self) -> None:
        self.pipe.end(OutputError(f"{self.ref}: the build failed; nothing was loaded"))
        self.thread.join(timeout=30)

    def close(self) -> None:
        self.client.close()
