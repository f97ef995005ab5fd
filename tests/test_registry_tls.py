"""One TLS trust for every registry request (issue 15, case 5), against a
real CNCF registry serving HTTPS with a certificate from a private CA made
here with ``cryptography``: push (httpx) and pull (httpx, then the bulk
``http.client`` reads in small pieces) trust the same roots, from
``SSL_CERT_DIR``, ``--cert-dir`` or ``certs.d/HOST``; ``--tls-verify=false``
skips the check; an untrusted certificate fails once, in one line, never
retried, never downgraded to plain HTTP (a loopback host is asked HTTPS
first, as docker and crane do)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from modelimage.cli import main

from .tools import need

pytestmark = pytest.mark.integration


def _ca_and_server(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA, and a server certificate it signed for localhost and
    127.0.0.1: (ca.crt, server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelimage test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    from .registry import start_registry

    ca, cert, key = _ca_and_server(tmp_path_factory.mktemp("pki"))
    reg = start_registry(tls=(cert, key))
    reg.extra["ca"] = ca
    yield reg
    reg.stop()


@pytest.fixture
def untrusting(monkeypatch, tmp_path):
    """No trust beyond the OS store, no certs.d, a private cache and docker config."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr("modelimage.registry.transport.tls.CERTS_D", (tmp_path / "no-certs.d",))
    monkeypatch.setenv("MODELIMAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".modelimage")}


def push_then_pull(reg, llama_dir, tmp: Path, repo: str, *flags: str) -> None:
    ref = f"{reg.host}/{repo}:v1"
    assert main(["build", str(llama_dir), "--push", ref, *flags]) == 0
    assert main(["pull", ref, str(tmp / repo), "--connections", "2", *flags]) == 0
    assert tree(tmp / repo) == tree(llama_dir)


def test_push_and_pull_trust_ssl_cert_dir(tls_registry, llama_dir, untrusting, monkeypatch, small_pieces, capsys):
    """The CA in a hashed ``SSL_CERT_DIR`` (``openssl rehash``): the push and
    every blob read of the pull (64 KiB ranged pieces over two connections)
    verify against it; the pulled files are the model's."""
    need("openssl")
    hashed = untrusting / "hashed"
    hashed.mkdir()
    shutil.copy(tls_registry.extra["ca"], hashed / "ca.pem")
    subprocess.run(["openssl", "rehash", str(hashed)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_DIR", str(hashed))
    push_then_pull(tls_registry, llama_dir, untrusting, "tls/cert-dir-env")
    assert "https" not in capsys.readouterr().err  # nothing went wrong, nothing was said about it


def test_cert_dir_flag(tls_registry, llama_dir, untrusting, small_pieces):
    """``--cert-dir DIR`` holding ``ca.crt`` (podman's flag)."""
    folder = untrusting / "certs"
    folder.mkdir()
    shutil.copy(tls_registry.extra["ca"], folder / "ca.crt")
    push_then_pull(tls_registry, llama_dir, untrusting, "tls/cert-dir-flag", "--cert-dir", str(folder))


def test_certs_d_folder_of_the_host(tls_registry, llama_dir, untrusting, monkeypatch, small_pieces):
    """``certs.d/HOST:PORT/ca.crt``, as podman (/etc/containers/certs.d) and
    docker (/etc/docker/certs.d) read it."""
    certs_d = untrusting / "certs.d"
    (certs_d / tls_registry.host).mkdir(parents=True)
    shutil.copy(tls_registry.extra["ca"], certs_d / tls_registry.host / "ca.crt")
    monkeypatch.setattr("modelimage.registry.transport.tls.CERTS_D", (certs_d,))
    push_then_pull(tls_registry, llama_dir, untrusting, "tls/certs-d")


def test_tls_verify_false(tls_registry, llama_dir, untrusting, small_pieces):
    """``--tls-verify=false`` (skopeo's flag): TLS kept, the certificate not checked."""
    push_then_pull(tls_registry, llama_dir, untrusting, "tls/no-verify", "--tls-verify=false")


def test_an_untrusted_certificate_fails_once_in_one_line(tls_registry, llama_dir, untrusting, capsys):
    """Without the CA: one line naming the certificate problem and the fixes,
    exit 1; the registry saw one TLS handshake fail (no retries), and no
    plain-HTTP request got an answer from it."""
    def failed_handshakes() -> int:  # the whole log: logs() is its tail, which moves as others log
        return tls_registry.log.read_text(errors="replace").count("TLS handshake error")

    before = failed_handshakes()
    assert main(["build", str(llama_dir), "--push", f"{tls_registry.host}/tls/untrusted:v1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "certificate did not verify" in err
    for _ in range(50):  # the registry logs the failed handshake on its own schedule
        if failed_handshakes() > before:
            break
        time.sleep(0.1)
    assert 1 <= failed_handshakes() - before <= 2  # the probe (and nothing retried)
    assert not re.search(r'"PUT|"PATCH|"POST', tls_registry.logs())
