"""The registry fixtures are real: skopeo pushes to and reads from them, and
the token registry speaks the Docker bearer-token protocol end to end."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from .registry import Registry
from .tokenserver import REGISTRY_LEEWAY, TokenServer, decode_jwt
from .tools import need, run

pytestmark = pytest.mark.integration

SERVICE = "modelimage-test-registry"


def _blob(root: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


@pytest.fixture(scope="module")
def oci_layout(tmp_path_factory) -> tuple[Path, str]:
    """A tiny hand-written OCI layout (one gzip layer), tag ``v1``; returns
    ``(path, manifest digest)``."""
    root = tmp_path_factory.mktemp("oci") / "layout"
    (root / "blobs" / "sha256").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        payload = b"hello from modelimage tests\n"
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    layer_tar = buf.getvalue()
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             **_blob(root, gzip.compress(layer_tar, mtime=0))}
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(root, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer]}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **_blob(root, json.dumps(manifest).encode()),
                     "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root, manifest_desc["digest"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("policy") / "policy.json"
    p.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    return p


def _creds(reg: Registry, password: str | None = None) -> list[str]:
    if reg.username is None:
        return []
    return [f"{reg.username}:{password if password is not None else reg.password}"]


def skopeo_push(reg: Registry, layout: Path, name: str, policy: Path, password: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    creds = _creds(reg, password)
    cmd = [need("skopeo"), "--policy", str(policy), "copy", "--retry-times", "0",
           *(["--dest-creds", creds[0]] if creds else []), "--dest-tls-verify=false",
           f"oci:{layout}:v1", f"docker://{reg.host}/{name}:v1"]
    return run(*cmd, timeout=60) if check else subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def skopeo_inspect(reg: Registry, ref: str) -> dict:
    creds = _creds(reg)
    out = run(need("skopeo"), "inspect", "--retry-times", "0", *(["--creds", creds[0]] if creds else []),
              "--tls-verify=false", f"docker://{reg.host}/{ref}", timeout=60).stdout
    return json.loads(out)


def _unique(prefix: str) -> str:
    return f"fixtures/{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("kind", ["registry", "htpasswd_registry", "token_registry"])
def test_skopeo_push_and_inspect(kind, request, oci_layout, policy):
    reg: Registry = request.getfixturevalue(kind)
    layout, digest = oci_layout
    name = _unique(kind)
    skopeo_push(reg, layout, name, policy)
    info = skopeo_inspect(reg, f"{name}:v1")
    assert info["Digest"] == digest
    assert info["Architecture"] == "amd64" and len(info["Layers"]) == 1
    if kind == "registry":
        assert httpx.get(f"{reg.url}/v2/{name}/tags/list").json()["tags"] == ["v1"]
    else:
        assert httpx.get(f"{reg.url}/v2/{name}/tags/list").status_code == 401


@pytest.mark.parametrize("kind", ["htpasswd_registry", "token_registry"])
def test_wrong_password_fails(kind, request, oci_layout, policy):
    reg: Registry = request.getfixturevalue(kind)
    name = _unique("denied")
    proc = skopeo_push(reg, oci_layout[0], name, policy, password="not-the-password", check=False)
    assert proc.returncode != 0
    assert re.search(r"unauthorized|authentication required|401", proc.stderr, re.I), proc.stderr


def test_token_server_saw_narrow_push_scope(token_registry, oci_layout, policy):
    server: TokenServer = token_registry.extra["token_server"]
    name = _unique("scope")
    skopeo_push(token_registry, oci_layout[0], name, policy)
    asked = server.scopes_asked(name)
    assert f"repository:{name}:pull,push" in asked
    # every scope skopeo asked for while pushing names this repository only
    mine = [r for r in server.log() if any(name in s for s in r.scopes)]
    assert mine and all(r.user == token_registry.username and r.authenticated for r in mine)
    assert all(r.status == 200 and r.service == SERVICE for r in mine)
    assert {(g["name"], tuple(g["actions"])) for r in mine for g in r.granted} >= {(name, ("pull", "push"))}


def _challenge(resp: httpx.Response) -> dict[str, str]:
    scheme, _, params = resp.headers["WWW-Authenticate"].partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def _token(reg: Registry, *scopes: str, auth=True, **params) -> httpx.Response:
    server: TokenServer = reg.extra["token_server"]
    return httpx.get(server.realm, params={"service": SERVICE, "scope": list(scopes), **params},
                     auth=(reg.username, reg.password) if auth is True else auth or None)


def test_raw_bearer_flow(token_registry, oci_layout, policy):
    reg = token_registry
    server: TokenServer = reg.extra["token_server"]
    r = httpx.get(f"{reg.url}/v2/")
    assert r.status_code == 401
    ch = _challenge(r)
    assert ch == {"realm": server.realm, "service": SERVICE}

    r = httpx.get(ch["realm"], params={"service": ch["service"]}, auth=(reg.username, reg.password))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == server.expires_in
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["issued_at"])
    header, claims = decode_jwt(body["token"])
    assert header["alg"] == "RS256" and header["typ"] == "JWT" and len(header["x5c"]) == 1
    assert claims["aud"] == SERVICE and claims["iss"] == server.issuer and claims["sub"] == reg.username
    assert claims["access"] == [] and claims["exp"] - claims["iat"] >= server.expires_in
    assert httpx.get(f"{reg.url}/v2/", headers={"Authorization": f"Bearer {body['token']}"}).status_code == 200

    # a repository endpoint challenges with the scope it needs
    name = _unique("raw")
    skopeo_push(reg, oci_layout[0], name, policy)
    r = httpx.get(f"{reg.url}/v2/{name}/tags/list")
    assert r.status_code == 401
    assert _challenge(r)["scope"] == f"repository:{name}:pull"
    # a token without that access is refused, one with it works
    tok = _token(reg, f"repository:{name}:pull", auth=None).json()["token"]  # anonymous: no access
    assert decode_jwt(tok)[1]["access"] == []
    r = httpx.get(f"{reg.url}/v2/{name}/tags/list", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 401 and _challenge(r).get("error") == "insufficient_scope"
    tok = _token(reg, f"repository:{name}:pull").json()["token"]
    r = httpx.get(f"{reg.url}/v2/{name}/tags/list", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 200 and r.json()["tags"] == ["v1"]
    # pull-only token cannot start an upload
    r = httpx.post(f"{reg.url}/v2/{name}/blobs/uploads/", headers={"Authorization": f"Bearer {tok}"})
    # distribution lists the actions in Go map order: "pull,push" or "push,pull"
    assert r.status_code == 401
    resource, _, actions = _challenge(r)["scope"].rpartition(":")
    assert resource == f"repository:{name}" and sorted(actions.split(",")) == ["pull", "push"]

    # wrong credentials at the token server: 401
    assert _token(reg, f"repository:{name}:pull", auth=(reg.username, "wrong")).status_code == 401
    with server.configured(require_auth=True):
        assert _token(reg, f"repository:{name}:pull", auth=None).status_code == 401


def test_oauth2_password_and_refresh_grants(token_registry):
    reg = token_registry
    server: TokenServer = reg.extra["token_server"]
    name = _unique("oauth")
    form = {"grant_type": "password", "username": reg.username, "password": reg.password,
            "service": SERVICE, "client_id": "modelimage-tests", "access_type": "offline",
            "scope": f"repository:{name}:pull repository:other/{name}:pull"}
    r = httpx.post(server.realm, data=form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "token" not in body and body["refresh_token"]
    assert [a["name"] for a in decode_jwt(body["access_token"])[1]["access"]] == [name, f"other/{name}"]
    assert httpx.post(server.realm, data={**form, "password": "wrong"}).json()["error"] == "invalid_grant"

    r = httpx.post(server.realm, data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                       "service": SERVICE, "client_id": "modelimage-tests",
                                       "scope": f"repository:{name}:pull,push"})
    assert r.status_code == 200, r.text
    assert "refresh_token" not in r.json()
    access = decode_jwt(r.json()["access_token"])[1]["access"]
    assert access == [{"type": "repository", "name": name, "actions": ["pull", "push"]}]
    tok = r.json()["access_token"]
    r = httpx.post(f"{reg.url}/v2/{name}/blobs/uploads/", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 202
    bad = httpx.post(server.realm, data={"grant_type": "refresh_token", "refresh_token": "nope",
                                         "client_id": "modelimage-tests"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    log = [x for x in server.log() if x.method == "POST" and name in " ".join(x.scopes)]
    assert [(x.grant_type, x.status) for x in log] == [("password", 200), ("password", 400),
                                                      ("refresh_token", 200)]


def test_short_lived_token_expires(token_registry):
    reg = token_registry
    server: TokenServer = reg.extra["token_server"]
    with server.configured(expires_in=1):
        body = _token(reg).json()
    assert body["expires_in"] == 1
    tok = body["token"]
    claims = decode_jwt(tok)[1]
    headers = {"Authorization": f"Bearer {tok}"}
    assert httpx.get(f"{reg.url}/v2/", headers=headers).status_code == 200
    # the registry honours exp + 60 s leeway; the server backdated the claims by it
    dead_at = claims["exp"] + REGISTRY_LEEWAY
    assert dead_at - time.time() <= 2.05
    time.sleep(max(0.0, dead_at - time.time()) + 0.3)
    r = httpx.get(f"{reg.url}/v2/", headers=headers)
    assert r.status_code == 401
    assert _challenge(r).get("error") == "invalid_token"


def test_a_shaped_link_carries_the_bytes_unchanged(registry) -> None:
    """bench_modelcar --link: the TCP proxy paced at a rate (tests/link.py) and
    the loopback Hub paced at it give every byte as it was sent (no timing
    asserted: the benchmark measures the rate)."""
    from .hubserver import HubServer
    from .link import ShapedProxy

    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: many paced pieces
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    proxy = ShapedProxy(registry.host, 200e6)
    hub = HubServer().start()
    try:
        with httpx.Client(base_url=f"http://{proxy.host}") as c:
            start = c.post("/v2/shaped/blobs/uploads/")
            assert start.status_code == 202, start.text
            where = start.headers["Location"]
            done = c.put(f"{where}{'&' if '?' in where else '?'}digest={digest}", content=data)
            assert done.status_code == 201, done.text
            assert c.get(f"/v2/shaped/blobs/{digest}").content == data
        assert httpx.get(f"http://{registry.host}/v2/shaped/blobs/{digest}").content == data
        hub.rate = 200e6
        sha = hub.commit("org/shaped", {"model.safetensors": data})
        got = httpx.get(f"{hub.url}/org/shaped/resolve/{sha}/model.safetensors", headers={"Range": "bytes=5-"})
        assert got.status_code == 206 and got.content == data[5:]
    finally:
        hub.stop()
        proxy.stop()
