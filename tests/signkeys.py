"""EC key pairs (PEM files) for signing tests, made with ``cryptography``."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def write_keypair(folder: Path, name: str = "key", curve: ec.EllipticCurve | None = None,
                  password: bytes | None = None) -> tuple[Path, Path]:
    """(private PEM, public PEM) of a new EC key (P-256 by default) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(curve or ec.SECP256R1())
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private = folder / f"{name}.pem"
    public = folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def signer_and_stranger(folder: Path) -> tuple[Path, Path, Path]:
    """(private PEM, public PEM, another key's public PEM) in ``folder``:
    the key that signs, and one whose verification must fail."""
    private, public = write_keypair(folder)
    _, other = write_keypair(folder, "other")
    return private, public, other
