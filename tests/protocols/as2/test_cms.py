"""Tests for :mod:`protocols.as2.cms`: interop with the real ``openssl cms`` both ways, and every refusal.

OpenSSL is the independent peer: it makes the envelopes and signatures we must read (including
``-stream`` BER), and it must accept every envelope and signature we make. Every reading test runs
twice (the ``via`` fixture): through the bytes API, and through the stream API from a pipe-like source
that hands out a few hundred bytes at a time; a 64 MB message shows that streaming stays small.
"""

import hashlib
import io
import os
import random
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7
from hypothesis import given
from hypothesis import strategies as st

from protocols.as2 import cms
from tests.protocols.as2 import vectors
from tests.protocols.as2.vectors import OpenSSL

#: 10,000 bytes of binary (CR, LF and NUL included); a multiple of 16, so CBC adds a whole padding block.
PAYLOAD = random.Random(4130).randbytes(10_000)

OPENSSL_CIPHERS = {"3des": "-des3", "aes128-cbc": "-aes128", "aes192-cbc": "-aes192", "aes256-cbc": "-aes256",
                   "aes128-gcm": "-aes-128-gcm", "aes256-gcm": "-aes-256-gcm"}
OPENSSL_TRANSPORTS = {"rsa-v1.5": (), "rsa-oaep-sha1": ("rsa_padding_mode:oaep",),
                      "rsa-oaep-sha256": ("rsa_padding_mode:oaep", "rsa_oaep_md:sha256")}
ALL_DIGESTS = cms.DIGESTS


@pytest.fixture(scope="module")
def gateway(dev_ca):
    """Our decryption key pair."""
    return dev_ca.build("gateway encrypt", "encrypt")


@pytest.fixture(scope="module")
def old_gateway(dev_ca):
    """Our previous decryption key pair, still configured during a rollover."""
    return dev_ca.build("gateway encrypt 2025", "encrypt")


@pytest.fixture(scope="module")
def partner(dev_ca):
    """The partner's signing key pair, issued by the dev CA."""
    return dev_ca.build("partner sign", "sign")


@pytest.fixture(scope="module")
def stranger(other_ca):
    """A signing key pair from an unrelated CA."""
    return other_ca.build("stranger sign", "sign")


@pytest.fixture(scope="module")
def expired(dev_ca, partner):
    """The partner's key in a certificate that expired a year ago."""
    return dev_ca.build("partner sign expired", "sign", key=partner[0],
                        not_before=datetime.now(UTC) - timedelta(days=400), days=30)


@pytest.fixture
def openssl(tmp_path) -> OpenSSL:
    """``openssl cms`` working in the test's temporary directory."""
    return OpenSSL(tmp_path)


#: The stream functions' piece size in these tests: odd, so pieces never line up with cipher blocks or chunks.
CHUNK = 1021


class Trickle(io.RawIOBase):
    """A source that cannot seek and hands out at most ``step`` bytes per read, as a pipe or socket does."""

    def __init__(self, data: bytes, step: int = 700) -> None:
        self._data = memoryview(data)
        self._position = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = min(len(buffer), self._step, len(self._data) - self._position)
        buffer[:size] = self._data[self._position:self._position + size]
        self._position += size
        return size


class Via:
    """The bytes API, or the stream API (from a :class:`Trickle`, into a sink) with the same results."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def decrypt(self, der: bytes, recipients, **options) -> cms.Decrypted:
        if not self.stream:
            return cms.decrypt(der, recipients, **options)
        sink = io.BytesIO()
        decrypted = cms.decrypt_stream(Trickle(der), sink, recipients, chunk=CHUNK, **options)
        assert decrypted.content == b""
        return cms.Decrypted(sink.getvalue(), decrypted.cipher, decrypted.key_transport)

    def verify(self, der: bytes, *, content: bytes | None, **options) -> cms.Verified:
        if not self.stream:
            return cms.verify(der, content=content, **options)
        if content is None:
            sink = io.BytesIO()
            verified = cms.verify_stream(Trickle(der), sink, chunk=CHUNK, **options)
            content = sink.getvalue()
        else:
            asked = []

            def content_digest(name: str) -> bytes:
                asked.append(name)
                return hashlib.new(name, content).digest()

            verified = cms.verify_digests(der, content_digest=content_digest, **options)
            assert len(asked) == len(set(asked)), f"a digest was asked for twice: {asked}"
        assert verified.content == b""
        return cms.Verified(verified.signer, verified.digest, verified.pss, content)

    def decompress(self, der: bytes, **caps) -> bytes:
        if not self.stream:
            return cms.decompress(der, **caps)
        sink = io.BytesIO()
        assert cms.decompress_stream(Trickle(der), sink, chunk=CHUNK, **caps) == len(sink.getvalue())
        return sink.getvalue()


@pytest.fixture(params=["bytes", "stream"])
def via(request) -> Via:
    """Each reading API in turn: bytes in and out, or streamed."""
    return Via(request.param == "stream")


# --- decrypt what OpenSSL encrypts ------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(OPENSSL_TRANSPORTS))
@pytest.mark.parametrize("cipher", list(OPENSSL_CIPHERS))
def test_decrypts_openssl_envelopes(openssl, gateway, cipher, transport, via):
    """Every cipher and key transport OpenSSL writes decrypts to the exact content and is reported by name."""
    key, cert = gateway
    der = openssl.encrypt(PAYLOAD, cert, OPENSSL_CIPHERS[cipher], keyopts=OPENSSL_TRANSPORTS[transport])
    assert cms.content_kind(der) == ("auth-enveloped" if cipher.endswith("gcm") else "enveloped")
    assert via.decrypt(der, [(key, cert)]) == cms.Decrypted(PAYLOAD, cipher, transport)


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes128-gcm"])
def test_decrypts_openssl_stream_ber(openssl, gateway, cipher, via):
    """``-stream`` output (indefinite lengths, encrypted content in 4 KB chunks) decrypts."""
    key, cert = gateway
    der = openssl.encrypt(PAYLOAD, cert, OPENSSL_CIPHERS[cipher], "-stream")
    assert der[:2] == b"\x30\x80"  # indefinite length: really BER
    assert via.decrypt(der, [(key, cert)]).content == PAYLOAD


def test_decrypts_for_the_subject_key_identifier(openssl, gateway, via):
    """A RecipientInfo naming our certificate by subject key identifier (``-keyid``) is found."""
    key, cert = gateway
    der = openssl.encrypt(PAYLOAD, cert, "-aes256", "-keyid")
    assert via.decrypt(der, [(key, cert)]).content == PAYLOAD


def test_key_rollover_uses_the_pair_the_message_names(openssl, gateway, old_gateway, via):
    """With two configured pairs, the one the RecipientInfo names decrypts, whichever comes first."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes256")
    assert via.decrypt(der, [old_gateway, gateway]).content == PAYLOAD


def test_not_encrypted_for_us(openssl, gateway, old_gateway, via):
    """An envelope for another certificate says so."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes256")
    with pytest.raises(cms.DecryptionFailed, match="not encrypted for any of our certificates"):
        via.decrypt(der, [old_gateway])


def _flip(der: bytes, index: int) -> bytes:
    changed = bytearray(der)
    changed[index] ^= 1
    return bytes(changed)


def test_decryption_failures_all_read_the_same(gateway, old_gateway, via):
    """Wrong key (RSA v1.5 implicit rejection, OAEP), bad CBC padding and a bad GCM tag: one message.

    A partner (or an attacker) must not learn which step failed.
    """
    key, cert = gateway
    wrong_key = [(old_gateway[0], cert)]
    cases = {
        "v1.5 wrong key": (cms.encrypt(PAYLOAD, cert), wrong_key),
        "oaep wrong key": (cms.encrypt(PAYLOAD, cert, key_transport="rsa-oaep-sha256"), wrong_key),
        # the last byte of the next-to-last block turns the padding block's final 0x10 into 0x11
        "cbc padding": (_flip(cms.encrypt(PAYLOAD, cert, cipher="aes128-cbc"), -17), [gateway]),
        "gcm tag": (_flip(cms.encrypt(PAYLOAD, cert, cipher="aes128-gcm"), -1), [gateway]),
    }
    messages = set()
    for der, recipients in cases.values():
        with pytest.raises(cms.DecryptionFailed) as failure:
            via.decrypt(der, recipients)
        messages.add(str(failure.value))
    assert len(messages) == 1, messages


@pytest.mark.parametrize("option, name", [("-des", "des-cbc"), ("-rc2", "rc2-cbc")])
def test_legacy_ciphers_refused(openssl, gateway, option, name, via):
    """DES and RC2 envelopes are refused by name, not decrypted."""
    key, cert = gateway
    try:
        der = openssl.encrypt(PAYLOAD, cert, option, *vectors.LEGACY)
    except AssertionError as e:
        pytest.skip(f"this openssl cannot write {name} (no legacy provider): {e}")
    with pytest.raises(cms.AlgorithmRefused, match=name) as refused:
        via.decrypt(der, [(key, cert)])
    assert refused.value.algorithm == name


def test_cipher_outside_the_partner_set_refused(openssl, gateway, via):
    """A supported cipher the partner's settings do not allow is refused, naming it and the allowed set."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes128")
    with pytest.raises(cms.AlgorithmRefused, match="aes128-cbc is refused; accepted: aes256-gcm") as refused:
        via.decrypt(der, [gateway], ciphers=("aes256-gcm",))
    assert refused.value.algorithm == "aes128-cbc"


