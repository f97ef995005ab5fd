"""Registry mirrors (issue 20), the way containers' registries.conf has
them: ``[registries."HOST"] mirrors = [...]`` in modelimage.toml. A second
real CNCF registry in proxy mode (a pull-through cache) in front of the
first: pulls and other reads go through it and give byte-identical files,
the second pull is served from its cache (the upstream's access log, its
stderr, counts the blob GETs), a dead mirror, a mirror without the image
and a mirror whose certificate is not trusted fall back to the registry
itself with one warning, the mirror's own TLS settings apply to it, and
pushes never go to a mirror."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from modelimage.cli import main
from modelimage.errors import ConfigError
from modelimage.limits import limits_for
from modelimage.registry import mirror
from modelimage.registry.mirror import candidates, insecure_from_config, mirrors_from_config
from modelimage.registry.reference import Reference

pytestmark = pytest.mark.integration


def test_candidates_mirrors_first_then_the_registry():
    ref = Reference.parse("ghcr.io/acme/model:v1")
    tables = {"ghcr.io": {"mirrors": ["m1:5000", "harbor.local/ghcr-proxy"]}, "quay.io": {"max_layers": 3},
              "index.docker.io": {"mirrors": ["hub-mirror.local"]}, "m1:5000": {"insecure": True}}
    mirrors = mirrors_from_config(tables)
    assert [str(c) for c in candidates(ref, mirrors)] == [
        "m1:5000/acme/model:v1", "harbor.local/ghcr-proxy/acme/model:v1", "ghcr.io/acme/model:v1"]
    pinned = Reference.parse("ghcr.io/acme/model@sha256:" + "a" * 64)
    assert candidates(pinned, mirrors)[0].digest == pinned.digest and candidates(pinned, mirrors)[0].tag is None
    assert candidates(Reference.parse("quay.io/x/y"), mirrors) == [Reference.parse("quay.io/x/y")]
    # Docker Hub's names are one host; its mirrors serve library/ paths, as registries.conf's do
    assert [str(c) for c in candidates(Reference.parse("ubuntu"), mirrors)] == [
        "hub-mirror.local/library/ubuntu:latest", "docker.io/library/ubuntu:latest"]
    assert insecure_from_config(tables) == {"m1:5000"}
    assert limits_for("ghcr.io", tables).max_layers == limits_for("ghcr.io").max_layers  # not limits
    assert limits_for("m1:5000", tables) == limits_for("m1:5000")
    for bad in ("m1:5000", ["http://m1:5000"], ["m1:5000/"], ["mirror"], [""], [5000]):
        with pytest.raises(ConfigError, match=r'modelimage.toml \[registries."ghcr.io"\]: mirror'):
            mirrors_from_config({"ghcr.io": {"mirrors": bad}})
    with pytest.raises(ConfigError, match=r'\[registries."m1:5000"\]: insecure must be true or false'):
        insecure_from_config({"m1:5000": {"insecure": "yes"}})


def test_a_mirror_or_table_with_credentials_is_refused_without_showing_them(tmp_path, capsys):
    """``mirrors = ["bob:PASSWORD@mirror:5000"]`` was echoed whole in the
    error; a table named ``https://bob:PASSWORD@HOST`` or ``ghcr.io/acme``
    was silently never used (or, with a path, read as the whole registry).
    One line each, the password shown as ***, saying what to write."""
    secret = "hunter2-s3cret"
    cases = {'"ghcr.io"': f'["bob:{secret}@m1:5000"]', '"ghcr.io" ': f'["https://{secret}@m1:5000/proxy"]',
             f'"https://bob:{secret}@ghcr.io"': '["m1:5000"]', '"ghcr.io/acme"': '["m1:5000"]',
             '"docker.io"': '["https://mirror.gcr.io"]'}
    for table, mirrors in cases.items():
        config = tmp_path / "modelimage.toml"
        config.write_text(f"[registries.{table.strip()}]\nmirrors = {mirrors}\n")
        assert main(["pull", "ghcr.io/acme/model:v1", str(tmp_path / "dest"), "--config", str(config)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and secret not in err and str(config) in err, err
        assert ("***@" in err) == (secret in mirrors + table) and "Traceback" not in err
        assert ("modelimage login" in err) == ("@" in mirrors), err
        assert ("without a scheme" in err) == (mirrors == '["https://mirror.gcr.io"]'), err
    assert not (tmp_path / "dest").exists()
    assert mirrors_from_config({"https://index.docker.io/v1/": {"mirrors": ["m1:5000"]}}) == (
        ("docker.io", ("m1:5000",)),)  # docker's own key for the Hub names the registry


@pytest.fixture(scope="module")
def pull_through(registry):
    """A second registry in proxy mode (a pull-through cache) in front of the session's registry."""
    from .registry import start_registry

    cache = start_registry(extra_config={"proxy": {"remoteurl": registry.url}})
    yield cache
    cache.stop()


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """No mirror failure remembered from another test; a private digest cache."""
    monkeypatch.setattr(mirror, "_skipped", {})
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pushed(registry, llama_dir) -> str:
    ref = f"{registry.host}/mirrored/llama:v1"
    assert main(["build", str(llama_dir), "--push", ref]) == 0
    return ref


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".modelimage")}


