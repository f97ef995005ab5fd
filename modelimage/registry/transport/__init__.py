"""How every request reaches a registry (go-containerregistry's
``v1/remote/transport``): ONE factory, :class:`Transport`, for the HTTP
client of a registry host, with

- the TLS trust (:mod:`.tls`),
- auth challenges and bearer tokens (:mod:`.bearer`),
- THE retry policy (:mod:`.retry`),
- the spec's error type, :class:`RegistryError`, with ``temporary`` (:mod:`.error`).

Push, pull (including :mod:`modelimage.registry.fetch`'s bulk reads, which
take :attr:`Transport.ssl_context` and :attr:`Transport.retry`), the
download probe and login all go through it. Never prints.

httpx (and :mod:`.bearer`, :mod:`.sockets`, built on it) is imported by the
functions that send requests, not at the top of the ``registry`` modules:
settling :class:`TransportOptions` and a command that sends no request (a
build into a layout) do not load it (issue 20: start-up).
"""

from __future__ import annotations

import http.client
import logging
import queue
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ...errors import ModelImageError
from ..keychain import Credentials, Keychain
from ..reference import Reference, api_url, resolve_location
from .error import RegistryError, error_from_response, network_message, retry_after, tls_failure
from .retry import RetriesExhausted, RetryPolicy, describe
from .tls import ssl_context

if TYPE_CHECKING:
    import httpx

__all__ = [
    "RegistryError", "RetriesExhausted", "RetryPolicy", "Transport", "TransportOptions",
    "USER_AGENT", "current_options", "error_from_response", "network_message", "retry_after", "ssl_context",
    "tls_failure", "using",
]

log = logging.getLogger(__name__)

USER_AGENT = "modelimage/0.1 (+https://github.com/modelimage)"
DEFAULT_TIMEOUT = 60.0  # seconds to connect, and between bytes of an answer (not for a commit's answer)
DEFAULT_POOL = 8  # idle connections kept per registry


@dataclass(frozen=True)
class TransportOptions:
    """How to reach registries, settled from the command line.

    ``insecure``: hosts whose certificate is not checked and that may
    answer in plain HTTP (``--insecure-registry``, docker's
    ``insecure-registries``); ``tls_verify``: ``False`` makes every host so
    (``--tls-verify=false``, skopeo's); ``cert_dir``: the registry's
    certificates (``--cert-dir``, instead of ``certs.d``); ``authfile``:
    the only auth file (``--authfile``); ``mirrors``: ``(registry host,
    (mirror, ...))`` pairs reads try first (:mod:`modelimage.registry.mirror`,
    from modelimage.toml); ``warn``: where a one-line warning that is not an
    error goes (a mirror that failed; the CLI's stderr; None: the log);
    ``timeout``: seconds; ``retry``: the retry policy.
    """

    insecure: frozenset[str] = frozenset()
    tls_verify: bool = True
    cert_dir: Path | None = None
    authfile: Path | None = None
    mirrors: tuple[tuple[str, tuple[str, ...]], ...] = ()
    warn: Callable[[str], None] | None = field(default=None, compare=False)
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def unverified(self, host: str) -> bool:
        """Whether ``host``'s certificate goes unchecked (and plain HTTP is allowed)."""
        return not self.tls_verify or host in self.insecure


_current: ContextVar[TransportOptions | None] = ContextVar("modelimage_transport_options", default=None)


def current_options() -> TransportOptions:
    """The options :func:`using` set for this context (defaults otherwise)."""
    return _current.get() or TransportOptions()


@contextmanager
def using(options: TransportOptions) -> Iterator[TransportOptions]:
    """Every :class:`Transport` made inside (in this thread or context) without
    options of its own takes ``options``: how the CLI hands ``--tls-verify``,
    ``--cert-dir``, ``--authfile`` and ``--insecure-registry`` to every
    registry request of a command."""
    token = _current.set(options)
    try:
        yield options
    finally:
        _current.reset(token)


