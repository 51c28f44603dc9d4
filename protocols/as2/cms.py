# -*- test-case-name: tests.protocols.as2.test_cms -*-
"""CMS (RFC 5652) for AS2: encrypt, decrypt, sign, verify, compress — bytes in, values out.

``cryptography`` has no CMS verify and its envelope API reads neither BER, 3DES, AES-192, OAEP nor GCM,
all of which partners send (research/as2.md §3). So the ASN.1 is parsed and built here with
``asn1crypto`` — the only module that imports it — and every cryptographic operation is a
``cryptography`` primitive. Nothing here does I/O; every failure is a :class:`CMSError` whose text can
go back to the sending partner.

Security notes: decryption failures all read the same (RSA v1.5 implicit rejection, padding, GCM tag);
a signer is accepted only if it is one of the partner's certificates or directly issued by one of the
partner's CAs and valid at ``now``; algorithm sets are allowlists; decompression is capped before it
allocates.
"""

import base64
import hmac
import os
import zlib
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

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
    "CIPHERS", "DIGESTS", "KEY_TRANSPORTS", "AlgorithmRefused", "CMSError", "DecompressionRefused",
    "Decrypted", "DecryptionFailed", "Malformed", "SignatureInvalid", "SignerNotTrusted", "Verified",
    "compress", "content_kind", "decompress", "decrypt", "encrypt", "mic", "sign", "verify",
]

CIPHERS = ("3des", "aes128-cbc", "aes192-cbc", "aes256-cbc", "aes128-gcm", "aes256-gcm")
KEY_TRANSPORTS = ("rsa-v1.5", "rsa-oaep-sha1", "rsa-oaep-sha256")
DIGESTS = ("sha1", "sha224", "sha256", "sha384", "sha512")


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
    """The content of an EnvelopedData/AuthEnvelopedData and the algorithms that protected it."""

    content: bytes
    cipher: str
    key_transport: str


@attrs.frozen
class Verified:
    """A signature that verified: who signed, how, and the exact signed bytes."""

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
    name = oid.native
    if name == oid.dotted:
        return name
    return _LEGACY_NAMES.get(name, name.replace("_", "-"))


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


def _open(der: bytes, *expected: str):
    """Parse a ContentInfo; return its kind and its (lazily parsed) content."""
    with _parsing():
        info = cms.ContentInfo.load(der, strict=True)
        content_type = info["content_type"]
        kind = _KINDS.get(content_type.native)
        if kind is None:
            raise Malformed(f"CMS content type {_oid_name(content_type)} is not supported")
        if expected and kind not in expected:
            raise Malformed(f"expected CMS {' or '.join(expected)} data, got {kind} data")
        content = info["content"]
        if isinstance(content, core.Void):
            raise Malformed(f"the CMS {kind} structure has no content")
        return kind, content


def _octets(value) -> bytes:
    """The bytes of an (encapsulated or encrypted) content OCTET STRING, chunked BER included."""
    if isinstance(value, core.Void):
        raise Malformed("the CMS structure carries no content (detached content is not supported here)")
    data = value.native
    if not isinstance(data, bytes):
        raise Malformed("the CMS content is not an OCTET STRING")
    return data


def content_kind(der: bytes) -> str:
    """Which CMS structure ``der`` (DER or BER) holds.

    :returns: ``"enveloped"``, ``"auth-enveloped"``, ``"signed"``, ``"compressed"`` or ``"data"``.
    :raises Malformed: when it is not a ContentInfo of one of those types.
    """
    return _open(der)[0]


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


def _pad(content: bytes, block: int) -> tuple[memoryview, bytes]:
    """PKCS#7-pad only the last partial block: the whole blocks (a view, no copy) and the padded tail."""
    cut = len(content) - len(content) % block
    padder = padding.PKCS7(block * 8).padder()
    return memoryview(content)[:cut], padder.update(content[cut:]) + padder.finalize()


def _unpad(plain: bytes, block: int) -> bytes:
    """Strip PKCS#7 padding, checking only the last block (one copy of the content, not two)."""
    unpadder = padding.PKCS7(block * 8).unpadder()
    tail = unpadder.update(plain[-block:]) + unpadder.finalize()
    return b"".join((memoryview(plain)[: len(plain) - block], tail))


