#!/usr/bin/env python3
"""Measure what pulling an image really costs, per engine, on this machine.

Writes OCI layouts of random bytes (uncompressed tar layers, made with
Python's tarfile), pushes them with the real ``skopeo copy`` to a real CNCF
registry on a loopback port, then times the engines pulling them:

- ``podman pull --tls-verify=false`` into a private podman storage root
  (overlay driver, same disk as /var/lib/containers), image removed between
  runs;
- ``ctr images pull --plain-http`` against a private containerd 1.6
  (overlayfs snapshotter), with ``ctr images rm --sync`` between runs;

and, in the same run, the two things an engine cannot beat: parallel ranged
GETs of the blobs (:func:`modelimage.estimate.probe_download`) and the disk's
write+fsync speed (:func:`modelimage.estimate.probe_disk`).

It then fits, per engine, ``seconds = fixed + per_layer * layers + bytes /
rate`` after taking off the modelled download and disk-write time, and prints
the table and the fitted constants that ``modelimage/estimate.py`` records
(docs/benchmarks.md, "Pull time per engine").

    python benchmarks/pull_calibration.py [--sizes 256MiB,1GiB,2GiB] [--layers 1,4,8]
                                          [--repeat 2] [--engines podman,containerd]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelimage import estimate  # noqa: E402
from modelimage.units import format_size, parse_size  # noqa: E402

MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
CHUNK = 4 << 20


# ---------------------------------------------------------------- layouts

class _RandomReader:
    """``n`` random bytes as a file object (tarfile reads it in chunks)."""

    def __init__(self, rng: np.random.Generator, n: int):
        self.rng, self.left = rng, n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        words = self.rng.integers(0, 2**63, size=(size + 7) // 8, dtype=np.uint64)  # 2.5x faster than .bytes()
        return words.tobytes()[:size]


class _HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.f.write(data)


def _put_blob(blobs: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_random_layout(root: Path, layer_sizes: Sequence[int], *, tag: str = "latest", seed: int = 0) -> list[int]:
    """An OCI image layout at ``root`` holding one image (tag ``tag``) with
    one uncompressed tar layer per entry of ``layer_sizes``, each layer one
    file of that many random bytes under ``/models``. Returns the layer blob
    sizes (tar bytes: file + headers + end blocks)."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    layers = []
    for i, size in enumerate(layer_sizes):
        tmp = blobs / f".layer-{i}.tmp"
        with open(tmp, "wb") as f:
            w = _HashingWriter(f)
            with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
                info = tarfile.TarInfo(f"models/part-{seed}-{i:03d}.bin")
                info.size, info.mode, info.mtime = size, 0o644, 0
                tar.addfile(info, _RandomReader(rng, size))
        digest = w.h.hexdigest()
        tmp.rename(blobs / digest)
        layers.append({"mediaType": MEDIA_TAR, "digest": f"sha256:{digest}", "size": w.n})
    config = {
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
    }
    cfg = _put_blob(blobs, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, **cfg}, "layers": layers}
    man = _put_blob(blobs, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": MEDIA_MANIFEST, **man, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return [layer["size"] for layer in layers]


def skopeo_push(layout: Path, ref: str, *, tag: str = "latest") -> None:
    """``skopeo copy`` the layout to ``ref`` (plain HTTP), layers kept as they are."""
    # --preserve-digests: without it skopeo gzips uncompressed layers on the way to a registry
    _run("skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:{tag}", f"docker://{ref}")


def layer_digests(registry_url: str, repo: str, tag: str) -> list[tuple[str, int, str]]:
    """(digest, size, mediaType) of each layer of ``repo:tag``, read back from the registry."""
    import httpx

    r = httpx.get(f"{registry_url}/v2/{repo}/manifests/{tag}", headers={"Accept": MEDIA_MANIFEST}, timeout=30)
    r.raise_for_status()
    return [(layer["digest"], layer["size"], layer["mediaType"]) for layer in r.json()["layers"]]


# ---------------------------------------------------------------- engines

def _run(*cmd: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


@dataclass
class PullTiming:
    """One timed pull: wall seconds, and the split between fetching the blobs
    and extracting them where the engine shows it."""

    seconds: float
    download_s: float | None = None  # first request -> all blobs stored
    extract_s: float | None = None  # all blobs stored -> last layer applied


class _LayerWatcher:
    """Polls a storage directory (podman's ``overlay/``) every 5 ms and notes
    when each new layer directory appears: podman 4.3 creates a layer's
    directory when it starts applying that layer's tar."""

    def __init__(self, directory: Path):
        self.directory, self.seen, self.appeared = directory, set(), []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.seen = set(self._list())
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _list(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.directory) if n != "l"]
        except FileNotFoundError:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for name in self._list():
                if name not in self.seen:
                    self.seen.add(name)
                    self.appeared.append(now)
            time.sleep(0.005)


@dataclass
class Podman:
    """podman with a private storage root (so other users of the default
    store neither see nor disturb the measurement)."""

    root: Path

    def __post_init__(self):
        self.storage = self.root / "storage"
        self.runroot = self.root / "run"
        _run(*self._cmd("info"))  # creates the store

    def _cmd(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.storage), "--runroot", str(self.runroot),
                "--storage-driver", "overlay", *args]

    def pull(self, ref: str) -> PullTiming:
        with _LayerWatcher(self.storage / "overlay") as watch:
            t = time.perf_counter()
            _run(*self._cmd("pull", "--quiet", "--tls-verify=false", ref))
            end = time.perf_counter()
        if not watch.appeared:
            return PullTiming(end - t)
        return PullTiming(end - t, watch.appeared[0] - t, end - watch.appeared[0])

    def remove(self, ref: str) -> None:
        _run(*self._cmd("rmi", "--force", ref), check=False)

    def close(self) -> None:
        _run(*self._cmd("system", "reset", "--force"), check=False)
        subprocess.run(["umount", "-R", str(self.storage)], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Containerd:
    """A private containerd 1.6 with the overlayfs snapshotter."""

    root: Path
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.sock = self.root / "containerd.sock"
        (self.root / "config.toml").write_text(
            f'version = 2\nroot = "{self.root}/root"\nstate = "{self.root}/state"\n'
            f'[grpc]\n  address = "{self.sock}"\n')
        self.proc = subprocess.Popen(["containerd", "--config", str(self.root / "config.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "log", "wb"))
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(self.root / 'log').read_text()[-2000:]}")
            time.sleep(0.1)

    def pull(self, ref: str) -> PullTiming:
        t = time.perf_counter()
        out = _run("ctr", "--address", str(self.sock), "images", "pull", "--plain-http", ref).stdout
        dt = time.perf_counter() - t
        # ctr 1.6 fetches every blob, then unpacks and prints "done: <Go duration>" for the unpack alone
        m = re.search(r"done: ([0-9.]+)(ms|s)", out)
        if not m:
            return PullTiming(dt)
        unpack = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        return PullTiming(dt, None, unpack)

    def remove(self, ref: str) -> None:
        _run("ctr", "--address", str(self.sock), "images", "rm", "--sync", ref, check=False)

    def close(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        subprocess.run(["umount", "-R", str(self.root / "root")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------- fit

@dataclass
class Sample:
    engine: str
    image_bytes: int
    layers: int
    seconds: list[float] = field(default_factory=list)
    unpack_seconds: list[float] = field(default_factory=list)  # containerd: ctr's own "done:" figure
    bandwidth_bps: float = 0.0
    disk_bps: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def fit_engine(samples: Sequence[Sample], engine: estimate.Engine) -> tuple[float, float, float]:
    """Least squares for (fixed_s, per_layer_s, process_bps): the measured time
    minus the modelled download and disk time, against (1, layers, bytes)."""
    rows, y = [], []
    for s in samples:
        layers = [estimate.LayerSpec(s.image_bytes // s.layers)] * s.layers
        bare = estimate.estimate_pull(layers, bandwidth_bps=s.bandwidth_bps, disk_bps=s.disk_bps,
                                      engine=_without_processing(engine), latency_s=0.0)
        rows.append([1.0, s.layers, s.image_bytes])
        y.append(s.median - bare.total_seconds)
    (fixed, per_layer, per_byte), *_ = np.linalg.lstsq(np.array(rows), np.array(y), rcond=None)
    return float(fixed), float(per_layer), float(1 / per_byte) if per_byte > 0 else float("inf")


def _without_processing(engine: estimate.Engine) -> estimate.Engine:
    from dataclasses import replace

    return replace(engine, pull_overhead_s=0.0, layer_overhead_s=0.0, process_bps=float("inf"))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256MiB,1GiB,2GiB")
    ap.add_argument("--layers", default="1,4,8")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--engines", default="podman,containerd")
    ap.add_argument("--workdir", default="/var/tmp", help="where layouts and engine storage go (a real disk)")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    layer_counts = [int(n) for n in args.layers.split(",")]
    engines = args.engines.split(",")

    from tests.registry import start_registry

    work = Path(tempfile.mkdtemp(prefix="pullcal-", dir=args.workdir))
    reg = start_registry()
    runners: dict[str, Podman | Containerd] = {}
    samples: list[Sample] = []
    try:
        if "podman" in engines:
            runners["podman"] = Podman(work / "podman")
        if "containerd" in engines:
            runners["containerd"] = Containerd(Path(tempfile.mkdtemp(prefix="ctrd-")))
        disk_bps = estimate.probe_disk(work)
        print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus {date.today()}; "
              f"disk write+fsync {disk_bps / 1e6:.0f} MB/s", flush=True)
        print("| engine | image | layers | runs (s) | median s | unpack s | GET MB/s | disk MB/s |", flush=True)
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for size in sizes:
            for n in layer_counts:
                repo, tag = f"cal/s{size}-l{n}", "v1"
                layout = work / "layout"
                write_random_layout(layout, [size // n] * n, seed=size + n)
                skopeo_push(layout, f"{reg.host}/{repo}:{tag}")
                shutil.rmtree(layout)
                blobs = layer_digests(reg.url, repo, tag)
                assert all(media == MEDIA_TAR for _, _, media in blobs), blobs
                biggest = max(blobs, key=lambda b: b[1])
                bw = estimate.probe_download(f"{reg.url}/v2/{repo}/blobs/{biggest[0]}")
                image_bytes = sum(b[1] for b in blobs)
                ref = f"{reg.host}/{repo}:{tag}"
                for name, runner in runners.items():
                    s = Sample(name, image_bytes, n, bandwidth_bps=bw, disk_bps=disk_bps)
                    for _ in range(args.repeat):
                        runner.remove(ref)
                        s.seconds.append(runner.pull(ref))
                        if isinstance(runner, Containerd) and runner.last_unpack_s is not None:
                            s.unpack_seconds.append(runner.last_unpack_s)
                        runner.remove(ref)
                    samples.append(s)
                    unpack = f"{statistics.median(s.unpack_seconds):.2f}" if s.unpack_seconds else "-"
                    print(f"| {name} | {format_size(image_bytes)} | {n} | "
                          f"{', '.join(f'{t:.2f}' for t in s.seconds)} | {s.median:.2f} | {unpack} | "
                          f"{bw / 1e6:.0f} | {disk_bps / 1e6:.0f} |", flush=True)
                subprocess.run(["rm", "-rf", str(reg.root / "data" / "docker" / "registry" / "v2" / "blobs")])
        print()
        print("| engine | fixed s | per layer s | process MB/s | max abs error of the fit |")
        print("|---|---|---|---|---|")
        for name in runners:
            mine = [s for s in samples if s.engine == name]
            fixed, per_layer, bps = fit_engine(mine, estimate.ENGINES[name])
            from dataclasses import replace

            fitted = replace(estimate.ENGINES[name], pull_overhead_s=fixed, layer_overhead_s=per_layer,
                             process_bps=bps)
            errs = []
            for s in mine:
                layers = [estimate.LayerSpec(s.image_bytes // s.layers)] * s.layers
                e = estimate.estimate_pull(layers, bandwidth_bps=s.bandwidth_bps, disk_bps=s.disk_bps,
                                           engine=fitted, latency_s=0.0)
                errs.append(e.total_seconds / s.median - 1)
            print(f"| {name} | {fixed:.2f} | {per_layer:.3f} | {bps / 1e6:.0f} | "
                  f"{max(abs(e) for e in errs) * 100:.0f} % |")
            for s, err in zip(mine, errs):
                print(f"#   {name} {format_size(s.image_bytes)} x{s.layers}: measured {s.median:.2f} s, "
                      f"fit {s.median * (1 + err):.2f} s ({err * 100:+.0f} %)")
    finally:
        for runner in runners.values():
            runner.close()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
