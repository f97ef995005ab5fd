#!/usr/bin/env python3
"""Build and push of a model against its peers, on the same bytes, in one run
(what ``make bench`` records in docs/benchmarks.md):

1. ``cp -r`` of the model folder to a new folder on the same filesystem (the
   disk's own speed; ``sync`` first);
2. ``modelimage build MODEL -o oci:DIR:v1`` (a layout on disk), cold cache;
3. raw monolithic PUTs (``curl -T``) of that layout's layer blobs, one after
   another, digest known up front: the registry's own speed;
4. ``modelimage build MODEL --push HOST/mi/cold:v1``, cold cache (build+push
   in one pass); then ``skopeo inspect`` of the result must succeed;
5. the same command again, unchanged (warm: digests cached, nothing sent);
6. ``modelimage push oci:DIR:v1 HOST/mi/pushonly:v1`` (an existing layout),
   cold cache;
7. ``podman build`` (``FROM scratch`` + ``COPY model/``, ``--layers=false
   --format oci``) and ``podman push`` of the result, timed apart and summed,
   in a private podman store;
8. ``skopeo copy --preserve-digests oci:DIR:v1 docker://...`` (the same
   blobs; without the flag skopeo gzips the layers);
9. oras-py (``oras.client.OrasClient``) pushing the model's files, in its own
   Python process so its start-up counts like everybody else's;
10. the peak RSS of modelimage in 2 and 4 (``/usr/bin/time -f %M``);
11. with ``--warm-gib`` > 0: a second model of that size, pushed cold, then
    re-pushed unchanged (the warm re-push must take under a second).

Every "cold" modelimage command gets a fresh ``MODELIMAGE_CACHE_DIR``. Each
run (``--runs``) gets a fresh registry (Debian's docker-registry on
loopback, storage in the work folder), so no client can skip or mount a blob
it pushed in an earlier run; the table shows medians. The model: random fp16
safetensors written with the real writer (``modelimage.synth``), one file per
layer, plus a config.json. Everything lives in a folder under /var/tmp (a
real disk), removed at the end.

Prints a markdown table (seconds, MB/s of the model's bytes, ratios, and a
pass/fail column for the targets: build+push <= 0.45x podman build + push;
layout push throughput >= 0.85x the raw PUT's; layout build <= 1.3x cp; warm
re-push < 1 s; peak RSS < 200 MB) and writes it, with the machine, CPU, date,
model size and load average, into docs/benchmarks.md between the lines
``<!-- bench_build_push:begin -->`` and ``<!-- bench_build_push:end -->``
(``--no-write``: print only).

    python benchmarks/bench_build_push.py [--gib 2] [--layers 8] [--runs 1] [--warm-gib 4] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from common import DOC, MI, REPO, write_section  # noqa: E402  (puts the repository on sys.path)

from tests.tools import CONTAINERS_CONF  # noqa: E402

HEADING = "## Build and push against peers (make bench)"

CONTAINERFILE = "FROM scratch\nCOPY model/ /models/m/\n"
# the build context is the work folder: only model/ goes in
CONTAINERIGNORE = "*\n!model\n"

# oras-py in a process of its own: ``python -c ORAS_PUSH HOST TARGET`` in the model folder
ORAS_PUSH = """\
import os, sys
import oras.client
files = sorted(f for f in os.listdir('.') if os.path.isfile(f))
oras.client.OrasClient(hostname=sys.argv[1], insecure=True).push(target=sys.argv[2], files=files, quiet=True)
"""
# without /usr/bin/time: ``python -c RSS_WRAPPER OUT CMD...`` runs CMD and writes its peak RSS (KiB)
RSS_WRAPPER = """\
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""

# row names (the targets refer to them)
CP = "cp -r of the model folder (same filesystem)"
LAYOUT = "modelimage build -o oci: (layout), cold cache"
RAW = "raw monolithic PUT of the layer blobs (curl -T), sequential"
COLD = "modelimage build --push, cold cache"
WARM = "modelimage build --push again, warm (unchanged)"
PUSHONLY = "modelimage push oci: (existing layout), cold cache"
PODMAN_BUILD = "podman build (FROM scratch + COPY, --layers=false --format oci)"
PODMAN_PUSH = "podman push"
PODMAN_BOTH = "podman build + podman push"
SKOPEO = "skopeo copy oci: -> registry"
ORAS = "oras-py push of the model files"
HASH = "sha256 of the same files, once, on every core (hashlib threads, no copy)"
RSS_LAYOUT = "peak RSS: modelimage build -o oci:"
RSS_COLD = "peak RSS: modelimage build --push, cold"
MB = 1e6


