"""modelimage.pullers: each engine pulls a real image from a real registry
on loopback, and clearing leaves nothing of it behind (what the engine
itself lists)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from modelimage import calibrate
from modelimage.pullers import (
    Containerd,
    EngineUnavailable,
    installed_version,
    machine_facts,
    puller_for,
    version_number,
)

from .tools import need

MiB = 2**20


@pytest.fixture(scope="module")
def small_image(registry, tmp_path_factory) -> str:
    """A 2 MiB, 2-layer gzip image (what calibration pulls) on the loopback registry."""
    layout = tmp_path_factory.mktemp("pullers") / "layout"
    calibrate.write_image(layout, calibrate.ImageSpec(2 * MiB, 2, "gzip"), tag="v1", nonce="pullers")
    ref = f"{registry.host}/pullers/small:v1"
    calibrate.push_image(layout, "v1", ref)
    shutil.rmtree(layout)
    return ref


@pytest.mark.integration
def test_podman_pulls_and_clears(small_image, tmp_path, monkeypatch):
    """Clearing also removes the TMPDIR its pull had (a puller that is
    never closed, as in tests, left an empty one in /var/tmp each time)."""
    need("podman")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    p = puller_for("podman", plain_http=True)
    assert list(tmp_path.iterdir()) == []  # nothing made before a pull
    assert p.pull(small_image) > 0
    assert subprocess.run(["podman", "image", "exists", small_image]).returncode == 0
    p.clear(small_image)
    assert subprocess.run(["podman", "image", "exists", small_image]).returncode == 1
    assert list(tmp_path.iterdir()) == []
    assert p.version().startswith("podman version")
    assert installed_version("podman") == version_number(p.version())  # what estimate compares a calibration with


@pytest.mark.integration
def test_containerd_pulls_unpacks_and_clears_only_in_its_own_namespace(small_image, containerd, monkeypatch):
    """Calibrating on a node must not harm what the node holds: an image
    the user pulled into the default namespace keeps every blob (the
    puller's ``content prune references`` lets containerd's GC take the
    compressed layers of unpacked images: run in the default namespace, it
    took the user's too), and the calibration's image never shows up
    there."""
    monkeypatch.setenv("CONTAINERD_ADDRESS", containerd)

    def ctr(*args: str) -> str:
        return subprocess.run(["ctr", *args], capture_output=True, text=True, check=True).stdout

    ctr("images", "pull", "--plain-http", small_image)  # the user's own image, in "default"
    users = set(ctr("content", "ls", "-q").split())
    p = puller_for("containerd", plain_http=True)
    ns = ("-n", p.namespace)
    assert p.pull(small_image) > 0
    assert small_image in ctr(*ns, "images", "ls", "-q")
    assert ctr(*ns, "snapshots", "ls").count("Committed") >= 2  # unpacked, as a node does
    p.clear(small_image)
    assert small_image not in ctr(*ns, "images", "ls", "-q")
    assert ctr(*ns, "content", "ls", "-q").split() == []  # its blobs pruned
    assert small_image in ctr("images", "ls", "-q") and set(ctr("content", "ls", "-q").split()) == users
    ctr("images", "rm", "--sync", small_image)
    assert p.version().startswith("containerd ")
    assert installed_version("containerd") == version_number(p.version())  # the binary's, without the daemon
    p.close()
    assert p.namespace not in ctr("namespaces", "ls", "-q").split()


@pytest.mark.integration
def test_two_containerd_calibrations_at_once_prune_only_their_own_and_a_killed_ones_namespace_goes(
        small_image, containerd, monkeypatch):
    """Each puller has a namespace of its own: one's ``content prune
    references`` after its pull cannot take the blobs another's pull is
    still fetching. A namespace whose calibration was killed (its process
    is gone) is emptied and removed by the next calibration; one whose
    process runs is left alone."""
    monkeypatch.setenv("CONTAINERD_ADDRESS", containerd)

    def ctr(*args: str) -> str:
        return subprocess.run(["ctr", *args], capture_output=True, text=True, check=True).stdout

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = f"{Containerd.NAMESPACE_PREFIX}{dead.pid}-abc123"
    live = f"{Containerd.NAMESPACE_PREFIX}{os.getpid()}-def456"
    for ns in (stale, live):
        ctr("-n", ns, "images", "pull", "--plain-http", small_image)
    a = puller_for("containerd", plain_http=True)
    b = puller_for("containerd", plain_http=True)
    try:
        assert a.namespace != b.namespace
        listed = ctr("namespaces", "ls", "-q").split()
        assert stale not in listed and live in listed  # the killed one's image, snapshots and blobs went with it
        assert a.pull(small_image) > 0
        held = set(ctr("-n", a.namespace, "content", "ls", "-q").split())
        assert b.pull(small_image) > 0
        b.clear(small_image)
        assert set(ctr("-n", a.namespace, "content", "ls", "-q").split()) == held  # b's prune left a's alone
        a.clear(small_image)
    finally:
        a.close()
        b.close()
        ctr("-n", live, "images", "rm", "--sync", small_image)
        ctr("-n", live, "content", "prune", "references")
        ctr("namespaces", "rm", live)
    listed = ctr("namespaces", "ls", "-q").split()
    assert a.namespace not in listed and b.namespace not in listed


@pytest.mark.integration
def test_modelimage_pulls_into_its_own_folder_and_clears(small_image, tmp_path):
    p = puller_for("modelimage", plain_http=True, work=tmp_path)
    try:
        assert p.pull(small_image) > 0
        pulled = [f for f in p.storage().rglob("*.bin")]
        assert len(pulled) == 2 and sum(f.stat().st_size for f in pulled) == 2 * MiB
        p.clear(small_image)
        assert not list(p.storage().rglob("*.bin"))
    finally:
        p.close()
    assert not p.storage().exists()


def test_an_engine_that_cannot_run_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman, ctr, docker here
    for engine, tool in (("podman", "podman"), ("containerd", "ctr"), ("docker", "docker")):
        with pytest.raises(EngineUnavailable, match=f"`{tool}` is not on PATH"):
            puller_for(engine, plain_http=True)


@pytest.mark.integration
def test_containerd_without_a_daemon_says_so(monkeypatch, tmp_path):
    need("ctr")
    monkeypatch.setenv("CONTAINERD_ADDRESS", str(tmp_path / "nothing.sock"))
    with pytest.raises(EngineUnavailable, match="cannot reach containerd"):
        puller_for("containerd", plain_http=True)


def test_machine_facts(tmp_path):
    p = puller_for("modelimage", plain_http=True, work=tmp_path)
    try:
        facts = machine_facts(p)
    finally:
        p.close()
    assert facts["cpus"] == os.cpu_count()
    assert facts["engine_version"].startswith("modelimage ")
    assert facts["engine_version_number"] == version_number(facts["engine_version"]) is not None
    assert facts["storage_disk_bytes"] > 0
    if Path("/proc/meminfo").exists():
        assert facts["memory_bytes"] > 2**20


def test_ctrl_c_during_a_podman_calibration_pull_leaves_no_blob_copies_nor_images(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group) while
    `podman pull` copies a blob: podman leaves its ``storageNNN`` copy in
    $TMPDIR (default /var/tmp) when interrupted (podman#19201), and the
    calibration killed podman 0.25 s after the interrupt. Exit 130 with one
    line, nothing in $TMPDIR, no calibration image in podman's store."""
    import signal
    import sys
    import time

    need("podman")
    need("docker-registry")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "modelimage", "estimate", "--calibrate", "--engine", "podman",
                             "--calibrate-sizes", "32MiB,64MiB", "--calibrate-layers", "1,2", "--repeat", "20",
                             "--no-calibrate-disk"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even from a background job
    deadline = time.monotonic() + 240
    def copying() -> bool:  # podman's blob copy folder holds a file: a pull is under way
        try:
            return any(any(p.iterdir()) for p in [*tmp.glob("storage*"), *tmp.glob("*/storage*")] if p.is_dir())
        except FileNotFoundError:  # it went while looked at
            return False

    while not copying():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip() == "interrupted", err
    assert list(tmp.iterdir()) == []
    assert not (tmp_path / "cache" / "calibration" / "podman.json").exists()
    images = subprocess.run(["podman", "images", "--format", "{{.Repository}}"], capture_output=True, text=True)
    assert "modelimage-calibration/podman" not in images.stdout
