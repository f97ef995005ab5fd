"""modelimage.pulltime: ``estimate SOURCE`` as one function: which costs
(this node's calibration or the built-in ones, labelled), what --probe
measures, and the layers of a model, a layout or a manifest."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from modelimage import calibrate, pullers, summary
from modelimage.errors import ConfigError
from modelimage.estimate import BUILTIN_RANGE, ENGINES, Costs, LayerSpec, estimate_pull
from modelimage.fit import Sample, fit
from modelimage.pulltime import basis_for, estimate_source, layer_specs_from_manifest
from modelimage.units import format_seconds

MiB = 2**20


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    # the calibrations these tests store say podman 4.3.1: whatever podman this machine has is not compared
    monkeypatch.setattr(pullers, "installed_version", lambda engine: None)
    return tmp_path / "cache"


def stored_podman_calibration() -> Costs:
    """A calibration as `estimate --calibrate` stores it, from pulls made by known costs."""
    costs = Costs(0.5, 0.1, 5e-9, 1e-9, 10e-9)
    model = replace(ENGINES["podman"], costs=costs)
    samples = []
    for size in (64 * MiB, 256 * MiB):
        for n in (1, 4):
            layers = (LayerSpec(size // n),) * n
            t = estimate_pull(layers, bandwidth_bps=math.inf, engine=model, latency_s=0).total_seconds
            samples.append(Sample(layers, (t * 0.97, t, t * 1.08)))
    calibrate.save(fit("podman", samples, facts={"date": "2026-11-30 06:00", "engine_version": "podman 4.3.1"}))
    return replace(costs, gzip_byte_s=ENGINES["podman"].costs.gzip_byte_s)  # no gzip pulls: the built-in one


def test_without_a_calibration_the_builtin_costs_come_with_their_range(cache):
    basis = basis_for("podman")
    assert not basis.calibrated and basis.spread == BUILTIN_RANGE
    assert basis.engine == ENGINES["podman"]
    assert "built-in constants, not calibrated here" in basis.label and "--calibrate --engine podman" in basis.label


def test_a_stored_calibration_is_used_and_said(cache):
    costs = stored_podman_calibration()
    basis = basis_for("podman")
    assert basis.calibrated
    assert list(vars(basis.engine.costs).values()) == pytest.approx(list(vars(costs).values()))
    assert basis.label.startswith("calibrated on this machine (2026-11-30 06:00, podman 4.3.1)")
    assert "4 calibration images within ±0 %" in basis.label
    assert "range x0.95 to x1.08, as far as its single pulls strayed" in basis.label
    assert basis.spread == pytest.approx((0.95, 1.08))  # at least ±5 %, and every one of its pulls
    assert not basis_for("containerd").calibrated  # per engine


def test_estimate_source_of_a_model_folder(cache, llama_dir):
    r = estimate_source(str(llama_dir), engine="podman")
    assert list(r.links) == ["100 Mbit/s", "1 Gbit/s", "10 Gbit/s"] and not r.measured
    e = r.links["1 Gbit/s"]
    assert e.low_seconds < e.total_seconds < e.high_seconds and e.source.startswith("built-in")
    assert {o.name.split(" ")[0] for o in r.options} == {"image", "object", "lazily"}
    j = r.to_json()
    assert j["calibrated"] is False and j["link"] == "100 Mbit/s" and j["layers"] == len(r.layers)


def test_probe_measures_the_page_cache_and_needs_a_registry_or_a_bandwidth(cache, llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="give an image REF, or pass --bandwidth"):
        estimate_source(str(llama_dir), probe=True)
    r = estimate_source(str(llama_dir), probe=True, bandwidth_bps=125e6, disk_dir=tmp_path)
    assert list(r.links) == ["given"]  # the link was given, not measured
    # a pull of a few MB fits the page cache: the disk's pace past it cannot matter, so it is not measured
    assert set(r.measured) == {"write_cache_bytes"} and r.measured["write_cache_bytes"] > 0
    assert r.links["given"].phases["disk"] == 0


@pytest.mark.parametrize("engine, probed", [("podman", True), ("containerd", True), ("modelimage", False)])
def test_probe_measures_the_disk_past_the_page_cache_when_the_pull_overflows_it(engine, probed, cache, llama_dir,
                                                                                tmp_path, monkeypatch):
    """A node whose page cache takes less than the pull writes (here 1 MiB,
    as a small node's would be: the kernel's threshold is a machine setting):
    --probe times real writes past it under --disk-dir and the estimate
    charges the disk for them; modelimage pull syncs its own writes (in its
    costs), so nothing is probed for it."""
    monkeypatch.setattr("modelimage.probes.probe_write_cache", lambda: MiB)
    r = estimate_source(str(llama_dir), engine=engine, probe=True, bandwidth_bps=125e6, disk_dir=tmp_path)
    assert ("disk_bps" in r.measured) == probed and r.measured["write_cache_bytes"] == MiB
    assert list(tmp_path.iterdir()) == []  # the probe's file is gone
    if probed:
        e = r.links["given"]
        written = e.peak_disk_bytes
        assert e.total_seconds >= (written - MiB) / r.measured["disk_bps"]


def test_estimate_source_of_an_image_in_a_registry_probes_its_link(cache, registry, tmp_path):
    calibrate.write_image(tmp_path / "l", calibrate.ImageSpec(2 * MiB, 2, "gzip"), tag="v1", nonce="pt")
    calibrate.push_image(tmp_path / "l", "v1", f"{registry.host}/pulltime/img:v1")
    r = estimate_source(f"{registry.host}/pulltime/img:v1", engine="containerd", probe=True, disk_dir=tmp_path)
    assert list(r.links) == ["measured"] and r.measured["link_bps"] > 1e6
    assert [s.compression for s in r.layers] == ["gzip", "gzip"]
    assert r.links["measured"].phases["decompress"] > 0


def test_the_build_summary_uses_the_same_estimate(cache):
    build = {"digest": "sha256:" + "a" * 64, "layers": [
        {"size": 300 * MiB, "digest": "sha256:" + "b" * 64, "mediaType": "application/vnd.oci.image.layer.v1.tar",
         "files": [{"path": "/models/m/model.safetensors", "size": 300 * MiB}]}]}
    assert "built-in constants" in summary.summarize(build, engine="podman")
    stored_podman_calibration()
    md = summary.summarize(build, engine="podman")
    assert "calibrated on this machine" in md
    basis = basis_for("podman")  # the summary's 1 Gbit/s row is what `estimate` gives at that link
    e = estimate_pull([LayerSpec(300 * MiB)], bandwidth_bps=125e6, engine=basis.engine, spread=basis.spread)
    assert f"| 1 Gbit/s | {format_seconds(e.total_seconds)} | {format_seconds(e.low_seconds)} to" in md


def test_layers_from_a_manifest():
    manifest = {"layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 100},
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 93},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": 930},
    ]}
    assert [(s.size, s.tar_bytes, s.compression) for s in layer_specs_from_manifest(manifest)] == [
        (100, 100, "none"), (93, 100, "gzip"), (930, 1000, "zstd")]


@pytest.mark.parametrize("media_type, compression", [
    ("application/vnd.oci.image.layer.v1.tar", "none"),
    ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar", "none"),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "gzip"),  # was counted as plain tar
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", "zstd"),  # was counted as plain tar
    ("application/vnd.docker.image.rootfs.diff.tar", "none"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "gzip"),  # was counted as plain tar
    ("application/vnd.cncf.model.weight.v1.tar+gzip", "gzip"),  # ModelPack, by its suffix
    ("application/vnd.cncf.model.weight.v1.raw", "none"),
])
def test_every_layer_media_type_is_classified_in_one_place(media_type, compression):
    """Review finding: pulltime's own table missed the nondistributable and
    foreign gzip/zstd layers, so their pull time was estimated without
    decompression. Estimate and the build summary read oci's one table."""
    from modelimage.oci import IMAGE_LAYER_TYPES, layer_compression

    assert layer_compression(media_type) == compression
    manifest = {"layers": [{"mediaType": media_type, "digest": "sha256:" + "a" * 64, "size": 93 * MiB}]}
    (spec,) = layer_specs_from_manifest(manifest)
    assert spec.compression == compression
    assert abs(spec.tar_bytes - (93 * MiB if compression == "none" else 100 * MiB)) <= 1  # 0.93: ASSUMED_RATIO
    assert summary._layer_spec(manifest["layers"][0]).compression == compression
    assert (media_type in IMAGE_LAYER_TYPES) == ("image" in media_type)