@dataclass
class Results:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[int]] = field(default_factory=dict)  # bytes
    names: dict[str, str] = field(default_factory=dict)  # row key -> label with details found while running
    notes: list[str] = field(default_factory=list)

    def add(self, key: str, seconds: float) -> None:
        self.seconds.setdefault(key, []).append(seconds)

    def med(self, key: str) -> float | None:
        v = self.seconds.get(key)
        return statistics.median(v) if v else None


def run(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure stop the benchmark with its output."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if p.returncode != 0:
        raise SystemExit(f"{shlex.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def timed(cmd: list[str], *, env: dict | None = None,
          cwd: Path | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = run(cmd, env=env, cwd=cwd)
    return time.perf_counter() - t, p


def timed_rss(cmd: list[str], out: Path, *, env: dict | None = None) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of ``cmd``, measured in a process of its own."""
    if Path("/usr/bin/time").exists():
        wrapped = ["/usr/bin/time", "-f", "%M", "-o", str(out), *cmd]
    else:
        wrapped = [sys.executable, "-c", RSS_WRAPPER, str(out), *cmd]
    seconds, _ = timed(wrapped, env=env)
    kib = int(out.read_text().split()[-1])
    return seconds, kib * 1024


def hash_floor(model: Path) -> float:
    """Seconds to sha256 every file of ``model`` once, one thread per core
    (hashlib releases the GIL), reading with ``preadv`` into a reused
    buffer: the least CPU any builder spends on content addresses, before
    it copies a byte. A layout build hashes every byte (layer digest) and
    modelimage hashes each file again for the file list it records."""
    import hashlib
    import threading

    files = sorted((p for p in model.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    cores = os.cpu_count() or 1

    def work(paths: list[Path]) -> None:
        buf = bytearray(4 << 20)
        view = memoryview(buf)
        for path in paths:
            h, pos = hashlib.sha256(), 0
            fd = os.open(path, os.O_RDONLY)
            try:
                while n := os.preadv(fd, [view], pos):
                    h.update(view[:n])
                    pos += n
            finally:
                os.close(fd)

    t = time.perf_counter()
    threads = [threading.Thread(target=work, args=(files[k::cores],)) for k in range(cores)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def sync() -> None:
    subprocess.run(["sync"], check=True)


def mi_env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MODELIMAGE_NO_CACHE"}
    env["MODELIMAGE_CACHE_DIR"] = str(cache)
    return env


def layer_blobs(layout: Path, tag: str) -> list[Path]:
    """The layer blobs of ``layout:tag``, in manifest order."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / desc["digest"].split(":", 1)[1]).read_text())
    return [blob / d["digest"].split(":", 1)[1] for d in manifest["layers"]]


def layer_compression(host: str, repo: str, tag: str) -> str:
    """How the layers of ``host/repo:tag`` are stored: 'uncompressed', 'gzip', 'zstd'."""
    import httpx

    accept = ("application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.v2+json")
    m = httpx.get(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept}, timeout=30).json()
    kinds = set()
    for d in m.get("layers", []):
        t = d.get("mediaType", "")
        kinds.add("zstd" if "zstd" in t else "gzip" if "gzip" in t else "uncompressed")
    return "+".join(sorted(kinds)) or "?"


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"node": platform.node(), "arch": platform.machine(), "cpu": cpu, "cores": str(os.cpu_count())}


def versions() -> str:
    out = []
    for cmd in (["docker-registry", "--version"], ["podman", "--version"], ["skopeo", "--version"],
                ["curl", "--version"]):
        if shutil.which(cmd[0]):
            first = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[:1]
            if first:
                m = re.search(r"\d+\.\d+(\.\d+)?", first[0])
                out.append(f"{cmd[0]} {m.group(0) if m else first[0]}")
    try:
        from importlib.metadata import version

        out.append(f"oras-py {version('oras')}")
    except Exception:  # noqa: BLE001  (not installed: the row says so)
        pass
    out.append(f"Python {platform.python_version()}")
    return ", ".join(out)


