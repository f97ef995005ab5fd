"""Registry authentication on the wire, the way docker does it
(go-containerregistry's ``transport/bearer.go`` and ``basic.go``).

:class:`RegistryAuth`, an :class:`httpx.Auth`, answers ``401`` challenges
with Basic credentials or bearer tokens from the registry's token server,
requests the narrowest scope for each request (:func:`scopes_for`) and
caches tokens per scope until shortly before they expire
(:class:`TokenClient`). Where the credentials come from is
:mod:`modelimage.registry.keychain`'s business.

Secrets (passwords, identity tokens, bearer tokens) never appear in reprs,
exception messages or logs.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Generator, Iterable

import httpx

from ...errors import AuthError
from ..keychain import Credentials
from ..reference import registry_host

log = logging.getLogger(__name__)

CLIENT_ID = "modelimage"
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds, when the token server gives no expires_in


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
        self._token_server = TokenClient(host, credentials, token_client=token_client, clock=clock)
        self._lock = threading.Lock()  # guards the fields below
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._bearer: Challenge | None = None  # the last bearer challenge, realm resolved
        self._basic = False  # the registry asked for Basic
        self._fetch_lock = threading.Lock()  # one token request at a time: parallel uploads share it

    def __repr__(self) -> str:
        return f"RegistryAuth(host={self.host!r}, credentials={self.credentials!r})"

    def close(self) -> None:
        """Close the token client this object created (not one passed in)."""
        self._token_server.close()

    # -- the flow ------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if registry_host(request.url.netloc.decode("ascii")) != registry_host(self.host):
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
        creds = self.credentials
        if bearer is None and creds is not None and creds.has_password \
                and sent == _basic_header(creds.username, creds.password):
            raise AuthError(self.rejected())  # the registry refused these very credentials
        if not _replayable(request):
            return  # a streamed body is gone; a new attempt is authorized up front
        if bearer is not None:
            wanted = _merge_scopes([*key, *bearer.params.get("scope", "").split()])
            request.headers["Authorization"] = "Bearer " + self._fetch_token(bearer, key, wanted)
        else:
            creds = self.credentials
            if creds is None or not creds.has_password:
                raise AuthError(f"{self.host} requires a login; run `modelimage login {self.host}`")
            request.headers["Authorization"] = _basic_header(creds.username, creds.password)
        response = yield request
        if bearer is None and response.status_code == 401:
            raise AuthError(self.rejected())

    def rejected(self) -> str:
        """One line for credentials the registry refused (issue 16): who, from
        where, and the fix. Never the secret."""
        creds = self.credentials
        who = creds.describe() if creds else "anonymous access"
        stored = f"the stored credentials for {who} ({creds.source})" if creds and creds.source \
            else f"the credentials for {who}"
        return f"{self.host} rejected {stored}; run `modelimage login {self.host}`"

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
            value, expires_at = self._token_server.request(challenge, scopes)
            with self._lock:
                self._tokens[key] = _Token(value, expires_at)
            return value


class TokenClient:
    """Talks to one registry's token server (the ``realm`` of its Bearer
    challenges): docker's token protocol and the OAuth2 refresh grant.
    Keeps the latest refresh token it was given. Thread-safe.

    ``token_client`` is the HTTP client to use (give it the registry's TLS
    settings); by default one is created and closed by :meth:`close`.
    ``clock`` returns POSIX seconds (for tests)."""

    def __init__(self, host: str, credentials: Credentials | None, *, token_client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.time):
        self.host, self.credentials, self._clock = host, credentials, clock
        self._token_client = token_client
        self._own_client: httpx.Client | None = None
        self._lock = threading.Lock()
        self._refresh_token = credentials.identity_token if credentials else None

    def __repr__(self) -> str:
        return f"TokenClient(host={self.host!r}, credentials={self.credentials!r})"

    def _client(self) -> httpx.Client:
        if self._token_client is not None:
            return self._token_client
        if self._own_client is None:
            self._own_client = httpx.Client(timeout=30.0, follow_redirects=True)
        return self._own_client

    def close(self) -> None:
        """Close the HTTP client this object created (not one passed in)."""
        if self._own_client is not None:
            self._own_client.close()
            self._own_client = None

    def request(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        """A token for ``scopes`` from the challenge's ``realm``: ``(token, expires_at)``,
        ``expires_at`` in POSIX seconds on this object's clock, already less a margin.

        With an identity (refresh) token: the OAuth2 ``POST`` (``grant_type=refresh_token``),
        falling back to ``GET`` when the server has no such endpoint, as containerd does;
        otherwise ``GET`` with Basic credentials (or anonymously).
        Raises :class:`AuthError` when the server refuses; httpx errors for the network."""
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
        return self._read(response, scopes, used_credentials=bool(refresh or (creds and creds.has_password)))

    def _read(self, response: httpx.Response, scopes: tuple[str, ...], *, used_credentials: bool) -> tuple[str, float]:
        scope = f"scope {' '.join(scopes)}" if scopes else "no scope"
        creds = self.credentials
        who = f"the credentials for {creds.describe()}" if used_credentials and creds else "anonymous access"
        if response.status_code == 401:
            if used_credentials and creds and creds.source:
                who = f"the stored credentials for {creds.describe()} ({creds.source})"
            fix = "run" if used_credentials else "log in with"
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
