"""Registry authentication the way docker does it.

Two halves:

* **Where credentials live**: docker's ``config.json`` (``credHelpers``,
  ``credsStore``, ``auths``) and the ``docker-credential-*`` helper protocol.
  :func:`credentials_for` reads them; :func:`store_credentials` and
  :func:`erase_credentials` back ``modelimage login`` / ``logout``.
* **How they are used**: :class:`RegistryAuth`, an :class:`httpx.Auth` that
  answers ``401`` challenges with Basic credentials or bearer tokens from the
  registry's token server, requests the narrowest scope for each request and
  caches tokens per scope until shortly before they expire.

Secrets (passwords, identity tokens, bearer tokens) never appear in reprs,
exception messages or logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Generator, Iterable

import httpx

from ..errors import AuthError

log = logging.getLogger(__name__)

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
"""The key Docker Hub credentials are stored under (config and helpers)."""

DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

TOKEN_USERNAME = "<token>"
"""A helper's ``Username`` that marks ``Secret`` as an identity token."""

CLIENT_ID = "modelimage"
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, when the token server gives no expires_in
HELPER_TIMEOUT = 120.0  # seconds; helpers may unlock a keyring, never forever


# --- host names and config keys ------------------------------------------------


def _hostname(key: str) -> str:
    """``https://Host:443/v1/`` -> ``host``; Docker Hub aliases -> ``docker.io``."""
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip(), flags=re.I).split("/", 1)[0].lower()
    host = re.sub(r":(443|80)$", "", host)
    return "docker.io" if host in DOCKER_HUB_HOSTS else host


def _server_url(host: str) -> str:
    """The key ``docker login`` uses for ``host`` (config entry and helper ServerURL)."""
    name = _hostname(host)
    return DOCKER_HUB_KEY if name == "docker.io" else name


def _find_key(table: dict, host: str) -> str | None:
    """The key of ``table`` that names ``host`` in any of docker's spellings."""
    if host in table:
        return host
    want = _hostname(host)
    return next((key for key in table if _hostname(key) == want), None)


# --- docker config.json -----------------------------------------------------------


def docker_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    folder = os.environ.get("DOCKER_CONFIG")
    return (Path(folder) if folder else Path.home() / ".docker") / "config.json"


def load_docker_config() -> dict:
    """The parsed docker config; ``{}`` when there is none."""
    path = docker_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AuthError(f"{path}: cannot read the docker config ({exc.strerror})") from None
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
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(config, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _helper_name(config: dict, host: str) -> tuple[str, str] | None:
    """``(helper, setting)`` docker would use for ``host``: credHelpers, then credsStore."""
    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        key = _find_key(helpers, host)
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
    return Credentials(username, password, str(token) if token else None)


def credentials_for(host: str) -> Credentials | None:
    """Credentials for ``host``, looked up as docker does.

    ``credHelpers[host]``, else ``credsStore`` (through ``docker-credential-<name>``),
    else (also when the helper has none) ``auths[host]``. Keys may be written
    ``host``, ``https://host``, ``https://host/v1/``...; Docker Hub's is
    ``https://index.docker.io/v1/``.
    """
    config = load_docker_config()
    path = docker_config_path()
    helper = _helper_name(config, host)
    if helper is not None:
        creds = _helper_get(helper[0], _server_url(host), helper[1], path)
        if creds is not None:
            return creds
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise AuthError(f"{path}: 'auths' is not an object; fix or remove the file")
    key = _find_key(auths, host)
    return None if key is None else _from_entry(auths[key], key, path)


def store_credentials(host: str, username: str, password: str) -> str:
    """Save a login for ``host`` where docker would; returns where it went (no secret).

    With ``credHelpers[host]`` or ``credsStore`` configured, the helper stores
    it (and any plain-text entry for ``host`` is removed from config.json);
    otherwise it goes into ``auths`` of config.json, base64 encoded.
    """
    path = docker_config_path()
    config = load_docker_config()
    server = _server_url(host)
    helper = _helper_name(config, host)
    if helper is not None:
        payload = json.dumps({"ServerURL": server, "Username": username, "Secret": password})
        _run_helper(helper[0], "store", payload, helper[1], path, secret=password)
        if _drop_entries(config, host):
            _write_config(path, config)
        return f"credential helper docker-credential-{helper[0]}"
    auths = config.get("auths")
    if not isinstance(auths, dict):
        auths = config["auths"] = {}
    _drop_entries(config, host)
    auths[server] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode("ascii")}
    _write_config(path, config)
    return f"{path} (base64, not encrypted; configure a docker credential helper to avoid this)"