def _calibrated_with_disk(pace: float, cache_bytes: int) -> None:
    """A stored podman calibration whose pulls past the page cache met ``pace``."""
    model = replace(ENGINES["podman"], costs=Costs(0.5, 0.1, 5e-9, 1e-9, 10e-9))
    shapes = [(LayerSpec(size // n),) * n for size in (64 * MiB, 256 * MiB) for n in (1, 4)]
    shapes.append((LayerSpec(calibrate.disk_image("podman", cache_bytes).size // 4),) * 4)
    samples = [Sample(layers, (estimate_pull(layers, bandwidth_bps=math.inf, engine=model, latency_s=0, disk_bps=pace,
                                             write_cache_bytes=cache_bytes).total_seconds,)) for layers in shapes]
    calibrate.save(fit("podman", samples, facts={"date": "2026-11-30 21:00", "engine_version": "podman 4.3.1"},
                       write_cache_bytes=cache_bytes))


def test_a_calibrated_disk_pace_is_used_for_big_pulls_said_and_not_probed_again(cache, llama_dir, tmp_path,
                                                                                monkeypatch):
    """Run 8's misses were the disk past the page cache, probed at 218-255 MB/s
    while the pulls met 120-180: the pace the calibration's own pull met is
    the one estimates use, with or without --probe (which then measures only
    what the cache takes now), in `estimate`, the build summary and variants."""
    _calibrated_with_disk(50e6, 512 * MiB)
    basis = basis_for("podman")
    assert basis.writeback_bps == pytest.approx(50e6) and "writes past the page cache at 50 MB/s" in basis.label
    monkeypatch.setattr("modelimage.probes.probe_write_cache", lambda: 4096)  # a node whose cache is full

    def no_probe(*a, **k):
        raise AssertionError("the writeback probe ran although the calibration timed the disk")

    monkeypatch.setattr("modelimage.probes.probe_writeback", no_probe)
    assert basis.disk() == (pytest.approx(50e6), 4096)
    r = estimate_source(str(llama_dir), engine="podman", probe=True, bandwidth_bps=1.25e9, disk_dir=tmp_path)
    assert r.measured == {"write_cache_bytes": 4096}  # measured: only what was measured
    e = r.links["given"]
    assert e.phases["disk"] > 0 and e.disk_bps == pytest.approx(50e6)
    plain = estimate_source(str(llama_dir), engine="podman", bandwidth_bps=1.25e9)  # no --probe: the same pace
    assert plain.links["given"].total_seconds == pytest.approx(e.total_seconds)
    assert basis_for("modelimage").disk() == (None, 0)  # not calibrated, and it syncs anyway

    from modelimage.variants.estimate import estimate_variants
    from modelimage.variants.select import VariantFacts

    layers = list(r.layers)
    v = estimate_variants([(VariantFacts(name="q4"), layers)], bandwidth=1.25e9, engine="podman")
    assert v[0].links["given"].total_seconds == pytest.approx(e.total_seconds)


@pytest.mark.parametrize("other", [{"cpus": 64}, {"memory_bytes": 512 * 2**30}])
def test_a_calibration_of_a_machine_of_another_shape_is_not_used_and_says_so(cache, llama_dir, other):
    """A calibration copied from a bigger node (64 cores, or 512 GiB) would
    price this node's pulls at that node's speed while saying "calibrated on
    this machine": the estimate, its JSON and the action's summary fall back
    to the built-in constants and name the file and what differs."""
    import json

    from click.testing import CliRunner

    from modelimage.cli import cli
    from modelimage.pullers import host_facts

    stored_podman_calibration()
    path = calibrate.path_for("podman")
    data = json.loads(path.read_text())
    data["facts"].update(host_facts(), node="gpu-node-7", **other)
    path.write_text(json.dumps(data))

    basis = basis_for("podman")
    assert basis.calibrated is False and basis.engine.costs == ENGINES["podman"].costs
    assert basis.spread == BUILTIN_RANGE
    assert f"the stored calibration ({path}) is of another machine or engine (node gpu-node-7: " in basis.label
    r = CliRunner().invoke(cli, ["estimate", str(llama_dir), "--engine", "podman", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["calibrated"] is False and "is of another machine" in out["basis"]
    assert "calibrated on" not in out["source"]
    text = CliRunner().invoke(cli, ["estimate", str(llama_dir), "--engine", "podman"]).output
    assert "is of another machine" in text and "calibrated on this machine" not in text


def test_a_calibration_made_with_another_engine_version_is_not_used_and_says_so(cache, llama_dir, monkeypatch):
    """A calibration of podman 4.3.1 after the node moved to podman 5.0.0
    (or back) prices pulls at the old release's costs: the built-in
    constants are used, and the label says which versions; the same
    version, however its version line is worded, is used."""
    import json

    from click.testing import CliRunner

    from modelimage.cli import cli

    stored_podman_calibration()  # "podman 4.3.1"
    monkeypatch.setattr(pullers, "installed_version", lambda engine: "5.0.0")
    basis = basis_for("podman")
    assert basis.calibrated is False and basis.spread == BUILTIN_RANGE
    assert f"the stored calibration ({calibrate.path_for('podman')}) is of another machine or engine" in basis.label
    assert "podman 4.3.1, this one has 5.0.0), so it is not used" in basis.label
    out = json.loads(CliRunner().invoke(cli, ["estimate", str(llama_dir), "--engine", "podman", "--json"]).stdout)
    assert out["calibrated"] is False and "this one has 5.0.0" in out["basis"]
    monkeypatch.setattr(pullers, "installed_version", lambda engine: "4.3.1")  # `podman version 4.3.1`
    assert basis_for("podman").calibrated is True
    # stored as calibrations are now: the number beside the line, read when it was made
    made = calibrate.load("podman")
    calibrate.save(replace(made, facts={**made.facts, "engine_version": "podman version 5.0.0-dev",
                                        "engine_version_number": "5.0.0-dev"}))
    assert "podman 5.0.0-dev, this one has 4.3.1)" in basis_for("podman").label


def test_a_calibration_copied_from_a_node_of_the_same_shape_is_used_and_names_that_node(cache, llama_dir):
    import json

    from modelimage.pullers import host_facts

    costs = stored_podman_calibration()
    path = calibrate.path_for("podman")
    data = json.loads(path.read_text())
    data["facts"].update(host_facts(), node="twin-node-3")
    data["facts"]["memory_bytes"] = int(data["facts"]["memory_bytes"] * 1.01)  # a kernel's reservations move
    path.write_text(json.dumps(data))
    basis = basis_for("podman")
    assert basis.calibrated is True and list(vars(basis.engine.costs).values()) == pytest.approx(list(vars(costs).values()))
    assert basis.label.startswith("calibrated on node twin-node-3 (same cores and memory as this one)")


def _push_manifest(registry, repo: str, tag: str, layers: list[bytes]) -> str:
    """An image of ``layers`` (plain tar media type, any bytes) at REPO:TAG."""
    import hashlib
    import json

    from modelimage.registry.client import RegistryClient
    from modelimage.registry.reference import Reference

    ref = f"{registry.host}/{repo}:{tag}"
    client = RegistryClient(Reference.parse(ref))
    try:
        def put(data: bytes) -> dict:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            client.put_blob(repo, data, digest)
            return {"digest": digest, "size": len(data)}

        config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **put(b)} for b in layers]}
        client.put_manifest(repo, tag, json.dumps(manifest).encode(), manifest["mediaType"])
    finally:
        client.close()
    return ref


def test_an_image_without_layer_bytes_is_estimated_as_pulled_from_its_registry_and_probe_says_why_not(
        cache, registry, tmp_path):
    """No layers: estimated as if from a remote registry (the request
    latency came from the probe URL, which such an image has none of), so
    it took 100 ms where the same image with one empty layer more took
    9 ms; `--probe` answered "give an image REF" to an image REF, and an
    empty biggest layer got "HTTP 416"."""
    none = _push_manifest(registry, "pulltime/empty", "none", [])
    empty = _push_manifest(registry, "pulltime/empty", "one-empty", [b""])
    a = estimate_source(none, engine="podman", bandwidth_bps=1e9)
    b = estimate_source(empty, engine="podman", bandwidth_bps=1e9)
    assert len(a.layers) == 0 and len(b.layers) == 1
    assert a.first.total_seconds <= b.first.total_seconds  # one layer more is never faster
    assert a.first.phases["fixed"] == ENGINES["podman"].costs.pull_s  # loopback: no request latency
    for ref in (none, empty):
        with pytest.raises(ConfigError, match=f"{ref} has no layer bytes: pass --bandwidth"):
            estimate_source(ref, engine="podman", probe=True, disk_dir=tmp_path)
