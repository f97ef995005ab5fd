"""Where registry credentials live (go-containerregistry's ``pkg/authn``
keychain, containers-auth.json(5)): podman's and docker's auth files
(``credHelpers``, ``credsStore``, ``auths``) and the ``docker-credential-*``
helper protocol.

:class:`Keychain` looks credentials up for a repository, most specific key
first (``quay.io/acme/model``, ``quay.io/acme``, ``quay.io``), in each
file in turn: ``--authfile`` alone when given; else ``$REGISTRY_AUTH_FILE``
or ``${XDG_RUNTIME_DIR}/containers/auth.json`` (podman's), then
``~/.config/containers/auth.json``, then docker's ``config.json``
(``$DOCKER_CONFIG`` or ``~/.docker``). :meth:`Keychain.store` and
:meth:`Keychain.erase` back ``modelimage login`` / ``logout``. How the
credentials are *used* (challenges, tokens) is
:mod:`modelimage.registry.transport`'s business. No HTTP here.

Secrets (passwords, identity tokens) never appear in reprs, exception
messages or logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..durable import write_durably
from ..errors import AuthError
from .reference import DOCKER_HUB, registry_host

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
"""The key Docker Hub credentials are stored under (config and helpers)."""

TOKEN_USERNAME = "<token>"
"""A helper's ``Username`` that marks ``Secret`` as an identity token."""

HELPER_TIMEOUT = 120.0  # seconds; helpers may unlock a keyring, never forever


# --- host names and config keys ------------------------------------------------


def _server_url(host: str) -> str:
    """The key ``docker login`` uses for ``host`` (config entry and helper ServerURL)."""
    name = registry_host(host)
    return DOCKER_HUB_KEY if name == DOCKER_HUB else name


def _normal_key(key: str) -> str:
    """A config key spelled one way: ``https://Quay.io:443/acme/`` -> ``quay.io/acme``,
    ``https://index.docker.io/v1/`` -> ``docker.io``."""
    rest = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip(), flags=re.I).rstrip("/")
    host, _, path = rest.partition("/")
    path = "" if path in ("v1", "v2") else path
    return registry_host(host) + (f"/{path}" if path else "")


def _find_key(table: dict, scope: str) -> str | None:
    """The key of ``table`` that names ``scope`` (``host`` or ``host/namespace``)
    in any of docker's and podman's spellings."""
    if scope in table:
        return scope
    want = _normal_key(scope)
    return next((key for key in table if _normal_key(key) == want), None)


