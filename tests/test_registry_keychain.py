"""modelimage.registry.keychain: docker's config.json, credential helpers,
storing and erasing logins."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelimage.errors import AuthError
from modelimage.registry.keychain import (
    Credentials,
    Keychain,
    auth_files,
    credentials_for,
    docker_config_path,
    erase_credentials,
    load_docker_config,
    scopes,
    store_credentials,
)

PASSWORD = "pw-Zq8!x"
IDENTITY_TOKEN = "idtok-77aa"
SECRETS = (PASSWORD, IDENTITY_TOKEN, base64.b64encode(f"alice:{PASSWORD}".encode()).decode())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- docker config ----------------------------------------------------------------


@pytest.fixture
def docker_dir(tmp_path, monkeypatch) -> Path:
    """A private DOCKER_CONFIG folder (not created yet); podman's auth files
    under this test's own XDG folders (none yet)."""
    folder = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    return folder


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_config_path_from_env_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "elsewhere"))
    assert docker_config_path() == tmp_path / "elsewhere" / "config.json"
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert docker_config_path() == tmp_path / "home" / ".docker" / "config.json"


def test_missing_config_is_empty(docker_dir):
    assert load_docker_config() == {}
    assert credentials_for("ghcr.io") is None


def test_bad_json_names_the_file(docker_dir):
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text('{"auths": {"ghcr.io": {"auth": "%s"}' % b64(f"alice:{PASSWORD}"))
    with pytest.raises(AuthError) as err:
        load_docker_config()
    assert str(docker_dir / "config.json") in str(err.value)
    assert PASSWORD not in str(err.value) and SECRETS[2] not in str(err.value)


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"auth": b64(f"alice:{PASSWORD}")}, Credentials("alice", PASSWORD)),
        ({"auth": b64("alice:with:colons")}, Credentials("alice", "with:colons")),
        ({"username": "bob", "password": PASSWORD}, Credentials("bob", PASSWORD)),
        ({"identitytoken": IDENTITY_TOKEN}, Credentials("", "", IDENTITY_TOKEN)),
        (
            {"auth": b64(f"alice:{PASSWORD}"), "identitytoken": IDENTITY_TOKEN},
            Credentials("alice", PASSWORD, IDENTITY_TOKEN),
        ),
        ({}, None),
    ],
)
def test_auths_entry_forms(docker_dir, entry, expected):
    write_config(docker_dir, {"auths": {"ghcr.io": entry}})
    assert credentials_for("ghcr.io") == expected


@pytest.mark.parametrize("key", ["ghcr.io", "https://ghcr.io", "http://ghcr.io", "https://ghcr.io/v1/", "GHCR.io"])
def test_host_key_spellings(docker_dir, key):
    write_config(docker_dir, {"auths": {key: {"auth": b64(f"alice:{PASSWORD}")}, "other.io": {"auth": b64("x:y")}}})
    assert credentials_for("ghcr.io") == Credentials("alice", PASSWORD)
    assert credentials_for("quay.io") is None


def test_host_with_port(docker_dir):
    write_config(docker_dir, {"auths": {"localhost:5000": {"auth": b64("a:b")}}})
    assert credentials_for("localhost:5000") == Credentials("a", "b")
    assert credentials_for("localhost") is None


@pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_key(docker_dir, host):
    write_config(docker_dir, {"auths": {"https://index.docker.io/v1/": {"auth": b64(f"alice:{PASSWORD}")}}})
    assert credentials_for(host) == Credentials("alice", PASSWORD)


def test_bad_base64_is_an_auth_error(docker_dir):
    path = write_config(docker_dir, {"auths": {"ghcr.io": {"auth": "!!not base64!!"}}})
    with pytest.raises(AuthError, match="ghcr.io"):
        credentials_for("ghcr.io")
    assert str(path) in str(pytest.raises(AuthError, credentials_for, "ghcr.io").value)


def test_store_writes_0600_atomically_and_keeps_other_keys(docker_dir):
    path = write_config(
        docker_dir,
        {
            "auths": {"quay.io": {"auth": b64("q:r")}, "https://ghcr.io": {"auth": b64("old:old")}},
            "proxies": {"default": {"httpProxy": "http://proxy:3128"}},
            "currentContext": "desktop",
        },
    )
    where = store_credentials("ghcr.io", "alice", PASSWORD)
    assert str(path) in where and PASSWORD not in where
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = json.loads(path.read_text())
    assert config["proxies"] == {"default": {"httpProxy": "http://proxy:3128"}}
    assert config["currentContext"] == "desktop"
    assert config["auths"] == {"quay.io": {"auth": b64("q:r")}, "ghcr.io": {"auth": b64(f"alice:{PASSWORD}")}}
    assert credentials_for("ghcr.io") == Credentials("alice", PASSWORD)
    assert sorted(p.name for p in docker_dir.iterdir()) == ["config.json"]  # no temporaries left


