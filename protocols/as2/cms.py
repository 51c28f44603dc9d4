# -*- test-case-name: tests.protocols.as2.test_cms -*-
"""CMS (RFC 5652) for AS2: encrypt, decrypt, sign, verify, compress — bytes in, values out, or streamed.

``cryptography`` has no CMS verify and its envelope API reads neither BER, 3DES, AES-192, OAEP nor GCM,
all of which partners send (research/as2.md §3). So the ASN.1 is parsed and built here with
``asn1crypto`` — the only module that imports it — and every cryptographic operation is a
``cryptography`` primitive. Every failure is a :class:`CMSError` whose text can go back to the sending
partner.

Reading is streamed: :func:`decrypt_stream`, :func:`verify_stream` and :func:`decompress_stream` read a
message from a binary file and write its content to another in pieces, so memory stays a few pieces
plus the small parts (recipient infos, algorithm identifiers, certificates, signer infos) whatever the
content size. A small BER reader (:class:`_Reader`) walks the framing, streams the content OCTET STRING
(primitive, or constructed at any nesting) and hands only the small parts, as bytes, to ``asn1crypto``.
:func:`decrypt`, :func:`verify` and :func:`decompress` are the same code over in-memory files.

Writing is streamed too: :func:`encrypt_stream` writes DER (every length is known before the content
is read), :func:`compress_stream` writes BER with indefinite lengths (the compressed size is not), and
:func:`sign_digest` signs content the caller hashed. The framing is written here (:func:`_framing`);
only the small constant parts (OIDs, algorithm identifiers, a certificate's issuer and serial number)
come from ``asn1crypto``, once each. :func:`encrypt` and :func:`sign` are the same code over bytes;
:func:`compress` shares the zlib stream and the framing with :func:`compress_stream` but writes DER.
Nothing here does I/O beyond the file objects it is given.

Security notes: decryption failures all read the same (RSA v1.5 implicit rejection, padding, GCM tag);
a signer is accepted only if it is one of the partner's certificates or directly issued by one of the
partner's CAs and valid at ``now``; algorithm sets are allowlists; decompression is capped while it
inflates; no claimed length is trusted before it is checked against the enclosing structure and the
message, and only the small parts are ever held whole (at most :data:`_PART_MAX` bytes each). A
streaming caller must discard what was written to the sink when a function raises: content is written
before the padding, tag or signature at its end has been checked.
"""

import functools
import hmac
import io
import os
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

import attrs
from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from certs.errors import CertificateError
from certs.x509 import PrivateKey, check_issued_by, check_validity

__all__ = [
    "CIPHERS", "DIGESTS", "KEY_TRANSPORTS", "PEEK_BYTES", "AlgorithmRefused", "CMSError", "DecompressionRefused",
    "Decrypted", "DecryptionFailed", "Malformed", "SignatureInvalid", "SignerNotTrusted", "Verified",
    "compress", "compress_stream", "content_kind", "decompress", "decompress_stream", "decrypt", "decrypt_stream",
    "encrypt", "encrypt_stream", "peek_kind", "sign", "sign_digest", "verify", "verify_digests", "verify_stream",
]

CIPHERS = ("3des", "aes128-cbc", "aes192-cbc", "aes256-cbc", "aes128-gcm", "aes256-gcm")
KEY_TRANSPORTS = ("rsa-v1.5", "rsa-oaep-sha1", "rsa-oaep-sha256")
DIGESTS = ("sha1", "sha224", "sha256", "sha384", "sha512")
#: The digests a signature may use unless the caller says otherwise: SHA-1 only when asked for.
_VERIFY_DIGESTS = ("sha256", "sha384", "sha512", "sha224")
#: The default size of the pieces read from a source and written to a sink.
_CHUNK = 1 << 16
#: How many leading bytes :func:`peek_kind` needs: a ContentInfo's header, content type and [0] header.
PEEK_BYTES = 64


class CMSError(Exception):
    """A CMS structure cannot be used; ``str(e)`` is one sentence fit for the sending partner."""


class Malformed(CMSError):
    """The bytes are not the CMS structure expected (unparseable, wrong type, missing parts)."""


class DecryptionFailed(CMSError):
    """The content could not be decrypted; deliberately one message for every cryptographic cause."""


class AlgorithmRefused(CMSError):
    """An algorithm is unknown, legacy, or not in the allowed set; :attr:`algorithm` names it."""

    def __init__(self, algorithm: str, role: str, accepted: Collection[str] = ()) -> None:
        self.algorithm = algorithm
        text = f"the {role} {algorithm} is refused"
        if accepted:
            text += f"; accepted: {', '.join(accepted)}"
        super().__init__(text)


class SignatureInvalid(CMSError):
    """The signature does not match the content: it was changed, or signed with another key."""


class SignerNotTrusted(CMSError):
    """The signer is not one of the trusted certificates, not issued by a trusted CA, or not valid now."""


class DecompressionRefused(CMSError):
    """Decompressing would exceed the size or ratio cap."""


@attrs.frozen
class Decrypted:
    """The content of an EnvelopedData/AuthEnvelopedData and the algorithms that protected it.

    ``content`` is empty when :func:`decrypt_stream` wrote it to its sink.
    """

    content: bytes
    cipher: str
    key_transport: str


@attrs.frozen
class Verified:
    """A signature that verified: who signed, how, and the exact signed bytes.

    ``content`` is empty from :func:`verify_stream` (which wrote it to its sink) and :func:`verify_digests`.
    """

    signer: x509.Certificate
    digest: str
    pss: bool
    content: bytes


class _GCMParameters(core.Sequence):
    """RFC 5084 GCMParameters, which asn1crypto lacks."""

    _fields = [("aes_nonce", core.OctetString), ("aes_icvlen", core.Integer, {"default": 12})]


@attrs.frozen
class _ContentCipher:
    name: str
    oid: str  # asn1crypto's name for the OID
    key_size: int  # bytes
    family: type = algorithms.AES
    gcm: bool = False

    @property
    def block(self) -> int:
        return self.family.block_size // 8


_CONTENT_CIPHERS = {
    c.name: c
    for c in (
        _ContentCipher("3des", "tripledes_3key", 24, TripleDES),
        _ContentCipher("aes128-cbc", "aes128_cbc", 16),
        _ContentCipher("aes192-cbc", "aes192_cbc", 24),
        _ContentCipher("aes256-cbc", "aes256_cbc", 32),
        _ContentCipher("aes128-gcm", "aes128_gcm", 16, gcm=True),
        _ContentCipher("aes256-gcm", "aes256_gcm", 32, gcm=True),
    )
}
_CIPHER_BY_OID = {c.oid: c for c in _CONTENT_CIPHERS.values()}
_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
           "sha512": hashes.SHA512}
# PKCS#1 v1.5 signature OIDs that name their hash; plain rsaEncryption names none.
_RSA_SIGNATURES = {"rsassa_pkcs1v15": None, "sha1_rsa": "sha1", "sha224_rsa": "sha224", "sha256_rsa": "sha256",
                   "sha384_rsa": "sha384", "sha512_rsa": "sha512"}
_LEGACY_NAMES = {"des": "des-cbc", "rc2": "rc2-cbc"}
_KINDS = {"enveloped_data": "enveloped", "authenticated_enveloped_data": "auth-enveloped",
          "signed_data": "signed", "compressed_data": "compressed", "data": "data"}
_UNDECRYPTABLE = "the message could not be decrypted with our private key (wrong key, or damaged in transit)"
# What asn1crypto raises on bad input, lazily, wherever a field is first read.
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError)


@contextmanager
def _parsing() -> Iterator[None]:
    """Turn asn1crypto's errors on bad input into :class:`Malformed`."""
    try:
        yield
    except _PARSE_ERRORS as e:
        raise Malformed(f"the CMS structure cannot be parsed ({' '.join(str(e).split())[:160]})") from None


def _oid_name(oid: core.ObjectIdentifier) -> str:
    """A printable name for an algorithm OID: asn1crypto's name in our spelling, or the dotted form."""
    return _spelled(oid.native, oid.dotted)


def _spelled(name: str, dotted: str) -> str:
    return name if name == dotted else _LEGACY_NAMES.get(name, name.replace("_", "-"))


