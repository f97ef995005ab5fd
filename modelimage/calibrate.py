"""Calibrate the pull-time model on this node: time real pulls of small
generated images with the engine that will pull the models, fit its costs,
store the fit with the machine's facts.

``modelimage estimate --calibrate --engine podman`` runs :func:`calibrate`:

1. **images**: one per size x layer count x compression (defaults: 128 MiB
   and 1 GiB, 1 and 4 layers, uncompressed and gzip; the big one is 1 GiB
   because a node's per-byte cost bends between 0.1 and 1 GB: fitted on
   128 and 512 MiB, the quiet 2026-11-30 run over-estimated modelimage's
   2 GiB pulls by 29-36 %, fitted on 128 MiB and 1 GiB by -4..+21 %,
   docs/benchmarks.md), each layer one file
   of weight-like bytes in a tar (random bytes for plain layers, fp16 values
   for gzip layers, which compress like real weights), written to a
   temporary OCI layout and pushed with modelimage's own push;
2. **registry**: the one given (``--registry HOST``), or a CNCF registry
   (``docker-registry``) started on a loopback port for the run;
3. **pulls**, one group of images at a time (one size and compression,
   its layer counts: :func:`groups`), each group pushed right before its
   pulls and deleted from the registry right after (a node pulls one
   image with no other's gigabytes beside it, and so do the checks of the
   estimate): first ``sync`` (the pushes leave gigabytes of the
   registry's blobs for the kernel to write back, which a node pulling
   from a remote registry never has, and which would slow the first
   pulls' own writes) and one untimed pull of the group's smallest image
   (the engine's first run loads its binaries and storage); then
   ``repeat`` rounds; each round pulls every image of the group once, in
   a shuffled order (so a burst of other load spreads over all of them),
   and removes what the pull left before the next
   (:mod:`modelimage.pullers`); from a registry on this machine, each
   pull's blobs are read once, untimed, right before it
   (:func:`warm_loopback`: a remote registry's disk is not the node's);
   For an engine that leaves its writes to the kernel (podman,
   containerd), one more image (plain, 4 layers; last, in a group of its
   own, no warm-up) is sized so its pull
   writes :data:`DISK_PAST` (1 GiB) more than the page cache takes
   (:func:`modelimage.probes.probe_write_cache`): its pulls time the disk
   past the cache as the engine meets it. A probe of its own did not: on
   the project's VM, a write probe said 218-255 MB/s right before podman's
   and containerd's 2 GiB pulls, which met 120-180 MB/s (the guest's pace
   follows the state of the memory its writes land in, which a probe that
   writes and deletes a file changes), and those rows missed by -17..-23 %
   (run 8, docs/benchmarks.md). ``disk=False`` (``--no-calibrate-disk``)
   leaves it out;
4. **fit**: :func:`modelimage.fit.fit` on the median time of each image;
   the range estimates come with is as far as any single pull strayed from
   the fit (:attr:`modelimage.fit.Calibration.spread`): a busy node's drift;
5. **store**: ``$MODELIMAGE_CACHE_DIR/calibration/ENGINE.json`` (the fit, the
   samples, the machine's facts), which :func:`load` gives back to
   ``estimate``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from .cache import cache_dir
from .calibimages import (  # noqa: F401  (re-exported: calibrate.write_image, ImageSpec, ... as before)
    BLOCK,
    DEFAULT_COMPRESSIONS,
    MEDIA,
    ImageSpec,
    drop_blobs,
    groups,
    image_specs,
    layout_digests,
    push_image,
    remove_image,
    write_image,
)
from .durable import write_durably
from .errors import ModelImageError
from .estimate import LayerSpec
from .fit import Calibration, Sample, fit, separable
from .pullers import Puller, machine_facts, puller_for, version_number
from .registry.reference import is_loopback

MiB = 2**20
DEFAULT_SIZES: tuple[int, ...] = (128 * MiB, 1024 * MiB)
DEFAULT_LAYERS: tuple[int, ...] = (1, 4)
DISK_PAST = 1024 * MiB  # bytes the disk image's pull writes past the page cache


class CalibrationError(ModelImageError):
    """Calibration cannot run here (a tool is missing, a pull failed)."""


# ------------------------------------------------------------------ images

def disk_image(engine: str, write_cache_bytes: int, past: int = DISK_PAST) -> ImageSpec | None:
    """The image whose pull writes ``past`` bytes more than the page cache
    takes (``write_cache_bytes``): plain, 4 layers, its size rounded up to
    128 MiB (half as much for an engine that writes each blob and then its
    unpacked layer). None for an engine that syncs its writes (its disk is
    in its costs) or where the cache is not known (0)."""
    from .estimate import engine_named

    eng = engine_named(engine)
    if eng.syncs or write_cache_bytes <= 0:
        return None
    size = (write_cache_bytes + past) // (2 if eng.stores_blob else 1)
    return ImageSpec(-(-size // (128 * MiB)) * 128 * MiB, 4, "none")


# ------------------------------------------------------------------ registry

def warm_loopback(ref: str, blobs: Sequence[str]) -> None:
    """Read every blob of ``ref`` (digests ``blobs``) from its registry on
    this machine, untimed, right before a timed pull: a remote registry's
    reads cost the node nothing, but a loopback registry's blobs that the
    page cache let go are read from this node's disk during the pull. The
    project's VM pages out memory left idle for 60 s (DAMON ``pageout``),
    about the time a calibration round of 8-9 images takes: its 1 GiB
    pulls ran 13 % slower with the registry's blobs dropped from the cache
    (podman, docs/benchmarks.md run 11). Plain HTTP, as engines speak to a
    loopback registry. Best effort: a registry that wants TLS or a login
    here is not read (the pull itself says what is wrong), nothing is raised."""
    import httpx

    host, rest = ref.split("/", 1)
    repo = rest.rsplit(":", 1)[0]
    try:
        with httpx.Client(timeout=60.0, trust_env=False) as client:
            for digest in blobs:
                with client.stream("GET", f"http://{host}/v2/{repo}/blobs/{digest}") as r:
                    if r.status_code != 200:
                        return
                    for _ in r.iter_raw(1 << 20):
                        pass
    except httpx.HTTPError:
        return


@contextmanager
def loopback_registry(work: Path) -> Iterator[str]:
    """A CNCF registry (``docker-registry``) on a free loopback port, storing
    under ``work``; yields its ``127.0.0.1:PORT``, stops it after."""
    exe = shutil.which("docker-registry")
    if exe is None:
        raise CalibrationError(
            "calibration needs a registry: give one with --registry HOST (the engine must be able to pull "
            "from it), or install the CNCF registry (Debian/Ubuntu: apt-get install docker-registry) so "
            "estimate can start one on a loopback port")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {"version": 0.1, "log": {"level": "error"}, "http": {"addr": f"127.0.0.1:{port}"},
              "storage": {"filesystem": {"rootdirectory": str(work / "registry")}, "delete": {"enabled": True}}}
    (work / "registry.yml").write_text(json.dumps(config))  # JSON is YAML
    proc = subprocess.Popen([exe, "serve", str(work / "registry.yml")], stdout=subprocess.DEVNULL,
                            stderr=open(work / "registry.log", "wb"))
    try:
        import httpx

        from .registry.transport import probe_scheme, ssl_context

        deadline = time.monotonic() + 20
        while True:
            try:  # the one way modelimage asks a registry's /v2/ (it answers in plain HTTP once it serves)
                if probe_scheme(f"127.0.0.1:{port}", ssl_context(f"127.0.0.1:{port}"), 1.0) == "http":
                    break
            except (httpx.HTTPError, ModelImageError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (work / "registry.log").read_text(errors="replace").strip()[-500:]
                raise CalibrationError(f"docker-registry did not start on 127.0.0.1:{port}: {log}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ measure

def measure(puller: Puller, images: dict[str, list[LayerSpec]], *, repeat: int,
            progress: Callable[[str], None] | None = None, warm_up: bool = True,
            before: Callable[[str], None] | None = None) -> list[Sample]:
    """Pull every image ``repeat`` times with ``puller`` (rounds of every
    image once, each round shuffled), clearing before and after each pull,
    after a ``sync`` and (``warm_up``) one untimed pull of the smallest image
    (module docstring, step 3). ``images`` maps references to their layers;
    ``before(ref)`` runs, untimed, right before each timed pull
    (:func:`warm_loopback`)."""
    times: dict[str, list[float]] = {ref: [] for ref in images}
    order = list(images)
    os.sync()
    if order and warm_up:
        warm = min(order, key=lambda ref: sum(layer.tar_bytes for layer in images[ref]))
        puller.clear(warm)
        try:
            seconds = puller.pull(warm)
        finally:  # also when the pull fails or is interrupted: what it left goes
            puller.clear(warm)
        if progress:
            progress(f"{puller.name} warm-up pull of {warm.rsplit('/', 1)[-1]}: {seconds:.2f} s (not counted)")
    for r in range(repeat):
        random.shuffle(order)
        for ref in order:
            puller.clear(ref)
            if before is not None:
                before(ref)
            try:
                seconds = puller.pull(ref)
            finally:
                puller.clear(ref)
            times[ref].append(seconds)
            if progress:
                progress(f"{puller.name} pull {r + 1}/{repeat} of {ref.rsplit('/', 1)[-1]}: {seconds:.2f} s")
    return [Sample(tuple(images[ref]), tuple(times[ref])) for ref in images]


def calibrate(engine: str, *, registry: str | None = None, sizes: Sequence[int] = DEFAULT_SIZES,
              layers: Sequence[int] = DEFAULT_LAYERS, compressions: Sequence[str] = DEFAULT_COMPRESSIONS,
              repeat: int = 3, work: Path | None = None, store: bool = True,
              progress: Callable[[str], None] | None = None, disk: bool = True,
              write_cache_bytes: int | None = None, disk_past: int = DISK_PAST,
              warn: Callable[[str], None] | None = None) -> Calibration:
    """Time real pulls of generated images with ``engine`` on this node and
    fit its costs (:func:`modelimage.fit.fit`); with ``store``, save the
    result where :func:`load` finds it.

    ``registry``: ``HOST[:PORT][/PREFIX]`` to push to (default: a loopback
    ``docker-registry`` started for the run). ``work``: where the layouts,
    the loopback registry and ``modelimage pull``'s folders go (default: the
    system's temporary directory); everything written there is removed.
    ``disk``: also time the disk past the page cache (:func:`disk_image`;
    ``write_cache_bytes`` defaults to :func:`modelimage.probes.probe_write_cache`
    after a ``sync``; ``disk_past`` bytes past it).
    The images pushed to a given ``registry`` are deleted from it after
    (also when the run fails or is interrupted); ``warn`` is told which
    could not be (a registry with deletes turned off).

    Raises :class:`CalibrationError` or
    :class:`~modelimage.pullers.EngineUnavailable` when it cannot run;
    ``ModelImageError`` when a push or a pull fails."""
    if repeat < 1 or not sizes or not layers or not compressions:
        raise CalibrationError("calibration needs at least one size, layer count, compression and pull")
    specs = image_specs(sizes, layers, compressions)
    if not separable((s.size, s.layers) for s in specs):
        raise CalibrationError("calibration needs at least two sizes (the biggest 1.5x the smallest or more) and "
                               "two layer counts to tell per-pull, per-layer and per-byte costs apart")
    if registry:  # before gigabytes are generated for it
        from .registry.reference import Reference, redacted

        try:
            Reference.parse(f"{registry.rstrip('/')}/modelimage-calibration/{engine}:check")
        except ModelImageError as e:  # its first part is the reference made here (redacted), then why
            raise CalibrationError(f"--registry {redacted(registry)}: give HOST[:PORT][/PREFIX] (no scheme, "
                                   f"lowercase path): {str(e).split(': ', 1)[-1]}") from None
    say = progress or (lambda _msg: None)
    cache, big = 0, None
    if disk:
        from .probes import probe_write_cache

        os.sync()
        cache = probe_write_cache() if write_cache_bytes is None else write_cache_bytes
        big = disk_image(engine, cache, disk_past)
        if big is not None:
            room = shutil.disk_usage(work or tempfile.gettempdir()).free
            need = 2 * big.size + 512 * MiB  # its layout, and the loopback registry's copy, at once
            if room < need:
                raise CalibrationError(
                    f"timing the disk past the page cache pulls a {big.size / 2**30:.1f} GiB image and needs "
                    f"{need / 2**30:.1f} GiB free under {work or tempfile.gettempdir()} "
                    f"({room / 2**30:.1f} GiB are): free some, or pass --no-calibrate-disk")
            if big not in specs:
                specs.append(big)
        from .estimate import engine_named, written_bytes
        from .fit import PAST_CACHE

        eng = engine_named(engine)
        in_cache = {(s.size, s.layers) for s in specs if written_bytes(eng, [LayerSpec(s.size)]) < cache + PAST_CACHE}
        if cache and (len(in_cache) < 3 or not separable(in_cache)):
            raise CalibrationError(
                f"the page cache takes {cache / 2**30:.1f} GiB here and pulls past it time the disk, not the "
                "engine: give at least two sizes (1.5x apart or more) and two layer counts whose pulls write less "
                "than that")
    tmp = Path(tempfile.mkdtemp(prefix="modelimage-calibrate-", dir=work))
    pushed: dict[str, tuple[str, list[str]]] = {}  # ref -> (manifest digest, blobs): read ahead, deleted after
    left: list[str] = []  # refs the registry would not delete
    try:
        with _registry(registry, tmp) as host:
            loopback = is_loopback(host.split("/", 1)[0])
            puller = puller_for(engine, plain_http=loopback, work=tmp)
            own_store = None if registry else tmp / "registry"  # the loopback registry's storage, ours to free

            def take_back(refs: list[str]) -> None:
                for ref in refs:  # an image leaves `pushed` once deleted: one interrupted here is tried again
                    manifest, blobs = pushed[ref]
                    if not remove_image(ref, manifest, blobs):
                        left.append(ref)
                    elif own_store is not None:
                        drop_blobs(own_store, [manifest, *blobs])
                    del pushed[ref]

            try:
                facts = machine_facts(puller)
                nonce = f"{os.getpid()}-{int(time.time() * 1000) % 10**9}"
                warm = (lambda ref: warm_loopback(ref, pushed[ref][1])) if loopback else None

                def pushed_images(which: list[ImageSpec]) -> dict[str, list[LayerSpec]]:
                    images = {}
                    for spec in which:
                        ref = f"{host}/modelimage-calibration/{engine}:{spec.name}-{nonce}"
                        layout = tmp / "layout"
                        images[ref] = write_image(layout, spec, tag="calibration", nonce=f"{nonce}-{spec.name}")
                        say(f"pushing {spec.name} to {host}")
                        pushed[ref] = layout_digests(layout)
                        try:
                            push_image(layout, "calibration", ref)
                        except ModelImageError as e:
                            if own_store is None:  # the user's registry: its own words name it
                                raise
                            free = shutil.disk_usage(tmp).free
                            raise CalibrationError(
                                f"the loopback registry the calibration started (storing under {tmp.parent}, "
                                f"{free / 2**20:.0f} MiB free) did not take the {spec.name} image: free some space "
                                f"there (TMPDIR), or give --registry HOST ({str(e).split(': ', 1)[-1]})") from None
                        shutil.rmtree(layout)
                    return images

                samples: list[Sample] = []
                for group in groups(specs, big):
                    images = pushed_images(group)
                    samples += measure(puller, images, repeat=repeat, progress=progress,
                                       warm_up=group != [big], before=warm)
                    take_back(list(images))
            finally:
                puller.close()
                if registry:  # what an interruption left in a registry of the user's (a loopback one goes with tmp)
                    take_back(list(pushed))
                    if left and warn:
                        warn(f"{len(left)} calibration image(s) could not be deleted from {host} (it refuses "
                             f"deletes, or cannot be reached): {', '.join(left)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    facts["load_average_after"] = round(os.getloadavg()[0], 2)
    result = fit(engine, samples, facts=facts, write_cache_bytes=cache)
    if store:
        save(result)
    return result


@contextmanager
def _registry(registry: str | None, work: Path) -> Iterator[str]:
    if registry:
        yield registry.rstrip("/")
    else:
        with loopback_registry(work) as host:
            yield host


# ------------------------------------------------------------------ store

def path_for(engine: str) -> Path:
    """Where the calibration of ``engine`` is stored."""
    return cache_dir() / "calibration" / f"{engine}.json"


def save(calibration: Calibration) -> Path:
    """Write ``calibration`` to :func:`path_for` its engine, atomically and
    durably (:func:`modelimage.durable.write_durably`: a power cut leaves
    the old calibration or the new one, never an empty file). Raises OSError."""
    path = path_for(calibration.engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(calibration.to_json(), indent=1).encode(), mode=0o644)
    return path


def load(engine: str) -> Calibration | None:
    """The stored calibration of ``engine``, or None when there is none.
    Raises ``ModelImageError`` naming the file when it cannot be read."""
    path = path_for(engine)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ModelImageError(f"{path}: cannot read the stored calibration ({e}); run `modelimage estimate "
                              f"--calibrate --engine {engine}` again or delete the file") from None
    try:
        calibration = Calibration.from_json(data)
        if calibration.engine != engine:  # its costs would be printed as this engine's
            raise ValueError(f"it is {calibration.engine}'s")
        if "engine_version_number" not in calibration.facts:  # stored before machine_facts recorded it
            calibration = replace(calibration, facts={
                **calibration.facts, "engine_version_number": version_number(calibration.facts.get("engine_version"))})
        return calibration
    except (KeyError, TypeError, ValueError) as e:
        raise ModelImageError(f"{path}: not a calibration this modelimage reads ({e}); run `modelimage estimate "
                              f"--calibrate --engine {engine}` again") from None
