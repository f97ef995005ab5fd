"""A small bearer-token server for tests, like auth.docker.io or ghcr.io/token.

It implements the Docker registry token protocol
(https://distribution.github.io/distribution/spec/auth/token/ and .../jwt/,
.../oauth/) well enough for the CNCF registry (``auth: token:``) to trust
its tokens and for real clients (skopeo, docker, our own client) to use it:

* ``GET /token?service=S&scope=repository:NAME:pull,push&scope=...`` with
  optional HTTP Basic credentials -> ``{"token", "access_token",
  "expires_in", "issued_at"}`` (plus ``refresh_token`` when
  ``offline_token=true`` was asked by an authenticated user). Wrong
  credentials -> 401; anonymous -> a token for what anonymous may do
  (nothing by default) or 401 when ``require_auth``.
* ``POST /token`` (form) with ``grant_type=password`` (username, password)
  or ``grant_type=refresh_token`` (refresh_token); ``access_type=offline``
  adds a ``refresh_token``. Errors follow RFC 6749 (400 ``invalid_grant``).

Tokens are RS256 JWTs signed with a key made at start; the header carries
``x5c`` (a self-signed certificate for the key), which is what the registry
verifies against ``rootcertbundle`` (:attr:`TokenServer.cert_path`).

Every request is recorded in :attr:`TokenServer.requests` (see
:class:`TokenRequest`) so tests can assert which scopes a client asked for.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fnmatch
import json
import math
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

#: distribution 2.x accepts a token this many seconds after its ``exp`` (and
#: before its ``nbf``): ``registry/auth/token/token.go`` ``Leeway``.
REGISTRY_LEEWAY = 60

#: ``grants(user, type, name, requested_actions) -> granted actions``;
#: ``user`` is None for anonymous requests.
GrantFn = Callable[[str | None, str, str, list[str]], Iterable[str]]


@dataclass(frozen=True)
class Scope:
    """One parsed scope: ``type[(class)]:name:action,action``."""

    type: str
    name: str
    actions: tuple[str, ...]
    resource_class: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        # the name may itself contain ':' (a host:port prefix), the type
        # and the actions may not
        rtype, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not rtype or not name:
            raise ValueError(f"malformed scope {text!r}")
        rclass = ""
        if rtype.endswith(")") and "(" in rtype:
            rtype, _, rclass = rtype[:-1].partition("(")
        return cls(rtype, name, tuple(a for a in actions.split(",") if a), rclass)

    def __str__(self) -> str:
        t = f"{self.type}({self.resource_class})" if self.resource_class else self.type
        return f"{t}:{self.name}:{','.join(self.actions)}"


@dataclass
class TokenRequest:
    """One request the token server saw."""

    method: str
    path: str
    #: the scope strings exactly as asked (space-separated lists split up)
    scopes: list[str]
    #: the authenticated user, or the user name offered with wrong credentials,
    #: or None for anonymous
    user: str | None
    #: whether ``user`` proved who they are (password or refresh token)
    authenticated: bool
    status: int
    time: float
    service: str | None = None
    grant_type: str | None = None
    client_id: str | None = None
    #: what the issued token grants: ``[{"type", "name", "actions"}]``
    granted: list[dict] = field(default_factory=list)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_jwt(token: str) -> tuple[dict, dict]:
    """``(header, claims)`` of a JWT, without verifying it (for tests)."""
    head, claims, _sig = token.split(".")
    return json.loads(_b64url_decode(head)), json.loads(_b64url_decode(claims))


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenServer:
    """A token server on ``127.0.0.1`` in a background thread.

    ``users``: ``{name: password}``. ``grants``: which actions a user gets,
    either a function ``(user, type, name, requested) -> actions`` (user None
    = anonymous) or a dict ``{user: {name_glob: actions}}`` (user key None =
    anonymous, ``"*"`` in actions = everything asked); the granted actions are
    always the intersection with what was asked. Default: known users get all
    they ask for, anonymous gets nothing.

    ``expires_in``: token lifetime in seconds (mutable, or use
    :meth:`configured`). ``clock_offset``: seconds added to the clock for the
    JWT time claims (``iat``/``nbf``/``exp``); ``-REGISTRY_LEEWAY`` makes a
    token really stop working after ``expires_in`` seconds at a distribution
    registry, which otherwise accepts it for another 60 s. The JSON answer's
    ``issued_at``/``expires_in`` always use the true clock.
    """

    def __init__(self, users: Mapping[str, str] | None = None, *,
                 grants: GrantFn | Mapping[str | None, Mapping[str, Iterable[str]]] | None = None,
                 service: str = "modelimage-test-registry", issuer: str = "modelimage-test-token-server",
                 expires_in: int = 300, require_auth: bool = False, clock_offset: float = 0,
                 workdir: Path | None = None) -> None:
        self.users = dict(users if users is not None else {"alice": "s3cret-pa55word"})
        self.grants = grants
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.require_auth = require_auth
        self.clock_offset = clock_offset
        self.requests: list[TokenRequest] = []
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user
        self._lock = threading.Lock()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tokenserver-"))

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = self.workdir / "token-signer.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tokenserver", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self.requests.clear()

    def log(self) -> list[TokenRequest]:
        """A snapshot of the recorded requests."""
        with self._lock:
            return list(self.requests)

    def scopes_asked(self, name: str | None = None) -> list[str]:
        """Every scope string asked so far (only those for repository ``name``)."""
        out = []
        for r in self.log():
            for s in r.scopes:
                if name is None or _scope_name(s) == name:
                    out.append(s)
        return out

    @contextlib.contextmanager
    def configured(self, **settings) -> Iterator[TokenServer]:
        """Temporarily change settings (``expires_in``, ``require_auth``,
        ``grants``, ``users``, ``clock_offset``), e.g. on a session fixture."""
        old = {k: getattr(self, k) for k in settings}
        for k, v in settings.items():
            if k not in ("expires_in", "require_auth", "grants", "users", "clock_offset"):
                raise TypeError(f"cannot configure {k}")
            setattr(self, k, v)
        try:
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)

    def issue(self, user: str | None, scopes: Iterable[Scope | str], *, expires_in: int | None = None) -> str:
        """Sign a token for ``user`` with what the grant rules give them."""
        return self._issue(user, [s if isinstance(s, Scope) else Scope.parse(s) for s in scopes],
                           self.expires_in if expires_in is None else expires_in, time.time())[0]

    # -- internals --------------------------------------------------------

    def _granted(self, user: str | None, scope: Scope) -> list[str]:
        asked = list(scope.actions)
        rules = self.grants
        if rules is None:
            allowed: Iterable[str] = asked if user is not None and user in self.users else ()
        elif callable(rules):
            allowed = rules(user, scope.type, scope.name, asked)
        else:
            allowed = []
            for pattern, actions in (rules.get(user) or {}).items():
                if fnmatch.fnmatchcase(scope.name, pattern):
                    allowed = [*allowed, *actions]
        allowed = set(allowed)
        return [a for a in asked if a in allowed or "*" in allowed]

    def _issue(self, user: str | None, scopes: list[Scope], expires_in: int, now: float) -> tuple[str, list[dict]]:
        access: list[dict] = []
        for scope in scopes:
            actions = self._granted(user, scope)
            if not actions:
                continue
            for entry in access:  # merge repeated resources
                if entry["type"] == scope.type and entry["name"] == scope.name:
                    entry["actions"] += [a for a in actions if a not in entry["actions"]]
                    break
            else:
                access.append({"type": scope.type, "name": scope.name, "actions": actions})
        t = now + self.clock_offset
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,  # distribution 2.x wants a string, not a list
            "exp": math.ceil(t + expires_in),
            "nbf": math.floor(t),
            "iat": math.floor(t),
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": self._x5c}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig), access

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)


def _scope_name(scope: str) -> str | None:
    try:
        return Scope.parse(scope).name
    except ValueError:
        return None


def _split_scopes(values: list[str]) -> list[str]:
    return [s for v in values for s in v.split(" ") if s]


def _make_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - quiet
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _basic(self) -> tuple[str, str] | None:
            auth = self.headers.get("Authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "basic":
                return None
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return ("", "\0invalid")
            return user, password

        def _answer(self, rec: TokenRequest, user: str | None, scopes: list[str], refresh: bool,
                    oauth: bool) -> None:
            try:
                parsed = [Scope.parse(s) for s in scopes]
            except ValueError as e:
                rec.status = 400
                self._send(400, {"error": "invalid_scope" if oauth else "invalid_request",
                                 "error_description": str(e)})
                return
            now = time.time()
            expires_in = server.expires_in
            token, access = server._issue(user, parsed, expires_in, now)
            rec.granted = access
            body = {"access_token": token, "expires_in": expires_in, "issued_at": _rfc3339(now)}
            if not oauth:
                body = {"token": token, **body}
            else:
                body["scope"] = " ".join(scopes)
            if refresh and user is not None:
                rt = secrets.token_urlsafe(24)
                with server._lock:
                    server.refresh_tokens[rt] = user
                body["refresh_token"] = rt
            rec.status = 200
            self._send(200, body)

        def do_GET(self):
            url = urlsplit(self.path)
            q = parse_qs(url.query)
            scopes = _split_scopes(q.get("scope", []))
            rec = TokenRequest("GET", url.path, scopes, None, False, 0, time.time(),
                               service=(q.get("service") or [None])[0],
                               client_id=(q.get("client_id") or [None])[0])
            try:
                if url.path != "/token":
                    rec.status = 404
                    self._send(404, {"error": "not found"})
                    return
                if rec.service is not None and rec.service != server.service:
                    rec.status = 400
                    self._send(400, {"error": "invalid_request",
                                     "error_description": f"unknown service {rec.service!r}"})
                    return
                creds = self._basic()
                challenge = {"WWW-Authenticate": f'Basic realm="{server.realm}"'}
                if creds is not None:
                    rec.user = creds[0]
                    if creds[0] not in server.users or server.users[creds[0]] != creds[1]:
                        rec.status = 401
                        self._send(401, {"details": "incorrect username or password"}, challenge)
                        return
                    rec.authenticated = True
                elif server.require_auth:
                    rec.status = 401
                    self._send(401, {"details": "authentication required"}, challenge)
                    return
                offline = (q.get("offline_token") or [""])[0].lower() == "true"
                self._answer(rec, rec.user, scopes, offline, oauth=False)
            finally:
                server._record(rec)

        def do_POST(self):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(errors="replace")) if length else {}

            def one(k: str) -> str | None:
                return (form.get(k) or [None])[0]

            scopes = _split_scopes(form.get("scope", []))
            rec = TokenRequest("POST", url.path, scopes, None, False, 0, time.time(), service=one("service"),
                               grant_type=one("grant_type"), client_id=one("client_id"))
            try:
                if url.path != "/token":
                    rec.status = 404
                    self._send(404, {"error": "not found"})
                    return

                def fail(error: str, desc: str) -> None:
                    rec.status = 400
                    self._send(400, {"error": error, "error_description": desc})

                if rec.service is not None and rec.service != server.service:
                    return fail("invalid_request", f"unknown service {rec.service!r}")
                if not rec.client_id:
                    return fail("invalid_request", "client_id is required")
                if rec.grant_type == "password":
                    user, password = one("username"), one("password")
                    rec.user = user
                    if user is None or password is None:
                        return fail("invalid_request", "username and password are required")
                    if user not in server.users or server.users[user] != password:
                        return fail("invalid_grant", "incorrect username or password")
                elif rec.grant_type == "refresh_token":
                    rt = one("refresh_token")
                    with server._lock:
                        user = server.refresh_tokens.get(rt or "")
                    if user is None:
                        return fail("invalid_grant", "unknown refresh token")
                    rec.user = user
                else:
                    return fail("unsupported_grant_type", f"grant_type {rec.grant_type!r}")
                rec.authenticated = True
                self._answer(rec, rec.user, scopes, one("access_type") == "offline", oauth=True)
            finally:
                server._record(rec)

    return Handler
