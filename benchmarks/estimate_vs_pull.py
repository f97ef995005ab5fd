"""Calibrated estimates against real pulls on this machine, recorded, never
asserted (issue 17's accuracy table; issue 21: no timing test decides CI).

For each engine (podman, containerd's ``ctr pull`` on a private containerd
with its overlayfs snapshotter, ``modelimage pull``), in one run, one engine
after the other:

1. calibrate exactly as ``modelimage estimate --calibrate --engine E``
   does (:func:`modelimage.calibrate.calibrate`, its default images),
   against a loopback CNCF registry;
2. pull images of 0.5, 1 and 2 GiB in 1, 4 and 8 layers, uncompressed and
   gzip (one size and compression at a time, its three images pulled in
   shuffled rounds, ``--repeat`` times each, cleared between pulls: at most
   ~10 GB on disk at once), right after that engine's calibration, and
   compare each median with the estimate
   ``modelimage estimate REF --engine E --probe`` gives from that
   calibration (link and disk probed against the same registry).

Prints a Markdown table (every pair: the estimate with the range it comes
with, and whether the median fell inside) and writes every pull to
``--save``. ``--refit FILE`` reprints the table from a saved run
(benchmarks/results/ holds the recorded ones). ``--recalibrate`` calibrates
each engine once more after its checks and adds the error an estimate from
that later calibration makes: how far the node drifted while the checks ran.

    python benchmarks/estimate_vs_pull.py [--engines podman,containerd,modelimage]
        [--sizes 512MiB,1GiB,2GiB] [--layers 1,4,8] [--compressions none,gzip] [--repeat 3]
        [--recalibrate] [--save results.json]
"""

from __future__ import annotations

import argparse
import json
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

from modelimage import calibrate, probes  # noqa: E402
from modelimage.estimate import estimate_pull  # noqa: E402
from modelimage.fit import Calibration, Sample, fit  # noqa: E402
from modelimage.pullers import puller_for  # noqa: E402
from modelimage.pulltime import probe_disk  # noqa: E402
from modelimage.units import format_size, parse_size  # noqa: E402


