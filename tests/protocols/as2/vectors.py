"""Vectors for :mod:`tests.protocols.as2.test_cms`: the real ``openssl cms`` as the peer, and a tiny DER writer.

The DER writer exists for the few structures OpenSSL will not produce (OAEP without parameters,
AuthEnvelopedData with authenticated attributes); tests must not import asn1crypto, which stays behind
:mod:`protocols.as2.cms`.
"""

import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certs.devca import key_pem
from certs.x509 import PrivateKey

LEGACY = ("-provider", "legacy", "-provider", "default")


class OpenSSL:
    """``openssl cms`` run in one directory; every method takes and returns bytes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._count = 0

    def file(self, data: bytes) -> str:
        """Write ``data`` to a fresh file and return its path."""
        self._count += 1
        path = self.directory / f"f{self._count}"
        path.write_bytes(data)
        return str(path)

    def cert(self, cert: x509.Certificate) -> str:
        """A PEM file holding ``cert``."""
        return self.file(cert.public_bytes(Encoding.PEM))

    def key(self, key: PrivateKey) -> str:
        """A PEM file holding ``key``."""
        return self.file(key_pem(key))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``openssl cms ARGS``; fail the test with openssl's stderr when ``check`` and it fails."""
        result = subprocess.run(["openssl", "cms", *args], capture_output=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"openssl cms {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result

    def encrypt(self, content: bytes, cert: x509.Certificate, *options: str, keyopts: tuple[str, ...] = ()) -> bytes:
        """``openssl cms -encrypt`` to DER; ``options`` pick the cipher, ``keyopts`` the key transport."""
        out = self.file(b"")
        keyopt_args = [arg for keyopt in keyopts for arg in ("-keyopt", keyopt)]
        self.run("-encrypt", "-binary", *options, "-in", self.file(content), "-outform", "DER", "-out", out,
                 "-recip", self.cert(cert), *keyopt_args)
        return Path(out).read_bytes()

    def decrypt(self, der: bytes, key: PrivateKey, cert: x509.Certificate) -> subprocess.CompletedProcess:
        """``openssl cms -decrypt`` of a DER envelope; the content is the result's stdout."""
        return self.run("-decrypt", "-binary", "-inform", "DER", "-in", self.file(der), "-recip", self.cert(cert),
                        "-inkey", self.key(key), check=False)

    def sign(self, content: bytes, key: PrivateKey, cert: x509.Certificate, *options: str,
             keyopts: tuple[str, ...] = ()) -> bytes:
        """``openssl cms -sign -binary`` to DER (detached unless ``-nodetach`` is among ``options``)."""
        out = self.file(b"")
        keyopt_args = [arg for keyopt in keyopts for arg in ("-keyopt", keyopt)]
        self.run("-sign", "-binary", *options, "-in", self.file(content), "-outform", "DER", "-out", out,
                 "-signer", self.cert(cert), "-inkey", self.key(key), *keyopt_args)
        return Path(out).read_bytes()

    def verify(self, der: bytes, ca: x509.Certificate, content: bytes | None) -> subprocess.CompletedProcess:
        """``openssl cms -verify`` against ``ca``; the signed content is the result's stdout."""
        detached = ["-content", self.file(content)] if content is not None else []
        return self.run("-verify", "-binary", "-inform", "DER", "-in", self.file(der), *detached,
                        "-CAfile", self.cert(ca), check=False)


# --- a minimal DER writer ----------------------------------------------------------------------------


def tlv(tag: int, *parts: bytes) -> bytes:
    """One DER element: ``tag``, definite length, and the concatenated ``parts``."""
    body = b"".join(parts)
    if len(body) < 0x80:
        return bytes((tag, len(body))) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


def seq(*parts: bytes) -> bytes:
    """A SEQUENCE."""
    return tlv(0x30, *parts)


def octets(data: bytes) -> bytes:
    """An OCTET STRING."""
    return tlv(0x04, data)


def integer(value: int) -> bytes:
    """A (non-negative) INTEGER."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER."""
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray((40 * first + second,))
    for arc in rest:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
RSAES_OAEP = "1.2.840.113549.1.1.7"
DATA = "1.2.840.113549.1.7.1"
ENVELOPED_DATA = "1.2.840.113549.1.7.3"
AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23"
AES128_CBC = "2.16.840.1.101.3.4.1.2"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES128_GCM = "2.16.840.1.101.3.4.1.6"
CONTENT_TYPE = "1.2.840.113549.1.9.3"


def printable_upper_case(name: x509.Name) -> bytes:
    """``name`` re-encoded as PrintableStrings in upper case: another encoding, the same name (RFC 5280 §7.1)."""
    return seq(*(tlv(0x31, seq(oid(a.oid.dotted_string), tlv(0x13, str(a.value).upper().encode()))) for a in name))


def envelope(recipient: x509.Certificate, key_encryption: bytes, encrypted_key: bytes, content_encryption: bytes,
             ciphertext: bytes, *, auth_attrs: bytes | None = None, mac: bytes | None = None,
             issuer: bytes | None = None) -> bytes:
    """A ContentInfo holding EnvelopedData, or AuthEnvelopedData when ``mac`` is given.

    :param key_encryption: the DER KeyEncryptionAlgorithmIdentifier.
    :param content_encryption: the DER ContentEncryptionAlgorithmIdentifier.
    :param auth_attrs: the DER SET of authenticated attributes (written with its [1] tag here).
    :param issuer: the DER issuer name for the RecipientInfo, if not the certificate's own bytes.
    """
    issuer = recipient.issuer.public_bytes() if issuer is None else issuer
    issuer_and_serial = seq(issuer, integer(recipient.serial_number))
    recipient_info = seq(integer(0), issuer_and_serial, key_encryption, octets(encrypted_key))
    content_info = seq(oid(DATA), content_encryption, tlv(0x80, ciphertext))
    parts = [integer(0), tlv(0x31, recipient_info), content_info]
    if mac is None:
        return seq(oid(ENVELOPED_DATA), tlv(0xA0, seq(*parts)))
    if auth_attrs is not None:
        parts.append(bytes((0xA1,)) + auth_attrs[1:])
    parts.append(octets(mac))
    return seq(oid(AUTH_ENVELOPED_DATA), tlv(0xA0, seq(*parts)))