def test_key_transport_outside_the_partner_set_refused(openssl, gateway, via):
    """OAEP-SHA1 is refused where only OAEP-SHA256 is allowed."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes256", keyopts=OPENSSL_TRANSPORTS["rsa-oaep-sha1"])
    with pytest.raises(cms.AlgorithmRefused) as refused:
        via.decrypt(der, [gateway], key_transports=("rsa-oaep-sha256",))
    assert refused.value.algorithm == "rsa-oaep-sha1"


def _cbc(key: bytes, iv: bytes, content: bytes) -> bytes:
    padder = PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()


def test_oaep_without_parameters_means_sha1(gateway, via):
    """RSAES-OAEP with its parameters absent is decrypted with the RFC 4055 defaults (SHA-1, MGF1-SHA-1)."""
    key, cert = gateway
    cek, iv = os.urandom(16), os.urandom(16)
    sha1 = rsa_padding.OAEP(rsa_padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 -- the default
    der = vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSAES_OAEP)), cert.public_key().encrypt(cek, sha1),
        vectors.seq(vectors.oid(vectors.AES128_CBC), vectors.octets(iv)), _cbc(cek, iv, PAYLOAD),
    )
    assert via.decrypt(der, [gateway]) == cms.Decrypted(PAYLOAD, "aes128-cbc", "rsa-oaep-sha1")


def test_recipient_issuer_matched_as_a_name_not_as_bytes(gateway, via):
    """An issuer written with other string types and case still names our certificate (RFC 5280 matching)."""
    key, cert = gateway
    cek, iv = os.urandom(16), os.urandom(16)
    issuer = vectors.printable_upper_case(cert.issuer)
    assert issuer != cert.issuer.public_bytes()
    der = vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSA_ENCRYPTION), b"\x05\x00"),
        cert.public_key().encrypt(cek, rsa_padding.PKCS1v15()),
        vectors.seq(vectors.oid(vectors.AES128_CBC), vectors.octets(iv)), _cbc(cek, iv, PAYLOAD), issuer=issuer,
    )
    assert via.decrypt(der, [gateway]).content == PAYLOAD


def test_content_key_of_the_wrong_length_is_refused(gateway, via):
    """An AES-256 envelope whose RSA v1.5 block holds a 16-byte key is refused, not run as AES-128.

    RSA v1.5 decryption with implicit rejection returns random bytes of random length for a wrong
    key, so the key length is the check that turns that into a failure.
    """
    key, cert = gateway
    cek, iv = os.urandom(16), os.urandom(16)
    der = vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSA_ENCRYPTION), b"\x05\x00"),
        cert.public_key().encrypt(cek, rsa_padding.PKCS1v15()),
        vectors.seq(vectors.oid(vectors.AES256_CBC), vectors.octets(iv)), _cbc(cek, iv, PAYLOAD),
    )
    with pytest.raises(cms.DecryptionFailed, match="could not be decrypted"):
        via.decrypt(der, [gateway])


#: An authenticated attribute (content-type data), for AuthEnvelopedData's AAD.
ATTRIBUTE = vectors.seq(vectors.oid(vectors.CONTENT_TYPE), vectors.tlv(0x31, vectors.oid(vectors.DATA)))


def _gcm_envelope(cert, content: bytes, *, tag_length: int = 16, nonce_size: int = 12, attributes=(ATTRIBUTE,),
                  chunked: bool = False) -> bytes:
    """AES-128-GCM AuthEnvelopedData made with cryptography's one-shot GCM (the AAD given first)."""
    cek, nonce = os.urandom(16), os.urandom(nonce_size)
    auth_attrs = vectors.tlv(0x31, *attributes) if attributes else None
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
    if auth_attrs is not None:
        encryptor.authenticate_additional_data(auth_attrs)
    ciphertext = encryptor.update(content) + encryptor.finalize()
    params = [vectors.octets(nonce)] + ([vectors.integer(tag_length)] if tag_length != 12 else [])
    return vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSA_ENCRYPTION), b"\x05\x00"),
        cert.public_key().encrypt(cek, rsa_padding.PKCS1v15()),
        vectors.seq(vectors.oid(vectors.AES128_GCM), vectors.seq(*params)), ciphertext,
        auth_attrs=auth_attrs, mac=encryptor.tag[:tag_length], chunked=chunked,
    )


@pytest.mark.parametrize("tag_length", [16, 12])
def test_gcm_authenticated_attributes_and_short_tags(gateway, tag_length, via):
    """AuthEnvelopedData with authenticated attributes (the AAD) and a 12-byte tag (the RFC 5084 default)."""
    der = _gcm_envelope(gateway[1], PAYLOAD, tag_length=tag_length)
    assert via.decrypt(der, [gateway]).content == PAYLOAD
    with pytest.raises(cms.DecryptionFailed):  # the attributes are authenticated
        via.decrypt(der.replace(ATTRIBUTE, ATTRIBUTE[:-1] + b"\x02"), [gateway])


@pytest.mark.parametrize("size, nonce_size, attributes", [
    (0, 12, 1), (1, 12, 1), (16, 16, 1), (17, 8, 3), (4097, 12, 2), (4097, 60, 0), (10_000, 12, 1),
])
def test_gcm_aad_after_the_content(gateway, via, size, nonce_size, attributes):
    """The AAD arrives after the content it authenticates, for every content and AAD length and nonce size.

    The stream decrypts without the AAD and adjusts the tag at the end; a one-shot GCM that took the
    AAD first is the oracle, and a changed tag or attribute still fails.
    """
    content = PAYLOAD[:size]
    der = _gcm_envelope(gateway[1], content, nonce_size=nonce_size, attributes=[ATTRIBUTE] * attributes)
    assert via.decrypt(der, [gateway]) == cms.Decrypted(content, "aes128-gcm", "rsa-v1.5")
    with pytest.raises(cms.DecryptionFailed):
        via.decrypt(_flip(der, -1), [gateway])
    if attributes:
        with pytest.raises(cms.DecryptionFailed):
            via.decrypt(der.replace(ATTRIBUTE, ATTRIBUTE[:-1] + b"\x02", 1), [gateway])


def test_chunked_content_at_any_nesting(gateway, via):
    """Encrypted content as nested constructed OCTET STRINGs (empty chunk, indefinite and definite) decrypts."""
    key, cert = gateway
    cek, iv = os.urandom(16), os.urandom(16)
    der = vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSA_ENCRYPTION), b"\x05\x00"),
        cert.public_key().encrypt(cek, rsa_padding.PKCS1v15()),
        vectors.seq(vectors.oid(vectors.AES128_CBC), vectors.octets(iv)), _cbc(cek, iv, PAYLOAD), chunked=True,
    )
    assert via.decrypt(der, [gateway]).content == PAYLOAD
    assert via.decrypt(_gcm_envelope(cert, PAYLOAD, chunked=True), [gateway]).content == PAYLOAD


@pytest.fixture(scope="module")
def ec_signer(dev_ca):
    """An EC P-256 key in a dev CA certificate: valid, but not RSA."""
    return dev_ca.build("ec sign", "sign", key=ec.generate_private_key(ec.SECP256R1()))


def test_only_rsa_keys(openssl, ec_signer, now, via):
    """EC keys are refused by name for signing, encrypting and verifying."""
    key, cert = ec_signer
    with pytest.raises(cms.AlgorithmRefused, match="signing key type ec is refused; accepted: rsa"):
        cms.sign(PAYLOAD, key, cert)
    with pytest.raises(cms.AlgorithmRefused) as refused:
        cms.encrypt(PAYLOAD, cert)
    assert refused.value.algorithm == "ec"
    with pytest.raises(cms.AlgorithmRefused, match="signature algorithm sha256-ecdsa"):
        via.verify(openssl.sign(PAYLOAD, key, cert), content=PAYLOAD, trusted=[cert], now=now)


def test_decrypt_refuses_other_structures(partner, gateway, via):
    """A SignedData handed to decrypt is Malformed, not a crash."""
    with pytest.raises(cms.Malformed, match="expected CMS enveloped or auth-enveloped data, got signed"):
        via.decrypt(cms.sign(PAYLOAD, *partner), [gateway])


