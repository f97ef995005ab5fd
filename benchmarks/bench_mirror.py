#!/usr/bin/env python3
"""Past one registry: a pull-through mirror in front of it (issue 20).

Two CNCF registries on loopback: the upstream (where the model is pushed)
and a mirror, a second ``docker-registry`` in proxy mode
(``proxy: {remoteurl: http://UPSTREAM}``), what a fleet puts next to its
nodes. Then, in one run:

1. ``modelimage build MODEL --push UPSTREAM/mirror/m:v1``;
2. node 1: ``modelimage pull MIRROR/mirror/m:v1 DEST1`` (the mirror's
   cache is cold: it fetches every blob from the upstream once);
3. node 2: the same pull into DEST2 (the mirror's cache is warm);
4. ``podman pull MIRROR/mirror/m:v1`` (a private podman store) and the
   model folder copied out of a container of it;
5. ``podman pull`` through a second mirror whose cache is cold: what the
   upstream serves a cold mirror when podman asks, beside step 2;
6. ``modelimage pull UPSTREAM/mirror/m:v1 DEST3`` (no mirror), for time;
7. with ``--config-mirror`` (the ``registry`` helper's
   ``[registries."UPSTREAM"] mirrors = ["MIRROR"]`` in modelimage.toml):
   ``modelimage pull UPSTREAM/...`` served by the mirror, then with the
   mirror stopped (fallback to the upstream).

Every copy must hold the model's files byte for byte (sha256 of each file
against the source). The upstream's access log (its stderr) is read after
each step: how many ``GET /v2/.../blobs/`` it served, and how many bytes
(the log's response size), so the mirror's cache hits are counted, not
assumed.

    python benchmarks/bench_mirror.py [--gib 0.5] [--shards 4] [--config-mirror]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

from common import MI  # noqa: E402  (puts the repository on sys.path)

MB = 1e6
# distribution's access log (logrus): one "response completed" line a request
BLOB_GET = re.compile(r'http\.request\.method=GET .*?http\.request\.uri="/v2/[^"]+/blobs/(sha256:[0-9a-f]{64})"'
                      r'.*?http\.response\.status=(\d{3}) http\.response\.written=(\d+)')


def file_sums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".modelimage"):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(8 << 20):
                    h.update(chunk)
            out[p.relative_to(root).as_posix()] = h.hexdigest()
    return out


def blob_gets(log: Path) -> tuple[int, int]:
    """(GETs of blobs answered 200/206, bytes in those answers) in a registry's access log so far."""
    n = size = 0
    for m in BLOB_GET.finditer(log.read_text(errors="replace")):
        if m.group(2) in ("200", "206"):
            n += 1
            size += int(m.group(3))
    return n, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=0.5)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--config-mirror", action="store_true",
                    help="also pull UPSTREAM/... with modelimage.toml naming the mirror, then with it stopped")
    args = ap.parse_args()

    from bench_build_push import Podman

    from modelimage.synth import write_random_shards
    from tests.registry import start_registry
    from tests.tools import CONTAINERS_CONF

    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-", dir="/var/tmp"))
    saved, tempfile.tempdir = tempfile.tempdir, str(work)
    up = mirror = podman = None
    rows: list[tuple[str, float, int, int, str]] = []  # what, seconds, upstream blob GETs, bytes, identical
    try:
        model = write_random_shards(work / "model", args.gib, args.shards)
        want = file_sums(model)
        size = sum(p.stat().st_size for p in model.iterdir())
        up = start_registry()
        mirror = start_registry(extra_config={"proxy": {"remoteurl": f"http://{up.host}"}})
        env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(work / "cache")}
        subprocess.run([*MI, "build", str(model), "--push", f"{up.host}/mirror/m:v1", "-q"], check=True, env=env)

        def step(label: str, cmd: list[str], dest: Path | None, cwd: Path | None = None) -> None:
            before = blob_gets(up.log)
            subprocess.run(["sync"], check=True)
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
            s = time.perf_counter() - t
            if p.returncode != 0:
                raise SystemExit(f"{label}: {' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
            after = blob_gets(up.log)
            same = "n/a"
            if dest is not None:
                got = file_sums(dest)
                same = "yes" if got == want else f"NO ({len(set(got.items()) ^ set(want.items()))} differ)"
            rows.append((label, s, after[0] - before[0], after[1] - before[1], same))

        step("node 1: modelimage pull MIRROR/... (mirror cold)",
             [*MI, "pull", f"{mirror.host}/mirror/m:v1", str(work / "d1"), "-q"], work / "d1")
        step("node 2: modelimage pull MIRROR/... (mirror warm)",
             [*MI, "pull", f"{mirror.host}/mirror/m:v1", str(work / "d2"), "-q"], work / "d2")
        if shutil.which("podman"):
            (work / "containers.conf").write_text(CONTAINERS_CONF)
            podman = Podman(work / "podman", work / "containers.conf")
            ref = f"{mirror.host}/mirror/m:v1"
            step("node 3: podman pull MIRROR/... (mirror warm)", podman.cmd("pull", "-q", "--tls-verify=false", ref),
                 None)
            cid = subprocess.run(podman.cmd("create", ref, "x"), check=True, capture_output=True, text=True,
                                 env=podman.env).stdout.strip()
            subprocess.run(podman.cmd("cp", f"{cid}:/models/model", str(work / "d3")), check=True, env=podman.env)
            got = file_sums(work / "d3")
            label, s, n, b, _ = rows[-1]
            rows[-1] = (label + ", files copied out of a container", s, n, b,
                        "yes" if got == want else "NO")
            # the same through a second mirror whose cache is cold: what the upstream serves podman
            mirror2 = start_registry(extra_config={"proxy": {"remoteurl": f"http://{up.host}"}})
            try:
                subprocess.run(podman.cmd("rmi", "-f", ref), capture_output=True, env=podman.env)
                step("podman pull MIRROR2/... (a second mirror, cold)",
                     podman.cmd("pull", "-q", "--tls-verify=false", f"{mirror2.host}/mirror/m:v1"), None)
            finally:
                mirror2.stop()
        step("no mirror: modelimage pull UPSTREAM/...",
             [*MI, "pull", f"{up.host}/mirror/m:v1", str(work / "d4"), "-q"], work / "d4")
        if args.config_mirror:
            cfg = work / "cfgdir"
            cfg.mkdir()
            (cfg / "modelimage.toml").write_text(f'[registries."{up.host}"]\nmirrors = ["{mirror.host}"]\n')
            step("modelimage pull UPSTREAM/... with mirrors = [MIRROR] in modelimage.toml",
                 [*MI, "pull", f"{up.host}/mirror/m:v1", str(work / "d5"), "-q"], work / "d5", cwd=cfg)
            mirror.stop()
            step("the same with the mirror stopped (fallback to the upstream)",
                 [*MI, "pull", f"{up.host}/mirror/m:v1", str(work / "d6"), "-q"], work / "d6", cwd=cfg)
    finally:
        if podman is not None:
            podman.close()
        for r in (mirror, up):
            if r is not None:
                r.stop()
        tempfile.tempdir = saved
        shutil.rmtree(work, ignore_errors=True)

    print(f"Machine: {os.uname().nodename} ({os.uname().machine}, {os.cpu_count()} cores); {date.today()}; "
          f"load average {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end.")
    print(f"Model: {args.gib:g} GiB of random fp16 safetensors in {args.shards} files + config.json "
          f"({size / MB:.0f} MB), {args.shards + 1} layers; upstream and mirror: docker-registry on loopback "
          f"(the mirror in proxy mode).")
    print(f"Command: `python benchmarks/bench_mirror.py --gib {args.gib:g} --shards {args.shards}"
          f"{' --config-mirror' if args.config_mirror else ''}`.")
    print()
    print("| step | seconds | upstream blob GETs | upstream blob bytes (MB) | files byte-identical to the source |")
    print("|---|---|---|---|---|")
    for label, s, n, b, same in rows:
        print(f"| {label} | {s:.2f} | {n} | {b / MB:.0f} | {same} |")


if __name__ == "__main__":
    main()
