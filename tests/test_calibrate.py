"""modelimage.calibrate and ``estimate --calibrate``: real pulls of generated
images on a real loopback registry, the fit stored and used.

The accuracy check compares an estimate only with pulls measured in the
same run on the same machine (issue 21): calibration images and the checked
image are pulled in the same shuffled rounds, so load from other jobs falls
on all of them alike, and medians are compared.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import shutil
import subprocess
import tarfile

import pytest
from click.testing import CliRunner

from modelimage import calibrate
from modelimage.cli import cli, main
from modelimage.estimate import estimate_pull
from modelimage.fit import Sample, fit
from modelimage.pullers import puller_for

from .tools import need

MiB = 2**20


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_calibration_images_are_valid_images(tmp_path, compression):
    """Checked with Python's own tar and gzip readers and with skopeo."""
    layers = calibrate.write_image(tmp_path, calibrate.ImageSpec(3 * MiB + 5, 2, compression), tag="t", nonce="n1")
    index = json.loads((tmp_path / "index.json").read_text())
    blobs = tmp_path / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    for desc, diff_id, spec in zip(manifest["layers"], config["rootfs"]["diff_ids"], layers):
        data = (blobs / desc["digest"].split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == desc["digest"] and len(data) == desc["size"]
        tar = gzip.decompress(data) if compression == "gzip" else data
        assert desc["mediaType"].endswith("+gzip") == (compression == "gzip")
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
        assert (spec.size, spec.tar_bytes, spec.compression) == (len(data), len(tar), compression)
        with tarfile.open(fileobj=__import__("io").BytesIO(tar)) as t:
            (member,) = t.getmembers()
            assert member.name.startswith("models/n1-") and member.size == (3 * MiB + 5) // 2
    if compression == "gzip":  # weight-like bytes: gzip saves a little, as on real fp16 weights
        assert 0.8 < layers[0].size / layers[0].tar_bytes < 0.99
    need("skopeo")
    out = subprocess.run(["skopeo", "inspect", f"oci:{tmp_path}:t"], capture_output=True, text=True, check=True)
    assert len(json.loads(out.stdout)["Layers"]) == 2


def test_without_a_registry_tool_it_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(calibrate.CalibrationError, match="--registry HOST.*apt-get install docker-registry"):
        with calibrate.loopback_registry(tmp_path):
            pass


@pytest.mark.parametrize("sizes, layers", [([MiB], [1]), ([4 * MiB], [1, 2, 3]), ([MiB, 2 * MiB, 4 * MiB], [1]),
                                           ([MiB, MiB], [1, 1, 2]), ([100 * MiB, 101 * MiB], [1, 4])])
def test_too_few_images_to_fit_is_refused_before_anything_runs(sizes, layers, tmp_path):
    """One size in 1, 2 and 3 layers passed (three images): one run fitted
    71 s/GB and no per-pull cost, the next 0 s/GB and 0.31 s a pull, both
    stored with exit 0. Per pull, per layer and per byte need two sizes and
    two layer counts."""
    with pytest.raises(calibrate.CalibrationError, match=r"at least two sizes \(the biggest 1.5x the smallest or more\) and two layer counts"):
        calibrate.calibrate("podman", sizes=sizes, layers=layers, compressions=["none", "gzip"], work=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupt_while_a_group_is_deleted_still_deletes_it(own_registry, tmp_path, monkeypatch):
    """Ctrl-C while a group's images were being deleted from the user's
    registry: the image being deleted had already left the list of what to
    take back, so it stayed there, with no warning. It is deleted on the way out."""
    real, calls = calibrate.remove_image, []

    def remove_image(ref, manifest, blobs):
        calls.append(ref)
        if len(calls) == 3:  # the first image of the second group
            raise KeyboardInterrupt
        return real(ref, manifest, blobs)

    monkeypatch.setattr(calibrate, "remove_image", remove_image)
    with pytest.raises(KeyboardInterrupt):
        calibrate.calibrate("modelimage", registry=own_registry.host, sizes=[MiB, 2 * MiB], layers=[1, 2],
                            compressions=["none"], repeat=1, work=tmp_path, store=False, disk=False)
    assert calls[3] == calls[2]  # tried again
    assert _calibration_left_in(own_registry) == ([], 0)
    assert list(tmp_path.iterdir()) == []


def test_a_push_the_loopback_registry_refuses_names_where_it_stores(tmp_path, monkeypatch):
    """A full TMPDIR (a 6 MB tmpfs) said only `127.0.0.1:56669/modelimage-
    calibration/modelimage: starting an upload: gave up after 6 attempts
    (... 500 UNKNOWN ...)`: a registry the user never gave, and not where
    it stores. The loopback registry's 500 is injected here."""
    from modelimage.errors import ModelImageError

    def refused(layout, tag, ref):
        raise ModelImageError(f"{ref.rsplit(':', 1)[0]}: starting an upload: gave up after 6 attempts (500 UNKNOWN)")

    monkeypatch.setattr(calibrate, "push_image", refused)
    with pytest.raises(calibrate.CalibrationError) as e:
        calibrate.calibrate("modelimage", sizes=[MiB, 2 * MiB], layers=[1, 2], compressions=["none"], repeat=1,
                            work=tmp_path, store=False, disk=False)
    assert str(e.value).startswith(f"the loopback registry the calibration started (storing under {tmp_path}, ")
    assert "did not take the 1mib-1l-none image: free some space there (TMPDIR), or give --registry HOST" in str(e.value)
    assert str(e.value).endswith("(starting an upload: gave up after 6 attempts (500 UNKNOWN))")
    assert list(tmp_path.iterdir()) == []


def test_deleting_from_a_registry_that_does_not_answer_is_false_not_an_error():
    assert calibrate.remove_image("127.0.0.1:1/nothing/here:v1", "sha256:" + "0" * 64, ["sha256:" + "1" * 64]) is False


@pytest.mark.integration
def test_estimate_calibrate_stores_a_fit_that_estimate_then_uses(registry, tmp_path, monkeypatch, llama_dir, capsys):
    """The command end to end, tiny: podman pulls 8 images once each."""
    need("podman")
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    before = runner.invoke(cli, ["estimate", str(llama_dir), "--engine", "podman"])
    assert before.exit_code == 0, before.output
    assert "built-in constants, not calibrated here" in before.output and " to " in before.output

    r = runner.invoke(cli, ["estimate", "--calibrate", "--engine", "podman", "--registry", registry.host,
                            "--calibrate-sizes", "1MiB,4MiB", "--calibrate-layers", "1,2", "--repeat", "1", "--json",
                            "--no-calibrate-disk"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    stored = tmp_path / "cache" / "calibration" / "podman.json"
    assert data["stored"] == str(stored) and stored.exists()
    assert data["facts"]["engine_version"].startswith("podman version") and data["facts"]["cpus"] >= 1
    assert data["facts"]["memory_bytes"] > 0 and data["facts"]["storage_disk_bytes"] > 0
    assert len(data["samples"]) == 8 and all(len(s["seconds"]) == 1 for s in data["samples"])
    assert {s["layers"][0][2] for s in data["samples"]} == {"none", "gzip"}
    assert set(data["costs"]) == {"pull_s", "layer_s", "byte_s", "stream_byte_s", "gzip_byte_s"}
    assert data["writeback_bps"] is None and data["write_cache_bytes"] == 0  # --no-calibrate-disk

    after = runner.invoke(cli, ["estimate", str(llama_dir), "--engine", "podman", "--json"])
    assert after.exit_code == 0, after.output
    est = json.loads(after.stdout)
    assert est["calibrated"] is True and est["source"].startswith("calibrated on this machine")
    lo, hi = est["range_seconds"]
    assert lo <= est["total_seconds"] <= hi
    text = runner.invoke(cli, ["estimate", str(llama_dir), "--engine", "podman"]).output
    assert "calibrated on this machine" in text and "measured" not in text  # nothing was probed

    other = runner.invoke(cli, ["estimate", str(llama_dir), "--engine", "containerd", "--json"])
    assert json.loads(other.stdout)["calibrated"] is False  # a calibration is per engine

    stored.write_text("{not json")
    assert main(["estimate", str(llama_dir), "--engine", "podman"]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"error: {stored}: cannot read the stored calibration") and len(err.splitlines()) == 1
    assert "--calibrate --engine podman" in err


def test_pulls_that_would_all_time_the_disk_are_refused_before_anything_runs(tmp_path):
    """With 64 MiB of page cache, podman's 128 MiB and 1 GiB pulls (blob +
    layer) all write past it: nothing would time the engine's own costs."""
    with pytest.raises(calibrate.CalibrationError, match=r"page cache takes 0.1 GiB.*two sizes \(1.5x apart or more\) and two layer counts"):
        calibrate.calibrate("podman", work=tmp_path, write_cache_bytes=64 * MiB)
    assert list(tmp_path.iterdir()) == []


def test_pulls_within_the_cache_of_one_size_only_are_refused_before_anything_runs(tmp_path):
    """With 600 MiB of page cache, podman's 1 GiB pulls write past it and
    the three layer counts of 128 MiB left could not tell per byte from
    per pull."""
    with pytest.raises(calibrate.CalibrationError, match=r"two sizes \(1.5x apart or more\) and two layer counts"):
        calibrate.calibrate("podman", work=tmp_path, layers=[1, 2, 4], write_cache_bytes=600 * MiB)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_image_without_room_is_refused_before_anything_runs(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(calibrate.CalibrationError, match=r"GiB image and needs .* free under .*--no-calibrate-disk"):
        calibrate.calibrate("containerd", work=tmp_path, write_cache_bytes=free)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_calibration_times_the_disk_past_the_page_cache_with_one_more_image(registry, tmp_path):
    """The disk image is pushed, pulled by the engine after the other
    images, in rounds of its own (in run 9 it shared their rounds, and the
    1 GiB pulls ran 20-30 % slower than the checks' later: a fit 21-26 %
    high; run 11, in rounds of its own, saw the same: suspected, not shown),
    left out of the costs' fit and cleared after. Here the page cache is
    said to take 16 MiB and the image is sized to write 512 MiB past it
    (the machine's real cache takes more, so its pulls may not be slowed:
    then no pace is claimed); test_fit checks the pace itself."""
    need("podman")
    said: list[str] = []
    cal = calibrate.calibrate("podman", registry=registry.host, sizes=[MiB, 4 * MiB], layers=[1, 2],
                              compressions=["none"], repeat=2, work=tmp_path, store=False,
                              write_cache_bytes=16 * MiB, disk_past=512 * MiB, progress=said.append)
    pulls = [line for line in said if line.startswith("podman pull ")]
    assert len(pulls) == 10 and all("384mib-4l" in line for line in pulls[-2:])  # the disk image's two, last
    assert not any("384mib" in line for line in said if "warm-up" in line)
    sizes = sorted(sum(x.tar_bytes for x in s.layers) for s in cal.samples)
    assert len(sizes) == 5 and sizes[-1] > 384 * MiB  # (16 + 512 MiB) / 2, in 4 layers, rounded up to 128 MiB
    assert cal.write_cache_bytes == 16 * MiB
    assert cal.writeback_bps is None or 0 < cal.writeback_bps < math.inf
    images = subprocess.run(["podman", "images", "--format", "{{.Repository}}"], capture_output=True, text=True)
    assert "modelimage-calibration" not in images.stdout  # every pull was cleared
    assert list(tmp_path.iterdir()) == []


def test_calibrate_refuses_a_source():
    r = CliRunner().invoke(cli, ["estimate", "some/model", "--calibrate"])
    assert r.exit_code == 2 and "without one" in r.output


@pytest.mark.integration
def test_a_small_calibration_predicts_another_size(registry, tmp_path):
    """Calibrate podman on 8 and 32 MiB images (1 and 4 plain layers), then
    estimate a 20 MiB 4-layer image and compare with its real pulls, all
    pulled in the same shuffled rounds. Other jobs on a shared 2-core machine
    only ever slow a pull down (here a 1 s pull once took 16 s), so each
    image counts by its fastest pull, for the fit and the check alike; more
    rounds are added (up to 9) while the estimate is off: noise shrinks with
    more pulls, a wrong model does not. (The benchmark, on a quiet machine,
    compares medians: benchmarks/estimate_vs_pull.py; the ±15 % goal is
    checked there, not here.) The band here is wide (±50 %) so that a loaded
    CI machine cannot fail it, while a model that is wrong in kind (a cost
    per byte off by 2x, layers ignored) still does."""
    need("podman")
    specs = [*calibrate.image_specs([8 * MiB, 32 * MiB], [1, 4], ["none"]), calibrate.ImageSpec(20 * MiB, 4)]
    images = {}
    for spec in specs:
        ref = f"{registry.host}/calibrate-check/{spec.name}:v1"
        images[ref] = calibrate.write_image(tmp_path / "l", spec, tag="v1", nonce=f"check-{spec.name}")
        calibrate.push_image(tmp_path / "l", "v1", ref)
        shutil.rmtree(tmp_path / "l")
    puller = puller_for("podman", plain_http=True)
    samples: list[Sample] = []
    try:
        for _ in range(3):
            new = calibrate.measure(puller, images, repeat=3)
            samples = new if not samples else [Sample(s.layers, s.seconds + n.seconds) for s, n in zip(samples, new)]
            fastest = [Sample(s.layers, (min(s.seconds),)) for s in samples]
            cal = fit("podman", fastest[:-1])
            check = fastest[-1]
            e = estimate_pull(check.layers, bandwidth_bps=math.inf, engine=cal.engine_model(), latency_s=0)
            error = e.total_seconds / check.median - 1
            if abs(error) <= 0.5:
                break
    finally:
        for ref in images:
            puller.clear(ref)
    assert abs(error) <= 0.5, (f"estimate {e.total_seconds:.2f} s vs fastest {check.median:.2f} s of "
                                f"{samples[-1].seconds}; calibration {cal.costs}, errors {cal.errors()}")


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: d["samples"][0].update(seconds=[0]), "not pull times"),  # was a ZeroDivisionError traceback
    (lambda d: d["samples"][0].update(seconds=[]), "not pull times"),  # was a StatisticsError traceback
    (lambda d: d.update(samples=[]), "no calibration pulls"),  # "reproduces its 0 images within ±0 %"
    (lambda d: d.update(engine="containerd"), "it is containerd's"),  # containerd's costs printed as podman's
    (lambda d: d["costs"].update(pull_s=True), "pull_s is True"),  # read as 1 s
    (lambda d: d["costs"].update(pull_s="2"), "pull_s is '2'"),
    (lambda d: d["costs"].update(byte_s=-1e-9), "byte_s is negative"),  # the message named no file
    (lambda d: d["costs"].update(layer_s=float("nan")), "layer_s is nan"),
    # breaker8: each of these was read and estimated from, or failed without naming the file
    (lambda d: d["costs"].update(pull_s=1e308), "pull_s is 1e+308, more than any engine takes"),  # a 10**300 s pull
    (lambda d: d["samples"][0].update(seconds=[1e-300]), "not pull times"),  # "within ±4986241778753…%"
    (lambda d: d["samples"][0].update(layers=[]), "a sample has no layers"),
    (lambda d: d["samples"][0].update(layers=[[-5, -5, "none"]]), "must not be negative"),  # no file named
    (lambda d: d["samples"][0].update(layers=[[5, 5, "brotli"]]), "layer compression 'brotli'"),  # no file named
    (lambda d: d.update(facts={"cpus": True}), "its cpus fact is True"),  # "True cores"
    (lambda d: d.update(facts={"cpus": "many"}), "its cpus fact is 'many'"),
])
def test_a_corrupt_stored_calibration_is_one_line_naming_the_file(change, why, tmp_path, monkeypatch, llama_dir,
                                                                  capsys):
    """Hand-edited or damaged calibration files: never a traceback, never
    numbers estimated from them; one line naming the file and the fix."""
    from modelimage.estimate import LayerSpec

    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path))
    pulls = [Sample((LayerSpec(s),) * n, (0.5 + s / 1e9 + n / 10,)) for s in (2**20, 2**24) for n in (1, 2)]
    data = fit("podman", pulls).to_json()
    monkeypatch.setattr(calibrate, "cache_dir", lambda: tmp_path)
    calibrate.save(calibrate.Calibration.from_json(data))
    assert calibrate.load("podman") is not None  # the good one loads
    change(data)
    stored = tmp_path / "calibration" / "podman.json"
    stored.write_text(json.dumps(data))
    assert main(["estimate", str(llama_dir), "--engine", "podman"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {stored}: not a calibration this modelimage reads") and err.count("\n") == 1
    assert why in err and "--calibrate --engine podman" in err


@pytest.mark.parametrize("host, plain", [("127.0.0.1:5000", True), ("localhost:5000/prefix", True), ("[::1]:5000", True),
                                         ("localhost.example.com:5000", False), ("127.example.com", False)])
def test_only_loopback_registries_are_pulled_in_plain_http(host, plain, tmp_path, monkeypatch):
    """A --registry named localhost.example.com or 127.example.com was taken for
    loopback (a prefix test), so the engine pulled from it in plain HTTP
    without checking TLS. Loopback is reference.is_loopback's rule."""
    seen = {}

    @contextlib.contextmanager
    def given(registry, tmp):
        yield registry

    def puller(engine, *, plain_http, work):
        seen["plain"] = plain_http
        raise calibrate.CalibrationError("stop here")

    monkeypatch.setattr(calibrate, "_registry", given)
    monkeypatch.setattr(calibrate, "puller_for", puller)
    with pytest.raises(calibrate.CalibrationError, match="stop here"):
        calibrate.calibrate("podman", registry=host, work=tmp_path)
    assert seen["plain"] is plain


def test_the_stored_calibration_is_written_durably_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    """Review finding: save wrote a temp file and renamed it without an
    fsync (a power cut could leave an empty ENGINE.json). Now the one
    durable writer: the temp file synced before the rename, the folder
    after; a save that fails leaves the stored calibration as it was."""
    from modelimage.estimate import LayerSpec

    from .test_layout import Recorder

    monkeypatch.setattr(calibrate, "cache_dir", lambda: tmp_path)
    pulls = [Sample((LayerSpec(s),) * n, (0.5 + s / 1e9 + n / 10,)) for s in (2**20, 2**24) for n in (1, 2)]
    first = fit("podman", pulls)
    rec = Recorder(monkeypatch)
    stored = calibrate.save(first)
    renamed = rec.renamed_after_sync(stored)
    assert rec.index("fsync", lambda p: p == str(stored.parent)) > renamed
    assert oct(stored.stat().st_mode & 0o777) == oct(0o644)
    before = stored.read_bytes()
    Recorder(monkeypatch, fail_on=r"\.podman\.json\.")
    with pytest.raises(OSError):
        calibrate.save(first)
    assert stored.read_bytes() == before and sorted(p.name for p in stored.parent.iterdir()) == ["podman.json"]


def test_the_calibration_prints_the_disk_pace_it_met(monkeypatch, tmp_path):
    """The text output names the pace past the page cache (and --json has it)."""
    from .test_fit import _disk_pulls

    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    cache = 2 * 2**30
    made = fit("podman", _disk_pulls("podman", 150e6, cache), facts={"engine_version": "podman 4.3.1"},
               write_cache_bytes=cache)
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: made)
    r = CliRunner().invoke(cli, ["estimate", "--calibrate", "--engine", "podman"])
    assert r.exit_code == 0, r.output
    assert "150 MB/s (1.2 Gbit/s)  writes past the page cache (2.15 GB here): the disk, as the pulls met it" in r.output
    j = CliRunner().invoke(cli, ["estimate", "--calibrate", "--engine", "podman", "--json"])
    assert json.loads(j.stdout)["writeback_bps"] == pytest.approx(150e6)
    lo, hi = made.spread  # the range the text prints, in the JSON too
    assert f"the range x{lo:.2f} to x{hi:.2f}" in r.output
    assert json.loads(j.stdout)["range"] == [pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4)]


