"""hf:// files streamed from the Hub into the layers (modelimage.sources.hub),
against the loopback Hub (tests.hubserver), the real loopback registry and
the fault proxy: the bytes are the Hub's, nothing is staged on disk, a
dropped connection resumes with Range, a corrupted file stops the build with
one line and nothing pushed, Authorization never follows a redirect to
another host, and the image is the one a local folder of the same files
gives."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from modelimage import synth
from modelimage.content import RangedObject, VirtualFile
from modelimage.errors import SourceError
from modelimage.sources.hub import HubFile
from modelimage.tarstream import Digester, Entry, LayerStream, blob_chunks

from .faultproxy import FaultProxy, Rule, Spoil
from .hubserver import HubServer
from .images import read_image
from .test_sources_hf import _modelimage

REPO = "acme/tiny-llm"
TOKEN = "hf_streamtest_0123456789secret"
WEIGHTS = "model-00001-of-00002.safetensors"


# ---------------------------------------------------------------- unit: the listed sha256, checked in the layer


@dataclass(frozen=True)
class Listed(RangedObject):
    """A remote file whose source lists a sha256 (like a Hub LFS file):
    ``data`` its bytes, ``listed`` the sha256 its source lists (default:
    that of ``data``), ``served`` the bytes a read gives (default ``data``;
    others stand for a corrupted answer), ``reads`` the ranges asked for.
    Also the double of tests/test_splitcheck.py."""

    data: bytes
    listed: str | None = None
    served: bytes | None = None
    where: str = "mem://bucket/dir/weights.bin"
    reads: list[tuple[int, int]] = field(default_factory=list, compare=False, hash=False)

    def __str__(self) -> str:
        return self.where

    @property
    def expected_sha256(self) -> str:
        return self.listed or hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def stamp(self) -> tuple[int, str]:
        return (self.size, self.expected_sha256)

    @property
    def identity(self) -> list[str | int]:
        return ["mem", self.size, self.expected_sha256]

    def get(self, offset: int, length: int) -> bytes:
        return self._bytes[offset:offset + length]

    def read(self, offset: int, length: int) -> Iterator[bytes]:
        self.reads.append((offset, length))
        for o in range(offset, offset + length, 1000):
            yield self._bytes[o:min(o + 1000, offset + length)]

    @property
    def _bytes(self) -> bytes:
        return self.data if self.served is None else self.served


class Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self.data += data


def _layer(obj: Listed, raw: bool, sink: Collect) -> None:
    """``obj`` as a tar layer's one file, or as a raw layer, into ``sink``."""
    vf = VirtualFile.whole("weights.bin", obj, obj.size)
    stream = LayerStream.raw("weights.bin", vf) if raw else LayerStream([Entry("m/weights.bin", vf)])
    digester = Digester(stream)
    for data in blob_chunks(stream, digester):
        sink.write(data)
    digester.result()


@pytest.mark.parametrize("raw", [False, True])
def test_a_file_unlike_its_listed_sha256_never_reaches_the_sink_whole(raw: bool) -> None:
    """The layer writer hashes each file anyway: one whose source lists
    another sha256 raises (naming it) before its last piece is handed to
    the sink, so no blob of it is ever committed."""
    data = bytes(range(256)) * 20
    sink = Collect()
    _layer(Listed(data, hashlib.sha256(data).hexdigest()), raw, sink)
    assert data in bytes(sink.data)
    sink = Collect()
    with pytest.raises(SourceError, match=r"^mem://bucket/dir/weights.bin: its bytes have sha256 [0-9a-f]{64}, "):
        _layer(Listed(data, hashlib.sha256(b"other").hexdigest()), raw, sink)
    assert data[:-1000] in bytes(sink.data) and data not in bytes(sink.data)


