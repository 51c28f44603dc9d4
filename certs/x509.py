# -*- test-case-name: tests.certs.test_x509 -*-
"""Load keys and certificates in the formats partners actually send, and check them.

Partners hand in PEM, DER or PKCS#12 files, sometimes the wrong one. Every loader here either
returns a usable object or raises a :class:`~certs.errors.CertificateError` that names the source and
the problem in one sentence ("acme.pem holds a private key, not a certificate").
"""

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterable, Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certs.errors import (
    CertificateError,
    ExpiredError,
    KeyMismatchError,
    NotYetValidError,
    UntrustedIssuerError,
    WrongPasswordError,
)

Certificate = x509.Certificate
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@attrs.frozen
class KeyAndCertificate:
    """A private key, its certificate and any chain certificates that came with it."""

    key: PrivateKey
    certificate: Certificate
    chain: tuple[Certificate, ...] = ()


def read_file(path: str | Path) -> bytes:
    """Read a key or certificate file, turning OS errors into one clear sentence."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CertificateError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise CertificateError(f"{path}: permission denied") from None


def _pem_labels(data: bytes) -> list[str]:
    return [m.group(1).decode("ascii") for m in _PEM_BLOCK.finditer(data)]


def load_certificates(data: bytes, source: str = "<data>") -> list[Certificate]:
    """Load every certificate in a PEM bundle, or the one certificate of a DER file.

    :raises CertificateError: when the data holds a key instead, or nothing that parses.
    """
    labels = _pem_labels(data)
    if labels:
        if "CERTIFICATE" not in labels:
            if any("PRIVATE KEY" in label for label in labels):
                raise CertificateError(f"{source} holds a private key, not a certificate")
            raise CertificateError(f"{source} holds a PEM {labels[0]}, not a certificate")
        try:
            return x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise CertificateError(f"{source}: damaged PEM certificate ({e})") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    if _looks_like_der_key(data):
        raise CertificateError(f"{source} holds a private key, not a certificate")
    raise CertificateError(f"{source} is neither a PEM nor a DER certificate")


def load_certificate(data: bytes, source: str = "<data>") -> Certificate:
    """Load exactly one certificate (the first of a PEM bundle is the leaf)."""
    return load_certificates(data, source)[0]


def _looks_like_der_key(data: bytes) -> bool:
    try:
        serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        return False
    return True


def _looks_like_der_certificate(data: bytes) -> bool:
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        return False
    return True


def load_private_key(data: bytes, source: str = "<data>", password: bytes | None = None) -> PrivateKey:
    """Load a PEM or DER private key, optionally encrypted.

    :raises WrongPasswordError: when the key is encrypted and the password is missing or wrong.
    :raises CertificateError: when the data is a certificate, or not a supported key type.
    """
    labels = _pem_labels(data)
    if labels and not any("PRIVATE KEY" in label for label in labels):
        if "CERTIFICATE" in labels:
            raise CertificateError(f"{source} holds a certificate, not a private key")
        raise CertificateError(f"{source} holds a PEM {labels[0]}, not a private key")
    loader = serialization.load_pem_private_key if labels else serialization.load_der_private_key
    try:
        key = loader(data, password=password)
    except TypeError:
        if password is None:
            raise WrongPasswordError(f"{source} is encrypted: give its password") from None
        raise WrongPasswordError(f"{source} is not encrypted: give no password") from None
    except ValueError as e:
        if password is not None and ("decrypt" in str(e).lower() or "password" in str(e).lower()):
            raise WrongPasswordError(f"{source}: wrong password") from None
        if not labels and _looks_like_der_certificate(data):
            raise CertificateError(f"{source} holds a certificate, not a private key") from None
        raise CertificateError(f"{source} is not a readable PEM or DER private key") from None
    if not isinstance(key, PrivateKey):
        raise CertificateError(f"{source}: unsupported key type {type(key).__name__}")
    return key


def load_pkcs12(data: bytes, source: str = "<data>", password: bytes | None = None) -> KeyAndCertificate:
    """Load a PKCS#12 (.p12/.pfx) bundle holding one key and its certificate.

    :raises WrongPasswordError: for a missing or wrong password.
    """
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except ValueError as e:
        text = str(e).lower()
        if "password" in text or "mac" in text or "decrypt" in text:
            raise WrongPasswordError(f"{source}: wrong password for PKCS#12 file") from None
        raise CertificateError(f"{source} is not a readable PKCS#12 file") from None
    if key is None or cert is None:
        raise CertificateError(f"{source}: PKCS#12 file must hold a private key and its certificate")
    check_key_matches(key, cert, source)
    return KeyAndCertificate(key, cert, tuple(extra))


def load_key_and_certificate(
    key_data: bytes,
    cert_data: bytes,
    key_source: str = "<key>",
    cert_source: str = "<certificate>",
    password: bytes | None = None,
) -> KeyAndCertificate:
    """Load a key and a certificate (PEM/DER) and make sure they belong together."""
    key = load_private_key(key_data, key_source, password)
    certs = load_certificates(cert_data, cert_source)
    check_key_matches(key, certs[0], f"{key_source} and {cert_source}")
    return KeyAndCertificate(key, certs[0], tuple(certs[1:]))


def public_bytes(public_key) -> bytes:
    """The SubjectPublicKeyInfo DER of a public key: the identity of a key pair."""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_key_matches(key: PrivateKey, cert: Certificate, source: str = "<data>") -> None:
    """:raises KeyMismatchError: when ``key`` is not the private half of ``cert``'s public key."""
    if public_bytes(key.public_key()) != public_bytes(cert.public_key()):
        raise KeyMismatchError(f"{source}: the private key does not match the certificate")