def uris(reg, method: str, path: str) -> list[str]:
    """URIs of the requests the registry answered (its log's ``response
    completed`` lines) with ``method`` on an API path starting ``path``."""
    found = (re.search(rf'http\.request\.uri="?({re.escape(path)}[^" ]*)', line)
             for line in reg.log.read_text(errors="replace").splitlines()
             if 'msg="response completed' in line and f"http.request.method={method} " in line)
    return [m.group(1) for m in found if m]


def requests(reg, method: str, path: str) -> int:
    return len(uris(reg, method, path))


def toml(tmp_path: Path, host: str, *mirrors: str, extra: str = "") -> str:
    path = tmp_path / "modelimage.toml"
    path.write_text(f'[registries."{host}"]\nmirrors = {json.dumps(list(mirrors))}\n{extra}')
    return str(path)


def pulled(capsys, *args: str) -> tuple[dict, str]:
    """``pull ... --json``: its result and its stderr."""
    capsys.readouterr()
    assert main(["pull", *args, "--json"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def test_pulls_go_through_the_mirror_and_its_cache(registry, pull_through, pushed, llama_dir, tmp_path, capsys):
    repo = "/v2/mirrored/llama/blobs/"
    direct, _ = pulled(capsys, pushed, str(tmp_path / "direct"))
    assert direct["served_by"] == registry.host and direct["mirror_of"] is None
    config = toml(tmp_path, registry.host, pull_through.host)
    before, served = requests(registry, "GET", repo), requests(pull_through, "GET", repo)
    node1, err = pulled(capsys, pushed, str(tmp_path / "node1"), "--config", config)
    assert tree(tmp_path / "node1") == tree(tmp_path / "direct") == tree(llama_dir)
    assert node1["digest"] == direct["digest"]
    assert node1["served_by"] == pull_through.host and node1["mirror_of"] == registry.host
    assert f"from {pull_through.host} (a mirror of {registry.host})" in err and "warning" not in err
    first = requests(registry, "GET", repo) - before
    assert first >= 3  # the layers fetched from upstream by the mirror (distribution 2.8 GETs each twice)
    assert requests(pull_through, "GET", repo) - served >= 3  # and served by the mirror
    # every request to the mirror names the registry it stands for, as containerd's do
    asked = uris(pull_through, "GET", "/v2/mirrored/") + uris(pull_through, "HEAD", "/v2/mirrored/")
    assert asked and all(u.endswith("?ns=" + registry.host.replace(":", "%3A")) for u in asked), asked
    node2, _ = pulled(capsys, pushed, str(tmp_path / "node2"), "--config", config)
    assert tree(tmp_path / "node2") == tree(llama_dir) and node2["served_by"] == pull_through.host
    assert requests(registry, "GET", repo) - before == first  # the second node: from the mirror's cache alone


def test_other_reads_go_through_the_mirror(registry, pull_through, pushed, busybox_base, llama_dir, tmp_path,
                                           capsys):
    """verify, inspect REF, estimate REF and build --base read through the
    mirror; the image built on a base read from the mirror is pushed to the
    registry itself, the base's layers mounted there from the base's repository."""
    config = toml(tmp_path, registry.host, pull_through.host)
    dest = tmp_path / "dest"
    assert main(["pull", pushed, str(dest)]) == 0
    manifests = "/v2/mirrored/llama/manifests/"
    for command in (["verify", pushed, str(dest)], ["inspect", pushed], ["estimate", pushed]):
        before = requests(pull_through, "GET", manifests)
        assert main([*command, "--config", config]) == 0, command
        assert requests(pull_through, "GET", manifests) > before, command
    assert "warning" not in capsys.readouterr().err
    base_path = "/v2/" + Reference.parse(busybox_base).repository + "/manifests/"
    before, log = requests(pull_through, "GET", base_path), len(registry.log.read_text(errors="replace"))
    target = f"{registry.host}/mirrored/on-base:v1"
    assert main(["build", str(llama_dir), "--base", busybox_base, "--push", target, "--config", config]) == 0
    assert requests(pull_through, "GET", base_path) > before
    mounts = [line for line in registry.log.read_text(errors="replace")[log:].splitlines()
              if 'uri="/v2/mirrored/on-base/blobs/uploads/?' in line and "mount=" in line and "status=201" in line]
    assert len(mounts) >= 1  # the base's layers, mounted on the registry itself (not uploaded from the mirror)


def test_push_ignores_mirrors(registry, pull_through, llama_dir, tmp_path, capsys):
    """Pushes go to the registry itself (a proxy-mode registry refuses them anyway)."""
    ref = f"{registry.host}/mirrored/pushed:v1"
    config = toml(tmp_path, registry.host, pull_through.host)
    writes = sum(requests(pull_through, m, "/v2/") for m in ("POST", "PUT", "PATCH"))
    assert main(["build", str(llama_dir), "--push", ref, "--config", config]) == 0
    assert sum(requests(pull_through, m, "/v2/") for m in ("POST", "PUT", "PATCH")) == writes
    assert requests(pull_through, "HEAD", "/v2/mirrored/pushed/") == 0
    assert requests(registry, "PUT", "/v2/mirrored/pushed/manifests/v1") == 1
    assert "warning" not in capsys.readouterr().err


def test_a_dead_mirror_falls_back_to_the_registry(registry, pushed, llama_dir, tmp_path, capsys):
    """One warning line naming the mirror, even though the pull opens the
    image more than once (the variant preflight, the pull); exit 0."""
    from .registry import free_port

    dead = f"127.0.0.1:{free_port()}"
    result, err = pulled(capsys, pushed, str(tmp_path / "dest"), "--config", toml(tmp_path, registry.host, dead))
    assert tree(tmp_path / "dest") == tree(llama_dir)
    assert result["served_by"] == registry.host and result["mirror_of"] is None
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert re.fullmatch(rf"warning: mirror {dead} of {registry.host}: cannot connect \(.*\); "
                        rf"reading from {registry.host} itself", warnings[0])


def test_a_mirror_without_the_image_is_skipped(registry, pull_through, pushed, llama_dir, tmp_path, capsys):
    """A mirror path prefix that holds nothing (HTTP 404 there) is skipped
    for the next mirror, with a warning; the prefix is part of the path asked."""
    config = toml(tmp_path, registry.host, f"{pull_through.host}/elsewhere", pull_through.host)
    result, err = pulled(capsys, pushed, str(tmp_path / "dest"), "--config", config)
    assert tree(tmp_path / "dest") == tree(llama_dir) and result["served_by"] == pull_through.host
    assert requests(pull_through, "HEAD", "/v2/elsewhere/mirrored/llama/manifests/v1") >= 1
    assert f"warning: mirror {pull_through.host}/elsewhere of {registry.host}: HTTP 404 for " \
           f"{pull_through.host}/elsewhere/mirrored/llama:v1; trying mirror {pull_through.host}" in err


def test_a_mirror_has_its_own_tls_trust(registry, pushed, llama_dir, tmp_path, monkeypatch, capsys):
    """A pull-through cache behind HTTPS with a private CA: untrusted, it is
    skipped with a warning naming the certificate (never a reason to fail
    the pull, nor to trust it); trusted through certs.d/MIRROR, or named
    ``insecure = true`` in its own [registries."MIRROR"] table, it serves."""
    from .registry import start_registry
    from .test_registry_tls import _ca_and_server

    ca, cert, key = _ca_and_server(tmp_path / "pki")
    tls_mirror = start_registry(tls=(cert, key), extra_config={"proxy": {"remoteurl": registry.url}})
    try:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        certs_d = tmp_path / "certs.d"
        monkeypatch.setattr("modelimage.registry.transport.tls.CERTS_D", (certs_d,))
        config = toml(tmp_path, registry.host, tls_mirror.host)
        result, err = pulled(capsys, pushed, str(tmp_path / "untrusted"), "--config", config)
        assert result["served_by"] == registry.host and tree(tmp_path / "untrusted") == tree(llama_dir)
        assert f"warning: mirror {tls_mirror.host} of {registry.host}: the TLS certificate did not verify" in err

        monkeypatch.setattr(mirror, "_skipped", {})
        (certs_d / tls_mirror.host).mkdir(parents=True)
        shutil.copy(ca, certs_d / tls_mirror.host / "ca.crt")
        result, err = pulled(capsys, pushed, str(tmp_path / "certs-d"), "--config", config)
        assert result["served_by"] == tls_mirror.host and "warning" not in err
        shutil.rmtree(certs_d)

        monkeypatch.setattr(mirror, "_skipped", {})
        config = toml(tmp_path, registry.host, tls_mirror.host, extra=f'[registries."{tls_mirror.host}"]\n'
                                                                    "insecure = true\n")
        result, err = pulled(capsys, pushed, str(tmp_path / "insecure"), "--config", config)
        assert result["served_by"] == tls_mirror.host and "warning" not in err
        assert tree(tmp_path / "insecure") == tree(llama_dir)
    finally:
        tls_mirror.stop()