def decrypt(
    der: bytes,
    recipients: Sequence[tuple[PrivateKey, x509.Certificate]],
    *,
    ciphers: Collection[str] = CIPHERS,
    key_transports: Collection[str] = KEY_TRANSPORTS,
) -> Decrypted:
    """Decrypt an EnvelopedData or AuthEnvelopedData (DER or BER) for one of our key pairs.

    :param recipients: our (key, certificate) pairs; several during a key rollover. The RecipientInfo
        is matched by issuer and serial number or by subject key identifier.
    :param ciphers: the content ciphers accepted (from :data:`CIPHERS`).
    :param key_transports: the key transports accepted (from :data:`KEY_TRANSPORTS`).
    :raises Malformed: not an envelope, or broken structure.
    :raises AlgorithmRefused: a cipher or key transport not in the allowed sets, or legacy/unknown.
    :raises DecryptionFailed: no RecipientInfo for our certificates, or the decryption failed — the
        latter with one message whatever the cause, so failures reveal nothing about the key.
    """
    kind, envelope = _open(der, "enveloped", "auth-enveloped")
    gcm = kind == "auth-enveloped"
    with _parsing():
        info = envelope["auth_encrypted_content_info" if gcm else "encrypted_content_info"]
        cipher, iv, tag_length = _content_cipher(info["content_encryption_algorithm"], gcm)
        if cipher.name not in ciphers:
            raise AlgorithmRefused(cipher.name, "content encryption algorithm", [c for c in CIPHERS if c in ciphers])
        recipient, key = _find_recipient(envelope["recipient_infos"], recipients)
        transport, key_padding = _key_transport(recipient["key_encryption_algorithm"])
        if transport not in key_transports:
            accepted = [t for t in KEY_TRANSPORTS if t in key_transports]
            raise AlgorithmRefused(transport, "key transport algorithm", accepted)
        encrypted_key = recipient["encrypted_key"].native
        ciphertext = _octets(info["encrypted_content"])
        if gcm:
            tag = envelope["mac"].native
            if len(tag) != tag_length:
                raise Malformed(f"the authentication tag is {len(tag)} bytes, its parameters say {tag_length}")
            auth_attrs = envelope["auth_attrs"]
            aad = None if isinstance(auth_attrs, core.Void) else auth_attrs.untag().dump(force=True)
    _require_rsa(key, "decryption key type")
    try:
        cek = key.decrypt(encrypted_key, key_padding)
        if len(cek) != cipher.key_size:  # RSA v1.5 implicit rejection returns random bytes, not an error
            raise DecryptionFailed(_UNDECRYPTABLE)
        if gcm:
            decryptor = Cipher(algorithms.AES(cek), modes.GCM(iv, tag, min_tag_length=tag_length)).decryptor()
            if aad is not None:
                decryptor.authenticate_additional_data(aad)
            content = decryptor.update(ciphertext)
            decryptor.finalize()
        else:
            decryptor = Cipher(cipher.family(cek), modes.CBC(iv)).decryptor()
            plain = decryptor.update(ciphertext)
            decryptor.finalize()
            content = _unpad(plain, cipher.block)
    except (ValueError, InvalidTag):
        raise DecryptionFailed(_UNDECRYPTABLE) from None
    return Decrypted(content, cipher.name, transport)


def _key_encryption_algorithm(key_transport: str) -> cms.KeyEncryptionAlgorithm:
    if key_transport == "rsa-v1.5":
        return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
    digest = key_transport.removeprefix("rsa-oaep-")
    # Always explicit parameters: OpenSSL derives a garbage key when they are absent. For SHA-1 the
    # DER of all-default parameters is the empty SEQUENCE.
    params = algos.RSAESOAEPParams(
        {"hash_algorithm": {"algorithm": digest},
         "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": digest}}}
    )
    return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": params})


def encrypt(content: bytes, recipient: x509.Certificate, *, cipher: str = "aes256-cbc",
            key_transport: str = "rsa-v1.5") -> bytes:
    """Encrypt ``content`` for ``recipient``: DER EnvelopedData, or AuthEnvelopedData for GCM ciphers.

    OAEP carries explicit RSAES-OAEP-params (hash and MGF1 with the same digest); GCM carries explicit
    GCMParameters (12-byte nonce, 16-byte tag).

    :raises AlgorithmRefused: an unknown cipher or key transport, or a non-RSA certificate.
    """
    spec = _CONTENT_CIPHERS.get(cipher)
    if spec is None:
        raise AlgorithmRefused(cipher, "content encryption algorithm", CIPHERS)
    if key_transport not in KEY_TRANSPORTS:
        raise AlgorithmRefused(key_transport, "key transport algorithm", KEY_TRANSPORTS)
    public_key = _require_rsa(recipient.public_key(), "recipient key type")
    cek = os.urandom(spec.key_size)
    if spec.gcm:
        nonce = os.urandom(12)
        encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
        params = _GCMParameters({"aes_nonce": nonce, "aes_icvlen": 16})
        ciphertext = encryptor.update(content)
        encryptor.finalize()
    else:
        params = os.urandom(spec.block)
        encryptor = Cipher(spec.family(cek), modes.CBC(params)).encryptor()
        whole, tail = _pad(content, spec.block)
        ciphertext = b"".join((encryptor.update(whole), encryptor.update(tail), encryptor.finalize()))
    key_algorithm = _key_encryption_algorithm(key_transport)
    recipient_info = cms.RecipientInfo(
        name="ktri",
        value={
            "version": "v0",
            "rid": {"issuer_and_serial_number": _issuer_and_serial(recipient)},
            "key_encryption_algorithm": key_algorithm,
            "encrypted_key": public_key.encrypt(cek, _key_transport(key_algorithm)[1]),
        },
    )
    info = {
        "content_type": "data",
        "content_encryption_algorithm": {"algorithm": spec.oid, "parameters": params},
        "encrypted_content": ciphertext,
    }
    if spec.gcm:
        envelope = cms.AuthEnvelopedData(
            {"version": "v0", "recipient_infos": [recipient_info], "auth_encrypted_content_info": info,
             "mac": encryptor.tag}
        )
        content_type = "authenticated_enveloped_data"
    else:
        envelope = cms.EnvelopedData(
            {"version": "v0", "recipient_infos": [recipient_info], "encrypted_content_info": info}
        )
        content_type = "enveloped_data"
    return cms.ContentInfo({"content_type": content_type, "content": envelope}).dump()


