"""The Hub's HTTP client, its token, and the two Hub API requests a build
makes (a revision resolved to a commit, a commit's tree listing), without
importing huggingface_hub's HTTP stack on the way.

huggingface_hub's ``errors`` module, which its ``build_hf_headers`` and
``get_session`` import, brings its second HTTP stack (httpx2, httpcore2,
``importlib.metadata``) and a TLS context of its own: ~0.1-0.2 s of every
``build hf://`` before its first request, for two small JSON answers. So
the answers a build needs come through :func:`client` (the one this
project streams the files with: the registry transport's TLS trust and
proxy rule), sent with the token huggingface_hub would send
(:func:`token`), and whatever is not a plain ``200`` with JSON (a missing
repository or revision, a gated one, 429, 5xx, a page that is not JSON) is
asked again through huggingface_hub itself (``get_session``,
``hf_raise_for_status``, ``paginate``): its retries, its error classes and
their messages, as before. A Hub that cannot be reached raises httpx's
error (the caller words it): at once when nothing answers, after the
registry transport's retry policy when an answer breaks off.
"""

from __future__ import annotations

import builtins
import os
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import SourceError

TIMEOUT = 60.0  # seconds to connect, and between bytes of an answer
POOL = 8  # idle keep-alive connections per endpoint (3 layers stream at once, plus header reads)

_REPO_RE = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")

_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def parse_url(url: str) -> tuple[str, str | None]:
    """``("org/repo", "rev" or None)`` for ``hf://org/repo[@rev]``; raises
    :class:`SourceError` for anything else."""
    if not url.startswith("hf://"):
        raise SourceError(f"{url}: not an hf:// URL")
    repo, _, revision = url[len("hf://"):].rstrip("/").partition("@")
    if not _REPO_RE.match(repo) or "--" in repo or ".." in repo:
        raise SourceError(f"{url}: expected hf://ORG/REPO or hf://ORG/REPO@REVISION")
    return repo, revision or None


def client(endpoint: str) -> httpx.Client:
    """One HTTP client per Hub endpoint, made the way the registry transport
    makes its own: the same TLS trust (system store, ``SSL_CERT_FILE``,
    ``certs.d`` of the endpoint's host, ``--tls-verify=false``), the same
    proxy rule (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``/``NO_PROXY``).
    Redirects are followed; httpx drops ``Authorization`` on any redirect
    to another origin. Thread-safe, shared by every stream."""
    with _clients_lock:
        c = _clients.get(endpoint)
        if c is None:
            from ..registry.transport import current_options

            c = _clients[endpoint] = _make_client(endpoint, current_options())
        return c


def _make_client(endpoint: str, options: Any) -> httpx.Client:
    """A client for ``endpoint`` with the registry transport's ``options``."""
    from ..registry.transport import USER_AGENT
    from ..registry.transport.sockets import InterruptibleTransport, environment_proxy
    from ..registry.transport.tls import ssl_context

    host = httpx.URL(endpoint).netloc.decode("ascii")
    ctx = ssl_context(host, verify=not options.unverified(host), cert_dir=options.cert_dir)
    transport = InterruptibleTransport(ssl_context=ctx, limits=httpx.Limits(max_connections=None,
                                                                            max_keepalive_connections=POOL),
                                       proxy=environment_proxy(endpoint))
    return httpx.Client(transport=transport, follow_redirects=True, timeout=httpx.Timeout(options.timeout or TIMEOUT),
                        headers={"User-Agent": USER_AGENT})