def erase_credentials(host: str) -> str:
    """Forget the login for ``host`` (helper and config.json); returns what was done."""
    path = docker_config_path()
    config = load_docker_config()
    done = []
    helper = _helper_name(config, host)
    if helper is not None:
        _run_helper(helper[0], "erase", _server_url(host), helper[1], path)
        done.append(f"credential helper docker-credential-{helper[0]}")
    if _drop_entries(config, host):
        _write_config(path, config)
        done.append(str(path))
    if not done:
        return f"no credentials for {host} were stored in {path}"
    return "removed from " + " and ".join(done)


def _drop_entries(config: dict, host: str) -> bool:
    """Remove every ``auths`` entry naming ``host``; whether any was removed."""
    auths = config.get("auths")
    if not isinstance(auths, dict):
        return False
    want = _hostname(host)
    keys = [key for key in auths if _hostname(key) == want]
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
        return Credentials("", "", secret)
    return Credentials(username, secret)


# --- WWW-Authenticate ------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header; ``scheme`` is lower case,
    so are parameter names."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_SPACE = re.compile(r"[ \t]*")
_BARE = re.compile(r'[^\s,"]+')  # unquoted values: more lenient than a token (``realm=https://...``)


def _quoted(header: str, i: int) -> tuple[str, int]:
    """The quoted-string starting at ``header[i] == '"'``; (value, index after it)."""
    out, i = [], i + 1
    while i < len(header) and header[i] != '"':
        if header[i] == "\\" and i + 1 < len(header):
            i += 1
        out.append(header[i])
        i += 1
    return "".join(out), i + 1


def parse_challenges(header: str) -> list[Challenge]:
    """All challenges in a ``WWW-Authenticate`` value (RFC 7235).

    Handles several challenges in one header (``Bearer realm="a",service="b",
    Basic realm="c"``), quoted values containing commas and escapes, unquoted
    values, and a token68 (kept as param ``""``). Unparseable parts are skipped.
    """
    challenges: list[Challenge] = []
    i, n = 0, len(header)
    while i < n:
        if header[i] in " \t,":
            i += 1
            continue
        m = _TOKEN.match(header, i)
        if m is None:
            i += 1
            continue
        name, after = m.group(), _SPACE.match(header, m.end()).end()
        if after < n and header[after] == "=" and challenges:
            value_at = _SPACE.match(header, after + 1).end()
            if value_at < n and header[value_at] == '"':
                value, i = _quoted(header, value_at)
            else:
                v = _BARE.match(header, value_at)
                value, i = (v.group(), v.end()) if v else ("", value_at)
            challenges[-1].params[name.lower()] = value
            continue
        challenges.append(Challenge(name.lower(), {}))
        i = after
        t = _TOKEN68.match(header, i)
        if t is not None:
            end = _SPACE.match(header, t.end()).end()
            if end == n or header[end] == ",":
                challenges[-1].params[""] = t.group()
                i = end
    return challenges


# --- scopes ------------------------------------------------------------------------------

_REPO_PATH = re.compile(r"^/v2/(?P<name>.+)/(?:blobs|manifests|tags|referrers)/")


def scopes_for(method: str, url: httpx.URL | str) -> list[str]:
    """The narrowest token scopes a registry request needs.

    ``GET``/``HEAD`` on ``/v2/<name>/...`` -> ``repository:<name>:pull``; any other
    method -> ``pull,push``; a cross-repository mount (``POST
    .../blobs/uploads/?mount=D&from=OTHER``) adds ``repository:OTHER:pull``;
    ``/v2/_catalog`` -> ``registry:catalog:*``; ``/v2/`` and anything else -> none.
    """
    url = httpx.URL(url)
    if url.path.rstrip("/") == "/v2/_catalog":
        return ["registry:catalog:*"]
    m = _REPO_PATH.match(url.path)
    if m is None:
        return []
    name = m.group("name")
    if method.upper() in ("GET", "HEAD"):
        return [f"repository:{name}:pull"]
    scopes = [f"repository:{name}:pull,push"]
    source = url.params.get("from")
    if url.params.get("mount") and source and source != name:
        scopes.append(f"repository:{source}:pull")
    return scopes