# --- signatures ---------------------------------------------------------------------------------------


def sign(content: bytes, key: PrivateKey, certificate: x509.Certificate, *, digest: str = "sha256",
         pss: bool = False, detached: bool = True, chain: Sequence[x509.Certificate] = ()) -> bytes:
    """Sign ``content``: DER SignedData with content-type, signing-time and message-digest attributes.

    The signer's certificate and ``chain`` are included. PSS carries explicit RSASSA-PSS-params (salt
    length = digest length, MGF1 with the same digest). SHA-1 is allowed for legacy partners.

    :param detached: leave the content out (AS2 multipart/signed) or encapsulate it.
    :raises AlgorithmRefused: an unknown digest or a non-RSA key.
    """
    algorithm = _hash(digest, DIGESTS)
    _require_rsa(key, "signing key type")
    signed_attrs = cms.CMSAttributes(
        [
            {"type": "content_type", "values": ["data"]},
            {"type": "signing_time", "values": [cms.Time({"utc_time": datetime.now(UTC)})]},
            {"type": "message_digest", "values": [_digest(algorithm, content)]},
        ]
    )
    if pss:
        signature_padding = rsa_padding.PSS(rsa_padding.MGF1(algorithm), algorithm.digest_size)
        mgf = {"algorithm": "mgf1", "parameters": {"algorithm": digest}}
        params = {"hash_algorithm": {"algorithm": digest}, "mask_gen_algorithm": mgf,
                  "salt_length": algorithm.digest_size}
        signature_algorithm = {"algorithm": "rsassa_pss", "parameters": algos.RSASSAPSSParams(params)}
    else:
        signature_padding = rsa_padding.PKCS1v15()
        signature_algorithm = {"algorithm": "rsassa_pkcs1v15"}
    signature = key.sign(signed_attrs.dump(), signature_padding, algorithm)
    signer_info = {
        "version": "v1",
        "sid": {"issuer_and_serial_number": _issuer_and_serial(certificate)},
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": signed_attrs,
        "signature_algorithm": signature_algorithm,
        "signature": signature,
    }
    encapsulated = {"content_type": "data"}
    if not detached:
        encapsulated["content"] = content
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [{"algorithm": digest}],
            "encap_content_info": encapsulated,
            "certificates": [
                asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER)) for c in (certificate, *chain)
            ],
            "signer_infos": [signer_info],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


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


def _verify_signer(signer_info, content: bytes, content_type, embedded, trusted, cas, digests,
                   now: datetime) -> Verified:
    with _parsing():
        digest = _oid_name(signer_info["digest_algorithm"]["algorithm"])
        algorithm = _hash(digest, digests)
        signature_padding = _signature_padding(signer_info["signature_algorithm"], digest)
        signer_id = signer_info["sid"]
    cert = _signer_certificate(signer_id, trusted, embedded, cas, now)
    public_key = _require_rsa(cert.public_key(), "signer key type")
    content_digest = _digest(algorithm, content)
    with _parsing():
        signed_attrs = signer_info["signed_attrs"]
        signature = signer_info["signature"].native
        if isinstance(signed_attrs, core.Void):
            if content_type.native != "data":
                raise Malformed("signed attributes are required for content other than data")
            signed, signed_algorithm = content_digest, Prehashed(algorithm)
        else:
            if _single_attribute(signed_attrs, "content_type").dotted != content_type.dotted:
                raise SignatureInvalid("the signed content-type attribute does not match the content type")
            claimed = _single_attribute(signed_attrs, "message_digest").native
            if not hmac.compare_digest(claimed, content_digest):
                raise SignatureInvalid("the message digest does not match the content: the content was changed")
            # The signature covers the DER of the attributes as a SET, whatever encoding arrived.
            signed, signed_algorithm = signed_attrs.untag().dump(force=True), algorithm
    try:
        public_key.verify(signature, signed, signature_padding, signed_algorithm)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid(
            f"the signature by {cert.subject.rfc4514_string()} does not verify: the content or signature was changed"
        ) from None
    return Verified(cert, digest, isinstance(signature_padding, rsa_padding.PSS), content)