def _cached_when_small(function: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """Remember ``function``'s results for the last few short encodings it parsed.

    Messages carry the same few content types and digest algorithm sets, so each is parsed once;
    long encodings (a sender's oddity, or an attempt to fill the cache) are parsed every time.
    """
    cached = functools.lru_cache(maxsize=64)(function)
    return functools.wraps(function)(lambda der: cached(der) if len(der) <= 128 else function(der))


@_cached_when_small
def _content_type(der: bytes) -> tuple[str, str]:
    """asn1crypto's name and the dotted form of an encoded content type OID."""
    with _parsing():
        oid = cms.ContentType.load(der, strict=True)
        return oid.native, oid.dotted


@_cached_when_small
def _digest_names(der: bytes) -> tuple[str, ...]:
    """Our names for an encoded SET of digest AlgorithmIdentifiers."""
    with _parsing():
        return tuple(_oid_name(algorithm["algorithm"]) for algorithm in cms.DigestAlgorithms.load(der, strict=True))


def _hash(name: str, accepted: Collection[str], role: str = "digest algorithm") -> hashes.HashAlgorithm:
    if name not in accepted or name not in _HASHES:
        raise AlgorithmRefused(name, role, [d for d in DIGESTS if d in accepted])
    return _HASHES[name]()


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _require_rsa(key, role: str):
    if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        kind = type(key).__name__.removesuffix("PublicKey").removesuffix("PrivateKey").lower()
        raise AlgorithmRefused(kind, role, ["rsa"])
    return key


# --- streamed BER -------------------------------------------------------------------------------------

#: The largest part held whole (recipient infos, certificates, signer infos...); the content is streamed.
_PART_MAX = 1 << 20
#: The deepest nesting of indefinite-length or constructed elements followed.
_DEPTH_MAX = 32
_SEQUENCE, _SET, _INTEGER, _OID, _OCTETS, _OCTETS_CONSTRUCTED = 0x30, 0x31, 0x02, 0x06, 0x04, 0x24
_CONTEXT_0, _CONTEXT_1, _CONTEXT_2, _IMPLICIT_OCTETS_0 = 0xA0, 0xA1, 0xA2, 0x80
_TRUNCATED = "the CMS structure cannot be parsed (it is truncated)"
_NOT_OCTETS = "the CMS content is not an OCTET STRING"
_NO_CONTENT = "the CMS structure carries no content (detached content is not supported here)"


class _Header:
    """The identifier and length of one BER element, and where it ends."""

    __slots__ = ("bound", "done", "end", "length", "raw", "start", "tag")

    def __init__(self, tag: int, raw: bytes, start: int, length: int | None, bound: int | None) -> None:
        self.tag = tag  # the first identifier octet: class, constructed bit, and number (0x1F: a high number)
        self.raw = raw  # the identifier and length octets as they arrived
        self.start = start  # the offset of the identifier
        self.length = length  # None: indefinite
        self.end = None if length is None else start + len(raw) + length
        self.bound = self.end if length is not None else bound  # what the contents cannot pass
        self.done = False  # its end-of-contents octets were read

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


class _Reader:
    """Pull BER elements from a binary file, one header at a time.

    Each length is checked against every enclosing definite length and, when the file can tell its
    size, against the bytes left, before anything is read; so a lying length costs nothing. Whole
    elements are only read for the small parts (capped at :data:`_PART_MAX`); content is streamed in
    pieces of at most ``chunk`` bytes.
    """

    def __init__(self, source: BinaryIO, chunk: int, *, whole: bool = True) -> None:
        """:param whole: ``source`` holds the whole message, so its size bounds every length."""
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of bytes, not {chunk}")
        self._source = source
        self._chunk = chunk
        self.offset = 0
        # What holds the outermost element: the file, as large as it says, if it says.
        self.root = _Header(0, b"", 0, None, _remaining(source) if whole else None)

    def _read(self, size: int) -> bytes:
        data = self._source.read(size)
        if data is None or len(data) < size:  # a raw file may return less than asked: ask until it is at its end
            data = data or b""
            parts = [data]
            got = len(data)
            while got < size and (more := self._source.read(size - got)):
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
            if len(data) < size:
                raise Malformed(_TRUNCATED)
        self.offset += size
        return data

    def next(self, parent: _Header) -> _Header | None:
        """The header of the next element inside ``parent``, or None at its end (and after it)."""
        if parent.done or (parent.end is not None and self.offset == parent.end):
            return None
        start = self.offset
        if parent.bound is not None and start + 2 > parent.bound:
            raise Malformed(_TRUNCATED)
        raw = self._read(2)
        tag, first = raw
        if tag & 0x1F == 0x1F:  # high tag number: its octets, then the first length octet
            number = raw[1:]
            while number[-1] & 0x80:
                if len(number) == 4:
                    raise Malformed("the CMS structure cannot be parsed (a tag number is too large)")
                number += self._read(1)
            first = self._read(1)[0]
            raw += number[1:] + bytes((first,))
        if first < 0x80:
            length: int | None = first
        elif first == 0x80:
            if not tag & 0x20:
                raise Malformed("the CMS structure cannot be parsed (a primitive element has no length)")
            length = None
        else:
            size = first & 0x7F
            if size > 8:  # 0xFF is reserved; anything above 2**64 bytes is absurd
                raise Malformed(f"the CMS structure cannot be parsed (a length of {size} octets)")
            octets = self._read(size)
            raw += octets
            length = int.from_bytes(octets, "big")
        if tag == 0:
            if raw == b"\x00\x00" and parent.end is None and parent is not self.root:
                parent.done = True
                return None
            raise Malformed("the CMS structure cannot be parsed (misplaced end-of-contents octets)")
        header = _Header(tag, raw, start, length, parent.bound)
        if parent.bound is not None and (header.end or self.offset) > parent.bound:
            raise Malformed(_TRUNCATED if parent.bound == self.root.bound else
                            "the CMS structure cannot be parsed (a length runs past its enclosing element)")
        return header

    def expect(self, parent: _Header, tag: int, what: str) -> _Header:
        """The next element inside ``parent``, which must be there and have ``tag``."""
        header = self.next(parent)
        if header is None or header.tag != tag:
            raise Malformed(f"the CMS structure cannot be parsed ({what} expected)")
        return header

    def close(self, *headers: _Header) -> None:
        """Check that each of ``headers`` (innermost first) has no further element."""
        for header in headers:
            if self.next(header) is not None:
                raise Malformed("the CMS structure cannot be parsed (an unexpected element)")

    def finish(self) -> None:
        """Check that nothing follows the outermost element."""
        if self._source.read(1):
            raise Malformed("the CMS structure cannot be parsed (bytes follow its end)")

    def whole(self, header: _Header) -> bytes:
        """The whole encoding of a small element for asn1crypto, its indefinite lengths made definite.

        (asn1crypto misreads an indefinite length inside a CHOICE, such as a RecipientInfo.)
        """
        return self._whole(header, header.start, 0)

    def _whole(self, header: _Header, start: int, depth: int) -> bytes:
        if (header.end or self.offset) - start > _PART_MAX:
            raise Malformed(f"the CMS structure cannot be parsed (a part larger than {_PART_MAX} bytes)")
        if header.length is not None:
            return header.raw + self._read(header.length)
        if depth == _DEPTH_MAX:
            raise Malformed("the CMS structure cannot be parsed (nested too deeply)")
        parts = []
        while (child := self.next(header)) is not None:
            parts.append(self._whole(child, start, depth + 1))
        contents = b"".join(parts)
        return header.raw[:-1] + _length_octets(len(contents)) + contents

    def skip(self, header: _Header, depth: int = 0) -> None:
        """Read past an element that is not needed, holding no more than a piece of it."""
        if header.length is not None:
            for _ in self._pieces(header.length):
                pass
            return
        if depth == _DEPTH_MAX:
            raise Malformed("the CMS structure cannot be parsed (nested too deeply)")
        while (child := self.next(header)) is not None:
            self.skip(child, depth + 1)

    def _pieces(self, size: int) -> Iterator[bytes]:
        while size:
            piece = self._read(min(size, self._chunk))
            size -= len(piece)
            yield piece

    def octets(self, header: _Header, write: Callable[[bytes], object], depth: int = 0) -> None:
        """Stream the contents of an OCTET STRING (primitive, or constructed at any nesting) to ``write``."""
        if not header.constructed:
            for piece in self._pieces(header.length):
                write(piece)
            return
        if depth == _DEPTH_MAX:
            raise Malformed("the CMS structure cannot be parsed (nested too deeply)")
        while (child := self.next(header)) is not None:
            if child.tag not in (_OCTETS, _OCTETS_CONSTRUCTED):
                raise Malformed(_NOT_OCTETS)
            self.octets(child, write, depth + 1)


def _length_octets(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


# --- streamed DER and BER writing ---------------------------------------------------------------------

_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_VERSION_0, _VERSION_1 = b"\x02\x01\x00", b"\x02\x01\x01"
#: End-of-contents octets: what closes an indefinite length.
_EOC = b"\x00\x00"


def _der(tag: int, *parts: bytes) -> bytes:
    """One element with a definite length: ``tag`` (a single identifier octet) around the joined ``parts``."""
    contents = b"".join(parts)
    return bytes((tag,)) + _length_octets(len(contents)) + contents


#: One constructed element around the streamed content: its tag, the encoding that starts its contents,
#: and the size of the encoding the caller writes after the streamed content to end them.
_Layer = tuple[int, bytes, int]


def _framing(layers: Sequence[_Layer], size: int | None) -> tuple[bytes, bytes, int | None]:
    """What surrounds ``size`` bytes of streamed content nested in ``layers`` (outermost first).

    :returns: what to write before the content, what to write after it (and after each layer's own
        closing encoding, which only DER layers have), and the size of the whole encoding (None when
        unknown). With ``size`` None every layer has an indefinite length, a primitive tag becomes the
        constructed one (the caller writes the chunks of the OCTET STRING) and what follows the content
        is the end-of-contents octets.
    """
    prefix = []
    if size is None:
        for tag, before, after in layers:
            if after:
                raise ValueError("an indefinite-length layer is closed by its end-of-contents octets only")
            prefix += (bytes((tag | 0x20, 0x80)), before)
        return b"".join(prefix), _EOC * len(layers), None
    total = size
    for tag, before, after in reversed(layers):
        contents = len(before) + total + after
        header = bytes((tag,)) + _length_octets(contents)
        prefix += (before, header)
        total = len(header) + contents
    return b"".join(reversed(prefix)), b"", total


def _pieces_of(source: BinaryIO, size: int, chunk: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of ``source``, in pieces of at most ``chunk`` bytes."""
    remaining = size
    while remaining:
        piece = source.read(min(remaining, chunk))
        if not piece:
            raise ValueError(f"the source ended after {size - remaining} of the {size} bytes announced")
        remaining -= len(piece)
        yield piece


@functools.cache
def _content_type_der(name: str) -> bytes:
    """The DER of a content type OID (asn1crypto's name), made once."""
    return cms.ContentType(name).dump()


@functools.cache
def _attribute_type_der(name: str) -> bytes:
    """The DER of a CMS attribute type OID (asn1crypto's name), made once."""
    return cms.CMSAttributeType(name).dump()


@functools.cache
def _cipher_oid_der(name: str) -> bytes:
    """The DER of a content encryption algorithm OID (asn1crypto's name), made once."""
    return algos.EncryptionAlgorithmId(name).dump()


@functools.lru_cache(maxsize=32)
def _issuer_and_serial_der(cert: x509.Certificate) -> bytes:
    """The DER IssuerAndSerialNumber naming ``cert``: its issuer's bytes as the certificate has them."""
    return _issuer_and_serial(cert).dump()


def _remaining(source: BinaryIO) -> int | None:
    """How many bytes ``source`` holds from where it stands, if it can tell."""
    try:
        if not source.seekable():
            return None
        here = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end - here


def _open(reader: _Reader, *expected: str) -> tuple[str, _Header, _Header]:
    """Read a ContentInfo up to its content; return its kind, its SEQUENCE and its [0] header."""
    outer = reader.next(reader.root)
    if outer is None or outer.tag != _SEQUENCE:
        raise Malformed("the CMS structure cannot be parsed (a ContentInfo SEQUENCE expected)")
    name, dotted = _content_type(reader.whole(reader.expect(outer, _OID, "a content type")))
    kind = _KINDS.get(name)
    if kind is None:
        raise Malformed(f"CMS content type {_spelled(name, dotted)} is not supported")
    if expected and kind not in expected:
        raise Malformed(f"expected CMS {' or '.join(expected)} data, got {kind} data")
    explicit = reader.next(outer)
    if explicit is None:
        raise Malformed(f"the CMS {kind} structure has no content")
    if explicit.tag != _CONTEXT_0:
        raise Malformed("the CMS structure cannot be parsed (the [0] content expected)")
    return kind, outer, explicit


def _content_octets(reader: _Reader, parent: _Header) -> _Header:
    """The OCTET STRING inside an explicit [0] eContent (``parent``), whose contents are next to read."""
    content = reader.next(parent)
    if content is None:
        raise Malformed("the CMS structure cannot be parsed (an empty [0] content)")
    if content.tag not in (_OCTETS, _OCTETS_CONSTRUCTED):
        raise Malformed(_NOT_OCTETS)
    return content


def peek_kind(prefix: bytes) -> str:
    """Which CMS structure a message holds, from its first :data:`PEEK_BYTES` bytes (or all, if fewer).

    Only the ContentInfo's header and content type are read, so a stream can be dispatched to
    :func:`decrypt_stream`, :func:`verify_stream` or :func:`decompress_stream` before it is read whole;
    those check the rest.

    :returns: as :func:`content_kind`.
    :raises Malformed: when the prefix does not start a ContentInfo of a supported type.
    """
    return _open(_Reader(io.BytesIO(prefix), _CHUNK, whole=False))[0]


def content_kind(der: bytes) -> str:
    """Which CMS structure ``der`` (DER or BER) holds.

    :returns: ``"enveloped"``, ``"auth-enveloped"``, ``"signed"``, ``"compressed"`` or ``"data"``.
    :raises Malformed: when it is not a ContentInfo of one of those types.
    """
    reader = _Reader(io.BytesIO(der), _CHUNK)
    kind, outer, explicit = _open(reader)
    content = reader.next(explicit)
    if content is None:
        raise Malformed("the CMS structure cannot be parsed (an empty [0] content)")
    reader.skip(content)
    reader.close(explicit, outer)
    reader.finish()
    return kind


# --- recipients and signers -------------------------------------------------------------------------


def _key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _identifies(identifier, cert: x509.Certificate) -> bool:
    """Whether a RecipientIdentifier/SignerIdentifier (issuer+serial or SKI) names ``cert``."""
    if identifier.name == "subject_key_identifier":
        return identifier.chosen.native == _key_id(cert)
    wanted = identifier.chosen
    if wanted["serial_number"].native != cert.serial_number:
        return False
    # Senders copy the issuer's bytes from the certificate; RFC 5280 name matching (slow) is the fallback.
    issuer = cert.issuer.public_bytes()
    return wanted["issuer"].dump() == issuer or wanted["issuer"] == asn1_x509.Name.load(issuer)


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    tbs = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))["tbs_certificate"]
    return cms.IssuerAndSerialNumber({"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]})


# --- encryption ---------------------------------------------------------------------------------------


def _key_transport(algorithm) -> tuple[str, rsa_padding.AsymmetricPadding]:
    """Our name and the padding for a KeyEncryptionAlgorithm, params read from the message."""
    oid = algorithm["algorithm"]
    if oid.native == "rsaes_pkcs1v15":
        return "rsa-v1.5", rsa_padding.PKCS1v15()
    if oid.native != "rsaes_oaep":
        raise AlgorithmRefused(_oid_name(oid), "key transport algorithm", KEY_TRANSPORTS)
    params = algorithm["parameters"]
    if isinstance(params, core.Void):  # absent: all RFC 4055 defaults
        params = algos.RSAESOAEPParams.load(b"\x30\x00")
    hash_name = _oid_name(params["hash_algorithm"]["algorithm"])
    if hash_name not in _HASHES:
        raise AlgorithmRefused(f"rsa-oaep-{hash_name}", "key transport algorithm", KEY_TRANSPORTS)
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise AlgorithmRefused(_oid_name(mgf["algorithm"]), "OAEP mask generation function", ["mgf1"])
    mgf_hash = _hash(_oid_name(mgf["parameters"]["algorithm"]), DIGESTS, "OAEP MGF1 digest")
    label = params["p_source_algorithm"]["parameters"].native or None
    return f"rsa-oaep-{hash_name}", rsa_padding.OAEP(rsa_padding.MGF1(mgf_hash), _HASHES[hash_name](), label)


def _content_cipher(algorithm, gcm: bool) -> tuple[_ContentCipher, bytes, int]:
    """The cipher, IV/nonce and tag length of a ContentEncryptionAlgorithmIdentifier."""
    oid = algorithm["algorithm"]
    cipher = _CIPHER_BY_OID.get(oid.native)
    if cipher is None:
        raise AlgorithmRefused(_oid_name(oid), "content encryption algorithm", CIPHERS)
    if cipher.gcm != gcm:
        raise Malformed(f"{cipher.name} cannot protect {'AuthEnvelopedData' if gcm else 'EnvelopedData'}")
    if cipher.gcm:
        params = _GCMParameters.load(algorithm["parameters"].dump())
        iv, tag_length = params["aes_nonce"].native, params["aes_icvlen"].native
        if not 12 <= tag_length <= 16 or not 8 <= len(iv) <= 128:
            raise Malformed(f"bad {cipher.name} parameters (nonce {len(iv)} bytes, tag {tag_length} bytes)")
        return cipher, iv, tag_length
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes) or len(iv) != cipher.block:
        raise Malformed(f"bad {cipher.name} parameters (the IV must be {cipher.block} bytes)")
    return cipher, iv, 0


def _find_recipient(infos, recipients: Sequence[tuple[PrivateKey, x509.Certificate]]):
    for key, cert in recipients:
        for info in infos:
            if info.name == "ktri" and _identifies(info.chosen["rid"], cert):
                return info.chosen, key
    raise DecryptionFailed("the message is not encrypted for any of our certificates")


def _content_key(key, encrypted_key: bytes, key_padding, cipher: _ContentCipher) -> bytes:
    try:
        cek = key.decrypt(encrypted_key, key_padding)
    except ValueError:
        raise DecryptionFailed(_UNDECRYPTABLE) from None
    if len(cek) != cipher.key_size:  # RSA v1.5 implicit rejection returns random bytes, not an error
        raise DecryptionFailed(_UNDECRYPTABLE)
    return cek


class _Decryption:
    """Ciphertext pieces in, plaintext out to the sink; the padding or tag is checked by :meth:`finish`.

    CBC keeps its last plaintext block back until the end, where its padding is removed.
    """

    def __init__(self, cipher: _ContentCipher, cek: bytes, iv: bytes, tag_length: int, sink: BinaryIO) -> None:
        self._cek = cek
        self._iv = iv
        self._sink = sink
        # only GCM with authenticated attributes reads the sink back (see _check_tag_with)
        self._start = sink.tell() if cipher.gcm and getattr(sink, "seekable", lambda: False)() else None
        self._held = b""
        self.size = 0  # ciphertext bytes so far
        if cipher.gcm:
            self._keep = 0
            self._decryptor = Cipher(algorithms.AES(cek), modes.GCM(iv, min_tag_length=tag_length)).decryptor()
        else:
            self._keep = cipher.block
            self._decryptor = Cipher(cipher.family(cek), modes.CBC(iv)).decryptor()

    def update(self, ciphertext: bytes) -> None:
        self.size += len(ciphertext)
        plain = self._decryptor.update(ciphertext)
        if not plain:  # CBC hands out whole blocks: nothing, or at least the one block kept back
            return
        if self._held:
            self._sink.write(self._held)
        cut = len(plain) - self._keep
        self._sink.write(plain[:cut])
        self._held = plain[cut:]

    def finish(self, tag: bytes | None, aad: bytes | None) -> None:
        try:
            if tag is None:
                self._decryptor.finalize()
                unpadder = padding.PKCS7(self._keep * 8).unpadder()
                self._sink.write(unpadder.update(self._held) + unpadder.finalize())
                return
            if aad is None:
                self._decryptor.finalize_with_tag(tag)
                return
            self._check_tag_with(aad, tag)
        except (ValueError, InvalidTag):
            raise DecryptionFailed(_UNDECRYPTABLE) from None

    def _check_tag_with(self, aad: bytes, tag: bytes) -> None:
        """Check a GCM tag over authenticated attributes that arrived *after* the content.

        A GCM decryptor wants its AAD first, but AuthEnvelopedData puts the attributes behind the
        content. GCM's keystream does not depend on the AAD, so the plaintext already in the sink is
        right; the tag is checked by encrypting that plaintext again with the same key, nonce and AAD
        (which gives back the received ciphertext and its tag) and comparing tags in constant time.
        The sink must therefore be readable and seekable, as a scratch file is.
        """
        if self._start is None:
            raise Malformed("authenticated attributes in an AuthEnvelopedData need a seekable sink")
        encryptor = Cipher(algorithms.AES(self._cek), modes.GCM(self._iv)).encryptor()
        encryptor.authenticate_additional_data(aad)
        end = self._sink.tell()
        self._sink.seek(self._start)
        remaining = end - self._start
        while remaining:
            piece = self._sink.read(min(remaining, _CHUNK))
            if not piece:
                raise DecryptionFailed(_UNDECRYPTABLE)
            encryptor.update(piece)
            remaining -= len(piece)
        encryptor.finalize()
        self._sink.seek(end)
        if not hmac.compare_digest(encryptor.tag[: len(tag)], tag):
            raise DecryptionFailed(_UNDECRYPTABLE)


def decrypt_stream(
    source: BinaryIO,
    sink: BinaryIO,
    recipients: Sequence[tuple[PrivateKey, x509.Certificate]],
    *,
    ciphers: Collection[str] = CIPHERS,
    key_transports: Collection[str] = KEY_TRANSPORTS,
    chunk: int = _CHUNK,
) -> Decrypted:
    """Decrypt an EnvelopedData or AuthEnvelopedData (DER or BER) read from ``source`` into ``sink``.

    ``source`` stands at the start of the ContentInfo, which must end the file. The content is written
    to ``sink`` in pieces as it is decrypted; on any error the caller must discard what ``sink`` got.

    :param recipients: our (key, certificate) pairs; several during a key rollover. The RecipientInfo
        is matched by issuer and serial number or by subject key identifier.
    :param ciphers: the content ciphers accepted (from :data:`CIPHERS`).
    :param key_transports: the key transports accepted (from :data:`KEY_TRANSPORTS`).
    :param chunk: the largest piece read or decrypted at once.
    :returns: the algorithms used (``content`` is empty: it went to ``sink``).
    :raises Malformed: not an envelope, or broken structure (truncated, trailing bytes...).
    :raises AlgorithmRefused: a cipher or key transport not in the allowed sets, or legacy/unknown.
    :raises DecryptionFailed: no RecipientInfo for our certificates, or the decryption failed — the
        latter with one message whatever the cause, so failures reveal nothing about the key.
    """
    reader = _Reader(source, chunk)
    kind, outer, explicit = _open(reader, "enveloped", "auth-enveloped")
    gcm = kind == "auth-enveloped"
    envelope = reader.expect(explicit, _SEQUENCE, "an envelope SEQUENCE")
    reader.skip(reader.expect(envelope, _INTEGER, "a version"))
    part = reader.next(envelope)
    if part is not None and part.tag == _CONTEXT_0:  # originatorInfo: key agreement only, unused by key transport
        reader.skip(part)
        part = reader.next(envelope)
    if part is None or part.tag != _SET:
        raise Malformed("the CMS structure cannot be parsed (the recipient infos expected)")
    recipient_infos = reader.whole(part)
    info = reader.expect(envelope, _SEQUENCE, "the encrypted content info")
    reader.skip(reader.expect(info, _OID, "a content type"))
    algorithm = reader.whole(reader.expect(info, _SEQUENCE, "the content encryption algorithm"))
    with _parsing():
        cipher, iv, tag_length = _content_cipher(algos.EncryptionAlgorithm.load(algorithm, strict=True), gcm)
        if cipher.name not in ciphers:
            raise AlgorithmRefused(cipher.name, "content encryption algorithm", [c for c in CIPHERS if c in ciphers])
        recipient, key = _find_recipient(cms.RecipientInfos.load(recipient_infos, strict=True), recipients)
        transport, key_padding = _key_transport(recipient["key_encryption_algorithm"])
        if transport not in key_transports:
            accepted = [t for t in KEY_TRANSPORTS if t in key_transports]
            raise AlgorithmRefused(transport, "key transport algorithm", accepted)
        encrypted_key = recipient["encrypted_key"].native
    _require_rsa(key, "decryption key type")
    cek = _content_key(key, encrypted_key, key_padding, cipher)
    content = reader.next(info)
    if content is None:
        raise Malformed(_NO_CONTENT)
    if content.tag not in (_IMPLICIT_OCTETS_0, _IMPLICIT_OCTETS_0 | 0x20):
        raise Malformed(_NOT_OCTETS)
    decryption = _Decryption(cipher, cek, iv, tag_length, sink)
    reader.octets(content, decryption.update)
    reader.close(info)
    tag = aad = None
    part = reader.next(envelope)
    if gcm:
        auth_attrs = None
        if part is not None and part.tag == _CONTEXT_1:
            auth_attrs = reader.whole(part)
            part = reader.next(envelope)
        if part is None or part.tag not in (_OCTETS, _OCTETS_CONSTRUCTED):
            raise Malformed("the CMS structure cannot be parsed (the authentication tag expected)")
        mac = reader.whole(part)
        with _parsing():
            tag = core.OctetString.load(mac, strict=True).native
            if auth_attrs is not None:
                aad = cms.CMSAttributes.load(auth_attrs, strict=True, implicit=1).untag().dump(force=True)
        if len(tag) != tag_length:
            raise Malformed(f"the authentication tag is {len(tag)} bytes, its parameters say {tag_length}")
        part = reader.next(envelope)
        if part is not None and part.tag == _CONTEXT_2:  # unauthAttrs
            reader.skip(part)
            part = reader.next(envelope)
    elif part is not None and part.tag == _CONTEXT_1:  # unprotectedAttrs
        reader.skip(part)
        part = reader.next(envelope)
    if part is not None:
        raise Malformed("the CMS structure cannot be parsed (an unexpected element)")
    reader.close(explicit, outer)
    reader.finish()
    decryption.finish(tag, aad)
    return Decrypted(b"", cipher.name, transport)


def decrypt(
    der: bytes,
    recipients: Sequence[tuple[PrivateKey, x509.Certificate]],
    *,
    ciphers: Collection[str] = CIPHERS,
    key_transports: Collection[str] = KEY_TRANSPORTS,
) -> Decrypted:
    """Decrypt an EnvelopedData or AuthEnvelopedData (DER or BER) for one of our key pairs.

    :func:`decrypt_stream` over bytes: the same parameters, checks and errors.
    """
    sink = io.BytesIO()
    decrypted = decrypt_stream(io.BytesIO(der), sink, recipients, ciphers=ciphers, key_transports=key_transports)
    return attrs.evolve(decrypted, content=sink.getvalue())


@functools.cache
def _key_encryption(key_transport: str) -> tuple[bytes, rsa_padding.AsymmetricPadding]:
    """The DER KeyEncryptionAlgorithmIdentifier of a key transport and its padding, made once.

    The padding is read back from the encoding, as a recipient reads it, so the two cannot disagree.
    """
    if key_transport == "rsa-v1.5":
        algorithm = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    else:
        digest = key_transport.removeprefix("rsa-oaep-")
        # Always explicit parameters: OpenSSL derives a garbage key when they are absent. For SHA-1 the
        # DER of all-default parameters is the empty SEQUENCE.
        params = algos.RSAESOAEPParams(
            {"hash_algorithm": {"algorithm": digest},
             "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": digest}}}
        )
        algorithm = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": params})
    der = algorithm.dump()
    return der, _key_transport(cms.KeyEncryptionAlgorithm.load(der))[1]


#: The GCM tag written: 16 bytes, and its OCTET STRING.
_GCM_TAG = 16
_GCM_MAC_SIZE = 2 + _GCM_TAG


def encrypt_stream(source: BinaryIO, size: int, sink: BinaryIO, recipient: x509.Certificate, *,
                   cipher: str = "aes256-cbc", key_transport: str = "rsa-v1.5", chunk: int = _CHUNK) -> int:
    """Encrypt ``size`` bytes read from ``source`` for ``recipient``, writing a DER ContentInfo to ``sink``.

    EnvelopedData, or AuthEnvelopedData for GCM ciphers. OAEP carries explicit RSAES-OAEP-params (hash
    and MGF1 with the same digest); GCM carries explicit GCMParameters (12-byte nonce, 16-byte tag).
    Every length is known before the content is read (CBC pads to the next whole block, GCM adds
    nothing but the tag after the content), so the output is DER, written as the content is encrypted
    in pieces of at most ``chunk`` bytes: memory stays a few pieces whatever ``size``. Exactly ``size``
    bytes are read; ``source`` may hold more. On any error the caller must discard what ``sink`` got.

    :returns: the number of bytes written.
    :raises AlgorithmRefused: an unknown cipher or key transport, or a non-RSA certificate.
    :raises ValueError: ``source`` ends before ``size`` bytes; a negative ``size``, a ``chunk`` under 1.
    """
    spec = _CONTENT_CIPHERS.get(cipher)
    if spec is None:
        raise AlgorithmRefused(cipher, "content encryption algorithm", CIPHERS)
    if key_transport not in KEY_TRANSPORTS:
        raise AlgorithmRefused(key_transport, "key transport algorithm", KEY_TRANSPORTS)
    public_key = _require_rsa(recipient.public_key(), "recipient key type")
    if size < 0 or chunk < 1:
        raise ValueError(f"size must be at least 0 bytes and chunk at least 1, not {size} and {chunk}")
    cek = os.urandom(spec.key_size)
    if spec.gcm:
        nonce = os.urandom(12)
        params = _der(_SEQUENCE, _der(_OCTETS, nonce), _der(_INTEGER, bytes((_GCM_TAG,))))
        encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        padder = None
        encrypted_size, after = size, _GCM_MAC_SIZE
    else:
        iv = os.urandom(spec.block)
        params = _der(_OCTETS, iv)
        encryptor = Cipher(spec.family(cek), modes.CBC(iv)).encryptor()
        padder = padding.PKCS7(spec.family.block_size).padder()
        encrypted_size, after = size + spec.block - size % spec.block, 0
    key_algorithm, key_padding = _key_encryption(key_transport)
    recipient_info = _der(_SEQUENCE, _VERSION_0, _issuer_and_serial_der(recipient), key_algorithm,
                          _der(_OCTETS, public_key.encrypt(cek, key_padding)))
    content_encryption = _der(_SEQUENCE, _cipher_oid_der(spec.oid), params)
    prefix, _, total = _framing(
        [
            (_SEQUENCE, _content_type_der("authenticated_enveloped_data" if spec.gcm else "enveloped_data"), 0),
            (_CONTEXT_0, b"", 0),
            (_SEQUENCE, _VERSION_0 + _der(_SET, recipient_info), after),  # [Auth]EnvelopedData
            (_SEQUENCE, _content_type_der("data") + content_encryption, 0),  # [Auth]EncryptedContentInfo
            (_IMPLICIT_OCTETS_0, b"", 0),  # encryptedContent
        ],
        encrypted_size,
    )
    sink.write(prefix)
    written = 0
    for piece in _pieces_of(source, size, chunk):
        out = encryptor.update(piece if padder is None else padder.update(piece))
        sink.write(out)
        written += len(out)
    out = encryptor.update(padder.finalize()) + encryptor.finalize() if padder else encryptor.finalize()
    sink.write(out)
    written += len(out)
    if written != encrypted_size:  # cannot happen: the lengths above were written for encrypted_size
        raise RuntimeError(f"{written} bytes encrypted where {encrypted_size} were framed")
    if spec.gcm:
        sink.write(_der(_OCTETS, encryptor.tag))
    return total


def encrypt(content: bytes, recipient: x509.Certificate, *, cipher: str = "aes256-cbc",
            key_transport: str = "rsa-v1.5") -> bytes:
    """Encrypt ``content`` for ``recipient``: DER EnvelopedData, or AuthEnvelopedData for GCM ciphers.

    :func:`encrypt_stream` over bytes: the same algorithms, encodings and errors.
    """
    sink = io.BytesIO()
    encrypt_stream(io.BytesIO(content), len(content), sink, recipient, cipher=cipher, key_transport=key_transport,
                   chunk=max(len(content), 1))
    return sink.getvalue()


# --- signatures ---------------------------------------------------------------------------------------


@functools.cache
def _digest_algorithm_der(digest: str) -> bytes:
    """The DER DigestAlgorithmIdentifier of a digest, made once."""
    return algos.DigestAlgorithm({"algorithm": digest}).dump()


@functools.cache
def _signature_algorithm(digest: str, pss: bool) -> tuple[bytes, rsa_padding.AsymmetricPadding]:
    """The DER SignatureAlgorithmIdentifier and the padding of an RSA signature with ``digest``, made once.

    PSS carries explicit RSASSA-PSS-params: salt length = digest length, MGF1 with the same digest.
    """
    if not pss:
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}).dump(), rsa_padding.PKCS1v15()
    algorithm = _HASHES[digest]()
    params = {"hash_algorithm": {"algorithm": digest},
              "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": digest}},
              "salt_length": algorithm.digest_size}
    der = algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": algos.RSASSAPSSParams(params)}).dump()
    return der, rsa_padding.PSS(rsa_padding.MGF1(algorithm), algorithm.digest_size)