def test_hub_file_names_the_commit_and_keys_the_cache_by_content() -> None:
    f = HubFile("https://hub.example", "org/repo", "a" * 40, "sub/model.safetensors", 10, "b" * 40, "c" * 64,
                {"Authorization": "Bearer hf_x"})
    assert str(f) == f"hf://org/repo@{'a' * 40}/sub/model.safetensors" and f.name == "model.safetensors"
    assert f.url == f"https://hub.example/org/repo/resolve/{'a' * 40}/sub/model.safetensors"
    assert "hf_x" not in repr(f) and f.expected_sha256 == "c" * 64
    later = HubFile("https://hub.example", "org/repo", "d" * 40, "sub/model.safetensors", 10, "b" * 40, "c" * 64)
    assert later.identity == f.identity  # same bytes at a later commit: the digest cache still knows its layer


def test_a_listing_over_several_pages_is_read_whole() -> None:
    """The tree listing follows the Hub's Link pages (huggingface_hub's
    paginate), as list_repo_tree did; sizes, blob ids, LFS sha256 kept."""
    files = {f"w{i:02d}.safetensors": bytes([i]) * (i + 1) for i in range(7)} | {"config.json": b"{}"}
    hub = HubServer().start()
    try:
        hub.page_size = 3
        sha = hub.commit("org/paged", files)
        from modelimage.sources.hub import HubRepo, resolve_commit

        assert resolve_commit("org/paged", None, hub.url) == sha
        got = HubRepo("org/paged", sha, hub.url).list_files()
        assert [f.name for f in got] == sorted(files)
        pages = [p for m, p in hub.requests if "/tree/" in p]
        assert len(pages) == 3
        w3 = next(f.path for f in got if f.name == "w03.safetensors")
        assert (w3.size, w3.sha256, w3.blob_id) == (4, hashlib.sha256(files["w03.safetensors"]).hexdigest(),
                                                    hashlib.sha1(b"blob 4\0" + files["w03.safetensors"]).hexdigest())
    finally:
        hub.stop()


def test_a_listing_entry_without_path_or_size_is_one_line(monkeypatch) -> None:
    from modelimage.sources import hub as hubmod

    monkeypatch.setattr(hubmod, "_hub_api_pages", lambda *a: iter([{"type": "file", "path": "model.gguf"}]))
    with pytest.raises(SourceError, match=r"hf://org/repo@a+: the Hub lists a file without a path and size"):
        hubmod.HubRepo("org/repo", "a" * 40, "http://127.0.0.1:9").list_files()


# ---------------------------------------------------------------- against the loopback Hub


@pytest.fixture(scope="module")
def model(hub: HubServer, tmp_path_factory) -> tuple[Path, dict[str, bytes], str]:
    """A 2-shard fp16 model (~3 MiB) committed to the Hub: its local folder, its files, the commit."""
    d = synth.write_random_shards(tmp_path_factory.mktemp("src") / "tiny-llm", 0.003, 2)
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
    return d, files, hub.commit(REPO, files)


def _env(endpoint: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELIMAGE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp / "hf-cache"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", MODELIMAGE_CACHE_DIR=str(tmp / "mi-cache"), **extra)
    return env


def _gets(hub: HubServer, start: int, name: str) -> list[str | None]:
    """The Range header of every GET of ``name``'s bytes since request ``start``."""
    return [h.get("range") for m, p, h in hub.seen[start:] if m == "GET" and p.endswith("/" + name)
            and "/resolve/" in p]


def _hostport(hub: HubServer) -> str:
    return hub.url.removeprefix("http://")


def _manifest(registry_host: str, repo: str, tag: str) -> httpx.Response:
    return httpx.get(f"http://{registry_host}/v2/{repo}/manifests/{tag}",
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})