# --- OpenSSL decrypts what we encrypt ----------------------------------------------------------------


@pytest.mark.parametrize("transport", cms.KEY_TRANSPORTS)
@pytest.mark.parametrize("cipher", cms.CIPHERS)
def test_openssl_decrypts_our_envelopes(openssl, gateway, cipher, transport, via):
    """Every cipher and key transport we write is accepted by ``openssl cms -decrypt``."""
    key, cert = gateway
    der = cms.encrypt(PAYLOAD, cert, cipher=cipher, key_transport=transport)
    result = openssl.decrypt(der, key, cert)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PAYLOAD
    assert via.decrypt(der, [gateway]) == cms.Decrypted(PAYLOAD, cipher, transport)


def test_encrypt_refuses_unknown_algorithms(gateway):
    """Asking for a cipher or key transport we do not write is an AlgorithmRefused, not a KeyError."""
    with pytest.raises(cms.AlgorithmRefused, match="rc2"):
        cms.encrypt(PAYLOAD, gateway[1], cipher="rc2")
    with pytest.raises(cms.AlgorithmRefused, match="rsa-oaep-md5"):
        cms.encrypt(PAYLOAD, gateway[1], key_transport="rsa-oaep-md5")


# --- verify what OpenSSL signs -----------------------------------------------------------------------


@pytest.mark.parametrize("attached", [False, True], ids=["detached", "attached"])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
def test_verifies_openssl_signatures(openssl, partner, now, digest, attached, via):
    """OpenSSL's v1.5 signatures verify, detached and encapsulated, for each digest."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-md", digest, *(["-nodetach"] if attached else []))
    verified = via.verify(der, content=None if attached else PAYLOAD, trusted=[cert], digests=ALL_DIGESTS, now=now)
    assert verified == cms.Verified(cert, digest, False, PAYLOAD)


@pytest.mark.parametrize("digest, attached", [("sha256", False), ("sha512", True)])
def test_verifies_openssl_pss_signatures(openssl, partner, now, digest, attached, via):
    """RSASSA-PSS signatures verify with the parameters they carry."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-md", digest, *(["-nodetach"] if attached else []),
                       keyopts=("rsa_padding_mode:pss",))
    verified = via.verify(der, content=None if attached else PAYLOAD, trusted=[cert], now=now)
    assert (verified.digest, verified.pss, verified.content) == (digest, True, PAYLOAD)


def test_verifies_openssl_stream_ber(openssl, partner, now, via):
    """``-stream -nodetach`` (indefinite lengths, content in chunks) verifies and yields the content."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-nodetach", "-stream")
    assert der[:2] == b"\x30\x80"
    assert via.verify(der, content=None, trusted=[cert], now=now).content == PAYLOAD


@pytest.mark.parametrize("attached", [False, True], ids=["detached", "attached"])
def test_verifies_signatures_without_attributes(openssl, partner, now, attached, via):
    """``-noattr`` signatures (the signature covers the content itself) verify; a changed content does not."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-noattr", *(["-nodetach"] if attached else []))
    assert via.verify(der, content=None if attached else PAYLOAD, trusted=[cert], now=now).content == PAYLOAD
    if not attached:
        with pytest.raises(cms.SignatureInvalid, match="does not verify"):
            via.verify(der, content=PAYLOAD + b"\n", trusted=[cert], now=now)


def test_verifies_a_signer_named_by_key_identifier(openssl, partner, now, via):
    """A SignerInfo naming the signer by subject key identifier (``-keyid``) finds the trusted certificate."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-keyid", "-nocerts")
    assert via.verify(der, content=PAYLOAD, trusted=[cert], now=now).signer == cert


def test_signed_attributes_are_verified_as_der(partner, now, via):
    """Signed attributes that arrive unsorted (BER, not DER) verify: the signature covers their DER SET.

    Moving the content-type attribute from first to last keeps every length, so only the order changes.
    """
    der = cms.sign(PAYLOAD, *partner)
    content_type = vectors.seq(vectors.oid(vectors.CONTENT_TYPE), vectors.tlv(0x31, vectors.oid(vectors.DATA)))
    start = der.index(content_type)
    assert der[start - 2] == 0xA0  # the [0] signedAttrs header, and content-type sorts first
    end = start + der[start - 1]
    unsorted = der[:start] + der[start + len(content_type):end] + content_type + der[end:]
    assert unsorted != der
    assert via.verify(unsorted, content=PAYLOAD, trusted=[partner[1]], now=now).signer == partner[1]


def test_content_type_attribute_must_match(partner, now, via):
    """A content-type attribute that names another type than the encapsulated one is refused as such."""
    der = cms.sign(PAYLOAD, *partner)
    signed_data = vectors.oid("1.2.840.113549.1.7.2")
    changed = der.replace(vectors.tlv(0x31, vectors.oid(vectors.DATA)), vectors.tlv(0x31, signed_data), 1)
    assert changed != der
    with pytest.raises(cms.SignatureInvalid, match="content-type attribute does not match"):
        via.verify(changed, content=PAYLOAD, trusted=[partner[1]], now=now)


def test_changed_content_is_refused(openssl, partner, now, via):
    """One changed byte of detached content fails the message digest."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert)
    with pytest.raises(cms.SignatureInvalid, match="message digest does not match"):
        via.verify(der, content=_flip(PAYLOAD, 5000), trusted=[cert], now=now)


def test_changed_signature_is_refused(openssl, partner, now, via):
    """A changed signature value (the last bytes of OpenSSL's DER) does not verify."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert)
    with pytest.raises(cms.SignatureInvalid, match="CN=partner sign"):
        via.verify(_flip(der, -1), content=PAYLOAD, trusted=[cert], now=now)


def test_signer_not_among_the_trusted(openssl, partner, stranger, now, via):
    """A valid signature by someone else's certificate is not trusted; the message names the signer."""
    der = openssl.sign(PAYLOAD, *stranger)
    with pytest.raises(cms.SignerNotTrusted, match=r"CN=stranger sign.*not one of the trusted"):
        via.verify(der, content=PAYLOAD, trusted=[partner[1]], now=now)


def test_signer_from_another_ca_is_not_trusted(openssl, dev_ca, stranger, now, via):
    """A signer that the trusted CA did not issue is refused, saying so."""
    der = openssl.sign(PAYLOAD, *stranger)
    with pytest.raises(cms.SignerNotTrusted, match=r"CN=stranger sign.*not issued by a trusted CA"):
        via.verify(der, content=PAYLOAD, trusted=[], cas=[dev_ca.certificate], now=now)


def test_signer_issued_by_a_trusted_ca(openssl, dev_ca, partner, now, via):
    """A signer whose certificate (carried in the SignedData) a trusted CA issued is accepted."""
    der = openssl.sign(PAYLOAD, *partner)
    assert via.verify(der, content=PAYLOAD, trusted=[], cas=[dev_ca.certificate], now=now).signer == partner[1]


def test_expired_signer_is_not_trusted(openssl, dev_ca, expired, now, via):
    """An expired certificate is refused whether it is trusted directly or through its CA."""
    der = openssl.sign(PAYLOAD, *expired)
    for trusted, cas in (([expired[1]], []), ([], [dev_ca.certificate])):
        with pytest.raises(cms.SignerNotTrusted, match=r"CN=partner sign expired.*expired on"):
            via.verify(der, content=PAYLOAD, trusted=trusted, cas=cas, now=now)