class PrivateContainerd:
    """A containerd of its own (overlayfs snapshotter), as ENVIRONMENT.md
    describes; ``ctr`` finds it through CONTAINERD_ADDRESS."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/var/tmp"))
        sock = self.root / "c.sock"
        (self.root / "config.toml").write_text(
            f'version = 2\nroot = "{self.root}/root"\nstate = "{self.root}/state"\n[grpc]\n  address = "{sock}"\n')
        self.proc = subprocess.Popen(["containerd", "--config", str(self.root / "config.toml")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "log", "wb"))
        deadline = time.monotonic() + 20
        while not sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"containerd did not start: {(self.root / 'log').read_text()[-500:]}")
            time.sleep(0.1)
        os.environ["CONTAINERD_ADDRESS"] = str(sock)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        subprocess.run(["umount", "-R", str(self.root / "root")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="estimate-vs-pull-", dir="/var/tmp"))
    os.environ["MODELIMAGE_CACHE_DIR"] = str(work / "cache")  # never the user's calibrations
    engines = args.engines.split(",")
    ctrd = PrivateContainerd() if "containerd" in engines else None
    results: dict = {"machine": {"node": platform.node(), "cpus": os.cpu_count(), "date": str(date.today()),
                                 "load_average_start": os.getloadavg()[0]}, "engines": {}}
    try:
        with calibrate.loopback_registry(work) as host:
            for engine in engines:  # each engine calibrated right before its checks
                t = time.monotonic()
                cal = calibrate.calibrate(engine, registry=host, work=work, store=False)
                print(f"# {engine}: calibrated in {time.monotonic() - t:.0f} s: {cal.costs}", flush=True)
                results["engines"][engine] = {"calibration": cal.to_json(), "checks": []}
                for size in [parse_size(s) for s in args.sizes.split(",")]:
                    for compression in args.compressions.split(","):
                        check_group(results, engine, host, work, size, compression, args)
                        _save(results, args.save)
                if args.recalibrate:  # how far this node drifted while the checks ran
                    after = calibrate.calibrate(engine, registry=host, work=work, store=False)
                    print(f"# {engine}: calibrated again after the checks: {after.costs}", flush=True)
                    results["engines"][engine]["calibration_after"] = after.to_json()
                    _save(results, args.save)
    finally:
        if ctrd is not None:
            ctrd.close()
        shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_average_end"] = os.getloadavg()[0]
    return results


def check_group(results: dict, engine: str, host: str, work: Path, size: int, compression: str, args) -> None:
    """Push the images of one size and compression, pull them with ``engine``."""
    images, nonce = {}, f"{os.getpid()}-{engine}-{size}-{compression}"
    blobs_of: dict[str, list[str]] = {}  # read from the registry before each pull, as the calibration does
    for n in [int(x) for x in args.layers.split(",")]:
        spec = calibrate.ImageSpec(size, n, compression)
        ref = f"{host}/estimate-check/{engine}-{spec.name}:v1"
        layout = work / "layout"
        images[ref] = calibrate.write_image(layout, spec, tag="v1", nonce=f"{nonce}-{n}")
        calibrate.push_image(layout, "v1", ref)
        blobs_of[ref] = calibrate.layout_digests(layout)[1]
        shutil.rmtree(layout)
    repo, tag = next(iter(images)).split("/", 1)[1].rsplit(":", 1)  # the link, probed as `estimate --probe` does
    link = probes.probe_download(f"http://{host}/v2/{repo}/blobs/{_biggest_blob(host, repo, tag)}")
    rec = results["engines"][engine]
    puller = puller_for(engine, plain_http=True, work=work)
    try:
        cal = _calibration(rec["calibration"])  # the disk as `--probe` has it: the calibration's pace, else probed
        disk = probe_disk(next(iter(images.values())), cal.engine_model(), _existing(puller.storage()),
                          calibrated=cal.writeback_bps is not None)
        disk.setdefault("disk_bps", cal.writeback_bps)
        load_start, started = os.getloadavg()[0], time.strftime("%H:%M:%S")
        samples = calibrate.measure(puller, images, repeat=args.repeat,
                                    before=lambda ref: calibrate.warm_loopback(ref, blobs_of[ref]))
    finally:
        puller.close()
    for sample in samples:
        rec["checks"].append({**sample.to_json(), "link_bps": link, "disk_bps": disk.get("disk_bps"),
                              "write_cache": disk["write_cache_bytes"],
                              "load_average_start": load_start, "load_average": os.getloadavg()[0],
                              "started": started, "ended": time.strftime("%H:%M:%S")})
        print(_row(engine, _calibration(rec["calibration"]), rec["checks"][-1]), flush=True)
    shutil.rmtree(work / "registry" / "docker" / "registry" / "v2" / "blobs", ignore_errors=True)


def _biggest_blob(host: str, repo: str, tag: str) -> str:
    import httpx

    r = httpx.get(f"http://{host}/v2/{repo}/manifests/{tag}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return max(r.json()["layers"], key=lambda d: d["size"])["digest"]


def _existing(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


DISK_BPS: float | None = None  # --disk-bps: a refit with this pace past the page cache instead of the one probed
REFIT_COSTS = False  # --refit-costs: fit each saved calibration's pulls again with the current model


def _calibration(d: dict) -> Calibration:
    cal = Calibration.from_json(d)
    return fit(cal.engine, cal.samples, facts=cal.facts) if REFIT_COSTS else cal


def estimate_for(cal: Calibration, check: dict) -> tuple[float, float, float]:
    """What `estimate REF --engine E --probe` says: total and range."""
    s = Sample.from_json(check)
    disk = DISK_BPS or check["disk_bps"]
    e = estimate_pull(s.layers, bandwidth_bps=check["link_bps"], engine=cal.engine_model(), disk_bps=disk,
                      write_cache_bytes=check["write_cache"], latency_s=0.0, spread=cal.spread)
    return e.total_seconds, e.low_seconds, e.high_seconds


def _row(engine: str, cal: Calibration, check: dict, after: Calibration | None = None) -> str:
    s = Sample.from_json(check)
    est, low, high = estimate_for(cal, check)
    kind = "gzip" if s.layers[0].compression == "gzip" else "plain"
    load = f"{check['load_average_start']:.1f}-" if "load_average_start" in check else ""
    again = f" {(estimate_for(after, check)[0] / s.median - 1) * 100:+.0f} % |" if after else ""
    return (f"| {engine} | {format_size(sum(x.tar_bytes for x in s.layers))} | {len(s.layers)} | {kind} | "
            f"{', '.join(f'{t:.2f}' for t in s.seconds)} | {s.median:.2f} | {est:.2f} ({low:.1f}-{high:.1f}) | "
            f"{(est / s.median - 1) * 100:+.0f} % | {'yes' if low <= s.median <= high else 'no'} |{again} "
            f"{load}{check['load_average']:.1f} |")


HEAD = ("| engine | image | layers | layers are | real pulls s | median | estimate s (range) | error | median in "
        "range | load |\n|---|---|---|---|---|---|---|---|---|---|")
HEAD_AFTER = ("| engine | image | layers | layers are | real pulls s | median | estimate s (range) | error | median "
              "in range | error, calibrated after | load |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _after(rec: dict) -> Calibration | None:
    return _calibration(rec["calibration_after"]) if "calibration_after" in rec else None


def report(results: dict) -> None:
    print(f"\n# {results['machine']}")
    for engine, rec in results["engines"].items():
        for when, cal in (("", _calibration(rec["calibration"])), (" again after the checks", _after(rec))):
            if cal is None:
                continue
            c, (lo, hi) = cal.costs, cal.spread
            print(f"\n{engine} ({cal.facts.get('engine_version')}, calibrated{when} at {cal.facts.get('date')}, load "
                  f"{cal.facts.get('load_average')}-{cal.facts.get('load_average_after')}): pull {c.pull_s:.3f} s, "
                  f"layer {c.layer_s:.3f} s, {c.byte_s * 1e9:.2f} s/GB, busiest stream {c.stream_byte_s * 1e9:.2f} "
                  f"s/GB, gzip {c.gzip_byte_s * 1e9:.2f} s/GB; errors on its own pulls "
                  + ", ".join(f"{e * 100:+.0f}" for e in cal.errors()) + f" %; single pulls x{lo:.2f}-x{hi:.2f}")
    after = any("calibration_after" in rec for rec in results["engines"].values())
    print("\n" + (HEAD_AFTER if after else HEAD))
    for engine, rec in results["engines"].items():
        cal = _calibration(rec["calibration"])
        for check in rec["checks"]:
            print(_row(engine, cal, check, _after(rec) if after else None))
    print()
    for engine, rec in results["engines"].items():
        cal = _calibration(rec["calibration"])
        ests = [estimate_for(cal, c) for c in rec["checks"]]
        medians = [Sample.from_json(c).median for c in rec["checks"]]
        errors = [e[0] / m - 1 for e, m in zip(ests, medians)]
        spread = [(max(c["seconds"]) - min(c["seconds"])) / m for c, m in zip(rec["checks"], medians)]
        if errors:
            print(f"{engine}: {sum(abs(e) <= 0.15 for e in errors)} of {len(errors)} within ±15 %, worst "
                  f"{max(errors, key=abs) * 100:+.0f} %, median |error| "
                  f"{statistics.median(map(abs, errors)) * 100:.0f} %, "
                  f"{sum(lo <= m <= hi for (_, lo, hi), m in zip(ests, medians))} of {len(errors)} medians in the "
                  f"estimate's range; the pulls' own spread (max-min)/median: median "
                  f"{statistics.median(spread) * 100:.0f} %, max {max(spread) * 100:.0f} %")


def _save(results: dict, path: Path | None) -> None:
    if path:
        path.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="podman,containerd,modelimage")
    ap.add_argument("--sizes", default="512MiB,1GiB,2GiB")
    ap.add_argument("--layers", default="1,4,8")
    ap.add_argument("--compressions", default="none,gzip")
    ap.add_argument("--recalibrate", action="store_true",
                    help="calibrate each engine again after its checks (how far the node drifted meanwhile)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--refit", type=Path, help="report a saved run instead of measuring")
    ap.add_argument("--disk-bps", type=float, help="with --refit: the disk's pace past the page cache, bytes/s, "
                    "instead of the one each check probed (runs before 2026-11-30 15:30 UTC probed a 64 MiB fsync)")
    ap.add_argument("--refit-costs", action="store_true", help="with --refit: fit the costs again from each saved "
                    "calibration's pulls with the current model (instead of the costs fitted then)")
    args = ap.parse_args()
    global DISK_BPS, REFIT_COSTS
    DISK_BPS, REFIT_COSTS = args.disk_bps, args.refit_costs
    if args.refit:
        report(json.loads(args.refit.read_text()))
        return
    for tool in ("docker-registry", *(("ctr", "containerd") if "containerd" in args.engines else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make tools installs it)")
    print(HEAD, flush=True)
    results = run(args)
    _save(results, args.save)
    report(results)


if __name__ == "__main__":
    main()
