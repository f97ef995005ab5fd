#!/usr/bin/env python3
"""A streaming peer side by side: PyPI ``oci-modelcar`` against
``modelimage build hf://... --push``, on the same model, from the same
loopback Hugging Face Hub (tests/hubserver.py) to the same registry, in one
run (issue 20).

The model: ``--gib`` GiB of random fp16 safetensors in ``--shards`` files
(the real writer) + config.json, committed to the loopback Hub. Every run
of every contender starts cold: an empty Hugging Face cache (``HF_HOME``),
an empty spool or digest cache, a repository of its own in the registry
(nothing to skip). Contenders, interleaved in each run:

- ``oci-modelcar push --hf-repo ... --hf-endpoint HUB --registry HOST``
  with its default ``--workers 1``, and with ``--workers 3`` (modelimage
  pushes 3 blobs at once);
- ``modelimage build hf://ORG/NAME --push HOST/...`` (``HF_ENDPOINT``);
- with ``--baseline TREE``, the same command from another checkout
  (``PYTHONPATH=TREE``, a git worktree of main, say): an A/B of a change
  in the same runs, never counted as the peer.

modelimage runs byte-compiled, as ``pip install`` leaves it (an editable
install under ``PYTHONDONTWRITEBYTECODE=1`` would compile ~120 modules in
every run). Measured: wall and CPU seconds and peak RSS (``/usr/bin/time``), bytes
sent to the registry and bytes read from the Hub (iptables byte counters on
loopback, a chain of the script's own, removed at the end), the CPU the
loopback Hub (a Python server inside this script) spent serving it, and the
disk each leaves behind (its Hugging Face cache, spool or digest cache).

``--phases`` adds two rows that split modelimage's time: the Hub alone
(``curl`` reading every file to /dev/null, one after another, then three
at once) and the build alone (``modelimage build FOLDER --push`` of the same
files from a local folder, page cache warm).
``--link RATE`` (``1Gbit/s``, ``400Mbit/s``) shapes both links as a real
node's would be: the loopback Hub serves at RATE in total across its
connections, and the registry is reached through a TCP proxy
(tests/link.py) that carries each direction at RATE in total. The CPU then
waits on the links, as on a real network: a tool that downloads
everything before it uploads pays for both links one after the other, one
that streams pays for the slower one. No latency or loss is added.
Then each result is pulled with ``podman pull`` and run: a container of
the image with a static busybox mounted in prints the sha256 of every model
file, which must equal the Hub's.

Needs oci-modelcar on PATH or ``--modelcar PATH`` (it pins its own
dependencies: install it in a virtualenv of its own), root for iptables.

    python benchmarks/bench_modelcar.py [--gib 1] [--shards 4] [--runs 3] [--phases] [--link 1Gbit/s]
        [--modelcar /path/to/oci-modelcar] [--baseline ../main-before]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import MI, byte_compile  # noqa: E402  (puts the repository on sys.path)

MB = 1e6
BUSYBOX = "/bin/busybox"


class ByteCounter:
    """iptables counters for loopback TCP to and from some ports (root only)."""

    def __init__(self, ports: dict[str, int]):
        self.chain = f"MIBENCH{os.getpid()}"
        self.ports = ports
        self._ipt("-N", self.chain)
        self._ipt("-I", "OUTPUT", "-o", "lo", "-j", self.chain)
        for port in ports.values():
            self._ipt("-A", self.chain, "-p", "tcp", "--dport", str(port))
            self._ipt("-A", self.chain, "-p", "tcp", "--sport", str(port))

    @staticmethod
    def _ipt(*args: str) -> str:
        return subprocess.run(["iptables", "-w", *args], check=True, capture_output=True, text=True).stdout

    def read(self) -> dict[str, int]:
        """{'NAME>': bytes sent to NAME's port, 'NAME<': bytes NAME's port sent}."""
        out: dict[str, int] = {}
        by_port = {str(p): n for n, p in self.ports.items()}
        for line in self._ipt("-L", self.chain, "-n", "-v", "-x").splitlines()[2:]:
            f = line.split()
            for token in f:
                if token.startswith(("dpt:", "spt:")):
                    name = by_port[token[4:]]
                    out[name + (">" if token.startswith("dpt") else "<")] = int(f[1])
        return out

    def close(self) -> None:
        subprocess.run(["iptables", "-w", "-D", "OUTPUT", "-o", "lo", "-j", self.chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-F", self.chain], capture_output=True)
        subprocess.run(["iptables", "-w", "-X", self.chain], capture_output=True)


def measured(cmd: list[str], work: Path, env: dict, counter: ByteCounter) -> dict:
    out = work / "time.txt"
    before = counter.read()
    hub0 = resource.getrusage(resource.RUSAGE_SELF)  # the loopback Hub serves from this process's threads
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%U %S %M", "-o", str(out), *cmd], capture_output=True, text=True,
                       env=env)
    wall = time.perf_counter() - t
    hub1 = resource.getrusage(resource.RUSAGE_SELF)
    after = counter.read()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    user, sys_, rss = out.read_text().split()[-3:]
    return {"wall": wall, "cpu": float(user) + float(sys_), "rss": int(rss) * 1024,
            "hub_cpu": (hub1.ru_utime + hub1.ru_stime) - (hub0.ru_utime + hub0.ru_stime),
            "sent": after.get("registry>", 0) - before.get("registry>", 0),
            "hub": after.get("hub<", 0) - before.get("hub<", 0)}


def disk_use(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def runs_in_podman(ref: str, root: str, files: dict[str, str], work: Path) -> str:
    """Pull ``ref`` with podman and run it: busybox (mounted) prints the
    sha256 of each model file under ``root``; 'yes' when all match."""
    from tests.tools import CONTAINERS_CONF

    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    pull = subprocess.run(["podman", "pull", "-q", "--tls-verify=false", ref], capture_output=True, text=True, env=env)
    if pull.returncode != 0:
        return f"no: podman pull failed ({pull.stderr.strip().splitlines()[-1] if pull.stderr.strip() else '?'})"
    try:
        paths = [f"{root}/{name}" for name in sorted(files)]
        # mounted as /busybox: busybox picks its applet from argv[0]'s name, or from argv[1] when that is 'busybox'
        run = subprocess.run(["podman", "run", "--rm", "--network=none", "-v", f"{BUSYBOX}:/busybox:ro", ref,
                              "/busybox", "sha256sum", *paths], capture_output=True, text=True, env=env)
        if run.returncode != 0:
            return f"no: podman run failed ({run.stderr.strip()[-200:]})"
        got = {line.split()[1][len(root) + 1:]: line.split()[0] for line in run.stdout.splitlines()}
        bad = [n for n, h in files.items() if got.get(n) != h]
        return "yes" if not bad else f"no: {len(bad)} files differ"
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modelcar", default=shutil.which("oci-modelcar") or "oci-modelcar")
    ap.add_argument("--phases", action="store_true", help="also time the Hub alone and the build alone")
    ap.add_argument("--baseline", metavar="TREE", type=Path,
                    help="another checkout of modelimage (a git worktree of main, say) as one more contender, "
                    "run with PYTHONPATH=TREE: an A/B of a change in the same run")
    ap.add_argument("--link", metavar="RATE", help="shape the node's links to the Hub and to the registry to RATE "
                    "each (1Gbit/s, 400Mbit/s; modelimage.units.parse_rate); default: unshaped loopback")
    args = ap.parse_args()
    from modelimage.units import format_rate, parse_rate

    link = parse_rate(args.link, what="--link") if args.link else None

    from modelimage.synth import write_random_shards
    from tests.hubserver import HubServer
    from tests.link import ShapedProxy
    from tests.registry import start_registry

    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-modelcar-", dir="/var/tmp"))
    saved, tempfile.tempdir = tempfile.tempdir, str(work)
    hub = reg = counter = proxy = None
    rows: dict[str, list[dict]] = {}
    checks: dict[str, str] = {}
    spool: dict[str, list[int]] = {}
    try:
        byte_compile()  # start-up as installed (pip compiles), not compiling every module in every run
        # the baseline contender's modelimage: another checkout first on the path
        baseline = {"PYTHONPATH": str(args.baseline.resolve())} if args.baseline is not None else {}
        if baseline:
            byte_compile(env={**os.environ, **baseline})
        model = write_random_shards(work / "model", args.gib, args.shards)
        files = {p.name: p.read_bytes() for p in sorted(model.iterdir())}
        sums = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
        size = sum(len(b) for b in files.values())
        if not args.phases:
            shutil.rmtree(model)
        hub = HubServer().start()
        hub.commit("bench/llm", files)
        del files
        reg = start_registry()
        push_host = reg.host  # where the contenders push; checks pull from the registry itself
        if link is not None:
            hub.rate = link
            proxy = ShapedProxy(reg.host, link)
            push_host = proxy.host
        counter = ByteCounter({"registry": int(push_host.rsplit(":", 1)[1]),
                               "hub": int(hub.url.rsplit(":", 1)[1])})
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELIMAGE_"))}
        base_env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
        contenders = {
            "oci-modelcar push (--workers 1, its default)": ("mc1", ["--workers", "1"]),
            "oci-modelcar push --workers 3": ("mc3", ["--workers", "3"]),
            "modelimage build hf://... --push": ("mi", None),
        }
        if args.baseline is not None:
            contenders[f"modelimage build hf://... --push ({args.baseline.name}, baseline)"] = ("base", None)
        if args.phases:
            urls = " ".join(f"{hub.url}/bench/llm/resolve/main/{n}" for n in sums)
            contenders["phase: the Hub alone (curl > /dev/null, files in turn)"] = (
                "hub1", ["sh", "-c", f"for u in {urls}; do curl -sf -o /dev/null $u || exit 1; done"])
            contenders["phase: the Hub alone (curl > /dev/null, 3 files at once)"] = (
                "hub3", ["sh", "-c", f"printf '%s\\n' {urls} | xargs -P 3 -n 1 curl -sf -o /dev/null"])
            contenders["phase: the build alone (build FOLDER --push)"] = ("local", ["local"])
        for n in range(args.runs):
            for label, (short, flags) in contenders.items():
                d = work / f"{short}-{n}"
                d.mkdir()
                env = {**base_env, "HF_HOME": str(d / "hf"), "MODELIMAGE_CACHE_DIR": str(d / "cache")}
                if short == "base":
                    env.update(baseline)
                repo, tag = f"{short}/r{n}", "v1"
                if flags is None:
                    cmd = [*MI, "build", "hf://bench/llm", "--push", f"{push_host}/{repo}:{tag}", "-q"]
                elif flags == ["local"]:
                    cmd = [*MI, "build", str(model), "--name", "llm", "--push", f"{push_host}/{repo}:{tag}", "-q"]
                elif short.startswith("hub"):
                    cmd = flags
                else:
                    cmd = [args.modelcar, "push", "--hf-repo", "bench/llm", "--hf-endpoint", hub.url,
                           "--registry", push_host, "--target-repo", repo, "--target-tag", tag,
                           "--spool-dir", str(d / "spool"), "--quiet", *flags]
                subprocess.run(["sync"], check=True)
                rows.setdefault(label, []).append(measured(cmd, work, env, counter))
                spool.setdefault(label, []).append(disk_use(d))
                if n == 0 and not short.startswith("hub"):
                    root = "/models/llm" if flags is None or short == "local" else "/models"
                    checks[label] = runs_in_podman(f"{reg.host}/{repo}:{tag}", root, sums, work)
                shutil.rmtree(d)
    finally:
        if counter is not None:
            counter.close()
        if proxy is not None:
            proxy.stop()
        if reg is not None:
            reg.stop()
        if hub is not None:
            hub.stop()
        tempfile.tempdir = saved
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()[0]

    mi = "modelimage build hf://... --push"
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("wall", "cpu", "sent", "hub", "hub_cpu")}
           for k, v in rows.items()}
    best_peer = min((k for k in med if not k.startswith(("phase", "modelimage"))), key=lambda k: med[k]["wall"])
    print(f"Machine: {os.uname().nodename} ({os.uname().machine}, {os.cpu_count()} cores); {date.today()}; "
          f"load average {load0:.2f} at the start, {load1:.2f} at the end; oci-modelcar "
          f"{subprocess.run([args.modelcar, '--version'], capture_output=True, text=True).stdout.strip() or '?'}.")
    print(f"Model: {args.gib:g} GiB of random fp16 safetensors in {args.shards} files + config.json "
          f"({size / MB:.0f} MB) on the loopback Hub; median of {args.runs} runs, interleaved, each cold.")
    print("Links: " + (f"the Hub serves at {format_rate(link)} in total, the registry is behind a TCP proxy carrying "
                       f"each direction at {format_rate(link)} in total (tests/link.py); no latency added; the "
                       "Hub server CPU column includes the proxy's."
                       if link is not None else "unshaped loopback (CPU-bound)."))
    print(f"Command: `python benchmarks/bench_modelcar.py --gib {args.gib:g} --shards {args.shards} "
          f"--runs {args.runs}{' --phases' if args.phases else ''}{f' --link {args.link}' if args.link else ''}`.")
    print()
    print("| what | wall s (runs) | CPU s | peak RSS MB | sent to registry MB | read from Hub MB | Hub server CPU s | "
          "disk used at the end MB | vs modelimage time | pulls and runs in podman |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, v in rows.items():
        runs = ", ".join(f"{r['wall']:.1f}" for r in v)
        print(f"| {k} | {med[k]['wall']:.1f} ({runs}) | {med[k]['cpu']:.1f} | {max(r['rss'] for r in v) / MB:.0f} | "
              f"{med[k]['sent'] / MB:.0f} | {med[k]['hub'] / MB:.0f} | {med[k]['hub_cpu']:.1f} | "
              f"{max(spool[k]) / MB:.0f} | "
              f"{med[k]['wall'] / med[mi]['wall']:.2f}x | {checks.get(k, '?')} |")
    print()
    ratio = med[mi]["wall"] / med[best_peer]["wall"]
    rss_mi = max(r["rss"] for r in rows[mi])
    rss_peer = max(r["rss"] for r in rows[best_peer])
    print(f"modelimage time vs the faster oci-modelcar ({best_peer}): {ratio:.2f}x (goal <= 0.5x: "
          f"{'pass' if ratio <= 0.5 else 'miss'}); peak RSS {rss_mi / MB:.0f} MB vs {rss_peer / MB:.0f} MB "
          f"(goal: no more: {'pass' if rss_mi <= rss_peer else 'miss'})")


if __name__ == "__main__":
    sys.exit(main())