def _signed_attributes(content_digest: bytes, now: datetime) -> bytes:
    """The DER SET of the signed attributes: content-type data, signing-time ``now``, message-digest.

    A SET OF is DER only with its elements sorted by their encodings. The signing time is a UTCTime
    from 1950 to 2049 and a GeneralizedTime otherwise (RFC 5652 §11.3), in whole seconds.
    """
    if 1950 <= now.year < 2050:
        time = _der(_UTC_TIME, now.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    else:
        time = _der(_GENERALIZED_TIME, now.strftime("%Y%m%d%H%M%SZ").encode("ascii"))
    attributes = (
        _der(_SEQUENCE, _attribute_type_der("content_type"), _der(_SET, _content_type_der("data"))),
        _der(_SEQUENCE, _attribute_type_der("signing_time"), _der(_SET, time)),
        _der(_SEQUENCE, _attribute_type_der("message_digest"), _der(_SET, _der(_OCTETS, content_digest))),
    )
    return _der(_SET, *sorted(attributes))


def _signed_data(content_digest: bytes, key: PrivateKey, certificate: x509.Certificate, digest: str, pss: bool,
                 chain: Sequence[x509.Certificate], content: bytes | None) -> bytes:
    """A DER SignedData over content whose ``digest`` is ``content_digest``, carrying ``content`` unless None.

    The one implementation behind :func:`sign` and :func:`sign_digest`.
    """
    algorithm = _hash(digest, DIGESTS)
    _require_rsa(key, "signing key type")
    if len(content_digest) != algorithm.digest_size:
        raise ValueError(f"a {digest} digest is {algorithm.digest_size} bytes, not {len(content_digest)}")
    signed_attrs = _signed_attributes(content_digest, datetime.now(UTC))
    signature_algorithm, signature_padding = _signature_algorithm(digest, pss)
    signature = key.sign(signed_attrs, signature_padding, algorithm)
    digest_algorithm = _digest_algorithm_der(digest)
    signer_info = _der(
        _SEQUENCE, _VERSION_1, _issuer_and_serial_der(certificate), digest_algorithm,
        bytes((_CONTEXT_0,)) + signed_attrs[1:],  # [0] IMPLICIT: the same length and contents
        signature_algorithm, _der(_OCTETS, signature),
    )
    encapsulated = [_content_type_der("data")]
    if content is not None:
        encapsulated.append(_der(_CONTEXT_0, _der(_OCTETS, content)))
    certificates = sorted(c.public_bytes(serialization.Encoding.DER) for c in (certificate, *chain))  # a SET OF
    signed = _der(
        _SEQUENCE, _VERSION_1, _der(_SET, digest_algorithm), _der(_SEQUENCE, *encapsulated),
        _der(_CONTEXT_0, *certificates), _der(_SET, signer_info),
    )
    return _der(_SEQUENCE, _content_type_der("signed_data"), _der(_CONTEXT_0, signed))


def sign_digest(content_digest: bytes, key: PrivateKey, certificate: x509.Certificate, *, digest: str = "sha256",
                pss: bool = False, chain: Sequence[x509.Certificate] = ()) -> bytes:
    """A detached DER SignedData for content the caller hashed with ``digest``: as :func:`sign` with
    ``detached=True``, for content too large to hold (hash it while it streams).

    :param content_digest: the ``digest`` of the exact bytes signed.
    :raises AlgorithmRefused: an unknown digest or a non-RSA key.
    :raises ValueError: ``content_digest`` is not as long as a ``digest`` digest.
    """
    return _signed_data(content_digest, key, certificate, digest, pss, chain, None)


def sign(content: bytes, key: PrivateKey, certificate: x509.Certificate, *, digest: str = "sha256",
         pss: bool = False, detached: bool = True, chain: Sequence[x509.Certificate] = ()) -> bytes:
    """Sign ``content``: DER SignedData with content-type, signing-time and message-digest attributes.

    The signer's certificate and ``chain`` are included. PSS carries explicit RSASSA-PSS-params (salt
    length = digest length, MGF1 with the same digest). SHA-1 is allowed for legacy partners.

    :param detached: leave the content out (AS2 multipart/signed) or encapsulate it.
    :raises AlgorithmRefused: an unknown digest or a non-RSA key.
    """
    content_digest = _digest(_hash(digest, DIGESTS), content)
    return _signed_data(content_digest, key, certificate, digest, pss, chain, None if detached else content)


def _single_attribute(attributes, name: str):
    values = [a["values"] for a in attributes if a["type"].native == name]
    if len(values) != 1 or len(values[0]) != 1:
        raise Malformed(f"the signed attributes must hold exactly one {name.replace('_', '-')} value")
    return values[0][0]


def _signer_certificate(signer_id, trusted, embedded, cas, now: datetime) -> x509.Certificate:
    """The certificate ``signer_id`` names, if it is trusted and valid at ``now``."""
    with _parsing():
        cert = next((c for c in trusted if _identifies(signer_id, c)), None)
        exact = cert is not None
        if cert is None:
            carried = (x509.load_der_x509_certificate(c.chosen.dump()) for c in embedded if c.name == "certificate")
            cert = next((c for c in carried if _identifies(signer_id, c)), None)
    if cert is None:
        raise SignerNotTrusted("the signer's certificate is neither one of the trusted certificates nor included")
    subject = cert.subject.rfc4514_string()
    try:
        if exact:
            check_validity(cert, now, "its certificate")
        elif not cas:
            raise SignerNotTrusted(f"the signer {subject} is not one of the trusted certificates")
        else:
            check_issued_by(cert, cas, now, "its certificate")
    except CertificateError as e:
        raise SignerNotTrusted(f"the signer {subject} is not trusted: {e}") from None
    return cert


def _signature_padding(algorithm, digest: str) -> rsa_padding.AsymmetricPadding:
    """The padding of a SignerInfo's signatureAlgorithm, checked against its digest algorithm."""
    oid = algorithm["algorithm"]
    if oid.native in _RSA_SIGNATURES:
        named = _RSA_SIGNATURES[oid.native]
        if named not in (None, digest):
            raise Malformed(f"the signature algorithm {_oid_name(oid)} does not match the digest {digest}")
        return rsa_padding.PKCS1v15()
    if oid.native != "rsassa_pss":
        raise AlgorithmRefused(_oid_name(oid), "signature algorithm", ["rsa", "rsassa-pss"])
    params = algorithm["parameters"]
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].native != "mgf1":
        raise AlgorithmRefused(_oid_name(mgf["algorithm"]), "PSS mask generation function", ["mgf1"])
    pss_hash = _oid_name(params["hash_algorithm"]["algorithm"])
    if pss_hash != digest:
        raise Malformed(f"the PSS digest {pss_hash} does not match the digest {digest}")
    if params["trailer_field"].native != "trailer_field_bc":
        raise Malformed("the PSS trailer field must be 1")
    mgf_hash = _hash(_oid_name(mgf["parameters"]["algorithm"]), DIGESTS, "PSS MGF1 digest")
    return rsa_padding.PSS(rsa_padding.MGF1(mgf_hash), params["salt_length"].native)



