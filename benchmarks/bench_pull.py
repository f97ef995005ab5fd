#!/usr/bin/env python3
"""Time-to-files of ``modelimage pull`` against its peers, on a loopback
registry, in one run:

- plain ``curl`` GETs of the same layer blobs, ``--parallel`` at a time,
  written to files (no verification, no extraction): the most a client can
  get out of this registry on this machine;
- ``modelimage pull REF DEST`` (fresh DEST each run);
- ``podman pull`` + copying the model out of the image (``podman create`` +
  ``podman cp``), what an init container or a script does without modelimage;
- the estimator's "modelimage" engine (modelimage/estimate.py) for the same
  layers, with this machine's probed download speed and 2 cores, next to the
  measured pull.

The model: random fp16 safetensors written with the real writer, one file per
layer (``--layers``), ``--gib`` in all, pushed with ``modelimage build --push``
(uncompressed layers). Each contender runs ``--runs`` times; medians.

    python benchmarks/bench_pull.py [--gib 2] [--layers 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from common import MI, timed  # noqa: E402  (puts the repository on sys.path)

from modelimage.synth import write_random_shards  # noqa: E402
from tests.registry import start_registry  # noqa: E402
from tests.tools import CONTAINERS_CONF  # noqa: E402


def curl_get_all(host: str, repo: str, digests: list[str], out: Path, parallel: int) -> float:
    out.mkdir(parents=True)
    args = ["curl", "-s", "-f", "--no-progress-meter", "--parallel", "--parallel-max", str(parallel)]
    for d in digests:
        args += ["-o", str(out / d.split(":")[1]), f"http://{host}/v2/{repo}/blobs/{d}"]
    t = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t


def podman_pull_and_copy(ref: str, target: str, dest: Path, env: dict) -> tuple[float, float]:
    t = time.perf_counter()
    subprocess.run(["podman", "pull", "-q", "--tls-verify=false", ref], check=True, capture_output=True, env=env)
    pulled = time.perf_counter() - t
    cid = subprocess.run(["podman", "create", ref, "x"], check=True, capture_output=True, text=True,
                         env=env).stdout.strip()
    subprocess.run(["podman", "cp", f"{cid}:{target}", str(dest)], check=True, capture_output=True, env=env)
    total = time.perf_counter() - t
    subprocess.run(["podman", "rm", "-f", cid], capture_output=True, env=env)
    subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, env=env)
    return pulled, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4, help="curl transfers at once")
    ap.add_argument("--no-podman", action="store_true")
    args = ap.parse_args()

    from modelimage import estimate as est
    from modelimage import probes
    from modelimage.registry.client import RegistryClient
    from modelimage.registry.reference import Reference

    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    model = work / "model"
    write_random_shards(model, args.gib, args.layers)
    reg = start_registry()
    env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(work / "cache")}
    rows: dict[str, list[float]] = {}
    notes: list[str] = []
    try:
        ref = f"{reg.host}/bench/model:v1"
        subprocess.run([*MI, "build", str(model), "--push", ref], check=True, capture_output=True, env=env)
        client = RegistryClient(Reference.parse(ref))
        manifest = client.get_manifest("bench/model", "v1").json()
        layers = manifest["layers"]
        digests = [d["digest"] for d in layers]
        size = sum(int(d["size"]) for d in layers)
        target = manifest["annotations"]["dev.modelimage.target"]
        biggest = max(layers, key=lambda d: int(d["size"]))
        get_bps = probes.probe_download(client.url(f"/v2/bench/model/blobs/{biggest['digest']}"),
                                        transport=client.transport)
        client.close()

        for run in range(args.runs):
            dest = work / f"curl{run}"
            rows.setdefault(f"curl GETs of the blobs, {args.parallel} at a time (no verify, no untar)", []).append(
                curl_get_all(reg.host, "bench/model", digests, dest, args.parallel))
            shutil.rmtree(dest)
            dest = work / f"pull{run}"
            rows.setdefault("modelimage pull", []).append(timed([*MI, "pull", ref, str(dest)], env))
            check = subprocess.run([*MI, "verify", ref, str(dest)], capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"verify failed: {check.stderr}")
            shutil.rmtree(dest)
        if not args.no_podman and shutil.which("podman"):
            conf = work / "containers.conf"
            conf.write_text(CONTAINERS_CONF)
            penv = {**os.environ, "CONTAINERS_CONF": str(conf)}
            subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, env=penv)
            for run in range(args.runs):
                dest = work / f"podman{run}"
                pulled, total = podman_pull_and_copy(ref, target, dest, penv)
                rows.setdefault("podman pull", []).append(pulled)
                rows.setdefault("podman pull + create + cp (files on disk)", []).append(total)
                shutil.rmtree(dest)

        spec = [est.LayerSpec(int(d["size"])) for d in layers]
        e = est.estimate_pull(spec, bandwidth_bps=get_bps, engine="modelimage", latency_s=0.0,
                              write_cache_bytes=probes.probe_write_cache())
        estimate_s = e.total_seconds
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rows.items()}
    curl = next(v for k, v in med.items() if k.startswith("curl"))
    pull = med["modelimage pull"]
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, {date.today()}, "
          f"{size / 1e9:.2f} GB in {len(layers)} layers, median of {args.runs} runs; "
          f"probe_download {get_bps / 1e6:.0f} MB/s")
    print("| what | seconds (runs) | median s | MB/s | time vs modelimage pull |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {runs} | {med[name]:.2f} | {size / med[name] / 1e6:.0f} | {med[name] / pull:.2f}x |")
    print()
    print(f"modelimage pull throughput vs curl: {curl / pull:.2f}x (goal >= 0.9x)")
    if "podman pull + create + cp (files on disk)" in med:
        print(f"modelimage pull time vs podman pull + copy: "
              f"{pull / med['podman pull + create + cp (files on disk)']:.2f}x (goal <= 0.5x)")
    print(f"estimate (engine 'modelimage', probed {get_bps / 1e6:.0f} MB/s, 2 cpus): {estimate_s:.2f} s; "
          f"measured {pull:.2f} s ({(estimate_s - pull) / pull * 100:+.0f} %)")
    for n in notes:
        print(n)


if __name__ == "__main__":
    main()
