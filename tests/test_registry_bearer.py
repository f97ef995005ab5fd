"""modelimage.registry.transport.bearer: challenges, scopes, the httpx auth flow.

The protocol tests run against a tiny fake registry + token server behind
``httpx.MockTransport``; tests against the real registry live elsewhere.
"""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import pytest

from modelimage.errors import AuthError, ModelImageError
from modelimage.registry.keychain import Credentials
from modelimage.registry.transport.bearer import Challenge, RegistryAuth, parse_challenges, scopes_for

PASSWORD = "pw-Zq8!x"
IDENTITY_TOKEN = "idtok-77aa"
SECRETS = (PASSWORD, IDENTITY_TOKEN, base64.b64encode(f"alice:{PASSWORD}".encode()).decode())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- challenges and scopes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header, expected",
    [
        (
            'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.example/token",
                        "service": "registry.example",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ('BASIC Realm="x"', [Challenge("basic", {"realm": "x"})]),
        (
            'Bearer realm="https://a/t", service="s", Basic realm="r"',
            [Challenge("bearer", {"realm": "https://a/t", "service": "s"}), Challenge("basic", {"realm": "r"})],
        ),
        (
            'Bearer realm="https://a/t",error="insufficient_scope",scope="repository:x:pull repository:y:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://a/t",
                        "error": "insufficient_scope",
                        "scope": "repository:x:pull repository:y:pull",
                    },
                )
            ],
        ),
        ("Bearer realm=https://a/t , service=s", [Challenge("bearer", {"realm": "https://a/t", "service": "s"})]),
        (r'Basic realm="say \"hi\", then go"', [Challenge("basic", {"realm": 'say "hi", then go'})]),
        ("Negotiate YWJj==, Basic", [Challenge("negotiate", {"": "YWJj=="}), Challenge("basic", {})]),
        ("", []),
    ],
)
def test_parse_challenges(header, expected):
    assert parse_challenges(header) == expected


@pytest.mark.parametrize(
    "method, url, expected",
    [
        ("GET", "https://r/v2/", []),
        ("GET", "https://r/v2/_catalog?n=10", ["registry:catalog:*"]),
        ("GET", "https://r/v2/model/manifests/latest", ["repository:model:pull"]),
        ("HEAD", "https://r/v2/org/team/model/blobs/sha256:ab", ["repository:org/team/model:pull"]),
        ("GET", "https://r/v2/org/model/tags/list", ["repository:org/model:pull"]),
        ("PUT", "https://r/v2/org/model/manifests/v1", ["repository:org/model:pull,push"]),
        ("POST", "https://r/v2/org/model/blobs/uploads/", ["repository:org/model:pull,push"]),
        ("PATCH", "https://r/v2/org/model/blobs/uploads/123-abc", ["repository:org/model:pull,push"]),
        ("DELETE", "https://r/v2/org/model/manifests/sha256:ab", ["repository:org/model:pull,push"]),
        (
            "POST",
            "https://r/v2/org/model/blobs/uploads/?mount=sha256:ab&from=other/base",
            ["repository:org/model:pull,push", "repository:other/base:pull"],
        ),
        ("POST", "https://r/v2/a/blobs/uploads/?mount=sha256:ab&from=a", ["repository:a:pull,push"]),
        ("GET", "https://r/v2/a/blobs/b/manifests/latest", ["repository:a/blobs/b:pull"]),
    ],
)
def test_scopes_for(method, url, expected):
    assert scopes_for(method, url) == expected


# --- the auth flow against a fake registry + token server ------------------------------

REGISTRY = "registry.test"
REALM = "https://auth.test/token"
SERVICE = "fake-registry"


