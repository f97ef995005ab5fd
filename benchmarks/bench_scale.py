#!/usr/bin/env python3
"""How modelimage's cost grows: model size and file count (issue 20).

**Sizes** (``--sizes 1,4,16,32`` GiB). The model is 4 safetensors files of
size/4 each (a valid header, then a hole: sparse, so the source costs no
disk and reads as fast as the page cache) plus config.json. For each size,
in this order (each step's runs together), with only one copy of the bytes on disk at a time:

1. ``cp --sparse=never`` of the model folder, then ``sync`` of the copied
   files (the disk's durable write speed: a layout's blobs are fsynced
   too) -- peer of 2;
2. ``modelimage build MODEL -o oci:DIR`` (cold digest cache), then the
   layout is removed;
3. ``curl -T`` monolithic PUTs of the 4 files, one after another, to a
   fresh registry -- peer of 4; the registry is removed;
4. ``modelimage build MODEL --push HOST/...`` to a fresh registry (cold);
   its blobs are then made sparse again (``fallocate --dig-holes``: same
   bytes, no disk), so the registry and a pulled copy fit at once;
5. ``curl`` GETs of the layer blobs into files, 3 at a time, then ``sync``
   of those files (a pull fsyncs what it writes) -- peer of 6;
6. ``modelimage pull REF DEST``; DEST is removed.

Each step's runs go back to back, after ``--warmup`` untimed runs of the
same step (sizes up to ``--median-upto``): on a VM a step pays for what the
step before it did to memory (a pull right after curl's GETs 2.8-3.3 s, after
another pull 1.65-1.7 s; 1 GiB, 2026-12-01), so no step follows its peer.

Each command runs under ``/usr/bin/time``: wall seconds, CPU seconds (user
+ system) and peak RSS. Sizes up to ``--median-upto`` GiB run ``--runs``
times (medians), bigger ones once; sizes over ``--peers-upto`` GiB run
steps 2, 4 and 6 only. Every timed step starts after a ``sync``; with
``--drop-caches`` (root) also with an empty page cache (``echo 3 >
/proc/sys/vm/drop_caches``), so a 1 GiB model is not read from memory
while a 32 GiB one, which the page cache cannot hold, is read again.
Before every step that writes, the script checks the free space and, if
the step would leave less than ``--keep-free`` GB, stops there: it removes
what it wrote, prints the sizes it finished (and keeps them in ``--json``),
leaves the docs as they were and exits 1. A run needs
about the biggest size plus 2 % free, plus ``--keep-free``.

**File counts** (``--files 100,10000,100000``): a tokenizer-and-assets
heavy model of N small files (200-4000 random bytes, 1,000 a folder) plus
config.json. Build (layout), build --push and pull, with ``tar -cf`` and
``tar -xf`` of the same folder as peers; the manifest's size and where the
file lists went (inline annotations or a file-list layer); the per-file
overhead is (t(N) - t(smallest N)) / (N - smallest N).

Results go to a JSON file (``--json``), a PNG plot (docs/scale.png; needs the
``bench`` extra: matplotlib) and, unless ``--no-write``, docs/benchmarks.md
between ``<!-- bench_scale:begin -->`` and ``<!-- bench_scale:end -->``.
Everything it writes lives under a folder in /var/tmp, removed at the end.

    nice -n 10 python benchmarks/bench_scale.py [--sizes 1,4,16,32] [--files 100,10000,100000] [--runs 3]
    python benchmarks/bench_scale.py --sizes 1,4,16,32 --files '' --drop-caches --keep-free 3   # a quiet machine
    python benchmarks/bench_scale.py --replot a.json b.json   # the plot and the doc again (later files win)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import DOC, MI, REPO, write_section  # noqa: E402  (puts the repository on sys.path)

PNG = REPO / "docs" / "scale.png"
HEADING = "## Cost curves: model size and file count (issue 20)"
GIB = 1 << 30
MB = 1e6
SHARDS = 4
FIELDS = ("wall", "cpu", "user", "rss", "load")  # seconds, seconds (user + system), seconds, bytes, 1-min load


# ------------------------------------------------------------------ running


def measured(cmd: list[str], work: Path, *, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd`` (it must succeed) under /usr/bin/time: wall, CPU (user +
    system) and user seconds, peak RSS in bytes, and the 1-minute load average
    when it ended."""
    out = work / "time.txt"
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(out), *cmd], capture_output=True, text=True,
                       env=env, cwd=cwd)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    user, sys_, rss = out.read_text().split()[-3:]
    return {"wall": wall, "cpu": float(user) + float(sys_), "user": float(user), "rss": int(rss) * 1024,
            "stdout": p.stdout, "load": os.getloadavg()[0]}


