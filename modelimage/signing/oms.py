"""OpenSSF Model Signing (OMS) statements, signed and checked with the
``model-signing`` package (PyPI, sigstore/model-transparency), never by
hand-written crypto.

The one adapter to ``model-signing``: everything else in modelimage speaks
:class:`SignedFile` lists and bundle bytes. The statement is exactly the one
``python -m model_signing sign key FOLDER`` writes for the same files (an
in-toto v1 statement, predicate ``https://model_signing/signature/v1.0``,
``files`` serialization with sha256, the files as ``resources``), built here
from digests recorded at build time instead of hashing the files again; the
signature is a DSSE envelope in a sigstore bundle
(``application/vnd.dev.sigstore.bundle.v0.3+json``) signed with an ECDSA
key, as ``model_signing sign key`` does. So ``python -m model_signing verify
key DEST --signature DEST/model.sig --public_key PUB`` accepts a pulled
folder.

``model-signing`` is an optional dependency (``pip install
'modelimage[sign]'``); it is imported only when a signature is made or
checked. Its statement builder and key signer live in private modules
(``model_signing._signing``): the version is pinned in pyproject and
``tests/test_signing_oms.py`` compares what this module writes with what the
upstream CLI writes for the same folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ModelImageError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OMS_PREDICATE_TYPE = "https://model_signing/signature/v1.0"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
SIGNATURE_FILE = "model.sig"  # the upstream CLI's default signature name
# Paths in a pulled folder that are not model files: the signature itself,
# the puller's own state, and what the upstream CLI ignores by default (git).
# They are part of the signed statement, so `model_signing verify` skips them.
IGNORE_PATHS = (SIGNATURE_FILE, ".git", ".gitignore", ".gitattributes", ".github", ".modelimage-pull",
                ".modelimage-pull.json")
PASSWORD_ENV = "MODELIMAGE_KEY_PASSWORD"
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # model-signing's (sigstore protobuf specs)


class SigningError(ModelImageError):
    """A key that cannot be used, or a signature that could not be made."""


class SignatureInvalid(ModelImageError):
    """A signature that does not verify, or says something else than the image."""


@dataclass(frozen=True)
class SignedFile:
    """One model file: ``path`` relative to the model folder (POSIX,
    no leading ``/``), ``sha256`` as ``sha256:HEX``."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Statement:
    """What a verified OMS signature says: the model's ``name``, its files
    (path -> ``sha256:HEX``), the paths a folder check skips, and the extra
    predicate fields modelimage adds (``predicate["modelimage"]``: the
    manifest digest the signature was made for)."""

    name: str
    files: Mapping[str, str]
    ignore_paths: tuple[str, ...]
    extra: Mapping[str, Any]

    @property
    def manifest_digest(self) -> str | None:
        value = self.extra.get("manifest")
        return value if isinstance(value, str) else None


def _need() -> Any:
    try:
        from model_signing._signing import sign_ec_key  # noqa: F401
    except ImportError as e:
        raise SigningError(
            f"signing needs the model-signing package ({e.name or e}); install it with: pip install 'modelimage[sign]'"
        ) from None


# ---------------------------------------------------------------- keys