@dataclass
class FakeRegistry:
    """A registry at https://registry.test and its token server at https://auth.test/token."""

    scheme: str = "bearer"  # or "basic"
    users: dict = field(default_factory=lambda: {"alice": PASSWORD})
    refresh_tokens: set = field(default_factory=lambda: {IDENTITY_TOKEN})
    anonymous: bool = True
    expires_in: int | None = 300
    issued_at: str | None = "2020-01-01T00:00:00.123456789Z"  # far in the past: a skewed clock
    challenge_scope: str | None = None  # add scope="..." to challenges, as distribution does
    token_requests: list = field(default_factory=list)  # (method, scopes, who)
    registry_requests: list = field(default_factory=list)  # (method, path, authorization)
    valid_tokens: set = field(default_factory=set)
    reject_tokens: bool = False  # the registry refuses every token (revoked, wrong scope...)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if request.url.host == "auth.test":
                return self.token(request)
            if request.url.host == REGISTRY:
                return self.registry(request)
            return httpx.Response(200, json={"elsewhere": request.headers.get("authorization")})

    def token(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            form = dict(httpx.QueryParams(request.content.decode()))
            scopes = form.get("scope", "").split()
            who = ("refresh", form)
            ok = form.get("grant_type") == "refresh_token" and form.get("refresh_token") in self.refresh_tokens
        else:
            scopes = request.url.params.get_list("scope")
            header = request.headers.get("authorization")
            if header is None:
                who, ok = ("anonymous", dict(request.url.params)), self.anonymous
            else:
                user, _, password = base64.b64decode(header.split()[1]).decode().partition(":")
                who, ok = (user, dict(request.url.params)), self.users.get(user) == password
        self.token_requests.append((request.method, scopes, who))
        if not ok:
            return httpx.Response(401, json={"details": "incorrect username or password"})
        token = f"tok-{len(self.token_requests)}"
        self.valid_tokens.add(token)
        body = {"token": token, "issued_at": self.issued_at}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def registry(self, request: httpx.Request) -> httpx.Response:
        header = request.headers.get("authorization", "")
        self.registry_requests.append((request.method, request.url.path, header))
        if self.scheme == "basic":
            ok = header == "Basic " + b64(f"alice:{PASSWORD}")
            challenge = 'Basic realm="fake"'
        else:
            ok = header.startswith("Bearer ") and header.split()[1] in self.valid_tokens and not self.reject_tokens
            challenge = f'Bearer realm="{REALM}",service="{SERVICE}"'
            if self.challenge_scope:
                challenge += f',scope="{self.challenge_scope}"'
        if not ok:
            return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json={"errors": []})
        return httpx.Response(200 if request.method in ("GET", "HEAD") else 202, json={})

    def scopes_requested(self) -> list[list[str]]:
        return [scopes for _, scopes, _ in self.token_requests]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


class Transport(httpx.BaseTransport):
    """Like ``httpx.MockTransport``, but consumes the request body by iterating
    its stream, as real transports do (MockTransport reads it into memory,
    which would make every body replayable)."""

    def __init__(self, handler):
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in request.stream:
            pass
        return self.handler(request)


def make_client(fake: FakeRegistry, credentials: Credentials | None, clock=None) -> tuple[httpx.Client, RegistryAuth]:
    transport = Transport(fake)
    auth = RegistryAuth(
        REGISTRY, credentials, token_client=httpx.Client(transport=transport), clock=clock or Clock()
    )
    return httpx.Client(transport=transport, base_url=f"https://{REGISTRY}", auth=auth), auth


ALICE = Credentials("alice", PASSWORD)


def test_basic_flow(fake):
    fake.scheme = "basic"
    client, _ = make_client(fake, ALICE)
    assert client.get("/v2/").status_code == 200
    assert [h for _, _, h in fake.registry_requests] == ["", "Basic " + b64(f"alice:{PASSWORD}")]
    assert client.get("/v2/a/manifests/latest").status_code == 200  # sent with Basic up front
    assert len(fake.registry_requests) == 3
    assert fake.token_requests == []


def test_basic_without_credentials(fake):
    fake.scheme = "basic"
    client, _ = make_client(fake, None)
    with pytest.raises(AuthError, match=f"modelimage login {REGISTRY}"):
        client.get("/v2/")


def test_basic_wrong_password_says_who_was_rejected_and_the_fix(fake):
    """Issue 16 item 2: the registry refuses the stored Basic credentials:
    one line naming the host, the user, where they are stored, and the fix
    (no bare ``401 UNAUTHORIZED``)."""
    fake.scheme = "basic"
    client, _ = make_client(fake, Credentials("alice", "wrong", source="/home/a/.docker/config.json"))
    with pytest.raises(AuthError) as info:
        client.get("/v2/")
    assert str(info.value) == (f"{REGISTRY} rejected the stored credentials for alice (/home/a/.docker/config.json);"
                               f" run `modelimage login {REGISTRY}`")
    assert len(fake.registry_requests) == 2 and "wrong" not in str(info.value)
    with pytest.raises(AuthError, match="rejected the stored credentials"):  # now sent up front: same answer
        client.get("/v2/m/manifests/latest")