class Transport:
    """The HTTP side of one registry host: an :class:`httpx.Client` (:attr:`http`)
    with docker-style auth, the TLS context (:attr:`ssl_context`), the retry
    policy (:attr:`retry`) and the API's base URL (:attr:`base`).

    ``credentials``: as given, else what the keychain holds for the host.
    ``pool``: idle keep-alive connections; the number of connections open at
    once is not capped, so parallel transfers never queue for one (each
    transfer thread uses one at a time). ``namespace``: for a mirror, the
    registry it stands for, sent as ``?ns=HOST`` on every request
    (distribution-spec "Registry Proxying"; containerd sends it, and
    mirrors of several registries, Spegel among them, need it). Close it
    with :meth:`close`.
    """

    def __init__(self, ref: Reference, options: TransportOptions | None = None, *,
                 credentials: Credentials | None = None, pool: int = DEFAULT_POOL, namespace: str | None = None):
        import httpx

        from .bearer import RegistryAuth
        from .sockets import InterruptibleTransport, environment_proxy

        options = options or current_options()
        self.host, self.options, self.retry = ref.host, options, options.retry
        self.ssl_context = ssl_context(ref.host, verify=not options.unverified(ref.host), cert_dir=options.cert_dir)
        creds = credentials if credentials is not None else Keychain(options.authfile).resolve(ref.host,
                                                                                             ref.repository)
        # no timeout waiting for the answer to a body we streamed (see body_timeout); connect stays bounded
        self.timeout = httpx.Timeout(options.timeout, read=options.timeout)
        headers = {"User-Agent": USER_AGENT}
        # token servers get the same trust as the registry
        self.token_client = httpx.Client(timeout=options.timeout, headers=headers, follow_redirects=True,
                                         verify=self.ssl_context)
        self.auth = RegistryAuth(ref.host, creds, token_client=self.token_client)
        self.base = self._scheme(ref) + "://" + ref.api_host
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(1, pool))
        # HTTPS_PROXY/HTTP_PROXY/NO_PROXY as httpx would read them (it does not, given a transport of ours)
        self._connections = InterruptibleTransport(ssl_context=self.ssl_context, limits=limits,
                                                   proxy=environment_proxy(self.base))
        self.http = httpx.Client(
            base_url=self.base, auth=self.auth, timeout=self.timeout, follow_redirects=True, headers=headers,
            transport=self._connections, params={"ns": namespace} if namespace else None,
        )

    def interrupt(self) -> None:
        """Cut every connection of :attr:`http` (from any thread): requests in
        flight fail at once with an httpx transport error (Ctrl-C)."""
        self._connections.interrupt()

    def _scheme(self, ref: Reference) -> str:
        """``https``, unless the host may answer in plain HTTP (loopback, or
        unverified) and its ``/v2/`` answers in plain HTTP (:func:`probe_scheme`)."""
        if not (ref.plain_http_allowed() or self.options.unverified(ref.host)):
            return "https"
        return probe_scheme(ref.api_host, self.ssl_context, min(self.options.timeout, 10.0))

    @property
    def body_timeout(self) -> httpx.Timeout:
        """For requests that carry a blob: no read timeout waiting for the
        answer, since registries can take minutes to commit a big blob
        (containerd's 30 s header timeout killed ~2 GB uploads:
        unikraft-cloud/cli#511); connect and pool stay bounded."""
        import httpx

        return httpx.Timeout(self.timeout.connect, read=None, write=self.timeout.write, pool=self.timeout.pool)

    def url(self, path: str) -> str:
        """The absolute URL of an API path (``/v2/...``)."""
        return api_url(self.base, path)

    def resolve(self, location: str) -> str:
        """An absolute URL for a ``Location`` header (registries may send a path only)."""
        return resolve_location(self.base, location)

    def close(self) -> None:
        self.http.close()
        self.token_client.close()


_schemes: dict[tuple[str, int], str] = {}
_schemes_lock = threading.Lock()


def probe_scheme(host: str, context: ssl.SSLContext, timeout: float) -> str:
    """``https`` or ``http`` for a registry that may speak either (loopback or
    insecure), the way docker and crane decide (go-containerregistry's
    ``pingParallel``): ``GET /v2/`` over TLS and in plain HTTP at once; a TLS
    answer wins; a plain answer counts only when it is a registry's (200 or
    401: a TLS server answers 400 to plain HTTP). A certificate that does not
    verify is an error, never a reason to fall back. Remembered per host and
    TLS context for the life of the process."""
    key = (host, id(context))
    with _schemes_lock:
        if key in _schemes:
            return _schemes[key]
    parts = urlsplit(f"//{host}")
    name, port = parts.hostname or host, parts.port
    answers: queue.Queue[tuple[str, BaseException | None]] = queue.Queue()

    def ask(scheme: str) -> None:
        try:
            conn = (http.client.HTTPSConnection(name, port or 443, timeout=timeout, context=context)
                    if scheme == "https" else http.client.HTTPConnection(name, port or 80, timeout=timeout))
            try:
                conn.request("GET", "/v2/", headers={"User-Agent": USER_AGENT})
                status = conn.getresponse().status
            finally:
                conn.close()
            ok = scheme == "https" or status in (200, 401)
            answers.put((scheme, None if ok else ConnectionError(f"HTTP {status} to plain HTTP")))
        except BaseException as e:  # handed to the caller
            answers.put((scheme, e))

    for scheme in ("https", "http"):
        threading.Thread(target=ask, args=(scheme,), name=f"probe-{scheme}", daemon=True).start()
    failures: dict[str, BaseException | None] = {}
    while len(failures) < 2:
        try:
            scheme, error = answers.get(timeout=timeout + 1)
        except queue.Empty:
            break
        if error is None:
            with _schemes_lock:
                _schemes[key] = scheme
            log.debug("%s answers %s", host, scheme)
            return scheme
        failures[scheme] = error
    tls = failures.get("https")
    if tls is not None and tls_failure(tls):
        raise ModelImageError(network_message(host, tls))
    import httpx

    raise httpx.ConnectError(f"{host} answers neither HTTPS nor HTTP ({describe(tls or failures.get('http'))})")