def verify(
    der: bytes,
    *,
    content: bytes | None,
    trusted: Sequence[x509.Certificate],
    cas: Sequence[x509.Certificate] = (),
    digests: Collection[str] = ("sha256", "sha384", "sha512", "sha224"),
    now: datetime,
) -> Verified:
    """Verify a SignedData (DER or BER), detached or with its content encapsulated.

    :param content: the exact signed bytes of a detached signature (never re-serialised), or None
        when the content is encapsulated.
    :param trusted: the partner's certificates; a signer must be one of them exactly...
    :param cas: ...or be directly issued by one of these CA certificates.
    :param digests: the digest algorithms accepted; SHA-1 only if the caller lists it.
    :param now: the time at which the signer's certificate must be valid.
    :returns: the first SignerInfo that is from a trusted signer and verifies.
    :raises Malformed, AlgorithmRefused, SignerNotTrusted, SignatureInvalid: when none does; the error
        of a trusted signer is preferred to a "not trusted".
    """
    _, signed = _open(der, "signed")
    with _parsing():
        encapsulated = signed["encap_content_info"]
        content_type = encapsulated["content_type"]
        if content is None:
            content = _octets(encapsulated["content"])
        elif not isinstance(encapsulated["content"], core.Void):
            raise Malformed("the signed data carries its content, but a detached signature was expected")
        embedded = signed["certificates"]
        signer_infos = list(signed["signer_infos"])
    if not signer_infos:
        raise Malformed("the signed data has no signer")
    errors: list[CMSError] = []
    for signer_info in signer_infos:
        try:
            return _verify_signer(signer_info, content, content_type, embedded, trusted, cas, digests, now)
        except (Malformed, AlgorithmRefused, SignerNotTrusted, SignatureInvalid) as e:
            errors.append(e)
    errors.sort(key=lambda e: isinstance(e, SignerNotTrusted))
    raise errors[0]


# --- compression and MIC ------------------------------------------------------------------------------


def compress(content: bytes) -> bytes:
    """RFC 3274 CompressedData (zlib) around ``content``, DER."""
    compressed = cms.CompressedData(
        {
            "version": "v0",
            "compression_algorithm": {"algorithm": "zlib"},
            "encap_content_info": {"content_type": "data", "content": zlib.compress(content)},
        }
    )
    return cms.ContentInfo({"content_type": "compressed_data", "content": compressed}).dump()


def decompress(der: bytes, *, max_size: int, max_ratio: int) -> bytes:
    """The content of an RFC 3274 CompressedData, never inflating more than about ``max_size`` bytes.

    :param max_size: the largest decompressed content accepted, in bytes.
    :param max_ratio: the largest decompressed/compressed size ratio accepted.
    :raises DecompressionRefused: over either cap (the message names the cap and its value).
    :raises Malformed: not CompressedData, or broken zlib data.
    """
    _, compressed = _open(der, "compressed")
    with _parsing():
        algorithm = compressed["compression_algorithm"]["algorithm"]
        if algorithm.native != "zlib":
            raise AlgorithmRefused(_oid_name(algorithm), "compression algorithm", ["zlib"])
        data = _octets(compressed["encap_content_info"]["content"])
    limit = min(max_size, max_ratio * len(data))
    inflater = zlib.decompressobj()
    try:
        content = inflater.decompress(data, limit + 1)  # allocates at most limit + 1 bytes
    except zlib.error:
        raise Malformed("the compressed content is not valid zlib data") from None
    if len(content) > limit:
        if limit == max_size:
            raise DecompressionRefused(f"the decompressed content exceeds the size cap of {max_size} bytes")
        raise DecompressionRefused(f"the compression ratio exceeds the cap of {max_ratio}:1")
    if not inflater.eof or inflater.unused_data:
        raise Malformed("the compressed content is truncated or followed by extra data")
    return content


def mic(data: bytes, digest: str) -> str:
    """The AS2 Received-Content-MIC value: base64 of the ``digest`` of ``data``.

    :raises AlgorithmRefused: a digest not in :data:`DIGESTS`.
    """
    return base64.b64encode(_digest(_hash(digest, DIGESTS), data)).decode("ascii")
