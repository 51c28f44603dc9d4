"""Vectors for :mod:`tests.protocols.as2.test_cms`: the real ``openssl cms`` as the peer, and a tiny DER writer.

The DER writer exists for the few structures OpenSSL will not produce (OAEP without parameters,
AuthEnvelopedData with authenticated attributes, CompressedData — this openssl has no zlib); tests must
not import asn1crypto, which stays behind :mod:`protocols.as2.cms`.
"""

import io
import subprocess
import sys
import zlib
from pathlib import Path
from typing import BinaryIO

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
COMPRESSED_DATA = "1.2.840.113549.1.9.16.1.9"
ZLIB = "1.2.840.113549.1.9.16.3.8"


def _elements(der: bytes) -> list[tuple[int, bytes, bytes]]:
    """The (tag, whole encoding, contents) of each DER element in ``der``, one after the other."""
    elements, position = [], 0
    while position < len(der):
        start, tag, first = position, der[position], der[position + 1]
        position += 2
        if first < 0x80:
            length = first
        else:
            length = int.from_bytes(der[position:position + (first & 0x7F)], "big")
            position += first & 0x7F
        contents = der[position:position + length]
        position += length
        elements.append((tag, der[start:position], contents))
    return elements


def children(der: bytes) -> list[bytes]:
    """The encodings of the elements inside one constructed DER element, to be rearranged and rebuilt."""
    [(_, _, contents)] = _elements(der)
    return [whole for _, whole, _ in _elements(contents)]


def indefinite(der: bytes) -> bytes:
    """``der`` re-encoded as BER with every constructed element, however deep, of indefinite length."""
    return b"".join(bytes((tag, 0x80)) + indefinite(contents) + b"\x00\x00" if tag & 0x20 else whole
                    for tag, whole, contents in _elements(der))


def nested_octets(data: bytes, tag: int = 0x24) -> bytes:
    """``data`` as a constructed OCTET STRING (BER) in every legal shape at once.

    An indefinite-length outer element holding a primitive chunk, an empty chunk, an indefinite
    constructed chunk with two chunks of its own, and a definite constructed chunk.
    """
    a, b, c, d = (len(data) * i // 4 for i in range(4))
    inner = b"\x24\x80" + octets(data[b:b + (c - b) // 2]) + octets(data[b + (c - b) // 2:c]) + b"\x00\x00"
    return bytes((tag, 0x80)) + octets(data[a:b]) + octets(b"") + inner + tlv(0x24, octets(data[c:d]),
                                                                              octets(data[d:])) + b"\x00\x00"


def printable_upper_case(name: x509.Name) -> bytes:
    """``name`` re-encoded as PrintableStrings in upper case: another encoding, the same name (RFC 5280 §7.1)."""
    return seq(*(tlv(0x31, seq(oid(a.oid.dotted_string), tlv(0x13, str(a.value).upper().encode()))) for a in name))


def envelope(recipient: x509.Certificate, key_encryption: bytes, encrypted_key: bytes, content_encryption: bytes,
             ciphertext: bytes, *, auth_attrs: bytes | None = None, mac: bytes | None = None,
             issuer: bytes | None = None, chunked: bool = False) -> bytes:
    """A ContentInfo holding EnvelopedData, or AuthEnvelopedData when ``mac`` is given.

    :param key_encryption: the DER KeyEncryptionAlgorithmIdentifier.
    :param content_encryption: the DER ContentEncryptionAlgorithmIdentifier.
    :param auth_attrs: the DER SET of authenticated attributes (written with its [1] tag here).
    :param issuer: the DER issuer name for the RecipientInfo, if not the certificate's own bytes.
    :param chunked: write the ciphertext as :func:`nested_octets` rather than one primitive [0].
    """
    issuer = recipient.issuer.public_bytes() if issuer is None else issuer
    issuer_and_serial = seq(issuer, integer(recipient.serial_number))
    recipient_info = seq(integer(0), issuer_and_serial, key_encryption, octets(encrypted_key))
    encrypted = nested_octets(ciphertext, 0xA0) if chunked else tlv(0x80, ciphertext)
    content_info = seq(oid(DATA), content_encryption, encrypted)
    parts = [integer(0), tlv(0x31, recipient_info), content_info]
    if mac is None:
        return seq(oid(ENVELOPED_DATA), tlv(0xA0, seq(*parts)))
    if auth_attrs is not None:
        parts.append(bytes((0xA1,)) + auth_attrs[1:])
    parts.append(octets(mac))
    return seq(oid(AUTH_ENVELOPED_DATA), tlv(0xA0, seq(*parts)))


def write_compressed(content: BinaryIO, out: BinaryIO, *, piece: int = 4096, level: int = 6) -> None:
    """Stream ``content`` into ``out`` as BER CompressedData, as ``openssl cms -compress -stream`` writes it.

    Indefinite lengths throughout, and the zlib stream in a constructed OCTET STRING of ``piece``-byte
    chunks; memory stays a piece, whatever the content size.
    """
    indefinite = b"\x80"
    out.write(b"\x30" + indefinite + oid(COMPRESSED_DATA) + b"\xa0" + indefinite)  # ContentInfo, [0]
    out.write(b"\x30" + indefinite + integer(0) + seq(oid(ZLIB)))  # CompressedData: version, algorithm
    out.write(b"\x30" + indefinite + oid(DATA) + b"\xa0" + indefinite + b"\x24" + indefinite)  # eContent
    compressor = zlib.compressobj(level)
    pending = b""
    while data := content.read(1 << 20):
        pending += compressor.compress(data)
        whole = len(pending) - len(pending) % piece
        for start in range(0, whole, piece):
            out.write(octets(pending[start:start + piece]))
        pending = pending[whole:]
    pending += compressor.flush()
    for start in range(0, len(pending), piece):
        out.write(octets(pending[start:start + piece]))
    out.write(b"\x00\x00" * 6)  # OCTET STRING, [0], EncapsulatedContentInfo, CompressedData, [0], ContentInfo


def compressed(content: bytes, *, piece: int = 4096) -> bytes:
    """``content`` as BER CompressedData with the zlib stream in ``piece``-byte chunks."""
    out = io.BytesIO()
    write_compressed(io.BytesIO(content), out, piece=piece)
    return out.getvalue()


#: Run by :func:`asn1crypto_decompressed` in a child process: what pyas2lib's ``decompress_message`` does.
_ASN1CRYPTO_DECOMPRESS = """
import sys
from asn1crypto import cms
info = cms.ContentInfo.load(sys.stdin.buffer.read())
assert info["content_type"].native == "compressed_data", info["content_type"].native
sys.stdout.buffer.write(info["content"].decompressed)
"""


def asn1crypto_decompressed(der: bytes) -> bytes:
    """The content of a CompressedData as asn1crypto (pyas2lib's reader) parses and inflates it.

    In a child process: these tests do not import asn1crypto themselves.
    """
    result = subprocess.run([sys.executable, "-c", _ASN1CRYPTO_DECOMPRESS], input=der, capture_output=True,
                            timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"asn1crypto cannot read the CompressedData: {result.stderr.decode(errors='replace')}")
    return result.stdout