class Podman:
    """podman with a private storage root (as modelimage.pullers' podman does not),
    so other users of the default store neither see nor disturb the run."""

    def __init__(self, root: Path, conf: Path):
        self.root, self.storage, self.runroot = root, root / "storage", root / "run"
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        run(self.cmd("info"), env=self.env)  # creates the store

    def cmd(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.storage), "--runroot", str(self.runroot),
                "--storage-driver", "overlay", *args]

    def timed(self, *args: str) -> float:
        return timed(self.cmd(*args), env=self.env)[0]

    def close(self) -> None:
        subprocess.run(self.cmd("system", "reset", "--force"), capture_output=True, env=self.env)
        subprocess.run(["umount", "-R", str(self.storage)], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def one_run(n: int, work: Path, model: Path, model_bytes: int, res: Results, podman: Podman | None,
            skopeo_flags: list[str], has_oras: bool) -> None:
    """Rows 1-10 once, against a fresh registry."""
    from bench_push import curl_put_all

    from tests.registry import start_registry

    d = work / f"run{n}"
    d.mkdir()
    reg = start_registry()
    try:
        host = reg.host
        # 1. the disk: cp -r
        sync()
        res.add(CP, timed(["cp", "-r", str(model), str(d / "cp")])[0])
        shutil.rmtree(d / "cp")
        # 1b. what hashing alone costs (the files are in the page cache after cp, as for the build)
        res.add(HASH, hash_floor(model))
        # 2. layout build, cold, with its peak RSS
        layout = d / "oci"
        sync()
        s, rss = timed_rss([*MI, "build", str(model), "-o", f"oci:{layout}:v1"], d / "rss-layout",
                           env=mi_env(d / "cache-layout"))
        res.add(LAYOUT, s)
        res.rss.setdefault(RSS_LAYOUT, []).append(rss)
        # 3. the registry's speed: raw PUTs of the same layer blobs
        sync()
        res.add(RAW, curl_put_all(host, layer_blobs(layout, "v1")))
        # 4. build+push, cold, with its peak RSS; then it must be a valid image
        cold_env = mi_env(d / "cache-cold")
        sync()
        s, rss = timed_rss([*MI, "build", str(model), "--push", f"{host}/mi/cold:v1"], d / "rss-cold", env=cold_env)
        res.add(COLD, s)
        res.rss.setdefault(RSS_COLD, []).append(rss)
        if n == 0 and shutil.which("skopeo"):
            check = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{host}/mi/cold:v1"],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise SystemExit(f"skopeo inspect of the pushed image failed:\n{check.stderr}")
        # 5. the same again, warm
        sync()
        res.add(WARM, timed([*MI, "build", str(model), "--push", f"{host}/mi/cold:v1"], env=cold_env)[0])
        # 6. push of the existing layout, cold; every blob must really have been uploaded
        sync()
        s, p = timed([*MI, "push", f"oci:{layout}:v1", f"{host}/mi/pushonly:v1"], env=mi_env(d / "cache-push"))
        res.add(PUSHONLY, s)
        if re.search(r"\d+ (exists|mounted)", p.stderr):
            raise SystemExit(f"modelimage push skipped blobs, the row would not measure uploads: {p.stderr}")
        # 7. podman build + push
        if podman is not None:
            image = f"localhost/bench/m:run{n}"
            sync()
            b = podman.timed("build", "--layers=false", "--format", "oci", "-q", "-f", str(work / "Containerfile"),
                             "-t", image, str(work))
            size = int(run(podman.cmd("image", "inspect", "--format", "{{.Size}}", image), env=podman.env).stdout)
            if size < model_bytes:
                raise SystemExit(f"podman built {size} bytes, not the model's {model_bytes}: check the build context")
            sync()
            p_s = podman.timed("push", "-q", "--tls-verify=false", image, f"docker://{host}/podman/m:v1")
            res.add(PODMAN_BUILD, b)
            res.add(PODMAN_PUSH, p_s)
            res.add(PODMAN_BOTH, b + p_s)
            res.names.setdefault(PODMAN_PUSH, f"podman push ({layer_compression(host, 'podman/m', 'v1')} layers)")
            run(podman.cmd("rmi", "-f", image), env=podman.env)
        # 8. skopeo copy of the layout
        if shutil.which("skopeo"):
            sync()
            res.add(SKOPEO, timed(["skopeo", "copy", "-q", *skopeo_flags, "--dest-tls-verify=false",
                                   f"oci:{layout}:v1", f"docker://{host}/skopeo/m:v1"])[0])
            res.names.setdefault(SKOPEO, f"skopeo copy {' '.join(skopeo_flags) + ' ' if skopeo_flags else ''}"
                                         f"oci: -> registry ({layer_compression(host, 'skopeo/m', 'v1')} layers)")
        # 9. oras-py, in a process of its own
        if has_oras:
            sync()
            res.add(ORAS, timed([sys.executable, "-c", ORAS_PUSH, host, f"{host}/oras/m:v1"], cwd=model)[0])
    finally:
        reg.stop()
        shutil.rmtree(d, ignore_errors=True)


def warm_repush(work: Path, gib: float, layers: int, runs: int, res: Results) -> tuple[tuple[str, str], int]:
    """Row 11: a ``gib`` GiB model pushed cold, then re-pushed unchanged ``runs`` times."""
    from modelimage.synth import write_random_shards
    from tests.registry import start_registry

    model = write_random_shards(work / "warm-model", gib, layers, seed=1)
    size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    cold_key = f"modelimage build --push, cold cache, {gib:g} GiB model"
    warm_key = f"modelimage build --push again, warm (unchanged), {gib:g} GiB model"
    reg = start_registry()
    try:
        env = mi_env(work / "cache-warm")
        ref = f"{reg.host}/mi/warm:v1"
        sync()
        res.add(cold_key, timed([*MI, "build", str(model), "--push", ref], env=env)[0])
        for _ in range(runs):
            res.add(warm_key, timed([*MI, "build", str(model), "--push", ref], env=env)[0])
    finally:
        reg.stop()
        shutil.rmtree(model, ignore_errors=True)
    return (cold_key, warm_key), size


def table(res: Results, model_bytes: int, warm_keys: tuple[str, str] | None, warm_bytes: int) -> tuple[str, str]:
    """The markdown table and a one-line summary of the targets."""
    med = res.med
    cp, raw, cold = med(CP), med(RAW), med(COLD)
    lines = ["| what | seconds | MB/s | compared with | target | result |", "|---|---|---|---|---|---|"]
    verdicts: list[bool] = []

    def check(ok: bool | None) -> str:
        if ok is None:
            return "n/a"
        verdicts.append(ok)
        return "pass" if ok else "**FAIL**"

    def secs(key: str) -> str:
        v = res.seconds[key]
        return f"{statistics.median(v):.2f}" + (f" ({', '.join(f'{x:.2f}' for x in v)})" if len(v) > 1 else "")

    def row(key: str, compared: str = "", target: str = "", result: str = "", size: int = model_bytes) -> None:
        if key not in res.seconds:
            return
        lines.append(f"| {res.names.get(key, key)} | {secs(key)} | {size / med(key) / MB:.0f} "
                     f"| {compared} | {target} | {result} |")

    both = med(PODMAN_BOTH)
    row(CP, "1.00x cp")
    row(HASH, f"{med(HASH) / cp:.2f}x cp time")
    row(LAYOUT, f"{med(LAYOUT) / cp:.2f}x cp time", "<= 1.3x cp", check(med(LAYOUT) <= 1.3 * cp))
    row(RAW, "1.00x raw PUT")
    row(COLD, f"{cold / both:.2f}x podman build + push time" if both else "",
        "<= 0.45x podman build + push", check(cold <= 0.45 * both if both else None))
    row(WARM, f"{med(WARM) / cold:.2f}x cold")
    row(PUSHONLY, f"{raw / med(PUSHONLY):.2f}x raw PUT throughput", ">= 0.85x raw PUT",
        check(raw / med(PUSHONLY) >= 0.85))
    for key in (PODMAN_BUILD, PODMAN_PUSH, PODMAN_BOTH):
        row(key, f"{med(key) / cold:.2f}x modelimage build --push time" if key in res.seconds else "")
    for key in (SKOPEO, ORAS):
        row(key, f"{raw / med(key):.2f}x raw PUT throughput" if key in res.seconds else "")
    if warm_keys:
        cold_key, warm_key = warm_keys
        row(cold_key, size=warm_bytes)
        row(warm_key, f"{med(warm_key) / med(cold_key):.3f}x cold", "< 1 s", check(med(warm_key) < 1.0),
            size=warm_bytes)
    for key in (RSS_LAYOUT, RSS_COLD):
        if key in res.rss:
            peak = max(res.rss[key])
            lines.append(f"| {key} | | | {peak / MB:.0f} MB | < 200 MB | {check(peak < 200 * MB)} |")
    summary = f"targets met: {sum(verdicts)} of {len(verdicts)}"
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="model size (default 2)")
    ap.add_argument("--layers", type=int, default=8, help="safetensors files = weight layers (default 8)")
    ap.add_argument("--runs", type=int, default=1, help="runs of every row; medians (default 1)")
    ap.add_argument("--warm-gib", type=float, default=4.0,
                    help="size of a second model, used only to time the warm re-push (default 4; 0 skips it)")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not write docs/benchmarks.md")
    args = ap.parse_args()

    from modelimage.synth import write_random_shards

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-build-push-", dir="/var/tmp"))
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(work)  # the registries' storage too: on the same real disk, removed with the rest
    res = Results()
    podman: Podman | None = None
    warm_keys = None
    try:
        model = write_random_shards(work / "model", args.gib, args.layers)
        model_bytes = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
        if shutil.which("podman"):
            (work / "Containerfile").write_text(CONTAINERFILE)
            (work / ".containerignore").write_text(CONTAINERIGNORE)
            (work / "containers.conf").write_text(CONTAINERS_CONF)
            podman = Podman(work / "podman", work / "containers.conf")
        else:
            res.notes.append("podman not installed: no podman rows")
        skopeo_flags: list[str] = []
        if shutil.which("skopeo"):
            if "--preserve-digests" in subprocess.run(["skopeo", "copy", "--help"], capture_output=True,
                                                      text=True).stdout:
                skopeo_flags = ["--preserve-digests"]
        else:
            res.notes.append("skopeo not installed: no skopeo row, no check of the pushed image")
        try:
            import oras.client  # noqa: F401

            has_oras = True
        except ImportError:
            has_oras = False
            res.notes.append("oras-py not installed in this Python: no oras row")
        for n in range(args.runs):
            one_run(n, work, model, model_bytes, res, podman, skopeo_flags, has_oras)
        warm_bytes = 0
        if args.warm_gib > 0:
            shutil.rmtree(model)  # room for the second model
            warm_keys, warm_bytes = warm_repush(work, args.warm_gib, args.layers, args.runs, res)
    finally:
        if podman is not None:
            podman.close()
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(work, ignore_errors=True)
    load_end = os.getloadavg()

    body, summary = table(res, model_bytes, warm_keys, warm_bytes)
    m = machine()
    command = ("python benchmarks/bench_build_push.py"
               f" --gib {args.gib:g} --layers {args.layers} --runs {args.runs} --warm-gib {args.warm_gib:g}")
    header = "\n".join([
        f"Machine: `{m['node']}` ({m['arch']}), {m['cpu']}, {m['cores']} cores; {date.today()}; "
        f"load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end (1 min).",
        f"Model: {args.gib:g} GiB of random fp16 safetensors in {args.layers} files + config.json "
        f"({model_bytes / MB:.0f} MB); " + ("median of " if args.runs > 1 else "") +
        f"{args.runs} run{'s' if args.runs > 1 else ''}, a fresh registry each"
        + (f"; warm re-push timed on a {args.warm_gib:g} GiB model." if warm_keys else "."),
        f"Tools: {versions()}.",
        f"Command: `{command}`. MB/s = the model's bytes / seconds.",
    ])
    block = "\n".join([header, "", body, "", summary + "." + "".join(f" {n}." for n in res.notes)])
    print(block)
    if not args.no_write:
        write_section("bench_build_push", HEADING, block)
        print(f"\nwritten to {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
