"""The upload state machine (modelimage.registry.upload) against the real
CNCF registry, with the fault proxy (tests/faultproxy.py) emulating what big
registries do differently (issue 15): a failed first PATCH, registries that
refuse chunked uploads (Google Artifact Registry), ECR's 201 to a chunk
PATCH, ``OCI-Chunk-Min-Length``, capped request bodies (413), a storage
backend refusing big single PUTs, manifests answered 202, a
``Docker-Content-Digest`` that disagrees, tokens shorter-lived than one
layer's upload, and more uploads at once than idle connections kept.
Every push must land the manifest digest a clean push lands."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from modelimage.build import build_image
from modelimage.cache import DigestCache
from modelimage.job import Options, prepare
from modelimage.layout import LayoutRef
from modelimage.registry.client import RegistryClient
from modelimage.registry.keychain import Credentials
from modelimage.registry.push import PushSettings, RegistrySink, push_layout
from modelimage.registry.reference import Reference
from modelimage.registry.transport import RegistryError

from .faultproxy import BodySize, FaultProxy, Respond, Rewrite, Rule, Stall, Throttle

pytestmark = pytest.mark.integration

CHUNK = 256 << 10
UPLOAD = r"/blobs/uploads/[^?]+\?"  # an upload session URL (PATCH, GET status, PUT commit)
COMMIT = r"/blobs/uploads/.*[?&]digest=sha256:"
START = r"/blobs/uploads/$"


def push(model: Path, ref_text: str, tmp: Path, *, client: RegistryClient | None = None, **settings):
    """A library push, fresh digest cache, CHUNK-byte chunks, one layer at a time."""
    ref = Reference.parse(ref_text)
    cache = DigestCache(tmp / f"cache-{time.monotonic_ns()}", enabled=True)
    job = prepare(str(model), Options(registry=ref.host))
    settings = {"backoff": 0.01, "chunk_size": CHUNK, "concurrency": 1, **settings}
    sink = RegistrySink(ref, client or RegistryClient(ref), settings=PushSettings(**settings), cache=cache)
    result = build_image(job.model, job.plan(), sink, settings=job.image_settings, reference=str(ref), cache=cache)
    return result, sink


@pytest.fixture(scope="module")
def clean(proxy, llama_dir, tmp_path_factory):
    proxy.reset()
    result, _ = push(llama_dir, f"{proxy.host}/upload/clean:v1", tmp_path_factory.mktemp("clean"))
    proxy.reset()
    return result


def layer_bytes(result) -> int:
    return sum(layer.descriptor.size for layer in result.layers)


def layer_commits(faults, result) -> list:
    """The commits (``PUT ?digest=``) of the image's layers (not the config)."""
    digests = {layer.descriptor.digest for layer in result.layers}
    return [s for s in faults.requests("PUT", COMMIT) if s.target.rsplit("digest=", 1)[1] in digests]


def one_put_layers(faults, result) -> list:
    """The commits that carried a whole layer (a monolithic upload)."""
    return [s for s in layer_commits(faults, result) if s.received > 0 and s.status == 201]