@pytest.mark.integration
def test_build_streams_the_hub_files_and_matches_a_local_folder(hub, model, tmp_path) -> None:
    """hf:// streams every file from the Hub (nothing lands in the Hugging
    Face cache) into the layers; the image's files are the Hub's bytes, and
    its layers are those of a build of the same files from a local folder."""
    folder, files, sha = model
    env = _env(hub.url, tmp_path)
    start = len(hub.seen)
    _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/hub:v1", env=env)
    manifest, config, image = read_image(tmp_path / "hub", "v1")
    assert image == {f"models/tiny-llm/{n}": b for n, b in files.items()}
    assert config["config"]["Labels"]["dev.modelimage.revision"] == sha
    assert not (tmp_path / "hf-cache").exists() or not list((tmp_path / "hf-cache").rglob("*.safetensors"))
    # every weight file read whole once, by one GET pinned to the commit (inspect: header ranges only)
    for name in (n for n in files if n.endswith(".safetensors")):
        whole = [r for r in _gets(hub, start, name) if r == f"bytes=0-{len(files[name]) - 1}"]
        assert len(whole) == 1, (name, _gets(hub, start, name))
    assert all(f"/resolve/{sha}/" in p for m, p, _ in hub.seen[start:] if "/resolve/" in p)

    _modelimage("build", str(folder), "-o", f"oci:{tmp_path}/local:v1", env=env)
    local, _, local_files = read_image(tmp_path / "local", "v1")
    assert local_files == image
    assert [layer["digest"] for layer in local["layers"]] == [layer["digest"] for layer in manifest["layers"]]


@pytest.mark.integration
def test_streamed_and_cached_builds_give_one_manifest(hub, model, tmp_path) -> None:
    """The same commit built by streaming and from the Hugging Face cache's
    snapshot folder (filled by `render dockerfile`, which needs the files
    locally; then HF_HUB_OFFLINE=1) gives the same manifest digest; online
    with the cache full, nothing is downloaded again."""
    _, files, _ = model
    env = _env(hub.url, tmp_path)
    _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/streamed:v1", env=env)
    _modelimage("render", "dockerfile", f"hf://{REPO}", env=env)
    assert sorted(p.name for p in (tmp_path / "hf-cache").rglob("*.safetensors")) == sorted(
        n for n in files if n.endswith(".safetensors"))
    _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/offline:v1", env=_env(hub.url, tmp_path,
                                                                                          HF_HUB_OFFLINE="1"))
    start = len(hub.seen)
    _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/cached:v1", env=env)
    assert [p for m, p, _ in hub.seen[start:] if "/resolve/" in p] == []
    index = {name: json.loads((tmp_path / name / "index.json").read_text())["manifests"][0]["digest"]
             for name in ("streamed", "offline", "cached")}
    assert index["streamed"] == index["offline"] == index["cached"]


@pytest.mark.integration
def test_push_and_unchanged_repush_read_no_weights_again(hub, model, registry, tmp_path) -> None:
    """build hf:// --push to the real registry; the same push again finds
    every layer in the digest cache and the registry: the weights are not
    read again (only their headers, by inspect)."""
    _, files, _ = model
    env = _env(hub.url, tmp_path)
    ref = f"{registry.host}/hfstream/push:v1"
    _modelimage("build", f"hf://{REPO}", "--push", ref, env=env)
    assert _manifest(registry.host, "hfstream/push", "v1").status_code == 200
    start = len(hub.seen)
    _modelimage("build", f"hf://{REPO}", "--push", ref, env=env)
    for name, data in files.items():
        if name.endswith(".safetensors"):
            for r in _gets(hub, start, name):
                lo, hi = map(int, re.match(r"bytes=(\d+)-(\d+)", r or "").groups())
                assert hi - lo + 1 < len(data) // 4, (name, r)


@pytest.mark.integration
def test_a_connection_dropped_mid_file_resumes_with_range(hub, model, registry, tmp_path) -> None:
    """The Hub's answer is cut after 1 MiB of a weight file: the next GET
    asks for the rest (Range: bytes=1048576-), and the pushed image pulls
    back with the Hub's bytes."""
    _, files, _ = model
    cut = 1 << 20
    with FaultProxy(_hostport(hub)) as proxy:
        # every GET of the file cut after 1 MiB: inspect's header reads are shorter, the whole-file read is
        # cut, its resumption (the last ~0.5 MiB) is not
        proxy.add(Rule("GET", f"/resolve/.*/{WEIGHTS}$", Spoil(cut_after=cut), times=None))
        ref = f"{registry.host}/hfstream/resume:v1"
        _modelimage("build", f"hf://{REPO}", "--push", ref, env=_env(proxy.url, tmp_path))
        ranges = [s.headers.get("range") for s in proxy.requests("GET") if s.path.endswith(WEIGHTS)]
    size = len(files[WEIGHTS])
    assert f"bytes=0-{size - 1}" in ranges and f"bytes={cut}-{size - 1}" in ranges
    _modelimage("pull", ref, str(tmp_path / "pulled"), env=_env(hub.url, tmp_path))
    got = {p.name: p.read_bytes() for p in (tmp_path / "pulled").rglob("*") if p.is_file()}
    assert {n: hashlib.sha256(b).hexdigest() for n, b in got.items() if n in files} == \
        {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}