def mi_env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MODELIMAGE_NO_CACHE"}
    env["MODELIMAGE_CACHE_DIR"] = str(work / "cache")
    shutil.rmtree(work / "cache", ignore_errors=True)  # every modelimage command starts cold
    return env


DROP_CACHES = Path("/proc/sys/vm/drop_caches")
drop_caches = False  # set by --drop-caches: settle() empties the page cache too


def sync() -> None:
    subprocess.run(["sync"], check=True)


def settle() -> None:
    """Before a timed step: ``sync`` (nothing of an earlier step is still
    being written), and with ``--drop-caches`` write 3 to
    /proc/sys/vm/drop_caches (page cache, dentries and inodes dropped), so
    every step and every size reads its source the same way: from the disk,
    or for the sparse shards' holes, zero-filled again by the kernel.

    Raises SystemExit (one line) when the kernel does not allow it."""
    sync()
    if drop_caches:
        try:
            DROP_CACHES.write_text("3\n")
        except OSError as e:
            raise SystemExit(f"--drop-caches: cannot write 3 to {DROP_CACHES} ({e.strerror or e}): it needs root "
                             "and a writable /proc/sys (not a container's read-only one); or leave --drop-caches "
                             "out") from None


class NoRoom(Exception):
    """The disk would keep less than --keep-free GB if the next step ran."""


def room(work: Path, nbytes: float, keep_free: float, what: str) -> None:
    """Raise NoRoom unless ``nbytes`` more (what the next step writes: one
    copy of the model) still leave ``keep_free`` GB free where ``work`` is.
    Checked before every step that writes, not only before each size: the
    disk is shared, and others write while a size runs."""
    free = free_bytes(work)
    if free - nbytes < keep_free * 1e9:
        raise NoRoom(f"{what} writes {nbytes / 1e9:.1f} GB and {free / 1e9:.1f} GB are free: it would leave less "
                     f"than --keep-free {keep_free:g} GB")


def free_bytes(path: Path) -> int:
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize


def dig_holes(root: Path) -> None:
    """Make every file under ``root`` sparse where it is zeros (same bytes)."""
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > (1 << 20):
            subprocess.run(["fallocate", "--dig-holes", str(p)], check=True)


# ------------------------------------------------------------------ models