def test_signer_not_yet_valid(openssl, partner, now, via):
    """Validity is checked at the ``now`` given, not the wall clock."""
    der = openssl.sign(PAYLOAD, *partner)
    with pytest.raises(cms.SignerNotTrusted, match="not valid before"):
        via.verify(der, content=PAYLOAD, trusted=[partner[1]], now=now - timedelta(days=30))


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_digests_outside_the_allowed_set_refused(openssl, partner, now, digest, via):
    """SHA-1 is refused unless the caller lists it, and MD5 always is."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-md", digest)
    with pytest.raises(cms.AlgorithmRefused, match=f"digest algorithm {digest} is refused") as refused:
        via.verify(der, content=PAYLOAD, trusted=[cert], now=now)
    assert refused.value.algorithm == digest
    if digest == "md5":
        with pytest.raises(cms.AlgorithmRefused):
            via.verify(der, content=PAYLOAD, trusted=[cert], digests=[*ALL_DIGESTS, "md5"], now=now)


def test_detached_and_encapsulated_are_not_confused(partner, now, via):
    """A detached signature needs the content; an encapsulated one must not be given another."""
    cert = partner[1]
    with pytest.raises(cms.Malformed, match="no content"):
        via.verify(cms.sign(PAYLOAD, *partner), content=None, trusted=[cert], now=now)
    with pytest.raises(cms.Malformed, match="carries its content"):
        via.verify(cms.sign(PAYLOAD, *partner, detached=False), content=PAYLOAD, trusted=[cert], now=now)


def test_best_error_among_several_signers(openssl, partner, stranger, now, via):
    """With two signers, the error of the trusted one (changed content) wins over "not trusted".

    Trusting each signer in turn puts the untrusted SignerInfo first in one of the two runs.
    """
    content = openssl.file(PAYLOAD)
    out = openssl.file(b"")
    openssl.run("-sign", "-binary", "-in", content, "-outform", "DER", "-out", out,
                "-signer", openssl.cert(stranger[1]), "-inkey", openssl.key(stranger[0]),
                "-signer", openssl.cert(partner[1]), "-inkey", openssl.key(partner[0]))
    der = open(out, "rb").read()
    for signer in (partner[1], stranger[1]):
        assert via.verify(der, content=PAYLOAD, trusted=[signer], now=now).signer == signer
        with pytest.raises(cms.SignatureInvalid):
            via.verify(der, content=PAYLOAD[:-1], trusted=[signer], now=now)


# --- OpenSSL verifies what we sign -------------------------------------------------------------------


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize("pss", [False, True], ids=["v1.5", "pss"])
@pytest.mark.parametrize("digest", cms.DIGESTS)
def test_openssl_verifies_our_signatures(openssl, dev_ca, partner, now, digest, pss, detached, via):
    """Every digest, padding and detached/attached choice we write passes ``openssl cms -verify`` (CA-checked)."""
    key, cert = partner
    der = cms.sign(PAYLOAD, key, cert, digest=digest, pss=pss, detached=detached)
    result = openssl.verify(der, dev_ca.certificate, PAYLOAD if detached else None)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PAYLOAD
    verified = via.verify(der, content=PAYLOAD if detached else None, trusted=[cert], digests=ALL_DIGESTS, now=now)
    assert verified == cms.Verified(cert, digest, pss, PAYLOAD)


def test_our_signature_carries_the_chain(openssl, dev_ca, partner, now, via):
    """``chain`` certificates travel in the SignedData, so a CA-only verifier can find the signer."""
    der = cms.sign(PAYLOAD, *partner, chain=[dev_ca.certificate])
    printed = openssl.run("-cmsout", "-print", "-inform", "DER", "-in", openssl.file(der)).stdout
    assert printed.count(b"subject:") >= 2
    assert via.verify(der, content=PAYLOAD, trusted=[], cas=[dev_ca.certificate], now=now).signer == partner[1]


# --- compression, MIC, content kinds -----------------------------------------------------------------


def test_compress_round_trip(via):
    """compress → decompress gives the content back, and the result is CompressedData."""
    der = cms.compress(PAYLOAD * 3)
    assert cms.content_kind(der) == "compressed"
    assert via.decompress(der, max_size=30_000, max_ratio=10) == PAYLOAD * 3


def test_decompress_size_cap_is_inclusive(via):
    """Exactly ``max_size`` bytes is accepted; one more is refused."""
    der = cms.compress(bytes(1000))
    assert via.decompress(der, max_size=1000, max_ratio=1000) == bytes(1000)
    with pytest.raises(cms.DecompressionRefused, match="size cap of 999 bytes"):
        via.decompress(der, max_size=999, max_ratio=1000)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """50 MB of zeros, compressed to about 50 KB."""
    return cms.compress(bytes(50_000_000))


def _peak_while(call) -> int:
    """The peak of traced allocations during ``call()``; zlib's output blocks plus their join make twice the cap."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_bomb_refused_by_ratio_without_inflating_it(bomb, via):
    """A 1000:1 bomb is refused by the ratio cap, allocating no more than the cap allows."""
    assert len(bomb) < 100_000

    def call():
        with pytest.raises(cms.DecompressionRefused, match="ratio exceeds the cap of 20:1"):
            via.decompress(bomb, max_size=100_000_000, max_ratio=20)

    assert _peak_while(call) < 3 * 20 * len(bomb)


def test_bomb_refused_by_size_without_inflating_it(bomb, via):
    """The same bomb under a generous ratio is refused by the 1 MB size cap, allocating a few MB, not 50."""

    def call():
        with pytest.raises(cms.DecompressionRefused, match="size cap of 1000000 bytes"):
            via.decompress(bomb, max_size=1_000_000, max_ratio=100_000)

    assert _peak_while(call) < 3_000_000


@pytest.mark.parametrize("der", [b"garbage", b"\x30\x03\x02\x01\x00", _flip(cms.compress(PAYLOAD), -1),
                                 cms.compress(PAYLOAD)[:-10]], ids=["garbage", "not-cms", "bad-zlib", "truncated"])
def test_decompress_garbage_is_malformed(der, via):
    """Garbage, a broken zlib stream (bad checksum) and a truncated message are Malformed."""
    with pytest.raises(cms.Malformed):
        via.decompress(der, max_size=1_000_000, max_ratio=1000)


def test_content_kinds(openssl, gateway, partner):
    """Each structure is told apart, OpenSSL's plain data included; garbage and trailing bytes are Malformed."""
    assert cms.content_kind(cms.encrypt(b"x", gateway[1])) == "enveloped"
    assert cms.content_kind(cms.encrypt(b"x", gateway[1], cipher="aes256-gcm")) == "auth-enveloped"
    assert cms.content_kind(cms.sign(b"x", *partner)) == "signed"
    assert cms.content_kind(cms.compress(b"x")) == "compressed"
    out = openssl.file(b"")
    openssl.run("-data_create", "-binary", "-in", openssl.file(b"x"), "-outform", "DER", "-out", out)
    assert cms.content_kind(open(out, "rb").read()) == "data"
    def data(*elements: bytes) -> bytes:
        return vectors.seq(vectors.oid(vectors.DATA), vectors.tlv(0xA0, *elements))

    assert cms.content_kind(data(b"\x9f\x81\x01\x00")) == "data"  # a high tag number, skipped
    malformed = {
        "empty": b"", "cut": b"\x30\x80", "trailing": cms.compress(b"x") + b"\x00", "eoc": b"\x00\x00",
        "length of 9 octets": b"\x30\x89" + bytes(9), "deep": data(b"\x24\x80" * 100 + b"\x00\x00" * 100),
        "empty content": data(), "two contents": data(vectors.octets(b"x"), vectors.octets(b"y")),
        "huge tag number": data(b"\x9f\x81\x81\x81\x81\x01\x00"),
        "primitive without length": data(b"\x04\x80\x00\x00"),
        "length beyond its parent": vectors.seq(vectors.oid(vectors.DATA), b"\xa0\x03\x04\x05xxx"),
    }
    for case, der in malformed.items():
        with pytest.raises(cms.Malformed):
            assert not cms.content_kind(der), case


def test_peek_kind_reads_only_the_start(openssl, gateway, partner):
    """The first PEEK_BYTES bytes tell the kind of every structure, ``-stream`` BER included; garbage is Malformed."""
    messages = [
        cms.encrypt(PAYLOAD, gateway[1]), cms.encrypt(PAYLOAD, gateway[1], cipher="aes256-gcm"),
        cms.sign(PAYLOAD, *partner), cms.compress(PAYLOAD), vectors.compressed(PAYLOAD),
        openssl.encrypt(PAYLOAD, gateway[1], "-aes-128-gcm", "-stream"),
        openssl.sign(PAYLOAD, *partner, "-nodetach", "-stream"),
        vectors.seq(vectors.oid(vectors.DATA), vectors.tlv(0xA0, vectors.octets(b"x"))),  # shorter than PEEK_BYTES
    ]
    for der in messages:
        assert cms.peek_kind(der[: cms.PEEK_BYTES]) == cms.content_kind(der)
    for prefix in (b"", b"\x30", b"\x30\x80\x06\x09", b"\x04\x03abc", vectors.seq(vectors.oid("1.2.3.4"))):
        with pytest.raises(cms.Malformed):
            cms.peek_kind(prefix)


# --- streaming ---------------------------------------------------------------------------------------


def test_verify_digests_asks_once_and_only_for_a_trusted_signer(openssl, partner, stranger, now):
    """The caller's content is hashed once per digest a trusted signer uses, and never for an untrusted one."""
    der = openssl.sign(PAYLOAD, *partner, "-md", "sha384")
    asked = []

    def content_digest(name: str) -> bytes:
        asked.append(name)
        return hashlib.new(name, PAYLOAD).digest()

    verified = cms.verify_digests(der, content_digest=content_digest, trusted=[partner[1]], now=now)
    assert (verified.signer, verified.digest, verified.content, asked) == (partner[1], "sha384", b"", ["sha384"])
    asked.clear()
    with pytest.raises(cms.SignerNotTrusted):
        cms.verify_digests(der, content_digest=content_digest, trusted=[stranger[1]], now=now)
    assert asked == []