def token() -> str | None:
    """The token huggingface_hub sends to the Hub (its ``build_hf_headers()``
    without arguments), or None: none with ``HF_HUB_DISABLE_IMPLICIT_TOKEN``;
    else ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``), trimmed of spaces and
    line breaks. Whenever huggingface_hub's own rules could say more (an
    OIDC exchange, ``HF_OIDC_RESOURCE``; the token file of ``hf auth
    login``, ``HF_TOKEN_PATH``, whose OAuth tokens it refreshes; a Colab
    secret) it is asked itself. Never printed or logged."""
    from huggingface_hub import constants

    if constants.HF_HUB_DISABLE_IMPLICIT_TOKEN:
        return None
    if not os.environ.get("HF_OIDC_RESOURCE"):
        env = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        env = env.replace("\r", "").replace("\n", "").strip() if env else None
        if env:
            return env
        if not os.path.exists(constants.HF_TOKEN_PATH) and not hasattr(builtins, "get_ipython"):  # not in Colab
            return None
    from huggingface_hub.utils import build_hf_headers

    value = {k.lower(): v for k, v in build_hf_headers().items()}.get("authorization")
    return value.removeprefix("Bearer ") if value else None


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer TOKEN"}`` with huggingface_hub's token
    (:func:`token`), or nothing."""
    t = token()
    return {"Authorization": f"Bearer {t}"} if t else {}


TREE_PARAMS = {"recursive": True, "expand": False}  # what HfApi.list_repo_tree(recursive=True) asks


def info_path(repo: str, revision: str | None) -> str:
    """``/api/models/REPO[/revision/REV]``: the request ``HfApi.model_info`` makes."""
    return f"/api/models/{repo}" + (f"/revision/{quote(revision, safe='')}" if revision else "")


def tree_path(repo: str, commit: str) -> str:
    """``/api/models/REPO/tree/COMMIT``: a commit's tree listing (with :data:`TREE_PARAMS`)."""
    return f"/api/models/{repo}/tree/{quote(commit, safe='')}"


def get_json(endpoint: str, path: str) -> Any:
    """The JSON answer to ``GET ENDPOINT/PATH`` of the Hub's API (the
    request ``HfApi.model_info`` makes for ``/api/models/REPO``). Raises
    huggingface_hub's errors for an answer that is not ``200`` with JSON,
    httpx's when the Hub cannot be reached."""
    early = _early_answer(endpoint, path, None)
    if early is not None:
        return early
    url = endpoint.rstrip("/") + path
    r = _get(endpoint, url, None)
    if r is not None:
        try:
            return r.json()
        except ValueError:
            pass
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    r2 = get_session().get(url, headers=build_hf_headers())
    hf_raise_for_status(r2)
    return r2.json()


def get_pages(endpoint: str, path: str, params: dict[str, Any]) -> Iterator[Any]:
    """The items of a listing of the Hub's API, every page (``Link: <...>;
    rel="next"``, as huggingface_hub's ``paginate`` follows them). Raises
    as :func:`get_json` does."""
    early = _early_answer(endpoint, path, params)
    if early is not None:
        yield from early
        return
    items: list[Any] = []
    url: str | None = endpoint.rstrip("/") + path
    query: dict[str, Any] | None = params
    while url:
        r = _get(endpoint, url, query)
        try:
            page = r.json() if r is not None else None
        except ValueError:
            page = None
        if not isinstance(page, list):
            from huggingface_hub.utils import build_hf_headers, paginate

            yield from paginate(endpoint.rstrip("/") + path, params=params, headers=build_hf_headers())
            return
        items += page
        url, query = r.links.get("next", {}).get("url"), None  # type: ignore[union-attr]
    yield from items


def _get(endpoint: str, url: str, params: dict[str, Any] | None) -> httpx.Response | None:
    """``GET url`` through :func:`client` with the token; the answer when it
    is ``200``, else None (huggingface_hub asks again and words it).
    A connection refused (or a name not found) is raised at once; other
    transport errors are retried by the registry transport's policy, then
    raised."""
    from ..registry.transport import current_options

    policy = current_options().retry
    http, headers = client(endpoint), auth_headers()
    attempt = 0
    while True:
        try:
            r = http.get(url, params=params, headers=headers)
            break
        except httpx.TransportError as e:
            attempt += 1
            if isinstance(e, httpx.ConnectError) or not policy.temporary(e) or attempt > policy.retries:
                raise  # nothing listening, or no such host: said at once, as huggingface_hub did
            policy.wait(attempt, e)
    return r if r.status_code == 200 else None