def pulled_digest(registry, repo: str, tag: str) -> str:
    r = httpx.get(f"{registry.url}/v2/{repo}/manifests/{tag}",
                  headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.status_code == 200, r.text
    return r.headers["Docker-Content-Digest"]


def test_a_failed_first_patch_resumes_at_byte_0(faults, clean, llama_dir, tmp_path, registry):
    """Issue 15, case 1: the first PATCH of the first layer is answered 503.
    The status GET says ``Range: 0-0``: no byte is stored, so the upload goes
    on from byte 0 in the same session (not byte 1, which the registry would
    refuse with 416), the commit is accepted, and chunked uploads stay on
    for every later blob (no monolithic PUT)."""
    faults.add(Rule("PATCH", UPLOAD, Respond(503)))
    result, sink = push(llama_dir, f"{faults.host}/upload/first-503:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest == pulled_digest(registry, "upload/first-503", "v1")
    status = faults.requests("GET", UPLOAD)
    assert len(status) == 1 and status[0].headers.get("range") is None
    patches = faults.requests("PATCH")
    assert patches[0].status == 503 and patches[1].headers["content-range"].startswith("0-")
    assert patches[1].path == patches[0].path  # the same session
    assert all(s.status != 416 for s in faults.requests())
    assert not sink.uploader.patch_refused
    assert sink.stats.retries == 1 and sink.stats.resent_bytes == CHUNK
    assert not one_put_layers(faults, result)  # every layer went in chunks


def test_a_commit_refused_as_digest_invalid_sends_the_blob_again_in_chunks(faults, clean, llama_dir, tmp_path):
    """A commit answered ``400 DIGEST_INVALID`` is not "PATCH unsupported": the
    blob goes once more from byte 0 in a new session, in chunks, and later
    blobs still go in chunks."""
    faults.add(Rule("PUT", COMMIT, Respond(400, code="DIGEST_INVALID", message="invalid digest (injected)")))
    result, sink = push(llama_dir, f"{faults.host}/upload/commit-400:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert not sink.uploader.patch_refused
    assert not one_put_layers(faults, result)
    assert faults.forwarded("PATCH") == layer_bytes(clean) + result.layers[0].descriptor.size


def test_a_registry_that_refuses_chunked_uploads_gets_one_put_per_blob(faults, clean, llama_dir, tmp_path):
    """Google Artifact Registry (kitops#777, skopeo#1101): every PATCH is
    refused. The first refusal is the only PATCH: that blob and every later
    one go in one PUT each."""
    faults.add(Rule("PATCH", UPLOAD, Respond(405, code="UNSUPPORTED", message="chunked uploads are not supported"),
                    times=None))
    result, sink = push(llama_dir, f"{faults.host}/upload/gar:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert len(faults.requests("PATCH")) == 1 and sink.uploader.patch_refused
    puts = one_put_layers(faults, result)
    assert sorted(s.received for s in puts) == sorted(layer.descriptor.size for layer in result.layers)


def test_ecr_answers_201_to_a_chunk_patch(faults, clean, llama_dir, tmp_path):
    """ECR answers 201 (not 202) to a chunk PATCH (kitops#821): accepted, the
    upload goes on, every byte is sent once."""
    faults.add(Rule("PATCH", UPLOAD, Rewrite(status=201), times=None))
    result, sink = push(llama_dir, f"{faults.host}/upload/ecr:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert {s.status for s in faults.requests("PATCH")} == {201}
    assert faults.forwarded("PATCH") == layer_bytes(clean) and sink.stats.retries == 0


def test_oci_chunk_min_length_is_honoured(faults, clean, llama_dir, tmp_path):
    """A registry announcing ``OCI-Chunk-Min-Length: 400000`` (distribution-spec
    1.1) and refusing smaller PATCHes with 416: chunks grow to the minimum and
    the last, smaller piece goes with the closing PUT."""
    minimum = 400_000
    faults.add(Rule("POST", START, Rewrite(headers=(("OCI-Chunk-Min-Length", str(minimum)),)), times=None),
               Rule("PATCH", UPLOAD, BodySize(Respond(416, code="SIZE_INVALID"), min_bytes=minimum), times=None))
    result, _ = push(llama_dir, f"{faults.host}/upload/min-chunk:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    patches = faults.requests("PATCH")
    assert patches and all(s.status == 202 and s.received >= minimum for s in patches)
    assert faults.received("PATCH") + sum(s.received for s in layer_commits(faults, result)) == layer_bytes(clean)


def test_413_on_big_chunks_halves_them(faults, clean, llama_dir, tmp_path):
    """A proxy in front of the registry caps request bodies at 100 kB (nginx
    ``client_max_body_size``, a registry's chunk cap): 413, then smaller
    chunks from the offset the registry confirmed."""
    faults.add(Rule("*", UPLOAD, BodySize(Respond(413, code="SIZE_INVALID", message="request entity too large"),
                                          max_bytes=100_000), times=None))
    result, sink = push(llama_dir, f"{faults.host}/upload/capped:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    refused = [s for s in faults.requests("PATCH") if s.status == 413]
    assert 1 <= len(refused) <= 2 and len({s.path for s in refused}) == 1  # learnt in the first upload
    assert all(s.received <= 100_000 for s in faults.requests("PATCH") if s.status == 202)
    assert sink.uploader.chunk_size <= 100_000


@pytest.mark.parametrize("refusal", [
    Respond(413, code="SIZE_INVALID", message="request entity too large"),
    Respond(500, code="UNKNOWN", message="s3aws: EntityTooLarge: Your proposed upload exceeds the maximum "
                                         "allowed size"),
], ids=["413", "s3-entity-too-large"])
def test_a_refused_single_put_gives_way_to_chunks(faults, registry, llama_dir, tmp_path, refusal):
    """A layout's blobs (digests known) fit one chunk, so they would go in one
    PUT each; the registry refuses single PUTs over 200 kB (a proxy's 413, or
    an S3 backend's 5 GB single-PUT limit: distribution#886, emulated small).
    The big blobs go in chunks instead, and the image lands."""
    from modelimage.build import build_image as build
    from modelimage.layout import LayoutSink

    job = prepare(str(llama_dir), Options())
    layout = tmp_path / "layout"
    built = build(job.model, job.plan(), LayoutSink(LayoutRef("oci", layout, "v1")), settings=job.image_settings,
                  reference="v1", cache=DigestCache(tmp_path / "c", enabled=False))
    faults.add(Rule("PUT", COMMIT, BodySize(refusal, max_bytes=200_000), times=None))
    ref = Reference.parse(f"{faults.host}/upload/single-put-{refusal.status}:v1")
    sink = RegistrySink(ref, RegistryClient(ref), settings=PushSettings(backoff=0.01, concurrency=1),
                        cache=DigestCache(tmp_path / "c2", enabled=False))
    pushed = push_layout(LayoutRef("oci", layout, "v1"), sink)
    assert pushed.digest == built.manifest.digest == pulled_digest(registry, ref.repository, "v1")
    refused = [s for s in faults.requests("PUT", COMMIT) if s.fault]
    assert len(refused) == 1  # learnt once
    assert sink.uploader.put_limit is not None and faults.requests("PATCH")


def test_a_manifest_answered_202_is_stored(faults, clean, llama_dir, tmp_path):
    """go-containerregistry accepts 202 to a manifest PUT; so do we."""
    faults.add(Rule("PUT", r"/manifests/", Rewrite(status=202), times=None))
    result, _ = push(llama_dir, f"{faults.host}/upload/manifest-202:v1", tmp_path)
    assert result.manifest.digest == clean.manifest.digest
    assert {s.status for s in faults.requests("PUT", r"/manifests/")} == {202}


def test_a_docker_content_digest_that_disagrees_is_an_error(faults, llama_dir, tmp_path):
    wrong = "sha256:" + "0" * 64
    faults.add(Rule("PUT", r"/manifests/", Rewrite(headers=(("Docker-Content-Digest", wrong),)), times=None))
    with pytest.raises(RegistryError) as info:
        push(llama_dir, f"{faults.host}/upload/wrong-digest:v1", tmp_path)
    assert info.value.code == "DIGEST_INVALID" and wrong in str(info.value) and "\n" not in str(info.value)


def test_more_uploads_at_once_than_idle_connections(faults, clean, llama_dir, tmp_path):
    """Issue 15, case 2: 12 uploads at once, 2 idle connections kept, every
    PATCH answer held 1.5 s, a 1 s pool timeout: nothing queues for a
    connection (no PoolTimeout), and the image lands."""
    faults.add(Rule("PATCH", UPLOAD, Stall(1.5), times=None))
    ref = Reference.parse(f"{faults.host}/upload/pool:v1")
    client = RegistryClient(ref, timeout=1.0, pool=2)
    result, sink = push(llama_dir, str(ref), tmp_path, client=client, concurrency=12, chunk_size=1 << 20)
    assert result.manifest.digest == clean.manifest.digest
    assert sink.stats.retries == 0


@pytest.fixture(scope="module")
def short_token_registry():
    """Bearer tokens that live 2 s (GitLab's live 60 s): shorter than one layer's upload below."""
    from .registry import start_token_registry

    reg = start_token_registry(expires_in=2)
    yield reg
    reg.stop()


@pytest.mark.parametrize("upload", ["chunked", "monolithic"])
def test_tokens_shorter_lived_than_one_layer(short_token_registry, clean, llama_dir, tmp_path, upload):
    """Each 1.7 MB layer takes ~3.4 s at 500 kB/s; tokens live 2 s. New tokens
    are fetched between requests, and a request that started with a valid
    token is not cut: the push lands without a 401 retry loop."""
    reg = short_token_registry
    with FaultProxy(reg.host) as p:
        p.add(Rule("*", UPLOAD, Throttle(500_000), times=None))
        ref = Reference.parse(f"{p.host}/upload/short-token-{upload}:v1")
        client = RegistryClient(ref, credentials=Credentials(reg.username, reg.password))
        result, sink = push(llama_dir, str(ref), tmp_path, client=client, upload=upload)
        assert result.manifest.digest == clean.manifest.digest
        assert sink.stats.retries <= 1
        assert len(reg.extra["token_server"].log()) >= 2  # tokens were renewed along the way
    assert re.match(r"sha256:[0-9a-f]{64}$", result.manifest.digest)


def test_ctrl_c_stops_a_running_push_and_the_rerun_lands(faults, clean, llama_dir, tmp_path, registry):
    """Issue 15, case 6: a real SIGINT (as a terminal's Ctrl-C) to ``modelimage
    build --push`` while its uploads crawl at 150 kB/s (the whole push would
    take ~20 s): it stops long before its uploads could have finished, says
    ``interrupted; rerun to resume`` in one line, exits 130, pushes no
    manifest; the rerun lands the clean push's digest."""
    import os
    import signal
    import subprocess
    import sys

    faults.add(Rule("PATCH", UPLOAD, Throttle(150_000), times=None))
    ref = f"{faults.host}/upload/interrupted:v1"
    env = {**os.environ, "MODELIMAGE_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "modelimage", "build", str(llama_dir), "--push", ref]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while faults.received("PATCH") < 100_000 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    sent_at_interrupt = faults.received("PATCH")
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stopped = time.monotonic() - interrupted
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted; rerun to resume" and "Traceback" not in err
    assert out == ""
    left = layer_bytes(clean) - sent_at_interrupt
    assert stopped < 0.5 * left / 150_000  # far sooner than the uploads in flight could have ended
    assert httpx.get(f"{registry.url}/v2/upload/interrupted/manifests/v1").status_code == 404
    faults.reset()
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip().endswith(clean.manifest.digest)