def test_store_creates_folder_0700(docker_dir):
    store_credentials("docker.io", "alice", PASSWORD)
    assert stat.S_IMODE(docker_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((docker_dir / "config.json").stat().st_mode) == 0o600
    assert json.loads((docker_dir / "config.json").read_text()) == {
        "auths": {"https://index.docker.io/v1/": {"auth": b64(f"alice:{PASSWORD}")}}
    }
    assert credentials_for("registry-1.docker.io") == Credentials("alice", PASSWORD)


def test_store_is_atomic(docker_dir, monkeypatch):
    path = write_config(docker_dir, {"auths": {"quay.io": {"auth": b64("q:r")}}})
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store_credentials("ghcr.io", "alice", PASSWORD)
    assert path.read_text() == before
    assert sorted(p.name for p in docker_dir.iterdir()) == ["config.json"]


def test_erase_from_file(docker_dir):
    path = write_config(docker_dir, {"auths": {"https://ghcr.io": {"auth": b64("a:b")}, "quay.io": {}}})
    assert str(path) in erase_credentials("ghcr.io")
    assert json.loads(path.read_text()) == {"auths": {"quay.io": {}}}
    assert "no credentials" in erase_credentials("ghcr.io")


# --- credential helpers ---------------------------------------------------------------

FAKE_HELPER = """#!{python}
import json, os, sys
store_path = {store!r}
store = json.load(open(store_path)) if os.path.exists(store_path) else {{}}
action, data = sys.argv[1], sys.stdin.read()
with open(store_path + ".log", "a") as log:
    log.write(json.dumps([action, data]) + "\\n")
if action == "get":
    if data not in store:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": data, **store[data]}}))
elif action == "store":
    entry = json.loads(data)
    store[entry["ServerURL"]] = {{"Username": entry["Username"], "Secret": entry["Secret"]}}
elif action == "erase":
    if data not in store:
        print("credentials not found in native keychain")
        sys.exit(1)
    del store[data]
else:
    print("unknown action", file=sys.stderr)
    sys.exit(3)
json.dump(store, open(store_path, "w"))
"""


@dataclass
class FakeHelper:
    store: Path

    def entries(self) -> dict:
        return json.loads(self.store.read_text()) if self.store.exists() else {}

    def calls(self) -> list:
        log = Path(str(self.store) + ".log")
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def helper(tmp_path, monkeypatch, docker_dir) -> FakeHelper:
    """``docker-credential-fake`` on PATH, keeping its secrets in a JSON file."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    store = tmp_path / "helper-store.json"
    script = bindir / "docker-credential-fake"
    script.write_text(FAKE_HELPER.format(python=sys.executable, store=str(store)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return FakeHelper(store)


def test_helper_get(helper, docker_dir):
    write_config(docker_dir, {"credsStore": "fake", "auths": {"ghcr.io": {}}})
    helper.store.write_text(json.dumps({"ghcr.io": {"Username": "alice", "Secret": PASSWORD}}))
    assert credentials_for("ghcr.io") == Credentials("alice", PASSWORD)
    assert helper.calls() == [["get", "ghcr.io"]]


def test_helper_identity_token(helper, docker_dir):
    write_config(docker_dir, {"credHelpers": {"ghcr.io": "fake"}})
    helper.store.write_text(json.dumps({"ghcr.io": {"Username": "<token>", "Secret": IDENTITY_TOKEN}}))
    assert credentials_for("ghcr.io") == Credentials("", "", IDENTITY_TOKEN)


def test_helper_docker_hub_server_url(helper, docker_dir):
    write_config(docker_dir, {"credHelpers": {"index.docker.io": "fake"}})
    helper.store.write_text(json.dumps({"https://index.docker.io/v1/": {"Username": "a", "Secret": PASSWORD}}))
    assert credentials_for("docker.io") == Credentials("a", PASSWORD)
    assert helper.calls() == [["get", "https://index.docker.io/v1/"]]


def test_helper_not_found_falls_back_to_auths(helper, docker_dir):
    write_config(docker_dir, {"credsStore": "fake", "auths": {"quay.io": {"auth": b64("q:r")}}})
    assert credentials_for("ghcr.io") is None
    assert credentials_for("quay.io") == Credentials("q", "r")


def test_cred_helpers_win_over_creds_store(helper, docker_dir):
    write_config(docker_dir, {"credsStore": "missing-store", "credHelpers": {"https://ghcr.io": "fake"}})
    helper.store.write_text(json.dumps({"ghcr.io": {"Username": "alice", "Secret": PASSWORD}}))
    assert credentials_for("ghcr.io") == Credentials("alice", PASSWORD)
    with pytest.raises(AuthError, match="docker-credential-missing-store"):
        credentials_for("quay.io")


def test_missing_helper_is_one_line_auth_error(docker_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = write_config(docker_dir, {"credsStore": "nope"})
    with pytest.raises(AuthError) as err:
        credentials_for("ghcr.io")
    message = str(err.value)
    assert "docker-credential-nope" in message and "credsStore" in message and str(path) in message
    assert "\n" not in message
    with pytest.raises(AuthError, match="docker-credential-nope"):
        store_credentials("ghcr.io", "alice", PASSWORD)


def test_helper_store_and_erase(helper, docker_dir):
    path = write_config(docker_dir, {"credsStore": "fake", "auths": {"https://ghcr.io": {"auth": b64("old:old")}}})
    where = store_credentials("ghcr.io", "alice", PASSWORD)
    assert where == "credential helper docker-credential-fake"
    assert helper.entries() == {"ghcr.io": {"Username": "alice", "Secret": PASSWORD}}
    assert json.loads(helper.calls()[0][1]) == {"ServerURL": "ghcr.io", "Username": "alice", "Secret": PASSWORD}
    assert json.loads(path.read_text()) == {"credsStore": "fake", "auths": {}}  # no stale plain-text copy
    assert credentials_for("ghcr.io") == Credentials("alice", PASSWORD)

    assert "docker-credential-fake" in erase_credentials("ghcr.io")
    assert helper.entries() == {}
    assert credentials_for("ghcr.io") is None
    erase_credentials("ghcr.io")  # not found in the helper: fine


def test_helper_failure_hides_the_secret(helper, docker_dir, tmp_path):
    write_config(docker_dir, {"credsStore": "fake"})
    script = tmp_path / "bin" / "docker-credential-fake"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('cannot save ' + sys.stdin.read()); sys.exit(2)\n")
    with pytest.raises(AuthError) as err:
        store_credentials("ghcr.io", "alice", PASSWORD)
    assert "docker-credential-fake store failed (exit 2)" in str(err.value)
    assert PASSWORD not in str(err.value)


# --- per repository, podman's files, --authfile, logout (issue 15 case 4) --------------


def write_json(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def test_scopes_most_specific_first():
    assert scopes("quay.io", "acme/team/model") == ["quay.io/acme/team/model", "quay.io/acme/team", "quay.io/acme",
                                                   "quay.io"]
    assert scopes("https://index.docker.io/v1/", "library/ubuntu")[-1] == "docker.io"


def test_credentials_by_repository_path_then_host(docker_dir):
    """docker's config.json with logins for quay.io/acme and quay.io/other:
    a push to quay.io/acme/... uses acme's, never other's; a repository of
    neither falls back to the host's own entry."""
    write_config(docker_dir, {"auths": {
        "quay.io/other": {"auth": b64("other:pw-other")},
        "quay.io/acme": {"auth": b64("acme:pw-acme")},
        "https://quay.io": {"auth": b64("host:pw-host")},
    }})
    keychain = Keychain()
    assert keychain.resolve("quay.io", "acme/model").username == "acme"
    assert keychain.resolve("quay.io", "other/deep/model").username == "other"
    assert keychain.resolve("quay.io", "third/model").username == "host"
    assert keychain.resolve("quay.io").username == "host"
    assert keychain.resolve("quay.io", "acme/model").source == str(docker_dir / "config.json")


def test_podman_auth_json_comes_first(docker_dir, tmp_path):
    """${XDG_RUNTIME_DIR}/containers/auth.json (podman login's file) is read
    before ~/.config/containers/auth.json and docker's config.json."""
    write_config(docker_dir, {"auths": {"ghcr.io": {"auth": b64("docker-user:pw1")}}})
    assert Keychain().resolve("ghcr.io", "a/b").username == "docker-user"
    write_json(tmp_path / "config" / "containers" / "auth.json", {"auths": {"ghcr.io": {"auth": b64("home:pw2")}}})
    assert Keychain().resolve("ghcr.io", "a/b").username == "home"
    write_json(tmp_path / "run" / "containers" / "auth.json", {"auths": {"ghcr.io/a": {"auth": b64("podman:pw3")}}})
    assert Keychain().resolve("ghcr.io", "a/b").username == "podman"
    assert Keychain().resolve("ghcr.io", "z/b").username == "home"  # no ghcr.io/z anywhere: the host's, in order


def test_registry_auth_file_and_authfile(docker_dir, tmp_path, monkeypatch):
    write_config(docker_dir, {"auths": {"ghcr.io": {"auth": b64("docker-user:pw1")}}})
    env_file = write_json(tmp_path / "env-auth.json", {"auths": {"ghcr.io": {"auth": b64("env:pw2")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    assert auth_files()[0] == env_file
    assert Keychain().resolve("ghcr.io").username == "env"
    only = write_json(tmp_path / "only.json", {"auths": {}})
    assert auth_files(only) == [only]
    assert Keychain(only).resolve("ghcr.io") is None  # --authfile: that file alone
    assert "only.json" in Keychain(only).store("ghcr.io/acme", "alice", PASSWORD)
    assert json.loads(only.read_text())["auths"] == {"ghcr.io/acme": {"auth": b64(f"alice:{PASSWORD}")}}
    assert Keychain(only).resolve("ghcr.io", "acme/x").username == "alice"
    assert Keychain(only).resolve("ghcr.io", "other/x") is None


def test_logout_forgets_in_every_file(docker_dir, tmp_path):
    """After ``logout HOST`` nothing is found for HOST: its entries leave
    podman's and docker's files; other hosts' and namespaces' stay."""
    write_config(docker_dir, {"auths": {"https://ghcr.io": {"auth": b64("a:b")}, "quay.io": {"auth": b64("q:r")}}})
    podman = write_json(tmp_path / "run" / "containers" / "auth.json",
                        {"auths": {"ghcr.io": {"auth": b64("c:d")}, "ghcr.io/acme": {"auth": b64("e:f")}}})
    message = Keychain().erase("ghcr.io")
    assert str(podman) in message and str(docker_dir / "config.json") in message
    assert Keychain().resolve("ghcr.io", "x/y") is None
    assert Keychain().resolve("ghcr.io", "acme/y").username == "e"  # the namespace's own login stays
    assert Keychain().resolve("quay.io").username == "q"
    assert "no credentials" in Keychain().erase("ghcr.io")
    Keychain().erase("ghcr.io/acme")
    assert Keychain().resolve("ghcr.io", "acme/y") is None


def test_cli_login_logout_with_authfile(docker_dir, tmp_path, htpasswd_registry, capsys, monkeypatch):
    """``login --authfile F`` checks and stores there, a push reads it back
    with ``--authfile F``; ``logout --authfile F`` removes it; docker's
    config is never touched."""
    import io

    from modelimage.cli import main

    reg = htpasswd_registry
    authfile = tmp_path / "auth.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(reg.password + "\n"))
    assert main(["login", reg.host, "-u", reg.username, "--password-stdin", "--authfile", str(authfile)]) == 0
    assert reg.host in json.loads(authfile.read_text())["auths"] and not (docker_dir / "config.json").exists()
    assert Keychain(authfile).resolve(reg.host, "any/repo").username == reg.username
    assert main(["logout", reg.host, "--authfile", str(authfile)]) == 0
    assert Keychain(authfile).resolve(reg.host) is None
    assert reg.password not in capsys.readouterr().err


def test_wrong_stored_credentials_name_the_user_and_the_fix(docker_dir, htpasswd_registry, llama_dir, tmp_path,
                                                            capsys, monkeypatch):
    """Issue 16 item 2: wrong credentials stored for an htpasswd registry: one
    line saying HOST rejected the stored credentials for USER (and where they
    are), and to run ``modelimage login HOST``; never the secret."""
    from modelimage.cli import main

    reg = htpasswd_registry
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    wrong = "wrong-secret-51d2"
    write_config(docker_dir, {"auths": {reg.host: {"auth": b64(f"{reg.username}:{wrong}")}}})
    assert main(["build", str(llama_dir), "--push", f"{reg.host}/wrong/llama:v1"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {reg.host} rejected the stored credentials for {reg.username} "
                   f"({docker_dir / 'config.json'}); run `modelimage login {reg.host}`\n")