@pytest.mark.integration
@pytest.mark.parametrize("name, flip_at", [(WEIGHTS, 1 << 20), ("config.json", 40)])
def test_bytes_that_differ_from_the_listing_stop_the_build(hub, model, registry, tmp_path, name, flip_at) -> None:
    """One byte changed on the way (an LFS weight file, past the header
    inspect reads: against its listed sha256 as the layer is written; a
    small file: against its git blob id): one line naming the file, exit 1,
    no manifest in the registry, no layout written."""
    with FaultProxy(_hostport(hub)) as proxy:
        proxy.add(Rule("GET", f"/resolve/.*/{name}$", Spoil(flip_at=flip_at), times=None))
        env = _env(proxy.url, tmp_path)
        proc = _modelimage("build", f"hf://{REPO}", "--push", f"{registry.host}/hfstream/bad:v1", env=env,
                           check=False)
        out = tmp_path / "out"
        proc2 = _modelimage("build", f"hf://{REPO}", "-o", f"oci:{out}:v1", env=env, check=False)
    for p in (proc, proc2):
        assert p.returncode == 1, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
        assert lines[0].startswith(f"error: hf://{REPO}@") and f"/{name}: the bytes the Hub sent have" in lines[0]
    assert _manifest(registry.host, "hfstream/bad", "v1").status_code == 404
    assert not (out / "index.json").exists()
    assert not out.exists() or not [p for p in (out / "blobs").rglob("*") if p.is_file()]


@pytest.mark.integration
def test_the_token_goes_to_the_hub_never_to_the_host_it_redirects_to(hub, model, tmp_path) -> None:
    """The Hub redirects LFS files to its storage (another origin): the
    token goes to the Hub's own requests only, and never appears in the
    output."""
    _, files, _ = model
    cdn = HubServer().start()
    cdn.repos = hub.repos
    hub.redirect = cdn.url
    try:
        start = len(hub.seen)
        proc = _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/out:v1",
                           env=_env(hub.url, tmp_path, HF_TOKEN=TOKEN))
    finally:
        hub.redirect = None
        cdn.stop()
    assert read_image(tmp_path / "out", "v1")[2] == {f"models/tiny-llm/{n}": b for n, b in files.items()}
    hub_auth = {h.get("authorization") for m, p, h in hub.seen[start:] if "/resolve/" in p}
    assert hub_auth == {f"Bearer {TOKEN}"}
    cdn_gets = [h for m, p, h in cdn.seen if m == "GET" and "/resolve/" in p]
    assert cdn_gets and all("authorization" not in h for h in cdn_gets)
    assert TOKEN not in proc.stdout + proc.stderr


@pytest.mark.integration
def test_a_redirect_loop_is_one_line_naming_the_file(hub, model, tmp_path) -> None:
    """The Hub (or its storage) redirects a weight file back to itself
    forever: httpx gives up after 20 redirects; the build stops with one
    line naming the file, exit 1, no traceback and no layout written."""
    hub.redirect = hub.url  # every LFS GET answered 302 to the same URL
    try:
        out = tmp_path / "out"
        proc = _modelimage("build", f"hf://{REPO}", "-o", f"oci:{out}:v1", env=_env(hub.url, tmp_path),
                           check=False)
    finally:
        hub.redirect = None
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: hf://{REPO}@"), proc.stderr
    assert "redirect" in lines[0].lower(), lines[0]
    assert not (out / "index.json").exists()