def _verify_signer(signer_info, content_digest: Callable[[str], bytes], content_type: tuple[str, str], embedded,
                   trusted, cas, digests, now: datetime) -> Verified:
    with _parsing():
        digest = _oid_name(signer_info["digest_algorithm"]["algorithm"])
        algorithm = _hash(digest, digests)
        signature_padding = _signature_padding(signer_info["signature_algorithm"], digest)
        signer_id = signer_info["sid"]
    cert = _signer_certificate(signer_id, trusted, embedded, cas, now)
    public_key = _require_rsa(cert.public_key(), "signer key type")
    digested = content_digest(digest)
    with _parsing():
        signed_attrs = signer_info["signed_attrs"]
        signature = signer_info["signature"].native
        if isinstance(signed_attrs, core.Void):
            if content_type[0] != "data":
                raise Malformed("signed attributes are required for content other than data")
            signed, signed_algorithm = digested, Prehashed(algorithm)
        else:
            if _single_attribute(signed_attrs, "content_type").dotted != content_type[1]:
                raise SignatureInvalid("the signed content-type attribute does not match the content type")
            claimed = _single_attribute(signed_attrs, "message_digest").native
            if not hmac.compare_digest(claimed, digested):
                raise SignatureInvalid("the message digest does not match the content: the content was changed")
            # The signature covers the DER of the attributes as a SET, whatever encoding arrived. Most senders
            # send DER: the received bytes with the SET tag are tried first, re-encoding (slow) only if need be.
            received = signed_attrs.dump()
            signed = b"\x31" + received[1:] if received[1:2] != b"\x80" else None
            signed_algorithm = algorithm
    try:
        try:
            public_key.verify(signature, signed or b"", signature_padding, signed_algorithm)
        except InvalidSignature:
            if isinstance(signed_attrs, core.Void):
                raise
            with _parsing():
                der = signed_attrs.untag().dump(force=True)
            if der == signed:
                raise
            public_key.verify(signature, der, signature_padding, signed_algorithm)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(
            f"the signature by {cert.subject.rfc4514_string()} does not verify: the content or signature was changed"
        ) from None
    return Verified(cert, digest, isinstance(signature_padding, rsa_padding.PSS), b"")