def load_private_key(path: str | Path) -> Any:
    """An EC private key from a PEM file (P-256 recommended; P-384 and P-521
    work too). An encrypted key takes its password from
    ``$MODELIMAGE_KEY_PASSWORD``. Raises :class:`SigningError` with one line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key(path)
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise SigningError(f"{path}: the key is encrypted; put its password in ${PASSWORD_ENV}") from None
    except ValueError as e:
        if password and "password" in str(e).lower() or "decrypt" in str(e).lower():
            raise SigningError(f"{path}: wrong password in ${PASSWORD_ENV}") from None
        if b"PUBLIC KEY" in data:
            raise SigningError(f"{path}: that is a public key; sign with the private one") from None
        raise SigningError(f"{path}: not a PEM private key ({_first_line(e)}); "
                           "make one with: openssl ecparam -name prime256v1 -genkey -noout -out key.pem") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningError(f"{path}: {_describe_key(key)}; OpenSSF model signing keys are ECDSA P-256 "
                           "(openssl ecparam -name prime256v1 -genkey -noout -out key.pem)")
    return key


def load_public_key(path: str | Path) -> Any:
    """An EC public key from a PEM file; one-line :class:`SigningError` otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key(path)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        hint = " (that is a private key: pass the public one, openssl ec -in key.pem -pubout)" \
            if b"PRIVATE KEY" in data else ""
        raise SigningError(f"{path}: not a PEM public key{hint or ' (' + _first_line(e) + ')'}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        raise SigningError(f"{path}: {_describe_key(key)}; OpenSSF model signing keys are ECDSA P-256")
    return key


def _read_key(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SigningError(f"{path}: cannot read the key ({e.strerror})") from None


def _describe_key(key: Any) -> str:
    curve = getattr(getattr(key, "curve", None), "name", None)
    if curve:
        return f"an EC key on {curve}, which is not supported"
    return f"a {type(key).__name__.lstrip('_')}, not an EC key"


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def public_pem(key: Any) -> bytes:
    """The SubjectPublicKeyInfo PEM of a private or public key."""
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(key: Any) -> str:
    """The key's id in a bundle (``verificationMaterial.publicKey.hint``):
    sha256 of its public PEM, as model-signing records it."""
    import hashlib

    return hashlib.sha256(public_pem(key)).hexdigest()


# ---------------------------------------------------------------- signing


class _Payload:
    """What model-signing's signers take: an object with an in-toto ``statement``."""

    def __init__(self, statement: Any):
        self.statement = statement


def _signer(key_path: str | Path) -> Any:
    _need()
    from model_signing._signing import sign_ec_key

    load_private_key(key_path)  # one-line errors for the key first
    password = os.environ.get(PASSWORD_ENV)
    # bytes: model-signing 1.1.1 hands the password to cryptography as it gets it (str fails there)
    return sign_ec_key.Signer(Path(key_path), password.encode() if password else None)  # type: ignore[arg-type]


def oms_payload(name: str, files: Sequence[SignedFile], extra: Mapping[str, Any] | None = None) -> Any:
    """model-signing's in-toto payload for ``files`` (path, sha256), exactly
    as its folder serializer would describe them, plus ``extra`` fields in
    the predicate (OMS v1.0 verifiers ignore fields they do not know)."""
    _need()
    from in_toto_attestation.v1 import statement as intoto
    from model_signing import manifest as ms_manifest
    from model_signing._hashing import hashing
    from model_signing._signing import signing

    seen: set[str] = set()
    items = []
    for f in files:
        _check_path(f.path)
        if f.path in seen:
            raise SigningError(f"{f.path}: listed twice in the image")
        seen.add(f.path)
        algorithm, _, hexdigest = f.sha256.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise SigningError(f"{f.path}: digest {f.sha256!r} is not a sha256")
        items.append(ms_manifest.FileManifestItem(path=PurePosixPath(f.path),
                                                  digest=hashing.Digest("sha256", bytes.fromhex(hexdigest))))
    serialization = ms_manifest._FileSerialization("sha256", False, [Path(p) for p in IGNORE_PATHS])
    payload = signing.Payload(ms_manifest.Manifest(name, items, serialization))
    if extra:
        pb = payload.statement.pb
        predicate = json.loads(_to_json(pb))["predicate"]
        payload.statement = intoto.Statement(subjects=list(pb.subject), predicate_type=pb.predicate_type,
                                             predicate={**predicate, **extra})
    return payload


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise SigningError(f"{path!r}: not a clean relative path; cannot sign it")
    top = parts[0]
    if top in IGNORE_PATHS:
        raise SigningError(f"{path}: OpenSSF model signing verifiers skip {top!r} in a model folder, so this "
                           "file could not be checked; rename it and build again")


def _to_json(pb: Any) -> str:
    from google.protobuf import json_format

    return json_format.MessageToJson(pb)


def sign_files(key_path: str | Path, name: str, files: Sequence[SignedFile],
               extra: Mapping[str, Any] | None = None) -> bytes:
    """A sigstore bundle (JSON bytes) holding the OMS statement of ``files``,
    signed with the EC private key at ``key_path``. Raises :class:`SigningError`."""
    return _sign(key_path, oms_payload(name, files, extra))


def sign_statement(key_path: str | Path, statement: Mapping[str, Any]) -> bytes:
    """A sigstore bundle with any in-toto v1 ``statement`` (a dict with
    ``subject``, ``predicateType``, ``predicate``) in a DSSE envelope,
    signed the way OMS signatures are (used for SLSA provenance)."""
    _need()
    from in_toto_attestation.v1 import statement as intoto

    subjects = [intoto.ResourceDescriptor(name=s.get("name", ""), digest=dict(s["digest"])).pb
                for s in statement["subject"]]
    payload = _Payload(intoto.Statement(subjects=subjects, predicate_type=statement["predicateType"],
                                        predicate=dict(statement["predicate"])))
    return _sign(key_path, payload)


def _sign(key_path: str | Path, payload: Any) -> bytes:
    signer = _signer(key_path)
    try:
        signature = signer.sign(payload)
    except Exception as e:  # model-signing raises plain exceptions
        raise SigningError(f"{key_path}: signing failed ({_first_line(e)})") from None
    return signature.bundle.to_json().encode()


# ---------------------------------------------------------------- verifying


def _read_bundle(bundle: bytes) -> Any:
    """model-signing's own reader (it normalises older bundles), fed bytes."""
    from model_signing._signing import sign_sigstore_pb

    fd, name = tempfile.mkstemp(suffix=".sig")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(bundle)
        return sign_sigstore_pb.Signature.read(Path(name))
    finally:
        os.unlink(name)


def _verified_payload(bundle: bytes, pub_path: str | Path, what: str) -> dict[str, Any]:
    """The in-toto statement of a bundle whose DSSE signature verifies with the key."""
    _need()
    from model_signing._signing import sign_ec_key

    load_public_key(pub_path)
    try:
        signature = _read_bundle(bundle)
        payload_type, payload = sign_ec_key.Verifier(Path(pub_path))._verify_signed_content(signature)
        if payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise ValueError(f"payload type {payload_type}")
        statement = json.loads(payload)
    except Exception as e:  # model-signing raises ValueError, cryptography InvalidSignature, KeyError...
        raise SignatureInvalid(f"{what}: does not verify with {pub_path} ({_reason(e)})") from None
    if not isinstance(statement, dict) or statement.get("_type") != "https://in-toto.io/Statement/v1":
        raise SignatureInvalid(f"{what}: not an in-toto v1 statement")
    return statement


def _reason(e: BaseException) -> str:
    text = _first_line(e)
    if type(e).__name__ == "InvalidSignature" or not text or text == type(e).__name__:
        return "the signature is not from this key, or the signed content was changed"
    if "Key mismatch" in text:
        return "signed with another key"
    return text


def verify_files(bundle: bytes, pub_path: str | Path, what: str = "signature") -> Statement:
    """Check an OMS bundle with the EC public key at ``pub_path`` and read
    its statement. Raises :class:`SignatureInvalid` (one line) when the
    signature does not verify, is not an OMS statement, or describes files
    by anything but whole-file sha256."""
    statement = _verified_payload(bundle, pub_path, what)
    if statement.get("predicateType") != OMS_PREDICATE_TYPE:
        raise SignatureInvalid(f"{what}: predicate {statement.get('predicateType')!r} is not an OMS signature")
    from model_signing._signing import signing

    try:
        manifest = signing.dsse_payload_to_manifest(statement)  # checks the root digest over the resources
    except (ValueError, KeyError, TypeError) as e:
        raise SignatureInvalid(f"{what}: malformed OMS statement ({_first_line(e)})") from None
    params = manifest.serialization_type
    if params.get("method") != "files" or params.get("hash_type") != "sha256":
        raise SignatureInvalid(f"{what}: signed by {params.get('method')}/{params.get('hash_type')}; modelimage "
                               "checks whole-file sha256 signatures only")
    files = {}
    for rd in manifest.resource_descriptors():
        files[rd.identifier] = "sha256:" + rd.digest.digest_hex
    predicate = statement.get("predicate") or {}
    extra = {k: v for k, v in predicate.items() if k not in ("serialization", "resources")}
    return Statement(manifest.model_name, files, tuple(str(p) for p in params.get("ignore_paths", ())),
                     extra.get("modelimage") if isinstance(extra.get("modelimage"), dict) else {})


def verify_statement(bundle: bytes, pub_path: str | Path, what: str = "attestation") -> dict[str, Any]:
    """Check any DSSE-in-bundle attestation (SLSA provenance) with the key;
    returns its in-toto statement. Raises :class:`SignatureInvalid`."""
    return _verified_payload(bundle, pub_path, what)


def bundle_statement(bundle: bytes) -> dict[str, Any] | None:
    """The in-toto statement in a bundle, NOT verified (for listing what an
    image carries); None when it holds none."""
    import base64

    try:
        envelope = json.loads(bundle)["dsseEnvelope"]
        return json.loads(base64.b64decode(envelope["payload"]))
    except (ValueError, KeyError, TypeError):
        return None


def compare(signed: Mapping[str, str], actual: Iterable[tuple[str, str]], what: str) -> None:
    """Raise :class:`SignatureInvalid` (one line naming the first file) unless
    ``actual`` (path, ``sha256:HEX``) is exactly the signed set."""
    have = dict(actual)
    for path in sorted(set(signed) | set(have)):
        if path not in have:
            raise SignatureInvalid(f"{what}: {path} is signed but not in the image")
        if path not in signed:
            raise SignatureInvalid(f"{what}: {path} is in the image but not signed")
        if signed[path] != have[path]:
            raise SignatureInvalid(f"{what}: {path} is {have[path][:19]}... in the image, "
                                   f"{signed[path][:19]}... signed")