def scopes(host: str, repository: str | None = None) -> list[str]:
    """The keys that may hold credentials for ``repository`` on ``host``, most
    specific first: ``host/a/b``, ``host/a``, ``host`` (podman's namespaced
    logins; go-containerregistry's and crane's repository keys)."""
    parts = (repository or "").split("/") if repository else []
    host = registry_host(host)
    return [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + [host]


# --- docker config.json -----------------------------------------------------------


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return (Path(folder) if folder else Path.home() / ".docker") / "config.json"


def load_docker_config() -> dict:
    """The parsed docker config; ``{}`` when there is none."""
    return load_config(docker_config_path())


def load_config(path: Path) -> dict:
    """A parsed auth file (docker's config.json or podman's auth.json); ``{}`` when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AuthError(f"{path}: cannot read the auth file ({exc.strerror})") from None
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        # `from None`: a JSONDecodeError carries the whole document, secrets included
        raise AuthError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); fix or remove the file") from None
    if not isinstance(config, dict):
        raise AuthError(f"{path}: expected a JSON object; fix or remove the file")
    return config


def _write_config(path: Path, config: dict) -> None:
    """Atomically replace ``path`` (through a symlink) with ``config``, mode 0600."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink():
        path = path.resolve()
    write_durably(path, (json.dumps(config, indent="\t") + "\n").encode("utf-8"))  # mode 0600, as mkstemp makes it


def _helper_name(config: dict, host: str) -> tuple[str, str] | None:
    """``(helper, setting)`` docker would use for ``host``: credHelpers, then credsStore."""
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        key = _find_key(helpers, registry_host(host))
        if key is not None and helpers[key]:
            return str(helpers[key]), f"credHelpers[{key!r}]"
    store = config.get("credsStore")
    if store:
        return str(store), "credsStore"
    return None


# --- credentials -------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Credentials:
    """A username and password, or an identity (refresh) token."""

    username: str
    password: str = field(repr=False)
    identity_token: str | None = field(default=None, repr=False)
    source: str = field(default="", compare=False)  # where they were stored ("" when given directly)

    def __repr__(self) -> str:
        token = "None" if self.identity_token is None else "***"
        return f"Credentials(username={self.username!r}, password=***, identity_token={token})"

    @property
    def has_password(self) -> bool:
        return bool(self.password)

    def describe(self) -> str:
        """Who these credentials are, for messages: never the secret."""
        if self.username:
            return self.username
        return "an identity token" if self.identity_token else "an empty username"


def _from_entry(entry: dict, key: str, path: Path) -> Credentials | None:
    """Credentials from one ``auths`` entry (``auth``, ``username``/``password``, ``identitytoken``)."""
    if not isinstance(entry, dict):
        raise AuthError(f"{path}: auths[{key!r}] is not an object")
    username = str(entry.get("username") or "")
    password = str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{path}: auths[{key!r}].auth is not base64 'user:password'; log in again") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(f"{path}: auths[{key!r}].auth is not base64 'user:password'; log in again")
    token = entry.get("identitytoken") or None
    if not (username or password or token):
        return None
    return Credentials(username, password, str(token) if token else None, source=str(path))


def auth_files(authfile: Path | None = None) -> list[Path]:
    """The auth files credentials are looked up in, in order (containers-auth.json(5)).

    ``authfile`` (``--authfile``) alone when given. Else podman's
    ``$REGISTRY_AUTH_FILE``, or ``${XDG_RUNTIME_DIR}/containers/auth.json``
    (``/run/containers/UID/auth.json`` without it), then
    ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``), then docker's
    ``config.json``."""
    if authfile is not None:
        return [Path(authfile)]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    podman = (Path(os.environ["REGISTRY_AUTH_FILE"]) if os.environ.get("REGISTRY_AUTH_FILE")
              else Path(runtime) / "containers" / "auth.json" if runtime
              else Path(f"/run/containers/{os.getuid()}/auth.json"))
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [podman, config_home / "containers" / "auth.json", docker_config_path()]


@dataclass(frozen=True)
class Keychain:
    """Credentials per repository from podman's and docker's auth files
    (:func:`auth_files`); ``authfile``: ``--authfile``, the only file then."""

    authfile: Path | None = None

    def resolve(self, host: str, repository: str | None = None) -> Credentials | None:
        """Credentials for ``repository`` on ``host``: in each auth file in turn,
        ``credHelpers[host]`` or ``credsStore`` (through ``docker-credential-<name>``),
        then ``auths`` most specific key first (:func:`scopes`). Keys may be
        written ``host``, ``https://host``, ``https://host/v1/``...; Docker
        Hub's is ``https://index.docker.io/v1/``. ``None``: anonymous."""
        for path in auth_files(self.authfile):
            config = load_config(path)
            if not config:
                continue
            helper = _helper_name(config, host)
            if helper is not None:
                creds = _helper_get(helper[0], _server_url(host), helper[1], path)
                if creds is not None:
                    return creds
            auths = config.get("auths") or {}
            if not isinstance(auths, dict):
                raise AuthError(f"{path}: 'auths' is not an object; fix or remove the file")
            for scope in scopes(host, repository):
                key = _find_key(auths, scope)
                creds = None if key is None else _from_entry(auths[key], key, path)
                if creds is not None:
                    return creds
        return None

    def _store_file(self) -> Path:
        """Where a login is written: ``--authfile``, else ``$REGISTRY_AUTH_FILE``, else docker's config."""
        if self.authfile is not None:
            return Path(self.authfile)
        env = os.environ.get("REGISTRY_AUTH_FILE")
        return Path(env) if env else docker_config_path()

    def store(self, target: str, username: str, password: str) -> str:
        """Save a login for ``target`` (``HOST`` or ``HOST/NAMESPACE``, podman's
        namespaced login); returns where it went (no secret).

        With ``credHelpers[host]`` or ``credsStore`` configured (a whole
        host), the helper stores it (and any plain-text entry is removed);
        otherwise it goes into ``auths`` of the auth file, base64 encoded."""
        path, config = self._store_file(), None
        config = load_config(path)
        host, _, namespace = _normal_key(target).partition("/")
        key = _server_url(host) if not namespace else f"{host}/{namespace}"
        helper = None if namespace else _helper_name(config, host)
        if helper is not None:
            payload = json.dumps({"ServerURL": key, "Username": username, "Secret": password})
            _run_helper(helper[0], "store", payload, helper[1], path, secret=password)
            if _drop_entries(config, key):
                _write_config(path, config)
            return f"credential helper docker-credential-{helper[0]}"
        auths = config.get("auths")
        if not isinstance(auths, dict):
            auths = config["auths"] = {}
        _drop_entries(config, key)
        auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}
        _write_config(path, config)
        return f"{path} (base64, not encrypted; configure a docker credential helper to avoid this)"

    def erase(self, target: str) -> str:
        """Forget the login for ``target`` (``HOST`` or ``HOST/NAMESPACE``) in
        every auth file that has it (and the helper docker's config names), so
        that nothing is found for it afterwards; returns what was done."""
        host, _, namespace = _normal_key(target).partition("/")
        key = host if not namespace else f"{host}/{namespace}"
        done = []
        files = auth_files(self.authfile)
        for path in files:
            config = load_config(path)
            if not config:
                continue
            helper = None if namespace else _helper_name(config, host)
            if helper is not None:
                _run_helper(helper[0], "erase", _server_url(host), helper[1], path)
                done.append(f"credential helper docker-credential-{helper[0]}")
            if _drop_entries(config, key):
                _write_config(path, config)
                done.append(str(path))
        if not done:
            return f"no credentials for {target} were stored in {', '.join(map(str, files))}"
        return "removed from " + " and ".join(done)