def test_signer_digest_must_be_announced(partner, now, via):
    """An encapsulated signature whose signer uses a digest the SignedData did not announce is Malformed.

    The content is hashed while it streams, with the announced algorithms only; SHA-384 is rewritten to
    SHA-256 (same length) in the digestAlgorithms SET, which comes first.
    """
    der = cms.sign(PAYLOAD, *partner, digest="sha384", detached=False)
    sha256, sha384 = vectors.oid("2.16.840.1.101.3.4.2.1"), vectors.oid("2.16.840.1.101.3.4.2.2")
    changed = der.replace(sha384, sha256, 1)
    with pytest.raises(cms.Malformed, match="digest algorithm sha384 is not among those the signed data announces"):
        via.verify(changed, content=None, trusted=[partner[1]], now=now)


@pytest.mark.parametrize("kind", ["enveloped", "auth-enveloped", "signed", "compressed"])
def test_trailing_bytes_are_malformed(samples, gateway, partner, now, via, kind):
    """Anything after the structure is refused, by every reader."""
    with pytest.raises(cms.Malformed, match="bytes follow its end"):
        _read(via, kind, samples[kind] + b"\x00", gateway, partner, now)


def _read(via: Via, kind: str, der: bytes, gateway, partner, now):
    if kind == "signed":
        return via.verify(der, content=None, trusted=[partner[1]], now=now).content
    if kind == "compressed":
        return via.decompress(der, max_size=1_000_000, max_ratio=1000)
    return via.decrypt(der, [gateway]).content


def _claiming(der: bytes, chunk: bytes, length: int) -> bytes:
    """``der`` with the header of its first OCTET STRING chunk of 4096 bytes made to claim ``length`` bytes."""
    header = b"\x04\x82\x10\x00"
    assert der.count(header) >= 2
    return der.replace(header, b"\x04\x88" + length.to_bytes(8, "big"), 1)


@pytest.mark.parametrize("seekable", [True, False], ids=["file", "pipe"])
def test_lying_lengths_cost_nothing(openssl, gateway, seekable):
    """A chunk claiming 2**50 bytes in ``-stream`` BER is Malformed; nothing near that size is read or held.

    From a file the claim is checked against the bytes left before reading; from a pipe the reading
    runs into the end of the data. Either way the memory is a piece or two.
    """
    der = _claiming(openssl.encrypt(PAYLOAD * 3, gateway[1], "-aes256", "-stream"), b"", 1 << 50)

    def call():
        source = io.BytesIO(der) if seekable else Trickle(der)
        with pytest.raises(cms.Malformed, match="truncated"):
            cms.decrypt_stream(source, io.BytesIO(), [gateway])

    assert _peak_while(call) < 300_000
    for absurd in (b"\x30\x89" + bytes(9), b"\x30\x84\x7f\xff\xff\xff\x06"):
        with pytest.raises(cms.Malformed):
            cms.decrypt_stream(io.BytesIO(absurd) if seekable else Trickle(absurd), io.BytesIO(), [gateway])


@pytest.fixture(scope="module")
def ber_samples(tmp_path_factory, gateway, partner):
    """``-stream`` BER of every kind (the GCM tag sits before three end-of-contents pairs), and DER ones."""
    openssl = OpenSSL(tmp_path_factory.mktemp("ber"))
    return {
        "enveloped": openssl.encrypt(PAYLOAD, gateway[1], "-aes256", "-stream"),
        "auth-enveloped": openssl.encrypt(PAYLOAD, gateway[1], "-aes-128-gcm", "-stream"),
        "signed": openssl.sign(PAYLOAD, *partner, "-nodetach", "-stream"),
        "compressed": vectors.compressed(PAYLOAD),
        "der-enveloped": cms.encrypt(PAYLOAD, gateway[1]),
        "der-auth-enveloped": cms.encrypt(PAYLOAD, gateway[1], cipher="aes256-gcm"),
        "der-signed": cms.sign(PAYLOAD, *partner, detached=False),
        "der-compressed": cms.compress(PAYLOAD),
    }


@pytest.mark.parametrize("kind", ["enveloped", "auth-enveloped", "signed", "compressed", "der-enveloped",
                                  "der-auth-enveloped", "der-signed", "der-compressed"])
def test_truncation_anywhere_is_a_cms_error(ber_samples, gateway, partner, now, via, kind):
    """Cut at the start, in the header, in the content, inside the GCM tag and in the end-of-contents octets.

    Every cut is refused with a CMSError, never another exception and never a success.
    """
    der = ber_samples[kind]
    assert _read(via, kind.removeprefix("der-"), der, gateway, partner, now) == PAYLOAD
    cuts = {0, 1, 2, 7, 40, 300, len(der) // 2, len(der) - 600, len(der) - 30, len(der) - 20, len(der) - 10,
            len(der) - 8, len(der) - 7, len(der) - 2, len(der) - 1}
    if "auth-enveloped" in kind:  # inside the 16-byte tag, wherever it is
        tag = len(der) - (6 if kind == "auth-enveloped" else 0) - 16
        cuts |= {tag - 2, tag, tag + 1, tag + 8, tag + 15}
    for cut in sorted(cuts):
        with pytest.raises(cms.CMSError):
            _read(via, kind.removeprefix("der-"), der[:cut], gateway, partner, now)


@pytest.mark.parametrize("max_size, max_ratio", [(10**8, 20), (10**8, 5000), (500_000, 100), (500_000, 10_000),
                                                 (4_000_000, 5000), (5_000_000, 5000)])
def test_stream_caps_match_the_whole_message_caps(via, max_size, max_ratio):
    """Chunked BER from a pipe (compressed size unknown until the end) is refused exactly as a whole message is.

    The expected refusal is computed from the caps and the zlib stream's size: whichever cap is lower.
    """
    content = bytes(5_000_000)
    size = len(zlib.compress(content))
    der = vectors.compressed(content, piece=1000)
    limit = min(max_size, max_ratio * size)
    if len(content) <= limit:
        assert via.decompress(der, max_size=max_size, max_ratio=max_ratio) == content
        return
    expected = "size cap" if limit == max_size else "ratio exceeds"
    with pytest.raises(cms.DecompressionRefused, match=expected):
        via.decompress(der, max_size=max_size, max_ratio=max_ratio)


def test_indefinite_lengths_everywhere(gateway, partner, now, via):
    """Every constructed element in indefinite-length form (the small parts handed whole to the parser
    included: recipient infos, algorithm identifiers, attributes, certificates, signer infos) still reads."""
    for cipher in cms.CIPHERS:
        der = vectors.indefinite(cms.encrypt(PAYLOAD, gateway[1], cipher=cipher, key_transport="rsa-oaep-sha256"))
        assert via.decrypt(der, [gateway]) == cms.Decrypted(PAYLOAD, cipher, "rsa-oaep-sha256")
    assert via.decrypt(vectors.indefinite(_gcm_envelope(gateway[1], PAYLOAD)), [gateway]).content == PAYLOAD
    attached = vectors.indefinite(cms.sign(PAYLOAD, *partner, pss=True, detached=False))
    assert via.verify(attached, content=None, trusted=[partner[1]], now=now).content == PAYLOAD
    detached = vectors.indefinite(cms.sign(PAYLOAD, *partner, digest="sha512"))
    assert via.verify(detached, content=PAYLOAD, trusted=[partner[1]], now=now).digest == "sha512"
    assert via.decompress(vectors.indefinite(cms.compress(PAYLOAD)), max_size=10**6, max_ratio=10) == PAYLOAD


def _rebuilt(der: bytes, change) -> bytes:
    """A DER ContentInfo whose content's elements went through ``change`` (a list of encodings in and out)."""
    content_type, explicit = vectors.children(der)
    [content] = vectors.children(explicit)
    return vectors.seq(content_type, vectors.tlv(0xA0, vectors.seq(*change(vectors.children(content)))))


def test_optional_parts_are_read_past(gateway, partner, now, via):
    """originatorInfo, unprotectedAttrs, unauthAttrs and CRLs, which nothing here uses, are read past."""
    attributes = vectors.tlv(0xA1, ATTRIBUTE)
    enveloped = _rebuilt(cms.encrypt(PAYLOAD, gateway[1]),
                         lambda parts: [parts[0], b"\xa0\x00", *parts[1:], attributes])
    assert via.decrypt(enveloped, [gateway]).content == PAYLOAD
    auth_enveloped = _rebuilt(cms.encrypt(PAYLOAD, gateway[1], cipher="aes256-gcm"),
                              lambda parts: [*parts, vectors.tlv(0xA2, ATTRIBUTE)])
    assert via.decrypt(auth_enveloped, [gateway]).content == PAYLOAD
    signed = _rebuilt(cms.sign(PAYLOAD, *partner, detached=False),
                      lambda parts: [*parts[:-1], vectors.tlv(0xA1, vectors.seq()), parts[-1]])
    assert via.verify(signed, content=None, trusted=[partner[1]], now=now).content == PAYLOAD