#: Handed the eContent OCTET STRING (None when detached), next to be read, and the digests to compute;
#: returns the content's digest by name.
_ContentHandler = Callable[[_Header | None, list[str]], Callable[[str], bytes]]


def _verify_signed(reader: _Reader, on_content: _ContentHandler, *, trusted: Sequence[x509.Certificate],
                   cas: Sequence[x509.Certificate], digests: Collection[str], now: datetime) -> Verified:
    """Read a SignedData and verify it: the one implementation behind every verify function."""
    _, outer, explicit = _open(reader, "signed")
    signed = reader.expect(explicit, _SEQUENCE, "a SignedData SEQUENCE")
    reader.skip(reader.expect(signed, _INTEGER, "a version"))
    algorithms = reader.whole(reader.expect(signed, _SET, "the digest algorithms"))
    encapsulated = reader.expect(signed, _SEQUENCE, "the encapsulated content info")
    content_type = _content_type(reader.whole(reader.expect(encapsulated, _OID, "a content type")))
    announced = _digest_names(algorithms)
    computed = list(dict.fromkeys(name for name in announced if name in digests and name in _HASHES))
    if announced and not computed:  # no signer can be verified: refuse before reading the content
        _hash(announced[0], digests)
    explicit_content = reader.next(encapsulated)
    if explicit_content is None:
        content_digest = on_content(None, computed)
    elif explicit_content.tag != _CONTEXT_0:
        raise Malformed("the CMS structure cannot be parsed (the [0] content expected)")
    else:
        content_digest = on_content(_content_octets(reader, explicit_content), computed)
        reader.close(explicit_content)
    reader.close(encapsulated)
    part = reader.next(signed)
    certificates = None
    if part is not None and part.tag == _CONTEXT_0:
        certificates = reader.whole(part)
        part = reader.next(signed)
    if part is not None and part.tag == _CONTEXT_1:  # CRLs: trust is decided by the configured certificates
        reader.skip(part)
        part = reader.next(signed)
    if part is None or part.tag != _SET:
        raise Malformed("the CMS structure cannot be parsed (the signer infos expected)")
    signer_infos = reader.whole(part)
    reader.close(signed, explicit, outer)
    reader.finish()
    with _parsing():
        embedded = () if certificates is None else cms.CertificateSet.load(certificates, strict=True, implicit=0)
        signer_infos = list(cms.SignerInfos.load(signer_infos, strict=True))
    if not signer_infos:
        raise Malformed("the signed data has no signer")
    errors: list[CMSError] = []
    for signer_info in signer_infos:
        try:
            return _verify_signer(signer_info, content_digest, content_type, embedded, trusted, cas, digests, now)
        except (Malformed, AlgorithmRefused, SignerNotTrusted, SignatureInvalid) as e:
            errors.append(e)
    errors.sort(key=lambda e: isinstance(e, SignerNotTrusted))
    raise errors[0]