def test_bearer_flow_with_narrowest_scopes(fake):
    client, _ = make_client(fake, ALICE)
    assert client.get("/v2/").status_code == 200
    assert client.get("/v2/org/team/model/manifests/latest").status_code == 200
    mount = {"mount": "sha256:ab", "from": "base/img"}
    assert client.post("/v2/org/team/model/blobs/uploads/", params=mount).status_code == 202
    assert client.get("/v2/_catalog").status_code == 200
    assert fake.scopes_requested() == [
        [],
        ["repository:org/team/model:pull"],
        ["repository:org/team/model:pull,push", "repository:base/img:pull"],
        ["registry:catalog:*"],
    ]
    method, _, (who, params) = fake.token_requests[1]
    assert (method, who, params["service"]) == ("GET", "alice", SERVICE)
    # only the first request met a 401: the realm was known from then on
    assert [h == "" for _, _, h in fake.registry_requests] == [True, False, False, False, False]


def test_anonymous_bearer(fake):
    client, _ = make_client(fake, None)
    assert client.get("/v2/library/model/manifests/1").status_code == 200
    assert [who for _, _, (who, _) in fake.token_requests] == ["anonymous"]


def test_identity_token_uses_oauth2_post(fake):
    client, _ = make_client(fake, Credentials("", "", IDENTITY_TOKEN))
    assert client.put("/v2/m/manifests/v1", content=b"{}").status_code == 202
    [(method, scopes, (who, form))] = fake.token_requests
    assert (method, who, scopes) == ("POST", "refresh", ["repository:m:pull,push"])
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY_TOKEN,
        "service": SERVICE,
        "scope": "repository:m:pull,push",
        "client_id": "modelimage",
    }


def test_token_reused(fake):
    client, _ = make_client(fake, ALICE)
    for _ in range(5):
        assert client.get("/v2/m/blobs/sha256:ab").status_code == 200
    assert client.head("/v2/m/manifests/latest").status_code == 200
    assert fake.scopes_requested() == [["repository:m:pull"]]
    assert len(fake.registry_requests) == 7  # one 401, then six with the token


