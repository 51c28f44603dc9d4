# -*- test-case-name: tests.certs.test_ssh -*-
"""SSH public keys as partners register them: parse, fingerprint, and make demo key pairs."""

import base64
import hashlib
from pathlib import Path

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certs.errors import CertificateError
from certs.files import write_atomically, write_secret

_ALLOWED_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
}


@attrs.frozen
class SSHPublicKey:
    """One OpenSSH public key line, validated, with its ``ssh-keygen -l`` fingerprint."""

    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:<base64>`` exactly as ``ssh-keygen -lf`` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    @property
    def openssh(self) -> str:
        """The canonical ``type base64`` line, without the comment."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"


def parse_public_key(text: str, source: str = "<key>") -> SSHPublicKey:
    """Parse an OpenSSH public key line (``ssh-ed25519 AAAA… comment``).

    RSA keys shorter than 2048 bits and DSA keys are refused: they are not safe any more.

    :raises CertificateError: when the text is a private key, not a key line, or a weak key.
    """
    stripped = text.strip()
    if "PRIVATE KEY" in stripped:
        raise CertificateError(f"{source} holds a private key; register the public key (.pub) instead")
    parts = stripped.split(None, 2)
    if len(parts) < 2:
        raise CertificateError(f"{source} is not an OpenSSH public key line")
    key_type, b64 = parts[0], parts[1]
    if key_type not in _ALLOWED_TYPES:
        raise CertificateError(f"{source}: SSH key type {key_type!r} is not accepted")
    try:
        blob = base64.b64decode(b64, validate=True)
        key = serialization.load_ssh_public_key(f"{key_type} {b64}".encode("ascii"))
    except (ValueError, UnicodeError, TypeError):
        raise CertificateError(f"{source}: damaged {key_type} public key") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise CertificateError(f"{source}: RSA key of {key.key_size} bits is too short (need 2048+)")
    return SSHPublicKey(key_type, blob, parts[2].strip() if len(parts) > 2 else "")


def normalize_fingerprint(text: str) -> str:
    """Accept an SSH key fingerprint with or without the ``SHA256:`` prefix."""
    value = text.strip()
    if value.upper().startswith("SHA256:"):
        value = value[7:]
    value = value.rstrip("=")  # ssh-keygen prints no padding; other tools do
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise CertificateError(f"{text!r} is not an SSH SHA256 fingerprint")
    return "SHA256:" + value


def generate_keypair(private_path: Path, comment: str, kind: str = "ed25519") -> SSHPublicKey:
    """Write a new OpenSSH private key (0600) and its ``.pub`` beside it; return the public key.

    Used for the gateway's host keys and for demo partners, never for partner keys in production.
    """
    if kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise CertificateError(f"unknown SSH key kind {kind!r}")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = f"{public.decode('ascii')} {comment}\n"
    write_secret(private_path, private)
    write_atomically(private_path.with_name(private_path.name + ".pub"), line.encode("ascii"))
    return parse_public_key(line)