def verify_stream(
    source: BinaryIO,
    sink: BinaryIO,
    *,
    trusted: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate] = (),
    digests: Collection[str] = _VERIFY_DIGESTS,
    now: datetime,
    chunk: int = _CHUNK,
) -> Verified:
    """Verify a SignedData (DER or BER) with its content encapsulated, read from ``source``.

    The content is written to ``sink`` as it is read, hashed on the way with each accepted digest
    algorithm the SignedData announces; the certificates and signer infos after it are then checked
    as :func:`verify` does. On any error the caller must discard what ``sink`` got.

    :returns: the first SignerInfo that is from a trusted signer and verifies (``content`` is empty:
        it went to ``sink``).
    :raises Malformed: no encapsulated content, a broken structure, or a signer whose digest algorithm
        the SignedData did not announce; and the errors of :func:`verify`.
    """
    reader = _Reader(source, chunk)

    def stream(content: _Header | None, names: list[str]) -> Callable[[str], bytes]:
        if content is None:
            raise Malformed(_NO_CONTENT)
        hashers = [hashes.Hash(_HASHES[name]()) for name in names]

        def write(piece: bytes) -> None:
            for hasher in hashers:
                hasher.update(piece)
            sink.write(piece)

        reader.octets(content, write)
        computed = {name: hasher.finalize() for name, hasher in zip(names, hashers, strict=True)}

        def content_digest(name: str) -> bytes:
            if name not in computed:
                raise Malformed(f"the signer's digest algorithm {name} is not among those the signed data announces")
            return computed[name]

        return content_digest

    return _verify_signed(reader, stream, trusted=trusted, cas=cas, digests=digests, now=now)