@pytest.mark.integration
def test_a_hub_that_gzips_text_files_still_gives_their_bytes(hub, model, tmp_path) -> None:
    """The Hub's CDN gzips a text file's answer when the client accepts gzip
    (huggingface_hub issue 3269): the streamed bytes must be the file's, not
    its gzip encoding, so a build of a real repository's config.json works
    and gives the Hub's bytes."""
    _, files, _ = model
    hub.gzip = True
    try:
        start = len(hub.seen)
        proc = _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/out:v1", env=_env(hub.url, tmp_path),
                           check=False)
    finally:
        hub.gzip = False
    assert proc.returncode == 0, proc.stderr
    assert read_image(tmp_path / "out", "v1")[2] == {f"models/tiny-llm/{n}": b for n, b in files.items()}
    assert all(h.get("accept-encoding") == "identity" for m, p, h in hub.seen[start:]
               if m == "GET" and "/resolve/" in p)


@pytest.mark.integration
def test_a_hub_that_gzips_unasked_is_one_line_naming_the_file(hub, model, tmp_path) -> None:
    """A server that gzips a file though only identity was accepted: one
    line naming the file and the encoding, exit 1, no layout written."""
    hub.gzip = "always"
    try:
        out = tmp_path / "out"
        proc = _modelimage("build", f"hf://{REPO}", "-o", f"oci:{out}:v1", env=_env(hub.url, tmp_path), check=False)
    finally:
        hub.gzip = False
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: hf://{REPO}@") and "Content-Encoding 'gzip'" in lines[0]
    assert not (out / "index.json").exists()


@pytest.mark.parametrize("when", ["seconds", "http-date"])
def test_retry_after_is_honoured_in_both_of_its_forms(hub, model, when) -> None:
    """A 429 with Retry-After (delta-seconds or an HTTP-date, RFC 9110
    10.2.3) waits as long as the Hub asked (the retry policy's cap
    applies), then reads the file whole: one home for its parsing
    (registry.transport.retry_after)."""
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    from modelimage.registry.transport import RetryPolicy, TransportOptions, using

    from .faultproxy import Respond

    _, files, sha = model
    after = "120" if when == "seconds" else format_datetime(datetime.now(timezone.utc) + timedelta(seconds=125),
                                                             usegmt=True)
    waits: list[float] = []
    with FaultProxy(_hostport(hub)) as proxy:
        proxy.add(Rule("GET", f"/resolve/.*/{WEIGHTS}$", Respond(429, (("Retry-After", after),))))
        data = files[WEIGHTS]
        f = HubFile(proxy.url, REPO, sha, WEIGHTS, len(data), "", hashlib.sha256(data).hexdigest())
        with using(TransportOptions(retry=RetryPolicy(sleep=waits.append))):
            got = b"".join(bytes(p) for p in f.read(0, len(data)))
    assert got == data and len(waits) == 1 and 100 <= waits[0] <= 300, waits


@pytest.mark.parametrize("flip", [False, True])
def test_a_part_of_a_small_file_is_checked_against_its_git_blob_id(hub, model, flip) -> None:
    """A chunked or resumed upload reads a layer by parts, so a small
    (non-LFS) file can be read in two: each part still comes out of bytes
    that match the file's git blob id, or the read raises naming it."""
    from .hubserver import git_oid

    _, files, sha = model
    data = files["config.json"]
    with FaultProxy(_hostport(hub)) as proxy:
        if flip:
            proxy.add(Rule("GET", "/resolve/.*/config.json$", Spoil(flip_at=len(data) - 2), times=None))
        f = HubFile(proxy.url, REPO, sha, "config.json", len(data), git_oid(data))
        if not flip:
            assert b"".join(bytes(p) for p in f.read(3, 10)) == data[3:13]
            return
        with pytest.raises(SourceError, match=r"/config.json: the bytes the Hub sent have git blob id"):
            b"".join(bytes(p) for p in f.read(0, len(data) // 2))