def fingerprint(cert: Certificate) -> str:
    """SHA-256 over the certificate's DER, as 64 lowercase hex digits.

    The same value as ``openssl x509 -noout -fingerprint -sha256`` without the colons.
    """
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept a SHA-256 fingerprint as typed by people (colons, upper case, ``sha256:`` prefix).

    :raises CertificateError: when it is not 32 bytes of hex.
    """
    value = text.strip().lower()
    if value.startswith("sha256:") or value.startswith("sha256="):
        value = value[7:]
    value = value.replace(":", "")
    if not _FINGERPRINT.match(value):
        raise CertificateError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return value


def to_pem(cert: Certificate) -> bytes:
    """The PEM text of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def utcnow() -> datetime:
    """The current time, timezone-aware, for validity checks at the edge."""
    return datetime.now(UTC)


def check_validity(cert: Certificate, now: datetime, source: str = "certificate") -> None:
    """:raises NotYetValidError, ExpiredError: when ``now`` is outside the validity window."""
    if now < cert.not_valid_before_utc:
        raise NotYetValidError(
            f"{source} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise ExpiredError(f"{source} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


def is_ca(cert: Certificate) -> bool:
    """True when the certificate carries basicConstraints CA:TRUE."""
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: Certificate, ca: Certificate) -> bool:
    """True when ``ca`` is a CA certificate whose key signed ``cert``."""
    if not is_ca(ca):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_issued_by(
    cert: Certificate, cas: Iterable[Certificate], now: datetime, source: str = "certificate"
) -> Certificate:
    """Check ``cert`` is within its validity window and directly issued by one of ``cas``.

    Partners register the CA that issues their certificates (the issuing intermediate, not a public
    root), so one signature step is the whole chain we accept.

    :returns: the issuing CA.
    :raises UntrustedIssuerError: when no valid CA among ``cas`` signed it.
    """
    check_validity(cert, now, source)
    for ca in cas:
        if issued_by(cert, ca) and ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            return ca
    raise UntrustedIssuerError(f"{source} was not issued by a trusted CA")


def describe(cert: Certificate) -> dict:
    """The facts an operator needs to recognise a certificate, JSON-ready."""
    return {
        "fingerprint": fingerprint(cert),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "ca": is_ca(cert),
    }


def common_name(cert: Certificate) -> str:
    """The subject's first common name, or the whole subject if it has none."""
    names: Sequence = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()