def verify_digests(
    der: bytes,
    *,
    content_digest: Callable[[str], bytes],
    trusted: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate] = (),
    digests: Collection[str] = _VERIFY_DIGESTS,
    now: datetime,
) -> Verified:
    """Verify a detached SignedData (DER or BER) whose content the caller hashes.

    :param content_digest: returns the digest of the exact signed bytes for a name in :data:`DIGESTS`;
        called at most once per name, and only for the digest of a trusted signer.
    :returns: as :func:`verify` (``content`` is empty).
    :raises Malformed, AlgorithmRefused, SignerNotTrusted, SignatureInvalid: as :func:`verify`.
    """
    asked: dict[str, bytes] = {}

    def detached(content: _Header | None, names: list[str]) -> Callable[[str], bytes]:
        if content is not None:
            raise Malformed("the signed data carries its content, but a detached signature was expected")

        def once(name: str) -> bytes:
            if name not in asked:
                asked[name] = content_digest(name)
            return asked[name]

        return once

    reader = _Reader(io.BytesIO(der), _CHUNK)
    return _verify_signed(reader, detached, trusted=trusted, cas=cas, digests=digests, now=now)


def verify(
    der: bytes,
    *,
    content: bytes | None,
    trusted: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate] = (),
    digests: Collection[str] = _VERIFY_DIGESTS,
    now: datetime,
) -> Verified:
    """Verify a SignedData (DER or BER), detached or with its content encapsulated.

    :param content: the exact signed bytes of a detached signature (never re-serialised), or None
        when the content is encapsulated.
    :param trusted: the partner's certificates; a signer must be one of them exactly...
    :param cas: ...or be directly issued by one of these CA certificates.
    :param digests: the digest algorithms accepted; SHA-1 only if the caller lists it.
    :param now: the time at which the signer's certificate must be valid.
    :returns: the first SignerInfo that is from a trusted signer and verifies, with the signed content.
    :raises Malformed, AlgorithmRefused, SignerNotTrusted, SignatureInvalid: when none does; the error
        of a trusted signer is preferred to a "not trusted".
    """
    if content is None:
        sink = io.BytesIO()
        verified = verify_stream(io.BytesIO(der), sink, trusted=trusted, cas=cas, digests=digests, now=now)
        return attrs.evolve(verified, content=sink.getvalue())
    verified = verify_digests(der, content_digest=lambda name: _digest(_HASHES[name](), content), trusted=trusted,
                              cas=cas, digests=digests, now=now)
    return attrs.evolve(verified, content=content)