def _merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Merge scopes naming the same resource: ``a:pull`` + ``a:delete`` -> ``a:pull,delete``."""
    merged: dict[str, list[str]] = {}
    for scope in scopes:
        resource, sep, actions = scope.rpartition(":")
        if not sep or not resource:
            continue
        have = merged.setdefault(resource, [])
        have.extend(a for a in actions.split(",") if a and a not in have)
    return tuple(f"{resource}:{','.join(actions)}" for resource, actions in merged.items())


# --- the httpx auth flow ------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class _Token:
    value: str
    expires_at: float  # on RegistryAuth's clock

    def __repr__(self) -> str:
        return f"_Token(***, expires_at={self.expires_at})"


def _replayable(request: httpx.Request) -> bool:
    """Whether httpx can send ``request`` again: its body is in memory."""
    try:
        _ = request.content  # raises unless the body was read into memory
    except httpx.RequestNotRead:
        return False
    return True


def _parse_time(text: object) -> float | None:
    """RFC 3339 (nanoseconds allowed) -> POSIX seconds, or ``None``."""
    if not isinstance(text, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return None
    return stamp.timestamp() if stamp.tzinfo else None


def _basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class RegistryAuth(httpx.Auth):
    """Docker-style registry authentication for one registry host.

    Use as ``httpx.Client(auth=RegistryAuth(host, credentials_for(host)))``.
    Requests to other hosts (redirects to blob storage, upload locations
    elsewhere) are passed through without credentials.

    On a ``401`` it answers the registry's challenge: Basic -> the credentials;
    Bearer -> a token for the request's narrowest scope (:func:`scopes_for`,
    plus any ``scope`` the challenge names) from the token server's ``realm``,
    cached per scope until shortly before it expires. Once a challenge has
    been seen, later requests are authorized up front (token fetched first),
    so they get no ``401`` at all.

    **Streaming bodies**: ``requires_request_body`` is ``False`` so blobs are
    never buffered, and a request whose body is an iterator or file cannot be
    sent twice. The client must therefore make a cheap authenticated request
    for the same repository first (``POST .../blobs/uploads/``), which caches
    the push token, before it streams. If a streamed request still gets a
    ``401``, the response is passed through unretried (its challenge is
    learnt, so a new attempt is authorized up front).

    A ``401``/``403`` that remains after the one retry is passed through for
    the client to report. A token server refusing the credentials raises
    :class:`AuthError`. Network errors talking to the token server propagate
    as httpx exceptions. Thread-safe: parallel uploads may share one instance.
    Synchronous only (``httpx.Client``).

    ``token_client`` is used to talk to the token server (give it the same
    TLS settings as the registry client); by default one is created and
    closed by :meth:`close`. ``clock`` returns POSIX seconds (for tests).
    """

    requires_request_body = False  # never read a blob into memory; see above
    requires_response_body = False  # a challenge is in the headers

    def __init__(
        self,
        host: str,
        credentials: Credentials | None,
        *,
        token_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.host = host
        self.credentials = credentials
        self._clock = clock
        self._token_client = token_client
        self._own_client: httpx.Client | None = None
        self._lock = threading.Lock()  # guards the fields below
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._bearer: Challenge | None = None  # the last bearer challenge, realm resolved
        self._basic = False  # the registry asked for Basic
        self._refresh_token = credentials.identity_token if credentials else None
        self._fetch_lock = threading.Lock()  # one token request at a time: parallel uploads share it

    def __repr__(self) -> str:
        return f"RegistryAuth(host={self.host!r}, credentials={self.credentials!r})"

    def close(self) -> None:
        """Close the token client this object created (not one passed in)."""
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None

    # -- the flow ------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if _hostname(request.url.netloc.decode("ascii")) != _hostname(self.host):
            yield request
            return
        key = tuple(scopes_for(request.method, request.url))
        sent = self._authorize(request, key)
        response = yield request
        if response.status_code != 401:
            return
        challenges = parse_challenges(", ".join(response.headers.get_list("www-authenticate")))
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            bearer = Challenge("bearer", {**bearer.params, "realm": str(request.url.join(bearer.params["realm"]))})
            with self._lock:
                self._bearer = bearer
                if sent and key in self._tokens and sent == f"Bearer {self._tokens[key].value}":
                    del self._tokens[key]  # expired or revoked
        elif basic is not None:
            with self._lock:
                self._basic = True
        else:
            return
        if not _replayable(request):
            return  # a streamed body is gone; a new attempt is authorized up front
        if bearer is not None:
            wanted = _merge_scopes([*key, *bearer.params.get("scope", "").split()])
            request.headers["Authorization"] = "Bearer " + self._fetch_token(bearer, key, wanted)
        else:
            creds = self.credentials
            if creds is None or not creds.has_password:
                raise AuthError(f"{self.host} requires a login; run `modelimage login {self.host}`")
            header = _basic_header(creds.username, creds.password)
            if sent == header:
                return  # wrong credentials: the client reports the 401
            request.headers["Authorization"] = header
        yield request

    async def async_auth_flow(self, request: httpx.Request):  # type: ignore[override]
        raise NotImplementedError("RegistryAuth is synchronous; use it with httpx.Client")
        yield request  # pragma: no cover - makes this an async generator

    def _authorize(self, request: httpx.Request, key: tuple[str, ...]) -> str | None:
        """Set ``Authorization`` from what earlier challenges taught; the header sent."""
        with self._lock:
            token = self._tokens.get(key)
            if token is not None and token.expires_at <= self._clock():
                del self._tokens[key]
                token = None
            bearer, basic = self._bearer, self._basic
        creds = self.credentials
        if token is not None:
            header = f"Bearer {token.value}"
        elif bearer is not None:
            header = "Bearer " + self._fetch_token(bearer, key, key)
        elif basic and creds is not None and creds.has_password:
            header = _basic_header(creds.username, creds.password)
        else:
            return None
        request.headers["Authorization"] = header
        return header

    # -- the token server ----------------------------------------------------

    def _fetch_token(self, challenge: Challenge, key: tuple[str, ...], scopes: tuple[str, ...]) -> str:
        """A fresh token for ``scopes``, cached under ``key`` (the request's scopes)."""
        with self._fetch_lock:
            if scopes == key:  # another thread may just have fetched it
                with self._lock:
                    token = self._tokens.get(key)
                if token is not None and token.expires_at > self._clock():
                    return token.value
            value, expires_at = self._request_token(challenge, scopes)
            with self._lock:
                self._tokens[key] = _Token(value, expires_at)
            return value

    def _client(self) -> httpx.Client:
        if self._token_client is not None:
            return self._token_client
        if self._own_client is None:
            self._own_client = httpx.Client(timeout=30.0, follow_redirects=True)
        return self._own_client

    def _request_token(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm, service = challenge.params["realm"], challenge.params.get("service")
        client, creds = self._client(), self.credentials
        with self._lock:
            refresh = self._refresh_token
        log.debug("token for %s from %s (scope %s)", self.host, realm, " ".join(scopes) or "none")
        response = None
        if refresh:
            form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": CLIENT_ID}
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            response = client.post(realm, data=form)
            if response.status_code in (404, 405):  # no OAuth2 endpoint: fall back to GET, as containerd does
                response = None
        if response is None:
            params = ([("service", service)] if service else []) + [("scope", s) for s in scopes]
            basic = httpx.BasicAuth(creds.username, creds.password) if creds and creds.has_password else None
            response = client.get(realm, params=params, auth=basic) if basic else client.get(realm, params=params)
        return self._read_token(response, scopes, used_credentials=bool(refresh or (creds and creds.has_password)))

    def _read_token(
        self, response: httpx.Response, scopes: tuple[str, ...], *, used_credentials: bool
    ) -> tuple[str, float]:
        scope = f"scope {' '.join(scopes)}" if scopes else "no scope"
        creds = self.credentials
        who = f"the credentials for {creds.describe()}" if used_credentials and creds else "anonymous access"
        if response.status_code == 401:
            fix = "check them with" if used_credentials else "log in with"
            raise AuthError(
                f"{self.host}: the token server refused {who} ({scope}); {fix} `modelimage login {self.host}`"
            )
        if response.status_code == 403:
            raise AuthError(f"{self.host}: the token server denied {who} ({scope})")
        if not response.is_success:
            raise AuthError(
                f"{self.host}: the token server {response.url.host} answered HTTP {response.status_code} ({scope})"
            )
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            body, value = {}, None
        if not isinstance(value, str) or not value:
            raise AuthError(f"{self.host}: the token server {response.url.host} answered without a token ({scope})")
        if isinstance(body.get("refresh_token"), str) and body["refresh_token"]:
            with self._lock:
                self._refresh_token = body["refresh_token"]
        return value, self._expiry(body)

    def _expiry(self, body: dict) -> float:
        """When a token just received stops being used: its lifetime, counted from
        ``issued_at`` when that is plausible on our clock, minus a margin."""
        now = self._clock()
        try:
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (TypeError, ValueError):
            lifetime = DEFAULT_TOKEN_LIFETIME
        if not lifetime > 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        issued = _parse_time(body.get("issued_at"))
        if issued is not None and 0 <= now - issued < lifetime:
            lifetime -= now - issued  # otherwise the clocks disagree: count from now
        return now + lifetime - min(10.0, lifetime / 2)
