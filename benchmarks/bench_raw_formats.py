#!/usr/bin/env python3
"""Raw-file formats at copy speed (issue 20): building a ModelPack or a
Docker model artifact into an OCI layout against ``cp`` of the same bytes,
in one run.

A ``--format modelpack`` or ``docker-model`` layer is the file itself, so
the build must read each byte once, hash it once (the blob's digest is the
file's sha256) and copy it (the kernel does, ``copy_file_range``). Goal:
at most 1.2x ``cp -r`` of the same folder (shown against ``cp -r`` and
against ``cp -r`` followed by ``sync`` of the copies: a layout's blobs are
fsynced before ``index.json`` names them, plain ``cp`` leaves the writing
to the kernel after it returns). An image (``--format image``,
tar layers) needs two hashes per byte (the tar's and the file's, which
the layer's file list records): shown beside it, with the floor it cannot
go under here (sha256 of every byte once, both cores, no copy).

The model: ``--gib`` GiB of random fp16 safetensors in ``--shards`` files
(the real writer) + config.json, in /var/tmp (a real disk), removed at the
end with everything else. Each round runs every contender once, in turn,
after ``sync``, with a cold digest cache; medians of ``--runs`` rounds.

    python benchmarks/bench_raw_formats.py [--gib 2] [--shards 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from bench_build_push import hash_floor  # noqa: E402
from common import MI, byte_compile  # noqa: E402  (puts the repository on sys.path)

MB = 1e6
CP_SYNC = "cp -r of the model folder, then sync of the copies (durable, as a layout build is)"
STARTUP = "modelimage build --format modelpack of a 1 MiB model (start-up: Python, imports, inspect)"


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of ``cmd``."""
    t = time.perf_counter()
    before = os.times()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    after = os.times()
    return time.perf_counter() - t, (after.children_user - before.children_user) + (
        after.children_system - before.children_system)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", metavar="PYTHON",
                    help="also run the raw-format builds with this interpreter's modelimage (another checkout's "
                         "venv, e.g. the code before a change), in the same rounds")
    args = ap.parse_args()

    from modelimage.synth import write_random_shards

    for python in (MI[0], *([args.baseline] if args.baseline else [])):
        byte_compile(python)  # start-up as installed, not compiling every module each run

    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-raw-", dir="/var/tmp"))
    rows: dict[str, list[tuple[float, float]]] = {}
    try:
        model = write_random_shards(work / "model", args.gib, args.shards)
        tiny = write_random_shards(work / "tiny", 1 / 1024, 1)
        size = sum(p.stat().st_size for p in model.iterdir())
        contenders = {
            STARTUP: [*MI, "build", str(tiny), "--format", "modelpack", "-o", f"oci:{work / 'out'}:v1", "-q"],
            "cp -r of the model folder": ["cp", "-r", str(model), str(work / "out")],
            # a layout's blobs are fsynced before index.json names them: the durable peer syncs what it copied
            CP_SYNC: ["sh", "-c", 'cp -r "$1" "$2" && sync "$2"/*', "cp", str(model), str(work / "out")],
            "modelimage build --format modelpack -o oci:": [*MI, "build", str(model), "--format", "modelpack",
                                                             "-o", f"oci:{work / 'out'}:v1", "-q"],
            "modelimage build --format docker-model -o oci:": [*MI, "build", str(model), "--format", "docker-model",
                                                                "-o", f"oci:{work / 'out'}:v1", "-q"],
            "modelimage build -o oci: (image: tar layers)": [*MI, "build", str(model), "-o",
                                                              f"oci:{work / 'out'}:v1", "-q"],
        }
        if args.baseline:
            for fmt in ("modelpack", "docker-model"):
                contenders[f"baseline: modelimage build --format {fmt} -o oci: ({args.baseline})"] = [
                    args.baseline, "-m", "modelimage", "build", str(model), "--format", fmt,
                    "-o", f"oci:{work / 'out'}:v1", "-q"]
        for _ in range(args.runs):
            for label, cmd in contenders.items():
                env = {k: v for k, v in os.environ.items() if k != "MODELIMAGE_CACHE_DIR"}
                env["MODELIMAGE_NO_CACHE"] = "1"
                subprocess.run(["sync"], check=True)
                rows.setdefault(label, []).append(timed(cmd, env))
                shutil.rmtree(work / "out")
            rows.setdefault("sha256 of every byte once, both cores, no copy (the floor of hashing)", []).append(
                (hash_floor(model), 0.0))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()[0]

    cp = statistics.median(w for w, _ in rows["cp -r of the model folder"])
    cps = statistics.median(w for w, _ in rows[CP_SYNC])
    print(f"Machine: {os.uname().nodename} ({os.uname().machine}, {os.cpu_count()} cores); {date.today()}; "
          f"load average {load0:.2f} at the start, {load1:.2f} at the end.")
    print(f"Model: {args.gib:g} GiB of random fp16 safetensors in {args.shards} files + config.json "
          f"({size / MB:.0f} MB); median of {args.runs} interleaved rounds, cold digest cache, `sync` before each.")
    print(f"Command: `python benchmarks/bench_raw_formats.py --gib {args.gib:g} --shards {args.shards} "
          f"--runs {args.runs}`.")
    print()
    start = statistics.median(x for x, _ in rows[STARTUP])
    print("| what | wall s (runs) | median | CPU s | vs cp | vs cp + sync | less start-up, vs cp + sync | goal |")
    print("|---|---|---|---|---|---|---|---|")
    for label, v in rows.items():
        w = statistics.median(x for x, _ in v)
        c = statistics.median(y for _, y in v)
        goal, net = "", ""
        if label != STARTUP and label.startswith(("modelimage", "baseline")):
            net = f"{(w - start) / cps:.2f}x"
        if label != STARTUP and ("modelpack" in label or "docker-model" in label):
            goal = (f"<= 1.2x cp: {'pass' if w <= 1.2 * cp else 'miss'}; <= 1.2x cp + sync: "
                    f"{'pass' if w <= 1.2 * cps else 'miss'}")
        elif "(image" in label:
            goal = "two hashes per byte: at its floor (see the text)"
        print(f"| {label} | {', '.join(f'{x:.2f}' for x, _ in v)} | {w:.2f} | {c:.2f} | {w / cp:.2f}x | "
              f"{w / cps:.2f}x | {net} | {goal} |")


if __name__ == "__main__":
    main()