# --- compression and MIC ------------------------------------------------------------------------------


@functools.cache
def _compressed_layers() -> tuple[_Layer, ...]:
    """The elements around the zlib stream of a CompressedData, outermost first, made once."""
    zlib_algorithm = cms.CompressionAlgorithm({"algorithm": "zlib"}).dump()
    return (
        (_SEQUENCE, _content_type_der("compressed_data"), 0),  # ContentInfo
        (_CONTEXT_0, b"", 0),
        (_SEQUENCE, _VERSION_0 + zlib_algorithm, 0),  # CompressedData
        (_SEQUENCE, _content_type_der("data"), 0),  # EncapsulatedContentInfo
        (_CONTEXT_0, b"", 0),
        (_OCTETS, b"", 0),  # eContent: the zlib stream
    )


def _deflated(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The zlib stream of the joined ``pieces``, in the pieces zlib hands out (none empty)."""
    compressor = zlib.compressobj()
    for piece in pieces:
        if out := compressor.compress(piece):
            yield out
    yield compressor.flush()


def compress_stream(source: BinaryIO, sink: BinaryIO, *, chunk: int = _CHUNK) -> int:
    """Write an RFC 3274 CompressedData (zlib) of everything read from ``source`` to ``sink``.

    The compressed size is known only at the end, so the framing is BER with indefinite lengths and
    the zlib stream goes in a constructed OCTET STRING, one chunk per piece zlib hands out, as
    ``openssl cms -compress -stream`` writes it. ``source`` (a blocking binary file) is read to its end
    in pieces of at most ``chunk`` bytes, so memory stays a few pieces whatever the content size. On
    any error the caller must discard what ``sink`` got.

    :returns: the number of bytes written.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of bytes, not {chunk}")
    prefix, suffix, _ = _framing(_compressed_layers(), None)
    sink.write(prefix)
    written = len(prefix) + len(suffix)
    for out in _deflated(iter(functools.partial(source.read, chunk), b"")):
        octets = _der(_OCTETS, out)
        sink.write(octets)
        written += len(octets)
    sink.write(suffix)
    return written


def compress(content: bytes) -> bytes:
    """RFC 3274 CompressedData (zlib) around ``content``, DER.

    The zlib stream and the framing of :func:`compress_stream`, with definite lengths: the compressed
    size is known before anything is written.
    """
    compressed = b"".join(_deflated(iter((content,))))
    prefix, suffix, _ = _framing(_compressed_layers(), len(compressed))
    return prefix + compressed + suffix


class _Inflation:
    """Compressed pieces in, content out to the sink, refused as soon as a cap is certainly exceeded.

    The caps are those of the whole content: at most ``max_size`` bytes, and at most ``max_ratio``
    times the compressed size. While the compressed size is not yet known it lies between what was
    read and ``bound`` (the end of the enclosing structure or of the file), which is enough to refuse
    most bombs early; when that cannot tell which cap is exceeded, inflating stops and the rest is
    only counted.
    """

    def __init__(self, sink: BinaryIO, max_size: int, max_ratio: int, chunk: int, reader: _Reader,
                 bound: int | None) -> None:
        self._sink = sink
        self._max_size = max_size
        self._max_ratio = max_ratio
        self._chunk = chunk
        self._reader = reader
        self._bound = bound
        self._inflater = zlib.decompressobj()
        self._stopped = self._extra = False
        self.size_in = self.size_out = 0

    def update(self, piece: bytes) -> None:
        self.size_in += len(piece)
        if self._stopped:
            return
        if self._inflater.eof:
            self._extra = self._extra or bool(piece)
            return
        data = piece
        while True:
            try:
                out = self._inflater.decompress(data, self._chunk)
            except zlib.error:
                raise Malformed("the compressed content is not valid zlib data") from None
            if out:
                self._emit(out)
                if self._stopped:
                    return
            data = self._inflater.unconsumed_tail
            if self._inflater.eof or (not data and len(out) < self._chunk):
                break
        self._extra = self._extra or bool(self._inflater.unused_data)

    def _emit(self, out: bytes) -> None:
        self.size_out += len(out)
        at_most = None if self._bound is None else self.size_in + self._bound - self._reader.offset
        exceeded = self._exceeded(at_most)
        if exceeded == "unknown":
            self._stopped = True
        elif exceeded:
            raise self._refusal(exceeded)
        else:
            self._sink.write(out)

    def _exceeded(self, at_most: int | None) -> str | None:
        """Which cap the output exceeds ("size", "ratio", "unknown" which) for a compressed size
        between what was read and ``at_most`` (None: unknown); None while it may still be within."""
        ratio_cap = None if at_most is None else self._max_ratio * at_most
        if self.size_out <= (self._max_size if ratio_cap is None else min(self._max_size, ratio_cap)):
            return None
        if self._max_size <= self._max_ratio * self.size_in:
            return "size"
        if ratio_cap is not None and ratio_cap < self._max_size:
            return "ratio"
        return "unknown"

    def _refusal(self, cap: str) -> DecompressionRefused:
        if cap == "size":
            return DecompressionRefused(f"the decompressed content exceeds the size cap of {self._max_size} bytes")
        return DecompressionRefused(f"the compression ratio exceeds the cap of {self._max_ratio}:1")

    def finish(self) -> int:
        exceeded = self._exceeded(self.size_in)  # now known exactly: "unknown" cannot be the answer
        if exceeded:
            raise self._refusal(exceeded)
        if not self._inflater.eof or self._extra:
            raise Malformed("the compressed content is truncated or followed by extra data")
        return self.size_out


def decompress_stream(source: BinaryIO, sink: BinaryIO, *, max_size: int, max_ratio: int, chunk: int = _CHUNK) -> int:
    """Write the content of an RFC 3274 CompressedData read from ``source`` to ``sink``.

    Inflates in pieces of at most ``chunk`` bytes and stops as soon as a cap is certainly exceeded; on
    any error the caller must discard what ``sink`` got.

    :param max_size: the largest decompressed content accepted, in bytes.
    :param max_ratio: the largest decompressed/compressed size ratio accepted (compressed: the size of
        the compressed content, the zlib stream).
    :returns: the number of bytes written.
    :raises DecompressionRefused: over either cap (the message names the cap and its value).
    :raises Malformed: not CompressedData, broken structure, or broken zlib data.
    """
    reader = _Reader(source, chunk)
    _, outer, explicit = _open(reader, "compressed")
    compressed = reader.expect(explicit, _SEQUENCE, "a CompressedData SEQUENCE")
    reader.skip(reader.expect(compressed, _INTEGER, "a version"))
    algorithm = reader.whole(reader.expect(compressed, _SEQUENCE, "the compression algorithm"))
    with _parsing():
        algorithm = cms.CompressionAlgorithm.load(algorithm, strict=True)["algorithm"]
        if algorithm.native != "zlib":
            raise AlgorithmRefused(_oid_name(algorithm), "compression algorithm", ["zlib"])
    encapsulated = reader.expect(compressed, _SEQUENCE, "the encapsulated content info")
    reader.skip(reader.expect(encapsulated, _OID, "a content type"))
    explicit_content = reader.next(encapsulated)
    if explicit_content is None:
        raise Malformed(_NO_CONTENT)
    if explicit_content.tag != _CONTEXT_0:
        raise Malformed("the CMS structure cannot be parsed (the [0] content expected)")
    content = _content_octets(reader, explicit_content)
    inflation = _Inflation(sink, max_size, max_ratio, chunk, reader, content.bound)
    reader.octets(content, inflation.update)
    reader.close(explicit_content, encapsulated, compressed, explicit, outer)
    reader.finish()
    return inflation.finish()


def decompress(der: bytes, *, max_size: int, max_ratio: int) -> bytes:
    """The content of an RFC 3274 CompressedData, never inflating more than about ``max_size`` bytes.

    :func:`decompress_stream` over bytes: the same caps and errors.
    """
    sink = io.BytesIO()
    decompress_stream(io.BytesIO(der), sink, max_size=max_size, max_ratio=max_ratio)
    return sink.getvalue()