def _calibration_left_in(reg) -> tuple[list[str], int]:
    """The tags of calibration images in ``reg`` and the blob links of its
    repositories (what a calibration pushed and did not delete)."""
    import httpx

    tags = []
    for repo in httpx.get(f"{reg.url}/v2/_catalog").json().get("repositories") or []:
        r = httpx.get(f"{reg.url}/v2/{repo}/tags/list")
        tags += [f"{repo}:{t}" for t in ((r.json().get("tags") or []) if r.status_code == 200 else [])]
    links = [p for p in (reg.root / "data").rglob("link") if "_layers" in p.parts]
    return tags, len(links)


@pytest.fixture
def own_registry():
    """A registry of this test's own (the module's is shared: what other
    tests leave in it is not this test's)."""
    from .registry import start_registry

    with start_registry() as reg:
        yield reg


CALIBRATE_TINY = ["estimate", "--calibrate", "--engine", "modelimage", "--calibrate-sizes", "1MiB,2MiB",
                  "--calibrate-layers", "1,2", "--repeat", "1", "--no-calibrate-disk"]


def test_a_calibration_deletes_what_it_pushed_to_the_given_registry(own_registry, tmp_path, monkeypatch):
    """`--registry` is the user's: 8 images (4.5 GB with the default sizes)
    were left there by every calibration. They are deleted after."""
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    r = CliRunner().invoke(cli, [*CALIBRATE_TINY, "--registry", own_registry.host, "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["samples"]) == 8
    assert _calibration_left_in(own_registry) == ([], 0)


def test_a_registry_that_refuses_deletes_gets_one_warning_naming_what_is_left(tmp_path, monkeypatch):
    from .registry import start_registry

    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    with start_registry(extra_config={"storage": {"filesystem": {"rootdirectory": str(tmp_path / "reg")},
                                                  "delete": {"enabled": False}}}) as reg:
        r = CliRunner().invoke(cli, [*CALIBRATE_TINY, "--registry", reg.host, "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["engine"] == "modelimage"  # stdout stays JSON
        (warning,) = r.stderr.splitlines()
        assert warning.startswith(f"warning: 8 calibration image(s) could not be deleted from {reg.host}")
        assert warning.count("modelimage-calibration/modelimage:") == 8


@pytest.mark.parametrize("sig, code, line, given", [("SIGINT", 130, "interrupted", True),
                                                   ("SIGTERM", 143, "terminated", True),
                                                   ("SIGTERM", 143, "terminated", False)])
def test_ctrl_c_or_sigterm_in_the_middle_of_a_calibration_leaves_nothing_behind(own_registry, tmp_path, sig, code,
                                                                                line, given):
    """A real SIGINT (Ctrl-C) or SIGTERM (`kill`, a cancelled CI job) to
    `modelimage estimate --calibrate` while its pulls run: exit 130 or 143
    with one line, no calibration stored, nothing in the temporary
    directory, nothing in the registry it pushed to, and no loopback
    registry left running (SIGTERM left all three behind: no handler)."""
    import os
    import signal
    import sys
    import time

    env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    registry = ["--registry", own_registry.host] if given else []
    proc = subprocess.Popen([sys.executable, "-m", "modelimage", *CALIBRATE_TINY, "--repeat", "20", *registry],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (a suite started in the background inherits SIGINT ignored, and so would the child: it never stopped)
    deadline = time.monotonic() + 120

    def pulling() -> bool:  # the third timed pull or any later one (each 1-2 MiB pull's folder lives milliseconds)
        pulls = (tmp_path / "tmp").glob("modelimage-calibrate-*/modelimage-calibrate-pull-*/pull-*")
        return any(d.name[5:].isdigit() and int(d.name[5:]) >= 3 for d in pulls)

    while not pulling():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code and err.strip() == line, err
    assert out == ""
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "cache" / "calibration" / "modelimage.json").exists()
    assert _calibration_left_in(own_registry) == ([], 0)
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert left == [], "a loopback registry was left running"


def test_sizes_that_are_not_whole_mib_are_each_pulled(tmp_path, monkeypatch):
    """100 KiB and 900 KiB were both tagged ``0mib-…``: the second push
    overwrote the first, only 900 KiB images were pulled, and a fit of one
    size (135 s/GB per stream byte) was stored with exit 0."""
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    r = CliRunner().invoke(cli, ["estimate", "--calibrate", "--engine", "modelimage", "--calibrate-sizes",
                                 "100KiB,900KiB,900KiB", "--calibrate-layers", "1,2", "--repeat", "1", "--json",
                                 "--no-calibrate-disk"])
    assert r.exit_code == 0, r.output
    samples = json.loads(r.stdout)["samples"]
    assert len(samples) == 8
    totals = sorted({s["layers"][0][0] for s in samples if s["layers"][0][2] == "none" and len(s["layers"]) == 1})
    assert len(totals) == 2 and totals[0] < 200 * 1024 < 800 * 1024 < totals[1]
    assert len({calibrate.ImageSpec(s, 1).name for s in (100 * 1024, 900 * 1024, MiB, MiB + 1)}) == 4


@pytest.mark.parametrize("registry", ["https://127.0.0.1:5000", "127.0.0.1:5000/Models", "alice:s3cret@127.0.0.1:5000"])
def test_a_registry_that_is_not_a_host_is_one_line_before_anything_is_written(registry, tmp_path, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert main([*CALIBRATE_TINY, "--registry", registry]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --registry {registry.replace('alice:s3cret', '***')}: give HOST[:PORT]")
    assert "s3cret" not in line and ("is not" in line or "credentials do not go" in line)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_each_timed_pull_from_a_loopback_registry_finds_its_blobs_read_just_before(registry, tmp_path, monkeypatch):
    """A loopback registry's blobs that the page cache let go are read from
    the node's own disk during the pull, which a remote registry never costs
    the node (run 11: the calibration's 1 GiB pulls ran slower than the same
    pulls minutes later; 13 % of podman's from that alone). Every timed pull
    has its image's blobs read from the registry right before it, untimed;
    the warm-up pull and nothing else."""
    events: list[tuple[str, str]] = []
    real_warm = calibrate.warm_loopback

    def warm(ref, blobs):
        real_warm(ref, blobs)  # real GETs: every digest is there
        events.append(("warm", ref))
        assert len(blobs) == 1 + int(ref.split(":")[-1].split("-")[1].removesuffix("l"))  # config + layers

    from modelimage import pullers

    real_pull = pullers.Puller.pull

    def pull(self, ref):
        events.append(("pull", ref))
        return real_pull(self, ref)

    monkeypatch.setattr(calibrate, "warm_loopback", warm)
    monkeypatch.setattr(pullers.Puller, "pull", pull)
    said: list[str] = []
    calibrate.calibrate("modelimage", registry=registry.host, sizes=[MiB, 2 * MiB], layers=[1, 2],
                        compressions=["none"], repeat=1, work=tmp_path, store=False, disk=False,
                        progress=said.append)
    assert sum("warm-up" in line for line in said) == 2  # one per group (size): not warmed
    for group in (events[:5], events[5:]):
        assert group[0][0] == "pull"  # the group's warm-up
        timed = group[1:]
        assert [kind for kind, _ in timed] == ["warm", "pull"] * 2
        assert all(timed[i][1] == timed[i + 1][1] for i in range(0, 4, 2))  # its own image's blobs
    assert len(events) == 10


def test_calibration_groups_are_one_size_and_compression_then_the_disk_image():
    specs = calibrate.image_specs([128 * MiB, 1024 * MiB], [1, 4], ["none", "gzip"])
    big = calibrate.ImageSpec(2048 * MiB, 4, "none")
    got = [[s.name for s in g] for g in calibrate.groups([*specs, big], big)]
    assert got == [["128mib-1l-none", "128mib-4l-none"], ["1024mib-1l-none", "1024mib-4l-none"],
                   ["128mib-1l-gzip", "128mib-4l-gzip"], ["1024mib-1l-gzip", "1024mib-4l-gzip"],
                   ["2048mib-4l-none"]]
    assert [len(g) for g in calibrate.groups(specs)] == [2, 2, 2, 2]


def test_each_group_is_pushed_right_before_its_pulls_and_deleted_right_after(own_registry, tmp_path, monkeypatch):
    """Timed with every calibration image pushed up front, 1 GiB pulls ran
    13-18 % slower than one size at a time (gigabytes of other images'
    blobs beside them in the registry and the page cache): a fit that much
    high. Each group's images are in the registry only while its own pulls
    run: the registry holds one group's tags when its pulls start, none of
    an earlier group's, and nothing at the end."""
    seen: list[tuple[list[str], list[str]]] = []
    real = calibrate.measure

    def measure(puller, images, **kw):
        seen.append((sorted(ref.rsplit(":", 1)[1].rsplit("-", 2)[0] for ref in images),
                     sorted(t.split(":", 1)[1].rsplit("-", 2)[0] for t in _calibration_left_in(own_registry)[0])))
        return real(puller, images, **kw)

    monkeypatch.setattr(calibrate, "measure", measure)
    cal = calibrate.calibrate("modelimage", registry=own_registry.host, sizes=[MiB, 2 * MiB], layers=[1, 2],
                              compressions=["none", "gzip"], repeat=1, work=tmp_path, store=False, disk=False)
    assert len(cal.samples) == 8
    assert [images for images, _ in seen] == [[f"{size}-{n}l-{c}" for n in (1, 2)]
                                              for c in ("none", "gzip") for size in ("1mib", "2mib")]
    assert all(images == in_registry for images, in_registry in seen)  # nothing else was there
    assert _calibration_left_in(own_registry) == ([], 0)


def test_a_loopback_calibration_frees_each_groups_blobs_before_the_next(tmp_path, monkeypatch):
    """The API's deletes leave a CNCF registry's blob files on disk until a
    garbage collection; the loopback registry the calibration starts is its
    own, so each group's blob files go before the next group is pushed."""
    data: list[int] = []
    real = calibrate.measure

    def measure(puller, images, **kw):
        blobs = tmp_path.glob("modelimage-calibrate-*/registry/docker/registry/v2/blobs/sha256/*/*/data")
        data.append(sum(1 for _ in blobs))
        return real(puller, images, **kw)

    monkeypatch.setattr(calibrate, "measure", measure)
    calibrate.calibrate("modelimage", sizes=[MiB, 2 * MiB], layers=[1, 2], compressions=["none"], repeat=1,
                        work=tmp_path, store=False, disk=False)
    assert data == [2 + 3 + 2] * 2  # each group alone: 2 configs, 3 layers, 2 manifests
    assert list(tmp_path.iterdir()) == []


def test_reading_a_loopback_registry_ahead_is_best_effort(registry, tmp_path):
    """A registry on this machine that wants TLS, a login, or does not have
    the blob is not read ahead, and nothing is raised: the pull says what is
    wrong, not the warming."""
    calibrate.warm_loopback(f"{registry.host}/nothing/here:v1", ["sha256:" + "0" * 64])  # 404
    calibrate.warm_loopback("127.0.0.1:1/nothing/here:v1", ["sha256:" + "0" * 64])  # nothing listens
