"""A listed file (a Hub LFS file) that the plan spreads over several layers
is checked whole against its sha256 (modelimage.splitcheck): in process,
with the layer writer's own Digester (in order, out of order, a layer the
digest cache skipped, an upload resumed from a snapshot), and end to end
against the loopback Hub and the real registry: a byte corrupted in the
middle piece fails the push with one line and no manifest; the right bytes
push, and pull back as the shards a local build gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelimage import synth
from modelimage.content import FileRange, Literal, VirtualFile
from modelimage.errors import SourceError
from modelimage.splitcheck import SplitChecks
from modelimage.tarstream import Digester, Entry, LayerStream, blob_chunks

from .faultproxy import FaultProxy, Rule, Spoil
from .images import read_image
from .test_sources_hf import _modelimage
from .test_sources_hub import Listed

# ---------------------------------------------------------------- in process


DATA = bytes(range(256)) * 120  # 30720 bytes
HEADER = 720  # bytes no layer holds (a header the shards replace)


def _obj(flip: int | None = None) -> Listed:
    served = bytearray(DATA)
    if flip is not None:
        served[flip] ^= 0xFF
    return Listed(DATA, served=bytes(served), where="mem://repo/model.safetensors")


def _streams(obj: Listed, pieces: list[list[tuple[int, int]]]) -> list[LayerStream]:
    """One layer per list: a shard of a new header and those ranges of ``obj``."""
    return [LayerStream([Entry(f"m/shard-{k}", VirtualFile(f"shard-{k}", (Literal(b"new header"),) + tuple(
        FileRange(obj, o, n) for o, n in ranges)))]) for k, ranges in enumerate(pieces)]


def _write(stream: LayerStream) -> bytes:
    digester, out = Digester(stream), bytearray()
    for data in blob_chunks(stream, digester):
        out += data
    digester.result()
    return bytes(out)


THREE = [[(HEADER, 10000)], [(HEADER + 10000, 10000)], [(HEADER + 20000, len(DATA) - HEADER - 20000)]]


def test_pieces_in_order_are_hashed_as_they_stream() -> None:
    """Three layers in file order: the file checks; the only extra read is
    the header no layer holds."""
    obj = _obj()
    streams = _streams(obj, THREE)
    checks = SplitChecks.of(streams)
    for s in streams:
        _write(s)
    before = len(obj.reads)
    checks.verify()
    assert obj.reads[before:] == []
    assert (0, HEADER) in obj.reads


@pytest.mark.parametrize("flip", [HEADER + 15000, 10, len(DATA) - 1])
def test_a_corrupted_byte_anywhere_fails_the_check(flip: int) -> None:
    """In the middle piece, in the header no layer holds, in the last byte:
    one SourceError naming the file and what is left."""
    obj = _obj(flip)
    streams = _streams(obj, THREE)
    checks = SplitChecks.of(streams)
    for s in streams:
        _write(s)
    with pytest.raises(SourceError, match=r"^mem://repo/model.safetensors: the bytes the Hub sent have sha256 "
                                          r"[0-9a-f]{64}, its listing says [0-9a-f]{64} .*; LEFT$"):
        checks.verify("LEFT")


def test_pieces_out_of_order_are_fetched_again_and_compared() -> None:
    """A shard whose pieces the writer's order permutes (and layers built in
    reverse): the pieces stored apart are fetched again and must match."""
    obj = _obj()
    pieces = [[(HEADER + 10000, 5000), (HEADER, 10000)], [(HEADER + 15000, len(DATA) - HEADER - 15000)]]
    streams = _streams(obj, pieces)
    checks = SplitChecks.of(streams)
    for s in streams:
        _write(s)
    checks.verify()
    assert any(o == HEADER + 10000 for o, _ in obj.reads)  # fetched again, compared

    # the bytes stored apart were corrupted on the way, then the Hub serves the right ones
    bad = _obj(HEADER + 11000)
    streams = _streams(bad, pieces)
    checks = SplitChecks.of(streams)
    for s in streams:
        _write(s)
    object.__setattr__(bad, "served", DATA)
    with pytest.raises(SourceError, match=r"bytes 10720-15719 as stored in layer 1 have sha256 [0-9a-f]{64}, the Hub "
                                          r"now sends [0-9a-f]{64}"):
        checks.verify()


def test_a_layer_the_cache_skipped_is_fetched_to_complete_the_hash() -> None:
    """The first layer came from the digest cache (not streamed): its bytes
    are fetched to complete the hash; with no layer streamed, nothing is."""
    obj = _obj()
    streams = _streams(obj, THREE)
    checks = SplitChecks.of(streams)
    for s in streams[1:]:
        _write(s)
    checks.verify()
    assert any(o <= HEADER < o + n for o, n in obj.reads)

    bad = _obj(HEADER + 100)  # corrupted where only the skipped layer holds it: fetched now, caught
    streams = _streams(bad, THREE)
    checks = SplitChecks.of(streams)
    for s in streams[1:]:
        _write(s)
    with pytest.raises(SourceError, match="the bytes the Hub sent have sha256"):
        checks.verify()

    idle = _obj(HEADER + 100)
    checks = SplitChecks.of(_streams(idle, THREE))
    checks.verify()
    assert idle.reads == []


def test_an_upload_resumed_from_a_snapshot_rewinds_the_hash() -> None:
    """The registry push snapshots the Digester and, after a cut, goes on
    from a snapshot (re-hashing the bytes since): the running hash follows."""
    obj = _obj()
    streams = _streams(obj, THREE)
    checks = SplitChecks.of(streams)
    s = streams[1]
    with streams[0].split.turn():  # the layers of one file take turns, in order
        _write(streams[0])
    with s.split.turn():
        d = Digester(s)
        snaps = [d.copy()]
        chunks = list(s.chunks())
        half = len(chunks) // 2
        for data, f in chunks[:half]:
            d.feed(bytes(data), f)
        snaps.append(d.copy())
        for data, f in chunks[half:]:
            d.feed(bytes(data), f)  # the first attempt went on to the end, then the upload was cut
        d = snaps[0].copy()  # resumed from the start (a registry that kept nothing)
        for data, f in s.chunks():
            d.feed(bytes(data), f)
        d.result()
    with streams[2].split.turn():
        _write(streams[2])
    checks.verify()


# ---------------------------------------------------------------- against the loopback Hub and registry

REPO = "acme/one-big-file"
WEIGHTS = "model.safetensors"


def _env(endpoint: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELIMAGE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp / "hf-cache"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", MODELIMAGE_CACHE_DIR=str(tmp / "mi-cache"))
    return env


@pytest.fixture(scope="module")
def big(hub, tmp_path_factory) -> tuple[Path, dict[str, bytes], str]:
    """One 3.2 MB safetensors file (8 tensors) and a config on the Hub; at
    --max-layer-size 1.3MB the plan reshards it into 3 layers."""
    d = synth.write_random_shards(tmp_path_factory.mktemp("src") / "one-big-file", 0.003, 1)
    (d / "model-00001-of-00001.safetensors").rename(d / WEIGHTS)
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
    return d, files, hub.commit(REPO, files)


SPLIT = ("--max-layer-size", "1.3MB")


@pytest.mark.integration
def test_a_file_split_in_three_pushes_and_pulls_back_as_a_local_build_gives(hub, big, registry, tmp_path) -> None:
    folder, files, _ = big
    env = _env(hub.url, tmp_path)
    ref = f"{registry.host}/splitsha/good:v1"
    _modelimage("build", f"hf://{REPO}", *SPLIT, "--push", ref, env=env)
    _modelimage("build", str(folder), *SPLIT, "-o", f"oci:{tmp_path}/local:v1", env=env)
    _, _, local = read_image(tmp_path / "local", "v1")
    shards = sorted(p for p in local if p.endswith(".safetensors"))
    assert len(shards) == 3, sorted(local)
    _modelimage("pull", ref, str(tmp_path / "pulled"), env=env)
    pulled = {str(p.relative_to(tmp_path / "pulled")): p.read_bytes()
              for p in (tmp_path / "pulled").rglob("*") if p.is_file()}
    got = {Path(p).name: b for p, b in pulled.items() if not Path(p).name.startswith(".modelimage")}
    assert got == {Path(p).name: b for p, b in local.items()}
    from safetensors.numpy import load as st_load

    whole = st_load(files[WEIGHTS])
    parts: dict = {}
    for name in shards:
        parts.update(st_load(local[name]))
    assert sorted(parts) == sorted(whole) and all(parts[k].tobytes() == whole[k].tobytes() for k in whole)


@pytest.mark.integration
@pytest.mark.parametrize("how", ["served", "in-transit"])
def test_a_corrupted_byte_in_the_middle_piece_fails_the_push(how, hub, big, registry, tmp_path) -> None:
    """The Hub serves the file with its middle byte flipped (the listing
    keeps the right sha256), or every answer comes with a byte flipped,
    a different one each time (right size, wrong content, a new hash each
    run: huggingface_hub issue 3643): one line naming the file, exit 1, no
    manifest pushed, and into a layout nothing left. The layers' digest-
    cache entries were held back, so the rerun with the right bytes pushes
    the layers a local build gives, not the corrupted ones it uploaded."""
    folder, files, sha = big
    good = files[WEIGHTS]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    with FaultProxy(hub.url.removeprefix("http://")) as proxy:
        if how == "served":
            hub.repos[REPO].commits[sha][WEIGHTS] = bytes(bad)  # served bytes only: the listed digests stay
        else:  # past the header reads of inspect: each piece's answer has its byte 300000 flipped
            proxy.add(Rule("GET", f"/resolve/.*/{WEIGHTS}$", Spoil(flip_at=300_000), times=None))
        try:
            env = _env(proxy.url, tmp_path)
            proc = _modelimage("build", f"hf://{REPO}", *SPLIT, "--push", f"{registry.host}/splitsha/bad-{how}:v1",
                               env=env, check=False)
            out = tmp_path / "out"
            proc2 = _modelimage("build", f"hf://{REPO}", *SPLIT, "-o", f"oci:{out}:v1", env=env, check=False)
        finally:
            hub.repos[REPO].commits[sha][WEIGHTS] = good
    for p in (proc, proc2):
        assert p.returncode == 1, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert lines[0].startswith(f"error: hf://{REPO}@{sha}/{WEIGHTS}: the bytes the Hub sent have sha256 ")
    assert proc.stderr.rstrip().endswith(f"no manifest was pushed or tagged; layers already uploaded stay in "
                                         f"{registry.host}/splitsha/bad-{how} unreferenced (harmless: garbage collection "
                                         "removes them)")
    assert proc2.stderr.rstrip().endswith("nothing was written: the layout is as it was")
    manifest = f"http://{registry.host}/v2/splitsha/bad-{how}/manifests/v1"
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    assert httpx.get(manifest, headers=accept).status_code == 404
    assert not out.exists()
    env = _env(hub.url, tmp_path)
    _modelimage("build", f"hf://{REPO}", *SPLIT, "--push", f"{registry.host}/splitsha/bad-{how}:v1", env=env)
    _modelimage("build", str(folder), *SPLIT, "-o", f"oci:{tmp_path}/local:v1", env=env)
    local, _, _ = read_image(tmp_path / "local", "v1")
    pushed = httpx.get(manifest, headers=accept).json()
    assert [x["digest"] for x in pushed["layers"]] == [x["digest"] for x in local["layers"]]


# modelimage as it was before split files were checked whole (bbeefc1): no SplitChecks, so the
# layers of a split file went into the digest cache at once, in the old entry format
_BEFORE_THE_CHECK = ("import sys; from modelimage.splitcheck import SplitChecks; "
                     "SplitChecks.of = classmethod(lambda cls, *a, **k: cls()); "
                     "from modelimage.__main__ import main; sys.argv[0] = 'modelimage'; main()")


@pytest.mark.integration
def test_a_layer_an_older_version_cached_unchecked_is_checked_not_reused(hub, big, tmp_path) -> None:
    """An older modelimage built the split file into a layout from a Hub
    that served it corrupted (exit 0) and cached its layers without the
    whole-file check. This version does not reuse those entries for the
    split file's layers: it streams them again, the check fails, one line,
    exit 1, the layout as it was. With the right bytes it builds the layers
    a local build gives, and an unchanged rebuild then reuses the cache
    (every layer ``exists``, entries recording the check)."""
    folder, files, sha = big
    good = files[WEIGHTS]
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    env = _env(hub.url, tmp_path)
    out = tmp_path / "out"
    layers_dir = tmp_path / "mi-cache" / "v1" / "layers"
    hub.repos[REPO].commits[sha][WEIGHTS] = bytes(bad)  # served bytes only: the listed digests stay
    try:
        old = subprocess.run([sys.executable, "-c", _BEFORE_THE_CHECK, "build", f"hf://{REPO}", *SPLIT,
                              "-o", f"oci:{out}:old"], env=env, capture_output=True, text=True, timeout=120)
        assert old.returncode == 0, old.stderr  # the trust gap this version closes
        entries = [json.loads(p.read_bytes()) for p in layers_dir.glob("*.json")]
        assert len(entries) >= 4 and not any("split_checked" in e for e in entries)  # the old format
        index = (out / "index.json").read_bytes()
        proc = _modelimage("build", f"hf://{REPO}", *SPLIT, "-o", f"oci:{out}:v2", env=env, check=False)
    finally:
        hub.repos[REPO].commits[sha][WEIGHTS] = good
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: hf://{REPO}@{sha}/{WEIGHTS}: the bytes the Hub sent have sha256 ")
    assert lines[0].endswith("nothing was written: the layout is as it was")
    assert (out / "index.json").read_bytes() == index  # no v2

    _modelimage("build", str(folder), *SPLIT, "-o", f"oci:{tmp_path}/local:v1", env=env)
    local, _, _ = read_image(tmp_path / "local", "v1")
    want = [x["digest"] for x in local["layers"]]
    first = json.loads(_modelimage("build", f"hf://{REPO}", *SPLIT, "-o", f"oci:{out}:v3", "--json", env=env).stdout)
    assert [x["digest"] for x in first["layers"]] == want
    again = json.loads(_modelimage("build", f"hf://{REPO}", *SPLIT, "-o", f"oci:{out}:v4", "--json", env=env).stdout)
    assert again["digest"] == first["digest"]
    assert {x["action"] for x in again["layers"]} == {"exists"}  # the cache's entries, reused
    split = {x["digest"] for x in again["layers"] if any(f["path"].endswith(".safetensors") for f in x["files"])}
    assert len(split) == 3
    checked = {e["digest"] for p in layers_dir.glob("*.json") if (e := json.loads(p.read_bytes())).get("split_checked")}
    assert split <= checked