def credentials_for(host: str, repository: str | None = None) -> Credentials | None:
    """``Keychain().resolve(host, repository)``: the default auth files."""
    return Keychain().resolve(host, repository)


def store_credentials(host: str, username: str, password: str) -> str:
    """``Keychain().store(...)``: where docker (or ``$REGISTRY_AUTH_FILE``) keeps logins."""
    return Keychain().store(host, username, password)


def erase_credentials(host: str) -> str:
    """``Keychain().erase(host)``: from every default auth file."""
    return Keychain().erase(host)


def _drop_entries(config: dict, scope: str) -> bool:
    """Remove every ``auths`` entry naming exactly ``scope``; whether any was removed."""
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return False
    want = _normal_key(scope)
    keys = [key for key in auths if _normal_key(key) == want]
    for key in keys:
        del auths[key]
    return bool(keys)


# --- docker-credential-* helpers ----------------------------------------------------


def _run_helper(
    name: str, action: str, stdin: str, setting: str, path: Path, *, secret: str | None = None
) -> subprocess.CompletedProcess | None:
    """Run ``docker-credential-<name> <action>``; ``None`` when it has no credentials."""
    program = f"docker-credential-{name}"
    exe = shutil.which(program)
    if exe is None:
        raise AuthError(
            f"{program} not found on PATH (configured as {setting} in {path}); install it or remove the setting"
        )
    try:
        proc = subprocess.run([exe, action], input=stdin, capture_output=True, text=True, timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AuthError(f"{program} {action} did not answer within {HELPER_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise AuthError(f"{program} {action} could not run ({exc.strerror})") from None
    if proc.returncode == 0:
        return proc
    output = (proc.stdout + "\n" + proc.stderr).strip()
    if "credentials not found" in output.lower():
        return None
    first = next((line.strip() for line in output.splitlines() if line.strip()), "no output")
    if secret:
        first = first.replace(secret, "***")
    raise AuthError(f"{program} {action} failed (exit {proc.returncode}): {first[:200]}")


def _helper_get(name: str, server: str, setting: str, path: Path) -> Credentials | None:
    proc = _run_helper(name, "get", server, setting, path)
    if proc is None:
        return None
    try:
        answer = json.loads(proc.stdout)
        username, secret = str(answer.get("Username") or ""), str(answer.get("Secret") or "")
    except (ValueError, AttributeError):
        raise AuthError(f"docker-credential-{name} get {server}: answered something other than JSON") from None
    if not secret:
        return None
    if username == TOKEN_USERNAME:
        return Credentials("", "", secret, source=f"docker-credential-{name}")
    return Credentials(username, secret, source=f"docker-credential-{name}")
