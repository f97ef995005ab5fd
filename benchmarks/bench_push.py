#!/usr/bin/env python3
"""Push throughput against a local CNCF registry, in one run:

- the registry's own speed: `curl -T` monolithic PUTs of the same layer
  blobs (digest known up front, so this is the most a client can get);
- `modelimage build --push` of the same model, cold (nothing cached) at
  --concurrency 1, 2, 3, 4, and warm (unchanged model, digests cached);
- `skopeo copy` of the same image from an OCI layout, as a peer.

Prints a table of seconds and ratios to the raw PUT. The default upload
concurrency in modelimage.registry.push comes from this table.

    python benchmarks/bench_push.py [--gib 1] [--layers 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from common import MI, timed  # noqa: E402  (puts the repository on sys.path)

from modelimage.synth import write_random_shards  # noqa: E402
from tests.registry import start_registry  # noqa: E402


def curl_put_all(host: str, blobs: list[Path]) -> float:
    """Raw monolithic PUTs of each blob, one after another (curl -T)."""
    digests = []
    for b in blobs:
        h = hashlib.sha256()
        with open(b, "rb") as f:
            for c in iter(lambda: f.read(4 << 20), b""):
                h.update(c)
        digests.append("sha256:" + h.hexdigest())
    t = time.perf_counter()
    for i, (b, d) in enumerate(zip(blobs, digests)):
        loc = subprocess.run(["curl", "-s", "-D", "-", "-o", "/dev/null", "-X", "POST",
                              f"http://{host}/v2/raw/put{i}/blobs/uploads/"], capture_output=True, text=True).stdout
        location = next(line.split(" ", 1)[1].strip() for line in loc.splitlines()
                        if line.lower().startswith("location:"))
        if location.startswith("/"):
            location = f"http://{host}{location}"
        subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "-X", "PUT",
                        "-H", "Content-Type: application/octet-stream",
                        "-T", str(b), f"{location}&digest={d}"], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    model = work / "model"
    write_random_shards(model, args.gib, args.layers)
    reg = start_registry()
    rows: list[tuple[str, float]] = []
    try:
        layout = work / "oci"
        subprocess.run([*MI, "build", str(model), "-o", f"oci:{layout}:v1"], check=True, capture_output=True)
        blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: -p.stat().st_size)[: args.layers]
        raw = curl_put_all(reg.host, blobs)
        rows.append(("raw monolithic PUT (curl -T), sequential", raw))
        for conc in (1, 2, 3, 4):
            env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(work / f"cache{conc}")}
            rows.append((f"modelimage build --push, cold, --concurrency {conc}",
                         timed([*MI, "build", str(model), "--push", f"{reg.host}/mi/c{conc}:v1",
                                "--concurrency", str(conc)], env)))
        env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(work / "cache3")}
        rows.append(("modelimage build --push, warm (unchanged)",
                     timed([*MI, "build", str(model), "--push", f"{reg.host}/mi/c3:v1"], env)))
        rows.append(("skopeo copy oci: -> registry", timed(
            ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:v1",
             f"docker://{reg.host}/skopeo/m:v1"])))
    finally:
        reg.stop()
        subprocess.run(["rm", "-rf", str(work)])
    size = args.gib * 2**30
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, {date.today()}, "
          f"{args.gib} GiB in {args.layers} layers")
    print("| what | seconds | MB/s | vs raw PUT |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.2f} | {size / s / 1e6:.0f} | {s / raw:.2f}x |")


if __name__ == "__main__":
    main()