def sparse_model(directory: Path, gib: float) -> int:
    """``SHARDS`` safetensors files with valid headers and holes for data."""
    directory.mkdir(parents=True)
    per = int(gib * GIB / SHARDS) // 2 * 2
    for k in range(SHARDS):
        header = json.dumps({"w": {"dtype": "F16", "shape": [per // 2], "data_offsets": [0, per]}}).encode()
        header += b" " * (-len(header) % 8)
        path = directory / f"model-{k + 1:05d}-of-{SHARDS:05d}.safetensors"
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + per)
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    return sum(p.stat().st_size for p in directory.iterdir())


def many_files(directory: Path, n: int, seed: int = 0) -> int:
    import random

    rng = random.Random(seed)
    total = 0
    for i in range(n):
        d = directory / "assets" / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        data = rng.randbytes(rng.randint(200, 4000))
        (d / f"f{i:06d}.json").write_bytes(data)
        total += len(data)
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return total + (directory / "config.json").stat().st_size


# ------------------------------------------------------------------ peers


def curl_put(host: str, files: list[Path], work: Path) -> dict:
    """Monolithic PUTs of ``files`` (digest computed beforehand, not timed), one after another."""
    import hashlib

    script = ["set -e"]
    for i, f in enumerate(files):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
        script.append(
            f'loc=$(curl -s -D - -o /dev/null -X POST http://{host}/v2/raw/put{i}/blobs/uploads/ '
            f"| tr -d '\\r' | sed -n 's/^[Ll]ocation: //p')\n"
            f'case "$loc" in /*) loc="http://{host}$loc";; esac\n'
            f'curl -s -f -o /dev/null -X PUT -H "Content-Type: application/octet-stream" -T {f} '
            f'"$loc&digest=sha256:{h.hexdigest()}"')
    (work / "put.sh").write_text("\n".join(script) + "\n")
    settle()  # after the hashing, which read the files into the page cache
    return measured(["bash", str(work / "put.sh")], work)


def curl_get(host: str, repo: str, digests: list[str], out: Path, work: Path) -> dict:
    """GETs of the blobs, 3 at a time, written to files and synced (a pull is durable too)."""
    out.mkdir(parents=True)
    cmd = ["curl", "-s", "-f", "--parallel", "--parallel-max", "3"]
    for d in digests:
        cmd += ["-o", str(out / d.split(":")[1]), f"http://{host}/v2/{repo}/blobs/{d}"]
    return measured(["sh", "-c", '"$@" && sync "$0"/*', str(out), *cmd], work)


def manifest_of(host: str, repo: str, tag: str) -> tuple[dict, int]:
    import httpx

    r = httpx.get(f"http://{host}/v2/{repo}/manifests/{tag}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=60)
    r.raise_for_status()
    return r.json(), len(r.content)


# ------------------------------------------------------------------ the two curves


def timed_mi(*args: str, work: Path) -> dict:
    """``modelimage ARGS -q``, after settle() (a sync; with --drop-caches an
    empty page cache too), measured."""
    settle()
    return measured([*MI, *args, "-q"], work, env=mi_env(work))


def samples(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each row's runs as JSON keeps them: wall and CPU seconds, peak RSS."""
    return {k: [{f: v[f] for f in FIELDS} for v in vs] for k, vs in rows.items()}


def run_size(gib: float, runs: int, work: Path, keep_free: float, peers: bool = True, warmup: int = 0) -> dict:
    """One point of the size curve: the six steps of the module's docstring;
    each step's ``runs`` back to back, after ``warmup`` untimed runs of the
    same step; without ``peers``, modelimage's three only (no cp, curl
    PUT, curl GET: about half the time of a size). Returns its samples
    (seconds, bytes) as the JSON keeps them. Raises NoRoom before a step
    that would leave less than ``keep_free`` GB free. Why steps are grouped
    and warmed up: the module docstring (measured 2026-12-01, 1 GiB, caches
    dropped before every step: ``modelimage pull`` right after curl's GETs
    2.82-3.32 s with 1.7-2.2 s of system CPU, right after another pull
    1.65-1.69 s with 0.6 s; docs/benchmarks.md, session 13)."""
    from tests.registry import start_registry

    copy = gib * GIB * 1.02  # one copy of the model on the disk: the shards, a tar's headers, the manifests
    room(work, copy, keep_free, f"{gib:g} GiB")
    model = work / "model"
    size = sparse_model(model, gib)
    rows: dict[str, list[dict]] = {}
    regs: list = []  # the registry of the last build --push serves curl's GETs and the pulls

    def group(row: str, step) -> None:
        for k in range(warmup + runs):
            m = step()
            if k >= warmup:
                rows.setdefault(row, []).append(m)

    def cp() -> dict:
        room(work, copy, keep_free, f"{gib:g} GiB: cp")
        settle()
        m = measured(["sh", "-c", 'cp -r --sparse=never "$1" "$2" && sync "$2"/*', "cp", str(model),
                      str(work / "cp")], work)
        shutil.rmtree(work / "cp")
        return m

    def build() -> dict:
        room(work, copy, keep_free, f"{gib:g} GiB: build -o oci:")
        m = timed_mi("build", str(model), "-o", f"oci:{work / 'oci'}:v1", work=work)
        shutil.rmtree(work / "oci")
        return m

    def put() -> dict:
        room(work, copy, keep_free, f"{gib:g} GiB: curl PUT")
        reg = start_registry()
        try:
            return curl_put(reg.host, sorted(model.glob("*.safetensors")), work)
        finally:
            reg.stop()

    def push() -> dict:
        while regs:
            regs.pop().stop()
        room(work, copy, keep_free, f"{gib:g} GiB: build --push")
        reg = start_registry()
        regs.append(reg)
        m = timed_mi("build", str(model), "--push", f"{reg.host}/scale/m:v1", work=work)
        dig_holes(reg.root)  # same bytes, no disk: the registry and a pulled copy fit at once
        return m

    def get() -> dict:
        manifest, _ = manifest_of(regs[0].host, "scale/m", "v1")
        room(work, copy, keep_free, f"{gib:g} GiB: curl GET")
        settle()
        m = curl_get(regs[0].host, "scale/m", [d["digest"] for d in manifest["layers"]], work / "get", work)
        shutil.rmtree(work / "get")
        return m

    def pull() -> dict:
        room(work, copy, keep_free, f"{gib:g} GiB: pull")
        m = timed_mi("pull", f"{regs[0].host}/scale/m:v1", str(work / "dest"), work=work)
        shutil.rmtree(work / "dest")
        return m

    try:
        if peers:
            group("cp", cp)
        group("build", build)
        if peers:
            group("put", put)
        group("push", push)
        if peers:
            group("get", get)
        group("pull", pull)
    finally:
        while regs:
            regs.pop().stop()
        shutil.rmtree(model, ignore_errors=True)
        for leftover in ("cp", "oci", "get", "dest"):
            shutil.rmtree(work / leftover, ignore_errors=True)
    return {"gib": gib, "bytes": size, "runs": runs, "warmup": warmup, "drop_caches": drop_caches,
            "rows": samples(rows)}


def run_files(n: int, runs: int, work: Path) -> dict:
    from tests.registry import start_registry

    model = work / "many"
    size = many_files(model, n)
    rows: dict[str, list[dict]] = {}
    extra: dict = {}
    try:
        for _ in range(runs):
            settle()
            rows.setdefault("tar -cf", []).append(measured(["tar", "-cf", str(work / "m.tar"), "-C", str(model), "."],
                                                           work))
            settle()
            (work / "untar").mkdir()
            rows.setdefault("tar -xf", []).append(measured(["tar", "-xf", str(work / "m.tar"), "-C",
                                                            str(work / "untar")], work))
            shutil.rmtree(work / "untar")
            (work / "m.tar").unlink()
            rows.setdefault("build", []).append(timed_mi("build", str(model), "-o", f"oci:{work / 'oci'}:v1",
                                                         work=work))
            shutil.rmtree(work / "oci")
            reg = start_registry()
            try:
                ref = f"{reg.host}/files/m:v1"
                rows.setdefault("push", []).append(timed_mi("build", str(model), "--push", ref, work=work))
                manifest, nbytes = manifest_of(reg.host, "files/m", "v1")
                extra = {"manifest_bytes": nbytes, "layers": len(manifest["layers"]),
                         "file_list_layer": any("dev.modelimage.filelist" in (d.get("annotations") or {})
                                                for d in manifest["layers"])}
                rows.setdefault("pull", []).append(timed_mi("pull", ref, str(work / "dest"), work=work))
                got = sum(1 for p in (work / "dest").rglob("*") if p.is_file() and not p.name.startswith("."))
                if got != n + 1:
                    raise SystemExit(f"pull of {n} files gave {got} files")
                shutil.rmtree(work / "dest")
            finally:
                reg.stop()
    finally:
        shutil.rmtree(model, ignore_errors=True)
        for leftover in ("untar", "oci", "dest"):
            shutil.rmtree(work / leftover, ignore_errors=True)
        (work / "m.tar").unlink(missing_ok=True)
    return {"files": n, "bytes": size, "runs": runs, "drop_caches": drop_caches, **extra,
            "rows": samples(rows)}


# ------------------------------------------------------------------ reporting


def med(samples: list[dict], field: str) -> float:
    return statistics.median(s[field] for s in samples)


def load_of(samples: list[dict], point: dict) -> str:
    """The 1-minute load average when the step's runs ended (this machine's
    2 cores are shared: other test suites ran at the same time); points of
    an older run, which did not record it a step, show that run's start-end."""
    loads = [s["load"] for s in samples if "load" in s]
    if loads:
        return "-".join(dict.fromkeys(f"{x:.1f}" for x in (min(loads), max(loads))))
    lo = point.get("run_load")
    return f"{lo[0]:.1f}-{lo[1]:.1f} (run)" if lo else "?"


def size_table(sizes: list[dict]) -> tuple[str, list[str]]:
    """The size curve as markdown, and the verdicts on the goals."""
    steps = [("build", "cp", "build -o oci: (layout)", 150), ("push", "put", "build --push", 150),
             ("pull", "get", "pull", 250)]
    lines = ["| size | runs | what | wall s | s/GiB | vs peer | CPU s | CPU s/GiB | peak RSS MB | peer s/GiB | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    peer_name = {"cp": "cp + sync", "put": "curl PUT", "get": "curl GET + sync"}
    for s in sizes:
        gib = s["bytes"] / GIB
        for key, peer, label, _ in steps:
            r, p = s["rows"][key], s["rows"].get(peer)  # no peer rows: a size over --peers-upto
            w = med(r, "wall")
            vs, per = (f"{w / med(p, 'wall'):.2f}x {peer_name[peer]}", f"{med(p, 'wall') / gib:.2f}") if p else ("", "")
            lines.append(f"| {s['gib']:g} GiB | {s['runs']} | {label} | {w:.1f} | {w / gib:.2f} | "
                         f"{vs} | {med(r, 'cpu'):.1f} | {med(r, 'cpu') / gib:.2f} | "
                         f"{max(x['rss'] for x in r) / MB:.0f} | {per} | {load_of(r + (p or []), s)} |")
    for key, peer, label, rss_goal in steps:
        per_gib = [med(s["rows"][key], "wall") / (s["bytes"] / GIB) for s in sizes]
        cpu_gib = [med(s["rows"][key], "cpu") / (s["bytes"] / GIB) for s in sizes]
        ratio = [med(s["rows"][key], "wall") / med(s["rows"][peer], "wall") for s in sizes if peer in s["rows"]]
        rss = [max(x["rss"] for x in s["rows"][key]) / MB for s in sizes]
        spread = (max(per_gib) - min(per_gib)) / min(per_gib)
        cspread = (max(cpu_gib) - min(cpu_gib)) / min(cpu_gib)
        peered = ""
        if ratio:
            rspread = (max(ratio) - min(ratio)) / min(ratio)
            peered = (f"ratio to its peer {min(ratio):.2f}-{max(ratio):.2f}x (spread {rspread * 100:.0f} %"
                      + (f", {len(ratio)} of {len(sizes)} sizes" if len(ratio) < len(sizes) else "") + "); ")
        verdicts.append(
            f"{label}: wall s/GiB {min(per_gib):.2f}-{max(per_gib):.2f} (spread {spread * 100:.0f} %, goal <= 10 %: "
            f"{'pass' if spread <= 0.10 else '**miss**'}); CPU s/GiB spread {cspread * 100:.0f} %; {peered}"
            f"peak RSS {min(rss):.0f}-{max(rss):.0f} MB "
            f"(goal < {rss_goal} MB: {'pass' if max(rss) < rss_goal else '**miss**'})")
    return "\n".join(lines), verdicts


def files_table(counts: list[dict]) -> tuple[str, list[str]]:
    lines = ["| files | MB | manifest | what | wall s | CPU s | peak RSS MB | per-file ms (wall) | per-file ms (CPU) "
             "| load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    base = counts[0]
    for c in counts:
        where = "file-list layer" if c.get("file_list_layer") else "inline"
        for key in ("tar -cf", "build", "push", "tar -xf", "pull"):
            r = c["rows"][key]
            per_w = per_c = ""
            if c is not base:
                dn = c["files"] - base["files"]
                per_w = f"{(med(r, 'wall') - med(base['rows'][key], 'wall')) / dn * 1e3:.3f}"
                per_c = f"{(med(r, 'cpu') - med(base['rows'][key], 'cpu')) / dn * 1e3:.3f}"
            lines.append(f"| {c['files']:,} | {c['bytes'] / MB:.0f} | {c.get('manifest_bytes', 0) / 1024:.1f} KiB "
                         f"({c.get('layers', '?')} layers, {where}) | {key} | {med(r, 'wall'):.2f} | "
                         f"{med(r, 'cpu'):.2f} | {max(x['rss'] for x in r) / MB:.0f} | {per_w} | {per_c} | "
                         f"{load_of(r, c)} |")
    last = counts[-1]
    dn = last["files"] - base["files"]
    for key in ("build", "push", "pull"):
        per = (med(last["rows"][key], "wall") - med(base["rows"][key], "wall")) / dn * 1e3
        peer = "tar -xf" if key == "pull" else "tar -cf"
        per_peer = (med(last["rows"][peer], "wall") - med(base["rows"][peer], "wall")) / dn * 1e3
        goal = "" if key == "push" else f" (goal < 1 ms: {'pass' if per < 1 else '**miss**'})"
        per_cpu = (med(last["rows"][key], "cpu") - med(base["rows"][key], "cpu")) / dn * 1e3
        verdicts.append(f"{key}: {per:.3f} ms a file (wall; {per_cpu:.3f} ms CPU) from {base['files']:,} to "
                        f"{last['files']:,} files{goal}; {peer}: {per_peer:.3f} ms a file")
    return "\n".join(lines), verdicts


def plot(sizes: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gibs = [s["bytes"] / GIB for s in sizes]
    fig, (a, c, b) = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = {"build": "tab:blue", "push": "tab:orange", "pull": "tab:green"}
    labels = {"build": "build -o oci:", "push": "build --push", "pull": "pull",
              "cp": "cp + sync (peer of build)", "put": "curl PUT (peer of push)",
              "get": "curl GET + sync (peer of pull)"}
    for key, peer in (("build", "cp"), ("push", "put"), ("pull", "get")):
        a.plot(gibs, [med(s["rows"][key], "wall") / g for s, g in zip(sizes, gibs)], "o-", color=colours[key],
               label=labels[key])
        pg = [(g, s["rows"][peer]) for s, g in zip(sizes, gibs) if peer in s["rows"]]  # sizes with peers
        a.plot([g for g, _ in pg], [med(p, "wall") / g for g, p in pg], "x--", color=colours[key],
               alpha=0.6, label=labels[peer])
        c.plot(gibs, [med(s["rows"][key], "cpu") / g for s, g in zip(sizes, gibs)], "o-", color=colours[key],
               label=labels[key])
        c.plot([g for g, _ in pg], [med(p, "cpu") / g for g, p in pg], "x--", color=colours[key],
               alpha=0.6, label=labels[peer])
        b.plot(gibs, [max(x["rss"] for x in s["rows"][key]) / MB for s in sizes], "o-", color=colours[key],
               label=labels[key])
    for ax in (a, c, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(gibs, [f"{g:g}" for g in gibs])
        ax.set_xlabel("model size (GiB)")
        ax.grid(True, alpha=0.3)
    a.set_ylabel("wall seconds per GiB")
    a.set_ylim(bottom=0)
    a.set_title("time per GiB (flat = linear cost)")
    b.set_ylabel("peak RSS (MB)")
    b.set_ylim(0, 280)
    c.set_ylabel("CPU seconds (user + system) per GiB")
    c.set_ylim(bottom=0)
    c.set_title("CPU per GiB (less sensitive to load)")
    c.legend(fontsize=7)
    b.axhline(150, color="grey", ls=":", lw=1)
    b.axhline(250, color="grey", ls=":", lw=1)
    b.set_title("peak RSS (goals: 150 MB build/push, 250 MB pull)")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(paths: list[Path]) -> dict:
    """Results of several runs as one: a size or file count measured in a
    later file replaces the earlier one; each point keeps its run's date,
    command and load average."""
    data: dict = {"sizes": [], "files": [], "runs": []}
    sizes: dict[float, dict] = {}
    files: dict[int, dict] = {}
    for path in paths:
        d = json.loads(path.read_text())
        data["machine"] = d["machine"]
        data["runs"].append({k: d.get(k) for k in ("date", "command", "load")})
        for s in d.get("sizes", []):
            sizes[s["gib"]] = {**s, "run_load": d.get("load"), "command": d.get("command")}
        for f in d.get("files", []):
            files[f["files"]] = {**f, "run_load": d.get("load"), "command": d.get("command")}
    data["sizes"] = [sizes[k] for k in sorted(sizes)]
    data["files"] = [files[k] for k in sorted(files)]
    return data


def report(data: dict) -> str:
    runs = data.get("runs") or [{k: data[k] for k in ("date", "command", "load")}]
    out = [f"Machine: `{data['machine']}`. " + "; ".join(
        f"{r['date']}: `{r['command']}` (load average {r['load'][0]:.1f} at its start, {r['load'][1]:.1f} at its end)"
        for r in runs) + ". The load column is the 1-minute load average as each step ended (2 cores, shared "
        "with other test suites: anything over 2 means the step waited for a core)."]
    if data.get("sizes"):
        body, verdicts = size_table(data["sizes"])
        dropped = all(s.get("drop_caches") for s in data["sizes"])
        how = ("; `sync` and the page cache dropped (`echo 3 > /proc/sys/vm/drop_caches`) before every step, "
               "modelimage's and the peers'" if dropped else "")
        out += ["", f"**Model size** (4 sparse safetensors files + config.json; peers in the same run{how}):", "",
                "![seconds per GiB and peak RSS against model size](scale.png)", "", body, ""]
        out += [f"- {v}" for v in verdicts]
    if data.get("files"):
        body, verdicts = files_table(data["files"])
        out += ["", "**File count** (small files of 200-4000 bytes, 1,000 a folder; peers: GNU tar):", "", body, ""]
        out += [f"- {v}" for v in verdicts]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,16,32", help="GiB, comma-separated ('' for none)")
    ap.add_argument("--files", default="100,10000,100000", help="file counts, comma-separated ('' for none)")
    ap.add_argument("--runs", type=int, default=3, help="runs per point up to --median-upto GiB (medians)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed runs of each step before its timed ones, at sizes up to --median-upto (a step "
                         "pays for what the step before it did to memory: see run_size)")
    ap.add_argument("--median-upto", type=float, default=4, help="bigger sizes run once")
    ap.add_argument("--peers-upto", type=float, default=float("inf"),
                    help="GiB: bigger sizes run modelimage's build, build --push and pull only, without the peers "
                         "(cp, curl PUT, curl GET): about half the time of such a size (default: peers at every size)")
    ap.add_argument("--keep-free", type=float, default=15,
                    help="GB of disk to leave to others: checked before every step that writes; when the next "
                         "step would leave less, the run stops there, removes what it wrote, prints the sizes "
                         "it finished (and --json keeps them), leaves the docs alone and exits 1")
    ap.add_argument("--drop-caches", action="store_true",
                    help="before every timed step (modelimage's and the peers'), sync and write 3 to "
                         "/proc/sys/vm/drop_caches, so each size reads its source the same way, not from a page "
                         "cache that holds small models only; needs root (checked first)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--replot", type=Path, nargs="+",
                    help="results JSON of earlier runs (later ones win for a point): only plot and write the doc")
    ap.add_argument("--no-write", action="store_true", help="print only: no docs/benchmarks.md, no plot")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # kill PID: the finally blocks still clean up
    global drop_caches
    drop_caches = args.drop_caches and not args.replot
    stopped = ""
    if drop_caches:
        settle()  # fails here, before anything is written, if the kernel does not allow it
    if not args.no_write and (args.replot or any(x for x in args.sizes.split(","))):
        try:  # the plot comes last: find out now, not after half an hour of measuring
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("docs/scale.png needs matplotlib: pip install -e '.[bench]' (or --no-write --json F "
                             "now and --replot F where it is installed)") from None
    if args.replot:
        data = merge(args.replot)
    else:
        import platform

        load0 = os.getloadavg()[0]
        work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir="/var/tmp"))
        saved, tempfile.tempdir = tempfile.tempdir, str(work)  # registries' storage on the same disk, removed with it
        data = {"date": str(date.today()), "machine": f"{platform.node()} ({platform.machine()}, "
                f"{os.cpu_count()} cores)", "command": "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:]),
                "sizes": [], "files": []}
        t0 = time.monotonic()
        try:
            for n in [int(x) for x in args.files.split(",") if x]:
                data["files"].append(run_files(n, args.runs, work))
                print(f"{n} files done ({time.monotonic() - t0:.0f} s in)", file=sys.stderr)
            for g in [float(x) for x in args.sizes.split(",") if x]:
                small = g <= args.median_upto
                data["sizes"].append(run_size(g, args.runs if small else 1, work, args.keep_free,
                                              peers=g <= args.peers_upto, warmup=args.warmup if small else 0))
                print(f"{g:g} GiB done ({time.monotonic() - t0:.0f} s in, load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr)
                if args.json:  # partial results survive a later failure
                    args.json.write_text(json.dumps({**data, "load": [load0, os.getloadavg()[0]]}, indent=1))
        except NoRoom as e:
            stopped = f"stopped: {e}; what it wrote is removed"
        finally:
            tempfile.tempdir = saved
            shutil.rmtree(work, ignore_errors=True)
        data["load"] = [load0, os.getloadavg()[0]]
        if args.json:
            args.json.write_text(json.dumps(data, indent=1))
    block = report(data)
    print(block)
    if stopped:  # a part of the curve does not replace the whole one in the docs
        raise SystemExit(f"bench_scale: {stopped}; docs/benchmarks.md and docs/scale.png left as they were (the "
                         "table above has the sizes it finished" + (f"; --replot {args.json} writes them)"
                                                                    if args.json and data["sizes"] else ")"))
    if not args.no_write:
        if data.get("sizes"):
            plot(data["sizes"], PNG)
        write_section("bench_scale", HEADING, block)
        print(f"\nwritten to {DOC.relative_to(REPO)}" + (f" and {PNG.relative_to(REPO)}" if data.get("sizes") else ""))


if __name__ == "__main__":
    main()