def test_token_reused_across_threads(fake):
    client, _ = make_client(fake, ALICE)
    client.post("/v2/m/blobs/uploads/")  # learn the realm, cache the push token
    statuses = []

    def push():
        statuses.append(client.patch("/v2/m/blobs/uploads/u1", content=b"x").status_code)
        statuses.append(client.get("/v2/m/blobs/sha256:ab").status_code)

    threads = [threading.Thread(target=push) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(202) == 8 and statuses.count(200) == 8
    assert fake.scopes_requested() == [["repository:m:pull,push"], ["repository:m:pull"]]


def test_expired_token_is_refetched(fake):
    clock = Clock()
    fake.expires_in = 120
    client, _ = make_client(fake, ALICE, clock)
    client.get("/v2/m/manifests/1")
    clock.now += 100  # inside the lifetime and the safety margin
    client.get("/v2/m/manifests/1")
    assert len(fake.token_requests) == 1
    clock.now += 15  # inside the lifetime, but not the safety margin
    client.get("/v2/m/manifests/1")
    assert len(fake.token_requests) == 2
    clock.now += 50
    client.get("/v2/m/manifests/1")
    assert len(fake.token_requests) == 2
    assert len(fake.registry_requests) == 5  # no 401 for the refetch: fetched up front


def test_lifetime_counts_from_issued_at(fake):
    clock = Clock()
    fake.expires_in = 120
    fake.issued_at = datetime.fromtimestamp(clock.now - 90, timezone.utc).isoformat().replace("+00:00", "Z")
    client, _ = make_client(fake, ALICE, clock)
    client.get("/v2/m/manifests/1")
    clock.now += 25  # 115 s after issued_at: past the margin
    client.get("/v2/m/manifests/1")
    assert len(fake.token_requests) == 2


def test_default_lifetime_without_expires_in(fake):
    clock = Clock()
    fake.expires_in = None
    client, _ = make_client(fake, ALICE, clock)
    client.get("/v2/m/manifests/1")
    clock.now += 30
    client.get("/v2/m/manifests/1")
    assert len(fake.token_requests) == 1
    clock.now += 30
    client.get("/v2/m/manifests/1")
    assert len(fake.token_requests) == 2


def test_revoked_token_is_refetched_once(fake):
    client, _ = make_client(fake, ALICE)
    client.get("/v2/m/manifests/1")
    fake.valid_tokens.clear()
    assert client.get("/v2/m/manifests/1").status_code == 200
    assert len(fake.token_requests) == 2


def test_still_401_after_refetch_is_let_through(fake):
    client, _ = make_client(fake, ALICE)
    client.get("/v2/m/manifests/1")
    fake.reject_tokens = True
    assert client.get("/v2/m/manifests/1").status_code == 401
    assert len(fake.token_requests) == 2  # the cached one failed, one refetch, then give up


def test_challenge_scope_is_added(fake):
    fake.challenge_scope = "repository:m:delete"
    client, _ = make_client(fake, ALICE)
    assert client.delete("/v2/m/manifests/sha256:ab").status_code == 202
    assert fake.scopes_requested() == [["repository:m:pull,push,delete"]]


def test_refused_credentials_raise_without_the_password(fake):
    client, auth = make_client(fake, Credentials("alice", "wrong-" + PASSWORD))
    with pytest.raises(AuthError) as err:
        client.get("/v2/org/m/manifests/1")
    message = str(err.value)
    assert message.startswith(f"{REGISTRY}: the token server refused the credentials for alice")
    assert "repository:org/m:pull" in message
    assert PASSWORD not in message and "\n" not in message
    assert isinstance(err.value, ModelImageError)


def test_anonymous_refused_says_log_in(fake):
    fake.anonymous = False
    client, _ = make_client(fake, None)
    with pytest.raises(AuthError, match=f"refused anonymous access .*modelimage login {REGISTRY}"):
        client.get("/v2/m/manifests/1")


def chunks():
    yield b"weights"


def test_streamed_body_after_a_cheap_request(fake):
    client, _ = make_client(fake, ALICE)
    assert client.post("/v2/m/blobs/uploads/").status_code == 202  # caches the push token
    assert client.patch("/v2/m/blobs/uploads/u1", content=chunks()).status_code == 202
    assert client.put("/v2/m/blobs/uploads/u1", params={"digest": "sha256:ab"}, content=chunks()).status_code == 202
    assert len(fake.token_requests) == 1


def test_streamed_body_401_is_let_through(fake):
    client, _ = make_client(fake, ALICE)
    assert client.patch("/v2/m/blobs/uploads/u1", content=chunks()).status_code == 401
    assert fake.token_requests == []
    # the challenge was learnt: the next attempt fetches a token before sending
    assert client.patch("/v2/m/blobs/uploads/u1", content=chunks()).status_code == 202
    assert fake.scopes_requested() == [["repository:m:pull,push"]]
    assert len(fake.registry_requests) == 2


def test_streamed_body_with_revoked_token_is_let_through(fake):
    client, _ = make_client(fake, ALICE)
    client.post("/v2/m/blobs/uploads/")
    fake.valid_tokens.clear()
    assert client.patch("/v2/m/blobs/uploads/u1", content=chunks()).status_code == 401
    assert client.patch("/v2/m/blobs/uploads/u1", content=chunks()).status_code == 202  # dropped, refetched
    assert len(fake.token_requests) == 2


def test_other_hosts_get_no_credentials(fake):
    client, _ = make_client(fake, ALICE)
    client.get("/v2/m/blobs/sha256:ab")
    response = client.get("https://storage.test/blob?sig=1")
    assert response.json() == {"elsewhere": None}


def test_docker_hub_aliases_share_one_auth():
    seen = []

    def handler(request):
        header = request.headers.get("authorization")
        seen.append((request.url.host, header))
        if request.url.host == "registry-1.docker.io" and header is None:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="hub"'})
        return httpx.Response(200)

    transport = httpx.MockTransport(handler)
    auth = RegistryAuth("docker.io", ALICE, token_client=httpx.Client(transport=transport))
    with httpx.Client(transport=transport, auth=auth) as client:
        client.get("https://registry-1.docker.io/v2/")
        client.get("https://example.com/v2/")
    basic = "Basic " + b64(f"alice:{PASSWORD}")
    assert seen == [("registry-1.docker.io", None), ("registry-1.docker.io", basic), ("example.com", None)]


def test_secrets_never_shown(fake, caplog):
    creds = Credentials("alice", PASSWORD, IDENTITY_TOKEN)
    texts = [repr(creds), str(creds), repr(Credentials("alice", PASSWORD))]
    caplog.set_level(logging.DEBUG)
    client, auth = make_client(fake, creds)
    client.get("/v2/m/manifests/1")
    texts += [repr(auth), str(auth), repr(auth._tokens)]
    fake.refresh_tokens.clear()
    client2, auth2 = make_client(fake, creds)
    with pytest.raises(AuthError) as err:
        client2.get("/v2/m/manifests/1")
    texts += [str(err.value), repr(err.value), repr(auth2)]
    texts += [record.getMessage() for record in caplog.records]
    tokens = {f"tok-{i}" for i in range(1, 10)}
    for text in texts:
        for secret in (*SECRETS, *tokens):
            assert secret not in text, (secret, text)
    assert "alice" in repr(creds) and "***" in repr(creds)