def _broken(gateway, partner) -> dict[str, tuple[str, bytes, type, str]]:
    """Structures broken in one place each: (kind, message, error, match)."""
    enveloped = cms.encrypt(PAYLOAD, gateway[1])
    auth_enveloped = cms.encrypt(PAYLOAD, gateway[1], cipher="aes256-gcm")
    signed = cms.sign(PAYLOAD, *partner, detached=False)
    compressed = cms.compress(PAYLOAD)
    stream = zlib.compress(PAYLOAD)

    def zlib_content(*chunks: bytes) -> bytes:
        return _rebuilt(compressed, lambda parts: [*parts[:2], vectors.seq(
            vectors.oid(vectors.DATA), vectors.tlv(0xA0, vectors.tlv(0x24, *map(vectors.octets, chunks))))])

    def content_info(parts, change):  # parts: the EncryptedContentInfo's elements
        return [*parts[:2], vectors.tlv(0x30, *change(vectors.children(parts[2])))]

    deep = vectors.tlv(0xA0, b"\x24\x80" * 40 + vectors.octets(b"x") + b"\x00\x00" * 40)
    return {
        "no content": ("enveloped", vectors.seq(vectors.oid(vectors.ENVELOPED_DATA)), cms.Malformed,
                       "enveloped structure has no content"),
        "content in [1]": ("signed", vectors.seq(vectors.children(signed)[0],
                                                 b"\xa1" + vectors.children(signed)[1][1:]),
                           cms.Malformed, r"the \[0\] content expected"),
        "no recipient infos": ("enveloped", _rebuilt(enveloped, lambda parts: [parts[0], parts[2]]), cms.Malformed,
                               "recipient infos expected"),
        "no encrypted content": ("enveloped", _rebuilt(enveloped, lambda parts: content_info(
            parts, lambda info: info[:2])), cms.Malformed, "carries no content"),
        "content not octets": ("enveloped", _rebuilt(enveloped, lambda parts: content_info(
            parts, lambda info: [*info[:2], vectors.tlv(0x81, b"x")])), cms.Malformed, "not an OCTET STRING"),
        "content nested too deeply": ("enveloped", _rebuilt(enveloped, lambda parts: content_info(
            parts, lambda info: [*info[:2], deep])), cms.Malformed, "nested too deeply"),
        "recipient infos of 1.1 MB": ("enveloped", vectors.envelope(
            gateway[1], vectors.seq(vectors.oid(vectors.RSA_ENCRYPTION)), bytes(1_100_000),
            vectors.seq(vectors.oid(vectors.AES128_CBC), vectors.octets(bytes(16))), bytes(32)),
            cms.Malformed, "a part larger than 1048576 bytes"),
        "element after the envelope": ("enveloped", _rebuilt(enveloped, lambda parts: [*parts, vectors.integer(1)]),
                                       cms.Malformed, "an unexpected element"),
        "short tag": ("auth-enveloped", _rebuilt(auth_enveloped, lambda parts: [
            *parts[:3], vectors.octets(parts[3][2:14])]),
            cms.Malformed, "tag is 12 bytes, its parameters say 16"),
        "no signer infos": ("signed", _rebuilt(signed, lambda parts: parts[:4]), cms.Malformed,
                            "the signer infos expected"),
        "no signer": ("signed", _rebuilt(signed, lambda parts: [*parts[:-1], vectors.tlv(0x31)]), cms.Malformed,
                      "has no signer"),
        "eContent in [1]": ("signed", _rebuilt(signed, lambda parts: [parts[0], parts[1], vectors.seq(
            vectors.oid(vectors.DATA), vectors.tlv(0xA1, vectors.octets(PAYLOAD))), *parts[3:]]), cms.Malformed,
            r"the \[0\] content expected"),
        "empty eContent": ("signed", _rebuilt(signed, lambda parts: [parts[0], parts[1], vectors.seq(
            vectors.oid(vectors.DATA), vectors.tlv(0xA0)), *parts[3:]]), cms.Malformed, r"an empty \[0\] content"),
        "deep certificates": ("signed", _rebuilt(signed, lambda parts: [
            *parts[:3], b"\xa0\x80" + b"\x30\x80" * 40 + b"\x00\x00" * 41, parts[4]]), cms.Malformed,
            "nested too deeply"),
        "eContent not octets": ("signed", _rebuilt(signed, lambda parts: [parts[0], parts[1], vectors.seq(
            vectors.oid(vectors.DATA), vectors.tlv(0xA0, vectors.seq())), *parts[3:]]), cms.Malformed,
            "not an OCTET STRING"),
        "no tag": ("auth-enveloped", _rebuilt(auth_enveloped, lambda parts: parts[:3]), cms.Malformed,
                   "the authentication tag expected"),
        "compressed eContent in [1]": ("compressed", _rebuilt(compressed, lambda parts: [*parts[:2], vectors.seq(
            vectors.oid(vectors.DATA), vectors.tlv(0xA1, vectors.octets(stream)))]), cms.Malformed,
            r"the \[0\] content expected"),
        "not zlib": ("compressed", _rebuilt(compressed, lambda parts: [parts[0], vectors.seq(vectors.oid("1.2.3.4")),
                                                                        parts[2]]),
                     cms.AlgorithmRefused, "compression algorithm 1.2.3.4 is refused"),
        "no compressed content": ("compressed", _rebuilt(compressed, lambda parts: [*parts[:2], vectors.seq(
            vectors.oid(vectors.DATA))]), cms.Malformed, "carries no content"),
        "zlib cut short": ("compressed", zlib_content(stream[:len(stream) // 2], stream[len(stream) // 2:-4]),
                           cms.Malformed, "truncated or followed by extra data"),
        "after the zlib stream": ("compressed", zlib_content(stream[:100], stream[100:], b"more"), cms.Malformed,
                                  "truncated or followed by extra data"),
    }


BROKEN = [
    "no content", "content in [1]", "no recipient infos", "no encrypted content", "content not octets",
    "content nested too deeply", "recipient infos of 1.1 MB", "element after the envelope", "short tag", "no tag",
    "no signer infos", "no signer", "eContent in [1]", "empty eContent", "deep certificates", "eContent not octets",
    "compressed eContent in [1]", "not zlib", "no compressed content", "zlib cut short", "after the zlib stream",
]


@pytest.fixture(scope="module")
def broken(gateway, partner):
    """The broken structures, made once."""
    cases = _broken(gateway, partner)
    assert sorted(cases) == sorted(BROKEN)
    return cases


@pytest.mark.parametrize("case", BROKEN)
def test_broken_structures(broken, gateway, partner, now, via, case):
    """Each structure broken in one place is refused with the error that names the place."""
    kind, der, error, match = broken[case]
    with pytest.raises(error, match=match):
        _read(via, kind, der, gateway, partner, now)


def test_chunk_must_be_positive(gateway):
    """A piece size below one byte is a programming error."""
    with pytest.raises(ValueError, match="chunk"):
        cms.decrypt_stream(io.BytesIO(b""), io.BytesIO(), [gateway], chunk=0)


class DigestSink:
    """A sink that keeps only the SHA-256 and size of what it is written."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return len(data)


BIG = 64 << 20
#: What streaming 64 MB may hold at once (traced by tracemalloc): a few pieces and the small parts.
STREAM_PEAK = 8 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 64 MB file of random hex text (compresses to about 60%), and its SHA-256."""
    path = tmp_path_factory.mktemp("big") / "content"
    digest = hashlib.sha256()
    rng = random.Random(64)
    with path.open("wb") as out:
        for _ in range(BIG >> 20):
            block = rng.randbytes(1 << 19).hex().encode()
            digest.update(block)
            out.write(block)
    return path, digest.hexdigest()


def _stream_big(function, path, *args, **options):
    """Run a stream function from ``path`` into a :class:`DigestSink`: its result, the sink and the peak."""
    sink = DigestSink()
    result = []
    with open(path, "rb") as source:
        peak = _peak_while(lambda: result.append(function(source, sink, *args, **options)))
    return result[0], sink, peak


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes128-gcm"])
def test_decrypt_stream_of_64_mb_holds_a_few_pieces(big, tmp_path, gateway, cipher):
    """``openssl cms -encrypt -stream`` of 64 MB decrypts to the exact content with a few MB traced at most."""
    content, sha256 = big
    openssl = OpenSSL(tmp_path)
    enveloped = tmp_path / "enveloped"
    openssl.run("-encrypt", "-binary", "-stream", OPENSSL_CIPHERS[cipher], "-in", str(content), "-outform", "DER",
                "-out", str(enveloped), "-recip", openssl.cert(gateway[1]))
    decrypted, sink, peak = _stream_big(cms.decrypt_stream, enveloped, [gateway])
    assert decrypted == cms.Decrypted(b"", cipher, "rsa-v1.5")
    assert (sink.size, sink.sha256.hexdigest()) == (BIG, sha256)
    assert peak < STREAM_PEAK, f"{peak} bytes traced"


def test_verify_stream_of_64_mb_holds_a_few_pieces(big, tmp_path, partner, now):
    """``openssl cms -sign -nodetach -stream`` of 64 MB verifies and yields the exact content, in a few MB."""
    content, sha256 = big
    openssl = OpenSSL(tmp_path)
    signed = tmp_path / "signed"
    openssl.run("-sign", "-binary", "-nodetach", "-stream", "-in", str(content), "-outform", "DER", "-out",
                str(signed), "-signer", openssl.cert(partner[1]), "-inkey", openssl.key(partner[0]))
    verified, sink, peak = _stream_big(cms.verify_stream, signed, trusted=[partner[1]], now=now)
    assert (verified.signer, verified.digest, verified.content) == (partner[1], "sha256", b"")
    assert (sink.size, sink.sha256.hexdigest()) == (BIG, sha256)
    assert peak < STREAM_PEAK, f"{peak} bytes traced"


def test_decompress_stream_of_64_mb_holds_a_few_pieces(big, tmp_path):
    """64 MB of BER CompressedData (as ``-stream`` writes it) inflates to the exact content, in a few MB."""
    content, sha256 = big
    compressed = tmp_path / "compressed"
    with content.open("rb") as source, compressed.open("wb") as out:
        vectors.write_compressed(source, out, level=1)
    written, sink, peak = _stream_big(cms.decompress_stream, compressed, max_size=BIG, max_ratio=2)
    assert written == sink.size == BIG
    assert sink.sha256.hexdigest() == sha256
    assert peak < STREAM_PEAK, f"{peak} bytes traced"


# --- streaming writers -------------------------------------------------------------------------------


#: Content sizes for the writers: empty, one byte, around a cipher block, and about a megabyte (odd).
WRITE_SIZES = [0, 1, 15, 16, 17, 1_000_003]


@pytest.fixture(scope="module")
def megabyte() -> bytes:
    """A little over a megabyte of random bytes; the writers' content is a prefix of it."""
    return random.Random(3274).randbytes(max(WRITE_SIZES))


@pytest.mark.parametrize("size", WRITE_SIZES)
@pytest.mark.parametrize("transport", cms.KEY_TRANSPORTS)
@pytest.mark.parametrize("cipher", cms.CIPHERS)
def test_openssl_decrypts_encrypt_stream(openssl, gateway, megabyte, cipher, transport, size):
    """``encrypt_stream`` from a pipe-like source, in odd pieces, writes DER that ``openssl cms -decrypt``
    turns back into the exact content, for every cipher, key transport and size; and so do we."""
    key, cert = gateway
    content = megabyte[:size]
    sink = io.BytesIO()
    written = cms.encrypt_stream(Trickle(content), size, sink, cert, cipher=cipher, key_transport=transport,
                                 chunk=CHUNK)
    der = sink.getvalue()
    assert written == len(der)
    assert der[:2] != b"\x30\x80"  # definite lengths
    result = openssl.decrypt(der, key, cert)
    assert result.returncode == 0, result.stderr
    assert result.stdout == content
    assert cms.decrypt(der, [gateway]) == cms.Decrypted(content, cipher, transport)


def test_encrypt_stream_reads_exactly_size_bytes(gateway):
    """Only ``size`` bytes are read, whatever follows in the source; a source that ends early is an error."""
    source = io.BytesIO(PAYLOAD)
    sink = io.BytesIO()
    cms.encrypt_stream(source, 5000, sink, gateway[1], cipher="aes128-gcm", chunk=CHUNK)
    assert source.tell() == 5000
    assert cms.decrypt(sink.getvalue(), [gateway]).content == PAYLOAD[:5000]
    with pytest.raises(ValueError, match="ended after 10000 of the 10001 bytes"):
        cms.encrypt_stream(io.BytesIO(PAYLOAD), len(PAYLOAD) + 1, io.BytesIO(), gateway[1])
    with pytest.raises(ValueError, match="chunk"):
        cms.encrypt_stream(io.BytesIO(PAYLOAD), 10, io.BytesIO(), gateway[1], chunk=0)


def test_encrypt_stream_refuses_unknown_algorithms_before_writing(gateway, ec_signer):
    """An unknown cipher or key transport, or a non-RSA certificate, is refused with nothing written."""
    for options, cert in (({"cipher": "rc2"}, gateway[1]), ({"key_transport": "rsa-oaep-md5"}, gateway[1]),
                          ({}, ec_signer[1])):
        sink = io.BytesIO()
        with pytest.raises(cms.AlgorithmRefused):
            cms.encrypt_stream(io.BytesIO(PAYLOAD), len(PAYLOAD), sink, cert, **options)
        assert sink.getvalue() == b""


@given(content=st.binary(max_size=600), cipher=st.sampled_from(cms.CIPHERS), chunk=st.integers(1, 64),
       step=st.integers(1, 70))
def test_encrypt_stream_round_trip(gateway, content, cipher, chunk, step):
    """Any content through encrypt_stream in any pieces, from a source handing out any pieces, decrypts back."""
    sink = io.BytesIO()
    assert cms.encrypt_stream(Trickle(content, step), len(content), sink, gateway[1], cipher=cipher,
                              chunk=chunk) == len(sink.getvalue())
    assert cms.decrypt(sink.getvalue(), [gateway]).content == content


class FrozenClock(datetime):
    """``datetime`` whose ``now`` is :attr:`at`: two signatures made with it differ only where the key's
    randomness (PSS) makes them."""

    at = datetime(2026, 11, 23, 13, 5, 7, 123456, tzinfo=UTC)

    @classmethod
    def now(cls, tz=None):
        return cls.at


@pytest.mark.parametrize("pss", [False, True], ids=["v1.5", "pss"])
@pytest.mark.parametrize("digest", cms.DIGESTS)
def test_openssl_verifies_sign_digest(openssl, dev_ca, partner, now, digest, pss):
    """A detached signature over a digest the caller computed passes ``openssl cms -verify -content`` and
    our verify_digests and verify, for every digest and padding."""
    key, cert = partner
    der = cms.sign_digest(hashlib.new(digest, PAYLOAD).digest(), key, cert, digest=digest, pss=pss)
    result = openssl.verify(der, dev_ca.certificate, PAYLOAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PAYLOAD
    verified = cms.verify_digests(der, content_digest=lambda name: hashlib.new(name, PAYLOAD).digest(),
                                  trusted=[cert], digests=ALL_DIGESTS, now=now)
    assert verified == cms.Verified(cert, digest, pss, b"")
    assert cms.verify(der, content=PAYLOAD, trusted=[cert], digests=ALL_DIGESTS, now=now) == cms.Verified(
        cert, digest, pss, PAYLOAD)
    with pytest.raises(cms.SignatureInvalid, match="message digest does not match"):
        cms.verify(der, content=_flip(PAYLOAD, 1), trusted=[cert], digests=ALL_DIGESTS, now=now)


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
def test_sign_digest_is_sign_detached(monkeypatch, dev_ca, partner, digest):
    """At the same signing time, sign_digest and sign(detached=True) write the same bytes, chain included."""
    monkeypatch.setattr(cms, "datetime", FrozenClock)
    chain = [dev_ca.certificate]
    assert cms.sign_digest(hashlib.new(digest, PAYLOAD).digest(), *partner, digest=digest, chain=chain) == cms.sign(
        PAYLOAD, *partner, digest=digest, detached=True, chain=chain)


def test_sign_digest_refusals(partner, ec_signer):
    """A digest of the wrong length is a programming error; unknown digests and non-RSA keys are refused."""
    with pytest.raises(ValueError, match="a sha256 digest is 32 bytes, not 20"):
        cms.sign_digest(bytes(20), *partner)
    with pytest.raises(cms.AlgorithmRefused, match="md5"):
        cms.sign_digest(bytes(16), *partner, digest="md5")
    with pytest.raises(cms.AlgorithmRefused, match="signing key type ec is refused"):
        cms.sign_digest(bytes(32), *ec_signer)


def test_signing_time_after_2049_is_generalized_time(monkeypatch, openssl, dev_ca, partner):
    """From 2050 the signing time is a GeneralizedTime (RFC 5652 §11.3), and OpenSSL still verifies."""
    monkeypatch.setattr(FrozenClock, "at", datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC))
    monkeypatch.setattr(cms, "datetime", FrozenClock)
    der = cms.sign_digest(hashlib.sha256(PAYLOAD).digest(), *partner)
    printed = openssl.run("-cmsout", "-print", "-inform", "DER", "-in", openssl.file(der)).stdout
    assert b"GENERALIZEDTIME:Jan  2 03:04:05 2051 GMT" in printed
    assert openssl.verify(der, dev_ca.certificate, PAYLOAD).returncode == 0


@pytest.mark.parametrize("size", [0, 1, 1 << 20])
def test_compress_stream_round_trip(megabyte, via, size):
    """compress_stream writes BER (indefinite lengths, chunked eContent) that decompress_stream, decompress
    and asn1crypto (pyas2lib's reader) all inflate to the exact content."""
    content = megabyte[:size]
    sink = io.BytesIO()
    assert cms.compress_stream(Trickle(content), sink, chunk=CHUNK) == len(sink.getvalue())
    ber = sink.getvalue()
    assert ber[:2] == b"\x30\x80"
    assert cms.content_kind(ber) == cms.peek_kind(ber[:cms.PEEK_BYTES]) == "compressed"
    assert via.decompress(ber, max_size=max(size, 1), max_ratio=10) == content
    assert vectors.asn1crypto_decompressed(ber) == content
    assert vectors.asn1crypto_decompressed(cms.compress(content)) == content


def test_compress_is_der_with_the_same_zlib_stream():
    """compress keeps DER (definite lengths) around the zlib stream compress_stream chunks."""
    der = cms.compress(PAYLOAD)
    assert vectors.children(der)[0] == vectors.oid(vectors.COMPRESSED_DATA)
    assert zlib.compress(PAYLOAD) in der
    sink = io.BytesIO()
    cms.compress_stream(io.BytesIO(PAYLOAD), sink)
    assert cms.decompress(sink.getvalue(), max_size=len(PAYLOAD), max_ratio=10) == PAYLOAD


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes128-gcm"])
def test_encrypt_stream_of_64_mb_holds_a_few_pieces(big, tmp_path, gateway, cipher):
    """64 MB encrypted from a file to a file traces a few pieces at most and decrypts to the exact content."""
    content, sha256 = big
    enveloped = tmp_path / "enveloped"
    written = []
    with content.open("rb") as source, enveloped.open("wb") as sink:
        peak = _peak_while(lambda: written.append(cms.encrypt_stream(source, BIG, sink, gateway[1], cipher=cipher)))
    assert written == [enveloped.stat().st_size]
    assert peak < STREAM_PEAK, f"{peak} bytes traced"
    decrypted, sink, _ = _stream_big(cms.decrypt_stream, enveloped, [gateway])
    assert decrypted == cms.Decrypted(b"", cipher, "rsa-v1.5")
    assert (sink.size, sink.sha256.hexdigest()) == (BIG, sha256)


def test_compress_stream_of_64_mb_holds_a_few_pieces(big, tmp_path):
    """64 MB compressed from a file to a file traces a few pieces at most and inflates to the exact content."""
    content, sha256 = big
    compressed = tmp_path / "compressed"
    written = []
    with content.open("rb") as source, compressed.open("wb") as sink:
        peak = _peak_while(lambda: written.append(cms.compress_stream(source, sink)))
    assert written == [compressed.stat().st_size]
    assert peak < STREAM_PEAK, f"{peak} bytes traced"
    inflated, sink, _ = _stream_big(cms.decompress_stream, compressed, max_size=BIG, max_ratio=10)
    assert inflated == sink.size == BIG
    assert sink.sha256.hexdigest() == sha256


# --- properties --------------------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_cms_errors(data):
    """No input makes any parser raise anything but a CMSError."""
    for call in (
        lambda: cms.content_kind(data),
        lambda: cms.decrypt(data, []),
        lambda: cms.verify(data, content=None, trusted=[], now=datetime.now(UTC)),
        lambda: cms.decompress(data, max_size=1000, max_ratio=10),
        lambda: cms.peek_kind(data),
        lambda: cms.decrypt_stream(Trickle(data, 3), io.BytesIO(), [], chunk=5),
        lambda: cms.verify_stream(Trickle(data, 3), io.BytesIO(), trusted=[], now=datetime.now(UTC), chunk=5),
        lambda: cms.verify_digests(data, content_digest=lambda name: b"", trusted=[], now=datetime.now(UTC)),
        lambda: cms.decompress_stream(Trickle(data, 3), io.BytesIO(), max_size=1000, max_ratio=10, chunk=5),
    ):
        try:
            call()
        except cms.CMSError:
            pass


@pytest.fixture(scope="module")
def samples(gateway, partner):
    """Valid messages of every kind, to be damaged by the property below."""
    return {
        "enveloped": cms.encrypt(PAYLOAD[:300], gateway[1], key_transport="rsa-oaep-sha256"),
        "auth-enveloped": cms.encrypt(PAYLOAD[:300], gateway[1], cipher="aes128-gcm"),
        "signed": cms.sign(PAYLOAD[:300], *partner, pss=True, detached=False),
        "compressed": cms.compress(PAYLOAD[:300]),
    }


@given(kind=st.sampled_from(["enveloped", "auth-enveloped", "signed", "compressed"]), data=st.data())
def test_damaged_messages_raise_only_cms_errors(samples, gateway, partner, kind, data):
    """Valid messages with a byte changed or cut short either still work or raise a CMSError."""
    der = bytearray(samples[kind])
    index = data.draw(st.integers(0, len(der) - 1))
    if data.draw(st.booleans()):
        der[index] = data.draw(st.integers(0, 255))
    else:
        der = der[:index]
    now = datetime.now(UTC)
    try:
        if kind == "signed":
            cms.verify(bytes(der), content=None, trusted=[partner[1]], now=now)
        elif kind == "compressed":
            cms.decompress(bytes(der), max_size=1000, max_ratio=100)
        else:
            cms.decrypt(bytes(der), [gateway])
    except cms.CMSError:
        pass


@given(content=st.binary(max_size=600), cipher=st.sampled_from(cms.CIPHERS), chunk=st.integers(1, 64))
def test_encrypt_decrypt_round_trip(gateway, content, cipher, chunk):
    """Any content, any length (empty included), survives encrypt → decrypt, whole or streamed in any pieces."""
    der = cms.encrypt(content, gateway[1], cipher=cipher)
    assert cms.decrypt(der, [gateway]).content == content
    sink = io.BytesIO()
    cms.decrypt_stream(Trickle(der, chunk + 3), sink, [gateway], chunk=chunk)
    assert sink.getvalue() == content


#: Kinds whose content is authenticated: a damaged message that still reads must read the same content.
AUTHENTICATED = {"auth-enveloped", "der-auth-enveloped", "signed", "der-signed"}


@given(kind=st.sampled_from(["enveloped", "auth-enveloped", "signed", "compressed", "der-enveloped",
                             "der-auth-enveloped", "der-signed", "der-compressed"]), data=st.data())
def test_damaged_streams_raise_only_cms_errors(ber_samples, gateway, partner, kind, data):
    """BER and DER messages with bytes changed, cut, inserted or removed, read from a file or a pipe in any
    pieces, raise only CMSErrors; and an authenticated one that still reads gives the original content."""
    der = bytearray(ber_samples[kind])
    index = data.draw(st.integers(0, len(der) - 1), label="index")
    damage = data.draw(st.sampled_from(["change", "cut", "insert", "remove"]), label="damage")
    if damage == "change":
        der[index] = data.draw(st.integers(0, 255).filter(lambda byte: byte != der[index]), label="byte")
    elif damage == "cut":
        del der[index:]
    elif damage == "insert":
        der[index:index] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
    else:
        del der[index:index + data.draw(st.integers(1, 8), label="removed")]
    chunk = data.draw(st.integers(1, 5000), label="chunk")
    source = Trickle(bytes(der), data.draw(st.integers(1, 5000))) if data.draw(st.booleans()) else io.BytesIO(der)
    sink = io.BytesIO()
    try:
        if kind.endswith("signed"):
            cms.verify_stream(source, sink, trusted=[partner[1]], now=datetime.now(UTC), chunk=chunk)
        elif kind.endswith("compressed"):
            cms.decompress_stream(source, sink, max_size=100_000, max_ratio=100, chunk=chunk)
        else:
            cms.decrypt_stream(source, sink, [gateway], chunk=chunk)
    except cms.CMSError:
        return
    if kind in AUTHENTICATED:
        assert sink.getvalue() == PAYLOAD
