"""The pull-time model against real pulls on this machine, recorded, never
asserted (a CI test that compares an estimate from constants fitted on
another machine with a pull here is a timing test: issue 21).

Two checks, each printing the estimate, the measured pulls and the error:

- ``podman pull`` of a 1 GiB image (8 plain tar layers, like a sharded
  model, pushed with skopeo from a layout written here) from a real CNCF
  registry on loopback. Bandwidth and disk speed are probed first
  (probe_download against that registry, probe_disk and probe_sync_latency
  on podman's disk); around each of five pulls, the free cores (probe_cpus,
  before and after) and the page cache (probe_write_cache, before).
- ``modelimage pull`` of a 1 GiB model (random fp16 safetensors in 4
  shards) built and pushed by modelimage, five times into a fresh folder.

Run: ``python benchmarks/estimate_vs_pull.py [--only podman|modelimage]``.
Copy the printed lines into docs/benchmarks.md with the machine and date.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pull_calibration import (  # noqa: E402
    Podman,
    layer_specs,
    registry_layers,
    skopeo_push,
    write_layout,
)
from modelimage import estimate, probes  # noqa: E402
from modelimage.units import format_rate, format_size  # noqa: E402
from tests.registry import start_registry  # noqa: E402

IMAGE_BYTES = 2**30
LAYERS = 8
PULLS = 5


def podman_vs_estimate() -> float:
    """Median estimate / median measured - 1 for podman pulls of a 1 GiB image."""
    # podman's overlay store and the layout on a real disk (/var/tmp), not a tmpfs
    work = Path(tempfile.mkdtemp(prefix="estimate-vs-podman-", dir="/var/tmp"))
    reg = start_registry()
    podman = None
    try:
        podman = Podman(work / "podman")
        write_layout(work / "layout", [IMAGE_BYTES // LAYERS] * LAYERS, seed=42, content="repeating")
        ref = f"{reg.host}/estimate/podman:v1"
        skopeo_push(work / "layout", ref)
        shutil.rmtree(work / "layout")
        # start estimate and pulls from the same writeback state: dirty pages left by earlier
        # tests (GBs of writes) would slow the pulls for reasons no probe of this pull sees
        os.sync()

        layers = registry_layers(reg.url, "estimate/podman", "v1")
        assert [d["mediaType"] for d in layers] == ["application/vnd.oci.image.layer.v1.tar"] * LAYERS
        biggest = max(layers, key=lambda d: d["size"])
        bandwidth = probes.probe_download(f"{reg.url}/v2/estimate/podman/blobs/{biggest['digest']}")
        disk = probes.probe_disk(work)
        sync_latency = probes.probe_sync_latency(work)

        # Other jobs share this machine's 2 cores and come and go (a pull ran 7 s idle, 12 s beside a
        # test suite), so the free cores are probed right before and right after each pull and the
        # estimate for that pull uses their mean; the page cache is probed before it.
        estimates, runs, cores, caches = [], [], [], []
        for _ in range(PULLS):
            podman.remove(ref)
            before = probes.probe_cpus()
            caches.append(probes.probe_write_cache())
            runs.append(podman.pull(ref))
            cores.append((before + probes.probe_cpus()) / 2)
            estimates.append(estimate.estimate_pull(
                layer_specs(layers), bandwidth_bps=bandwidth, engine="podman", disk_bps=disk,
                write_cache_bytes=caches[-1], cpus=cores[-1], latency_s=0.0, sync_latency_s=sync_latency))
            podman.remove(ref)
        predicted = statistics.median(e.total_seconds for e in estimates)
        measured = statistics.median(r.seconds for r in runs)
        error = predicted / measured - 1

        print(f"\npodman pull of {format_size(sum(d['size'] for d in layers))} in {LAYERS} layers from loopback; "
              f"probed link {format_rate(bandwidth)}, disk {format_rate(disk)} "
              f"(fdatasync {sync_latency * 1e3:.2f} ms), "
              f"write cache {', '.join(format_size(c) for c in caches)}, "
              f"cores free {', '.join(f'{c:.2f}' for c in cores)} of {os.cpu_count()}")
        middle = sorted(estimates, key=lambda e: e.total_seconds)[PULLS // 2]
        print(f"estimate: {predicted:.2f} s  (median of " + ", ".join(f"{e.total_seconds:.2f}" for e in estimates)
              + "; phases of the median " + ", ".join(f"{k} {v:.2f}" for k, v in middle.phases.items()) + ")")
        print(f"measured: {measured:.2f} s  (median of " + ", ".join(f"{r.seconds:.2f}" for r in runs)
              + "; download/extract " + ", ".join(f"{r.download_s or 0:.2f}/{r.extract_s or 0:.2f}" for r in runs)
              + ")")
        print(f"error: {error * 100:+.1f} %")
        return error
    finally:
        if podman is not None:
            podman.close()
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


def modelimage_vs_estimate() -> float:
    """The same check for the estimator's "modelimage" engine: a 1 GiB model
    (random fp16 safetensors in 4 shards, written with the real writer) built
    and pushed by modelimage, then ``modelimage pull`` into a fresh folder five
    times, each next to the free cores probed around it."""
    from modelimage.synth import write_random_shards

    work = Path(tempfile.mkdtemp(prefix="estimate-vs-pull-", dir="/var/tmp"))
    reg = start_registry()
    env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(work / "cache")}
    mi = [sys.executable, "-m", "modelimage"]
    try:
        write_random_shards(work / "model", 1.0, 4)
        ref = f"{reg.host}/estimate/pull:v1"
        subprocess.run([*mi, "build", str(work / "model"), "--push", ref], check=True, capture_output=True, env=env)
        shutil.rmtree(work / "model")
        os.sync()
        layers = registry_layers(reg.url, "estimate/pull", "v1")
        biggest = max(layers, key=lambda d: d["size"])
        bandwidth = probes.probe_download(f"{reg.url}/v2/estimate/pull/blobs/{biggest['digest']}")

        estimates, runs, cores = [], [], []
        for k in range(PULLS):
            dest = work / f"dest{k}"
            before = probes.probe_cpus()
            cache = probes.probe_write_cache()
            t = time.perf_counter()
            subprocess.run([*mi, "pull", ref, str(dest)], check=True, capture_output=True, env=env)
            runs.append(time.perf_counter() - t)
            cores.append((before + probes.probe_cpus()) / 2)
            estimates.append(estimate.estimate_pull(
                layer_specs(layers), bandwidth_bps=bandwidth, engine="modelimage", write_cache_bytes=cache,
                cpus=cores[-1], latency_s=0.0).total_seconds)
            shutil.rmtree(dest)
        predicted, measured = statistics.median(estimates), statistics.median(runs)
        error = predicted / measured - 1
        print(f"\nmodelimage pull of {format_size(sum(d['size'] for d in layers))} in {len(layers)} layers from "
              f"loopback; probed link {format_rate(bandwidth)}, "
              f"cores free {', '.join(f'{c:.2f}' for c in cores)}")
        print("estimate: " + ", ".join(f"{e:.2f}" for e in estimates) + f" s (median {predicted:.2f})")
        print("measured: " + ", ".join(f"{r:.2f}" for r in runs) + f" s (median {measured:.2f})")
        print(f"error: {error * 100:+.1f} %")
        return error
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("podman", "modelimage"), help="run one check")
    args = ap.parse_args()
    for tool in ("docker-registry",) + (("podman", "skopeo") if args.only != "modelimage" else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make tools installs it)")
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, {date.today()}")
    errors = {}
    if args.only in (None, "podman"):
        errors["podman"] = podman_vs_estimate()
    if args.only in (None, "modelimage"):
        errors["modelimage"] = modelimage_vs_estimate()
    print()
    for engine, error in errors.items():
        print(f"| {engine} | 1 GiB | estimate vs median real pull | {error * 100:+.0f} % |")


if __name__ == "__main__":
    main()
