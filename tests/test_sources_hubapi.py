"""The Hub's API requests made without huggingface_hub's HTTP stack
(modelimage.sources.hubapi): the token is the one huggingface_hub sends, in
every rule (environment, token file, none, disabled), the API requests carry
it as huggingface_hub's would, a build never imports huggingface_hub's
errors and HTTP stack on its way, and every failure is still one line
(huggingface_hub's words for what its errors cover; httpx's for a Hub that
cannot be reached, which was a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelimage import synth
from modelimage.sources import hubapi

from .hubserver import HubServer
from .images import read_image
from .test_sources_hf import _modelimage

TOKEN = "hf_apitest_0123456789secret"
REPO = "acme/api-llm"

_token_text = st.text(alphabet="hf_aZ09 \t\r\n", max_size=8)  # blanks and line breaks: trimmed, or no token


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hf_token=st.none() | _token_text, legacy=st.none() | _token_text, file=st.none() | _token_text,
       disabled=st.booleans())
def test_the_token_is_the_one_huggingface_hub_sends(hf_token, legacy, file, disabled, monkeypatch,
                                                    tmp_path) -> None:
    """Differential: for any mix of HF_TOKEN, HUGGING_FACE_HUB_TOKEN, a token
    file (``hf auth login``) and HF_HUB_DISABLE_IMPLICIT_TOKEN, the header
    sent is huggingface_hub's ``build_hf_headers()`` Authorization."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    path = tmp_path / "token"
    path.unlink(missing_ok=True)
    if file is not None:
        path.write_text(file)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(path))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", disabled)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    for name, value in (("HF_TOKEN", hf_token), ("HUGGING_FACE_HUB_TOKEN", legacy)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    theirs = {k.lower(): v for k, v in build_hf_headers().items()}.get("authorization")
    assert {k.lower(): v for k, v in hubapi.auth_headers().items()}.get("authorization") == theirs


@pytest.fixture(scope="module")
def repo(hub: HubServer, tmp_path_factory) -> tuple[dict[str, bytes], str]:
    d = synth.write_random_shards(tmp_path_factory.mktemp("src") / "api-llm", 0.002, 2)
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
    return files, hub.commit(REPO, files)


