"""The container engines of this node, driven as a user would: pull an
image, time it, remove what the pull left. Used by :mod:`modelimage.calibrate`
to measure what a pull costs here.

Each puller runs the engine's own command line (``podman``, ``ctr``,
``docker``, ``modelimage pull``), so what is timed is what a user or a
kubelet waits for: process start, resolve, manifest, config, every blob
downloaded, verified, stored and unpacked, the image committed.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ModelImageError

ENGINE_NAMES: tuple[str, ...] = ("podman", "containerd", "docker", "modelimage")
STOP_WAIT_S = 10.0  # seconds an interrupted engine command gets to stop by itself before it is killed


class EngineUnavailable(ModelImageError):
    """The engine's command is missing or cannot pull here."""


def _run(cmd: list[str], what: str, *, check: bool = True, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    """Run an engine command to its end. On Ctrl-C the engine (which the
    terminal interrupted too) gets up to :data:`STOP_WAIT_S` to stop by
    itself before it is killed: ``subprocess.run`` kills it after 0.25 s,
    and a ``podman pull`` killed mid-layer can leave its storage broken
    ("layer not known", podman#8437, #14003)."""
    try:
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    except OSError as e:
        raise EngineUnavailable(f"{what}: cannot run {cmd[0]} ({e.strerror})") from None
    try:
        out, err = child.communicate()
    except BaseException:  # Ctrl-C: let the engine finish its own clean-up, then make sure it is gone
        child.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
        raise
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ModelImageError(f"{what}: {' '.join(cmd[:3])} failed: {tail[0]}")
    return proc


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (it may be another user's)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class Puller:
    """Base: ``pull(ref)`` -> wall seconds, ``clear(ref)``, ``version()``,
    ``storage()`` (the directory its pulls are written to)."""

    name = ""
    command = ""

    def __init__(self, *, plain_http: bool):
        if shutil.which(self.command) is None:
            raise EngineUnavailable(f"{self.name}: `{self.command}` is not on PATH; install it, or calibrate "
                                    f"another engine ({', '.join(ENGINE_NAMES)})")
        self.plain_http = plain_http

    def pull(self, ref: str) -> float:
        t = time.perf_counter()
        _run(self.pull_command(ref), f"pulling {ref} with {self.name}", env=self.pull_env())
        return time.perf_counter() - t

    def pull_env(self) -> dict[str, str] | None:
        """The pull command's environment (None: this process's)."""
        return None

    def pull_command(self, ref: str) -> list[str]:
        raise NotImplementedError

    def clear(self, ref: str) -> None:
        raise NotImplementedError

    def version(self) -> str:
        return _run([self.command, "--version"], f"{self.name} version").stdout.strip()

    def storage(self) -> Path:
        return Path(tempfile.gettempdir())

    def close(self) -> None:
        """Remove what the puller itself made (nothing, for most)."""


class Podman(Puller):
    """``podman pull`` into podman's configured storage; ``podman rmi`` after.

    podman copies each blob into a ``storageNNN`` folder under ``$TMPDIR``
    (default /var/tmp) before storing it, and an interrupted pull leaves
    that folder behind (podman#19201): its pulls get a ``TMPDIR`` of their
    own under the same parent (so the copies cost what they cost a user's
    pull), made by each pull and removed by :meth:`clear` (a puller that
    has not pulled has made nothing)."""

    name = command = "podman"

    def __init__(self, *, plain_http: bool):
        super().__init__(plain_http=plain_http)
        self.tmp: Path | None = None

    def pull_env(self) -> dict[str, str]:
        if self.tmp is None:
            parent = os.environ.get("TMPDIR") or "/var/tmp"
            self.tmp = Path(tempfile.mkdtemp(prefix="modelimage-calibrate-podman-",
                                             dir=parent if os.path.isdir(parent) else None))
        return {**os.environ, "TMPDIR": str(self.tmp)}

    def close(self) -> None:
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def pull_command(self, ref: str) -> list[str]:
        return ["podman", "pull", "--quiet", f"--tls-verify={str(not self.plain_http).lower()}", ref]

    def clear(self, ref: str) -> None:
        _run(["podman", "rmi", "--force", ref], "podman rmi", check=False)
        self._remove_tmp()  # with an interrupted or failed pull's blob copies

    def storage(self) -> Path:
        out = _run(["podman", "info", "--format", "{{.Store.GraphRoot}}"], "podman info", check=False).stdout
        return Path(out.strip() or "/var/lib/containers/storage")


class Containerd(Puller):
    """``ctr images pull`` (unpacked with containerd's default snapshotter
    and 3 downloads at a time, as a Kubernetes node does) against the containerd at
    ``$CONTAINERD_ADDRESS`` (ctr's default: /run/containerd/containerd.sock);
    ``ctr images rm --sync`` and ``ctr content prune references`` after.
    Everything happens in a containerd namespace of this puller's own
    (:attr:`namespace`: ``modelimage-calibration-PID-RANDOM``, removed by
    :meth:`close`), so the prune after each pull cannot take content of
    the node's own namespaces (``default``, kubelet's ``k8s.io``) nor of
    another calibration running at the same time, that no image references
    at that moment: a blob a user ingested, or one a pull in another
    namespace fetched but has not yet referenced. Namespaces left by a
    calibration that was killed (its process is gone) are emptied and
    removed when the next one starts."""

    name, command = "containerd", "ctr"
    NAMESPACE_PREFIX = "modelimage-calibration-"

    def __init__(self, *, plain_http: bool):
        super().__init__(plain_http=plain_http)
        probe = _run(["ctr", "--connect-timeout", "2s", "version"], "containerd", check=False)
        if probe.returncode != 0:
            raise EngineUnavailable("containerd: `ctr version` cannot reach containerd (start it, or point "
                                    "CONTAINERD_ADDRESS at its socket)")
        self.namespace = f"{self.NAMESPACE_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        listed = _run(["ctr", "namespaces", "ls", "-q"], "ctr namespaces ls", check=False).stdout.split()
        for ns in listed:
            m = re.fullmatch(re.escape(self.NAMESPACE_PREFIX) + r"([0-9]+)-[0-9a-f]+", ns)
            if m and not _alive(int(m.group(1))):
                self._remove_namespace(ns)

    @staticmethod
    def _remove_images(ns: str, refs: list[str]) -> None:
        """Remove the images ``refs`` of namespace ``ns`` with their
        snapshots, then the content no image of ``ns`` references."""
        for ref in refs:
            _run(["ctr", "-n", ns, "images", "rm", "--sync", ref], "ctr images rm", check=False)
        _run(["ctr", "-n", ns, "content", "prune", "references"], "ctr content prune", check=False)

    def _remove_namespace(self, ns: str) -> None:
        """Empty ``ns`` (its images, their snapshots, its content) and remove it."""
        self._remove_images(ns, _run(["ctr", "-n", ns, "images", "ls", "-q"], "ctr images ls",
                                     check=False).stdout.split())
        _run(["ctr", "namespaces", "rm", ns], "ctr namespaces rm", check=False)

    def close(self) -> None:
        self._remove_namespace(self.namespace)

    def pull_command(self, ref: str) -> list[str]:
        # 3 downloads at a time, as the CRI plugin that kubelet drives (max_concurrent_downloads)
        return ["ctr", "-n", self.namespace, "images", "pull", "--max-concurrent-downloads", "3",
                *(["--plain-http"] if self.plain_http else []), ref]

    def clear(self, ref: str) -> None:
        self._remove_images(self.namespace, [ref])

    def version(self) -> str:
        out = _run(["ctr", "version"], "containerd version").stdout
        server = out.split("Server:", 1)[-1]
        m = re.search(r"Version:\s*(\S+)", server)
        return f"containerd {m.group(1)}" if m else out.strip().splitlines()[0]

    def storage(self) -> Path:
        return Path("/var/lib/containerd")


class Docker(Puller):
    """``docker pull`` through the Docker daemon; ``docker rmi`` after.
    Plain HTTP needs the registry in the daemon's ``insecure-registries``
    (127.0.0.0/8 is by default)."""

    name = command = "docker"

    def __init__(self, *, plain_http: bool):
        super().__init__(plain_http=plain_http)
        if _run(["docker", "version", "--format", "{{.Server.Version}}"], "docker", check=False).returncode:
            raise EngineUnavailable("docker: no Docker daemon answers `docker version` here")

    def pull_command(self, ref: str) -> list[str]:
        return ["docker", "pull", "--quiet", ref]

    def clear(self, ref: str) -> None:
        _run(["docker", "rmi", "--force", ref], "docker rmi", check=False)

    def version(self) -> str:
        v = _run(["docker", "version", "--format", "{{.Server.Version}}"], "docker version").stdout.strip()
        return f"docker {v}"

    def storage(self) -> Path:
        return Path("/var/lib/docker")


class Modelimage(Puller):
    """``modelimage pull REF DIR`` (this Python, this package) into a fresh
    folder under ``work``; ``rm -rf`` after."""

    name = command = "modelimage"

    def __init__(self, *, plain_http: bool, work: Path | None = None):
        self.plain_http = plain_http
        self.work = Path(tempfile.mkdtemp(prefix="modelimage-calibrate-pull-", dir=work))
        self.count = 0

    def _dest(self) -> Path:
        return self.work / f"pull-{self.count}"

    def pull_command(self, ref: str) -> list[str]:
        self.count += 1
        return [sys.executable, "-m", "modelimage", "pull", ref, str(self._dest())]

    def clear(self, ref: str) -> None:
        for d in self.work.glob("pull-*"):
            shutil.rmtree(d, ignore_errors=True)

    def version(self) -> str:
        return _package_version()

    def storage(self) -> Path:
        return self.work

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def puller_for(engine: str, *, plain_http: bool, work: Path | None = None) -> Puller:
    """The :class:`Puller` for ``engine`` (one of :data:`ENGINE_NAMES`).

    Raises :class:`EngineUnavailable` when the engine cannot run here."""
    if engine == "podman":
        return Podman(plain_http=plain_http)
    if engine == "containerd":
        return Containerd(plain_http=plain_http)
    if engine == "docker":
        return Docker(plain_http=plain_http)
    if engine == "modelimage":
        return Modelimage(plain_http=plain_http, work=work)
    raise ModelImageError(f"unknown engine {engine!r}: use one of {', '.join(ENGINE_NAMES)}")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"modelimage {version('modelimage')}"
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "modelimage (not installed)"


VERSION = re.compile(r"(?<![\w.])v?([0-9]+\.[0-9]+[0-9A-Za-z.~+-]*)")


def version_number(text: object) -> str | None:
    """The first version number in an engine's version line: ``4.3.1`` of
    ``podman version 4.3.1``, ``1.6.20~ds1`` of ``containerd
    github.com/containerd/containerd 1.6.20~ds1 ...``; None when there is none."""
    m = VERSION.search(text) if isinstance(text, str) else None
    return m.group(1) if m else None


@functools.lru_cache(maxsize=None)
def installed_version(engine: str) -> str | None:
    """The version number (:func:`version_number`) of ``engine`` as
    installed here, asked the quick way and without starting anything:
    ``podman --version``, ``containerd --version`` (the binary, not the
    daemon ``ctr version`` asks), the Docker daemon's version when one
    answers, this package's. None when the engine is not here or does not
    answer within 5 seconds: a calibration's version then cannot be
    compared. Asked once per process."""
    if engine == "modelimage":
        return version_number(_package_version())
    cmd = {"podman": ["podman", "--version"], "containerd": ["containerd", "--version"],
           "docker": ["docker", "version", "--format", "{{.Server.Version}}"]}.get(engine)
    if cmd is None or shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return version_number(out.stdout) if out.returncode == 0 else None


def host_facts() -> dict[str, object]:
    """The machine itself, as a calibration records it and as an estimate
    compares it (no engine is run): ``node`` (host name), ``kernel``,
    ``cpus`` (count), ``memory_bytes`` (``MemTotal``; None when unknown)."""
    facts: dict[str, object] = {"node": os.uname().nodename, "kernel": os.uname().release,
                                "cpus": os.cpu_count() or 1}
    try:
        m = re.search(r"^MemTotal:\s+([0-9]+) kB", Path("/proc/meminfo").read_text(), re.M)
        facts["memory_bytes"] = int(m.group(1)) * 1024 if m else None
    except OSError:
        facts["memory_bytes"] = None
    return facts


def machine_facts(puller: Puller) -> dict[str, object]:
    """What the calibration is valid for: cores, memory, the storage's
    filesystem size, kernel, engine version (its line, ``engine_version``,
    and its number, ``engine_version_number``: :func:`version_number`), when."""
    line = puller.version()
    facts: dict[str, object] = {**host_facts(), "engine_version": line, "engine_version_number": version_number(line),
                                "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    where = puller.storage()
    while not where.exists() and where != where.parent:
        where = where.parent
    st = os.statvfs(where)
    facts["storage"] = str(puller.storage())
    facts["storage_disk_bytes"] = st.f_blocks * st.f_frsize
    facts["load_average"] = round(os.getloadavg()[0], 2)
    return facts
