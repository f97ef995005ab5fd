"""Image references, and when plain HTTP is allowed (loopback or named)."""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelimage.cli import main
from modelimage.errors import ConfigError
from modelimage.registry.reference import Reference, is_loopback


@pytest.mark.parametrize(("text", "host", "repo", "tag", "digest"), [
    ("ghcr.io/acme/llama:v1", "ghcr.io", "acme/llama", "v1", None),
    ("ghcr.io/acme/llama", "ghcr.io", "acme/llama", "latest", None),
    ("localhost:5000/m", "localhost:5000", "m", "latest", None),
    ("127.0.0.1:5000/a/b/c:t", "127.0.0.1:5000", "a/b/c", "t", None),
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("acme/llama:v2", "docker.io", "acme/llama", "v2", None),
    ("index.docker.io/acme/llama", "docker.io", "acme/llama", "latest", None),
    ("docker://quay.io/x/y:z", "quay.io", "x/y", "z", None),
    ("ghcr.io/a/b@sha256:" + "a" * 64, "ghcr.io", "a/b", None, "sha256:" + "a" * 64),
    ("[::1]:5000/m:v", "[::1]:5000", "m", "v", None),
    ("ubuntu@sha256:" + "b" * 64, "docker.io", "library/ubuntu", None, "sha256:" + "b" * 64),  # not credentials
])
def test_parse(text, host, repo, tag, digest):
    r = Reference.parse(text)
    assert (r.host, r.repository, r.tag, r.digest) == (host, repo, tag, digest)


@pytest.mark.parametrize("bad", ["ghcr.io/Acme/llama", "ghcr.io/a/b:bad tag", "ghcr.io/a@sha256:xyz", "ghcr.io/a//b"])
def test_bad_references(bad):
    with pytest.raises(ConfigError):
        Reference.parse(bad)


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.9.8.7", True),
    ("[::1]:5000", True), ("ghcr.io", False), ("10.0.0.1:5000", False), ("registry.local:5000", False),
])
def test_plain_http_only_for_loopback_or_named_hosts(host, loopback):
    ref = Reference(host, "m")
    assert ref.plain_http_allowed() is loopback
    assert ref.plain_http_allowed(frozenset({host}))
    assert is_loopback(host) is loopback
    assert Reference.parse("docker.io/x/y").api_host == "registry-1.docker.io"


def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname())])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return tmp_path / "c.pem", tmp_path / "k.pem"


def test_tls_is_verified_and_never_downgraded(tmp_path, llama_dir, capsys, monkeypatch):
    """A loopback registry (asked HTTPS first, as docker and crane do) with a
    self-signed certificate: the push refuses it in one line and does not
    fall back to plain HTTP: no request got through. (Before issue 15 this
    needed a host name resolving to 127.x and skipped elsewhere.)"""
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    cert, key = _self_signed(tmp_path)
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_HEAD = do_POST = do_GET

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ref = f"127.0.0.1:{server.server_address[1]}/tls/llama:v1"
        assert main(["build", str(llama_dir), "--push", ref]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert "certificate" in err.lower()
        assert seen == []  # no request got through
    finally:
        server.shutdown()


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text", [
    "user:s3cret@registry.example.com/team/model:v1",
    "https://user:s3cret@registry.example.com/team/model",
    "user:s3cret@registry.example.com",  # no path: was read as NAME@DIGEST and the password echoed
    "user:s3cret@localhost:5000",
])
def test_credentials_in_a_name_are_never_echoed_wherever_the_name_is_read(text):
    """One redaction (reference.redacted) for image references, mirror
    locations and docker-daemon: names (three twins that disagreed)."""
    from modelimage.daemon import DaemonRef
    from modelimage.registry.mirror import parse_location
    from modelimage.registry.reference import has_credentials, redacted

    assert has_credentials(text) and "s3cret" not in redacted(text) and "***@" in redacted(text)
    for parse in (Reference.parse, lambda t: DaemonRef.parse("docker-daemon:" + t),
                  lambda t: parse_location(t, "modelimage.toml")):
        with pytest.raises(ConfigError) as e:
            parse(text)
        assert "s3cret" not in str(e.value) and "***" in str(e.value), (parse, str(e.value))


def test_a_digest_is_not_credentials_and_the_host_rule_is_one():
    from modelimage.daemon import DaemonRef
    from modelimage.registry.reference import has_credentials, names_host, redacted
    from modelimage.signing.describe import looks_like_registry_reference

    for text in (f"ubuntu@{DIGEST}", f"docker.io/library/ubuntu@{DIGEST}", f"localhost:5000/m@{DIGEST}"):
        assert not has_credentials(text) and redacted(text) == text
    assert Reference.parse(f"ubuntu@{DIGEST}").digest == DIGEST
    for first, host in [("ghcr.io", True), ("localhost", True), ("host:5000", True), ("[::1]:5000", True),
                        ("library", False), (".", False), ("..", False)]:
        assert names_host(first) is host, first
        assert looks_like_registry_reference(f"{first}/model:v1") is host, first
        if host:
            assert Reference.parse(f"{first}/model:v1").host == first
    assert DaemonRef.parse("docker-daemon:[::1]:5000/model:v1").name == "[::1]:5000/model"  # the one host rule (IPv6 too)