def _env(endpoint: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODELIMAGE_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", MODELIMAGE_CACHE_DIR=str(tmp / "mi-cache"), **extra)
    return env


_OPEN = """
import json, sys
from modelimage.sources.hf import open_repo
opened = open_repo(sys.argv[1])
print(json.dumps({"revision": opened.revision, "files": [f.name for f in opened.location.list_files()],
                  "imported": sorted(m for m in ("httpx2", "httpcore2", "huggingface_hub.errors") if m in sys.modules)}))
"""


@pytest.mark.integration
@pytest.mark.parametrize("how", ["HF_TOKEN", "token file"])
def test_a_private_repo_is_listed_with_the_token_and_without_huggingface_hubs_http_stack(how, hub, repo,
                                                                                         tmp_path) -> None:
    """A private repository (the Hub answers 401 without its token): with
    HF_TOKEN (or the token file ``hf auth login`` writes) both API
    requests carry ``Authorization: Bearer TOKEN``, the files are listed at
    the commit, and with HF_TOKEN huggingface_hub's errors module and its
    HTTP stack (httpx2, httpcore2) are never imported; the token is never
    printed."""
    files, sha = repo
    hub.private[REPO] = TOKEN
    try:
        extra = {"HF_TOKEN": TOKEN} if how == "HF_TOKEN" else {"HF_TOKEN_PATH": str(tmp_path / "token")}
        (tmp_path / "token").write_text(TOKEN + "\n")
        start = len(hub.seen)
        p = subprocess.run([sys.executable, "-c", _OPEN, f"hf://{REPO}"], capture_output=True, text=True,
                           env=_env(hub.url, tmp_path, **extra))
    finally:
        hub.private.pop(REPO)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["revision"] == sha and got["files"] == sorted(files)
    if how == "HF_TOKEN":
        assert got["imported"] == []
    api = [h for m, path, h in hub.seen[start:] if path.startswith("/api/")]
    assert len(api) == 2 and all(h.get("authorization") == f"Bearer {TOKEN}" for h in api)
    assert TOKEN not in p.stdout + p.stderr


@pytest.mark.integration
def test_a_private_repo_without_the_token_is_one_line(hub, repo, tmp_path) -> None:
    """Without the token the Hub answers 401: the build stops with
    huggingface_hub's words in one line that says to set HF_TOKEN, exit 1,
    nothing written."""
    hub.private[REPO] = TOKEN
    try:
        out = tmp_path / "out"
        proc = _modelimage("build", f"hf://{REPO}", "-o", f"oci:{out}:v1", env=_env(hub.url, tmp_path),
                           check=False)
    finally:
        hub.private.pop(REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: hf://{REPO}: ") and "set HF_TOKEN" in lines[0]
    assert not out.exists()


@pytest.mark.integration
def test_a_hub_that_cannot_be_reached_is_one_line(tmp_path) -> None:
    """Nothing listens at HF_ENDPOINT: one line naming the endpoint (it was a
    traceback of huggingface_hub's HTTP stack), exit 1."""
    hub = HubServer().start()
    url = hub.url
    hub.stop()
    proc = _modelimage("build", "hf://acme/gone", "-o", f"oci:{tmp_path}/out:v1",
                       env=_env(url, tmp_path), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"error: hf://acme/gone: cannot reach the Hub at {url} (ConnectError")


@pytest.mark.integration
def test_the_image_is_the_one_huggingface_hubs_own_download_gives(hub, repo, tmp_path) -> None:
    """The image streamed from the Hub (resolved and listed through this
    module) is byte-for-byte the one built offline from huggingface_hub's own
    download of the commit (``snapshot_download``; HF_HUB_OFFLINE=1, so no
    request of ours): one manifest digest."""
    files, sha = repo
    _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/streamed:v1", env=_env(hub.url, tmp_path / "a"))
    env = _env(hub.url, tmp_path / "b")
    subprocess.run([sys.executable, "-c", f"from huggingface_hub import snapshot_download; "
                    f"snapshot_download({REPO!r})"], check=True, env=env, capture_output=True)
    _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/cached:v1", env={**env, "HF_HUB_OFFLINE": "1"})
    streamed, cached = read_image(tmp_path / "streamed", "v1"), read_image(tmp_path / "cached", "v1")
    assert streamed[0] == cached[0]
    assert streamed[0]["annotations"]["dev.modelimage.revision"] == sha
    assert streamed[2] == {f"models/api-llm/{n}": b for n, b in files.items()}


# ---------------------------------------------------------------- asked early, while the program loads


def test_early_answers_are_taken_once_and_only_for_their_request(hub, repo) -> None:
    """ask_early resolves and lists in a thread; the build's two requests
    take those answers (no request of their own), once: asked again, they
    go to the Hub."""
    files, sha = repo
    start = len(hub.requests)
    hubapi.ask_early(hub.url, REPO, None)
    info = hubapi.get_json(hub.url, hubapi.info_path(REPO, None))
    listed = list(hubapi.get_pages(hub.url, hubapi.tree_path(REPO, sha), hubapi.TREE_PARAMS))
    assert info["sha"] == sha and sorted(f["path"] for f in listed) == sorted(files)
    asked = [p for m, p in hub.requests[start:]]
    assert asked == [f"/api/models/{REPO}", f"/api/models/{REPO}/tree/{sha}"]  # the thread's, and no more
    assert hubapi.get_json(hub.url, hubapi.info_path(REPO, None))["sha"] == sha
    assert len(hub.requests) == start + 3


def test_an_early_answer_that_failed_is_asked_again(hub, repo) -> None:
    """The thread's 401 (a private repository; its token not given) is not
    kept: the request is made again, and huggingface_hub's error raised."""
    from huggingface_hub import errors as hf_errors

    hub.private[REPO] = TOKEN
    try:
        start = len(hub.requests)
        hubapi.ask_early(hub.url, REPO, None)
        with pytest.raises(hf_errors.RepositoryNotFoundError):
            hubapi.get_json(hub.url, hubapi.info_path(REPO, None))
    finally:
        hub.private.pop(REPO)
    assert len(hub.requests) - start == 3  # the thread's, ours, huggingface_hub's


@pytest.mark.integration
def test_build_asks_early_and_says_every_failure_as_before(hub, repo, tmp_path) -> None:
    """``modelimage build hf://...`` asks the Hub while it loads: with the
    token, the Hub sees the two API requests once each (the early thread's,
    taken by the build) and the image holds the files; a missing revision
    and a private repository asked without its token are the same one line
    and exit 1 as without the thread (the build asks again itself)."""
    files, sha = repo
    hub.private[REPO] = TOKEN
    try:
        start = len(hub.requests)
        _modelimage("build", f"hf://{REPO}", "-o", f"oci:{tmp_path}/out:v1",
                    env=_env(hub.url, tmp_path, HF_TOKEN=TOKEN))
        api = [p for m, p in hub.requests[start:] if p.startswith("/api/")]
        assert api == [f"/api/models/{REPO}", f"/api/models/{REPO}/tree/{sha}"]
        assert read_image(tmp_path / "out", "v1")[2] == {f"models/api-llm/{n}": b for n, b in files.items()}
        for url, env, says in (
                (f"hf://{REPO}@v9", {"HF_TOKEN": TOKEN}, f"error: hf://{REPO}@v9: {REPO} has no revision 'v9'"),
                (f"hf://{REPO}", {}, f"error: hf://{REPO}: ")):
            proc = _modelimage("build", url, "-o", f"oci:{tmp_path}/bad:v1", env=_env(hub.url, tmp_path, **env),
                               check=False)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert lines[0].startswith(says) and TOKEN not in proc.stderr
            inspected = _modelimage("inspect", url, env=_env(hub.url, tmp_path, **env), check=False)
            assert inspected.stderr == proc.stderr  # inspect does not ask early: the same line
    finally:
        hub.private.pop(REPO)