# ---------------------------------------------------------------- asked early, while the program loads


class _Early:
    """The answers to one repository's two API requests, asked by a thread
    while the program still loads: ``answers`` maps ``(path, params)`` to
    the JSON (the listing's pages joined), ``done`` is set when the thread
    has finished, whatever happened."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.answers: dict[tuple[str, str], Any] = {}
        self.done = threading.Event()


_early: list[_Early] = []


def ask_early_url(url: str) -> None:
    """:func:`ask_early` for ``hf://ORG/REPO[@REV]`` at huggingface_hub's
    endpoint (``HF_ENDPOINT``); nothing for another URL, or with
    ``HF_HUB_OFFLINE=1``."""
    from huggingface_hub import constants

    try:
        repo, revision = parse_url(url)
    except SourceError:
        return
    if not constants.HF_HUB_OFFLINE:
        ask_early(constants.ENDPOINT.rstrip("/"), repo, revision)


def ask_early(endpoint: str, repo: str, revision: str | None) -> None:
    """Start resolving ``revision`` of ``repo`` to a commit and listing that
    commit's tree in a daemon thread, so that the answers are there when
    the build asks for them (:func:`get_json`, :func:`get_pages` take them,
    once each): the program's own start-up (~0.3 s of imports) then hides
    the Hub's round trips and the TLS trust store's loading.

    The thread makes one attempt at each request with the registry
    transport's default options and the token of :func:`token` (read here,
    in the caller's thread, which also imports every module the thread
    uses: two threads importing at once could deadlock on import locks);
    only a ``200`` with JSON is kept. Anything else
    (an error answer, a refused connection, a TLS failure a later
    ``--tls-verify=false`` would allow) is simply not kept: the build then
    asks as it always does, with its own options, and says what fails in
    its own words. Nothing is printed by the thread."""
    from ..registry.transport import TransportOptions
    from ..registry.transport.sockets import InterruptibleTransport  # noqa: F401  (imported here, not in the thread)

    headers, options = auth_headers(), TransportOptions()
    early = _Early(endpoint)
    _early.append(early)

    def run() -> None:
        try:
            http = _make_client(endpoint, options)
            path = info_path(repo, revision)
            info = _once(http, endpoint.rstrip("/") + path, None, headers)
            early.answers[(path, "")] = info
            sha = info.get("sha") if isinstance(info, dict) else None
            if isinstance(sha, str) and sha:
                path, items = tree_path(repo, sha), []
                url: str | None = endpoint.rstrip("/") + path
                query: dict[str, Any] | None = TREE_PARAMS
                while url:
                    r = http.get(url, params=query, headers=headers)
                    page = r.json() if r.status_code == 200 else None
                    if not isinstance(page, list):
                        return
                    items += page
                    url, query = r.links.get("next", {}).get("url"), None
                early.answers[(path, repr(TREE_PARAMS))] = items
        except Exception:  # noqa: BLE001  (not kept: the build asks again and words it)
            pass
        finally:
            early.done.set()

    threading.Thread(target=run, name="hub-early", daemon=True).start()


def _once(http: httpx.Client, url: str, params: dict[str, Any] | None, headers: dict[str, str]) -> Any:
    r = http.get(url, params=params, headers=headers)
    return r.json() if r.status_code == 200 else None


def _early_answer(endpoint: str, path: str, params: dict[str, Any] | None) -> Any:
    """The JSON :func:`ask_early` got for ``GET endpoint/path?params`` (once:
    it is forgotten), waiting for its thread; None when there is none."""
    key = (path, repr(params) if params else "")
    for early in _early:
        if early.endpoint == endpoint:
            early.done.wait()
            answer = early.answers.pop(key, None)
            if answer is not None:
                return answer
    return None
