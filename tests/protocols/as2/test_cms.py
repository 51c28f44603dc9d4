"""Tests for :mod:`protocols.as2.cms`: interop with the real ``openssl cms`` both ways, and every refusal.

OpenSSL is the independent peer: it makes the envelopes and signatures we must read (including
``-stream`` BER), and it must accept every envelope and signature we make.
"""

import base64
import hashlib
import os
import random
import tracemalloc
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


# --- decrypt what OpenSSL encrypts ------------------------------------------------------------------


@pytest.mark.parametrize("transport", list(OPENSSL_TRANSPORTS))
@pytest.mark.parametrize("cipher", list(OPENSSL_CIPHERS))
def test_decrypts_openssl_envelopes(openssl, gateway, cipher, transport):
    """Every cipher and key transport OpenSSL writes decrypts to the exact content and is reported by name."""
    key, cert = gateway
    der = openssl.encrypt(PAYLOAD, cert, OPENSSL_CIPHERS[cipher], keyopts=OPENSSL_TRANSPORTS[transport])
    assert cms.content_kind(der) == ("auth-enveloped" if cipher.endswith("gcm") else "enveloped")
    assert cms.decrypt(der, [(key, cert)]) == cms.Decrypted(PAYLOAD, cipher, transport)


@pytest.mark.parametrize("cipher", ["aes256-cbc", "aes128-gcm"])
def test_decrypts_openssl_stream_ber(openssl, gateway, cipher):
    """``-stream`` output (indefinite lengths, encrypted content in 4 KB chunks) decrypts."""
    key, cert = gateway
    der = openssl.encrypt(PAYLOAD, cert, OPENSSL_CIPHERS[cipher], "-stream")
    assert der[:2] == b"\x30\x80"  # indefinite length: really BER
    assert cms.decrypt(der, [(key, cert)]).content == PAYLOAD


def test_decrypts_for_the_subject_key_identifier(openssl, gateway):
    """A RecipientInfo naming our certificate by subject key identifier (``-keyid``) is found."""
    key, cert = gateway
    der = openssl.encrypt(PAYLOAD, cert, "-aes256", "-keyid")
    assert cms.decrypt(der, [(key, cert)]).content == PAYLOAD


def test_key_rollover_uses_the_pair_the_message_names(openssl, gateway, old_gateway):
    """With two configured pairs, the one the RecipientInfo names decrypts, whichever comes first."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes256")
    assert cms.decrypt(der, [old_gateway, gateway]).content == PAYLOAD


def test_not_encrypted_for_us(openssl, gateway, old_gateway):
    """An envelope for another certificate says so."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes256")
    with pytest.raises(cms.DecryptionFailed, match="not encrypted for any of our certificates"):
        cms.decrypt(der, [old_gateway])


def _flip(der: bytes, index: int) -> bytes:
    changed = bytearray(der)
    changed[index] ^= 1
    return bytes(changed)


def test_decryption_failures_all_read_the_same(gateway, old_gateway):
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
            cms.decrypt(der, recipients)
        messages.add(str(failure.value))
    assert len(messages) == 1, messages


@pytest.mark.parametrize("option, name", [("-des", "des-cbc"), ("-rc2", "rc2-cbc")])
def test_legacy_ciphers_refused(openssl, gateway, option, name):
    """DES and RC2 envelopes are refused by name, not decrypted."""
    key, cert = gateway
    try:
        der = openssl.encrypt(PAYLOAD, cert, option, *vectors.LEGACY)
    except AssertionError as e:
        pytest.skip(f"this openssl cannot write {name} (no legacy provider): {e}")
    with pytest.raises(cms.AlgorithmRefused, match=name) as refused:
        cms.decrypt(der, [(key, cert)])
    assert refused.value.algorithm == name


def test_cipher_outside_the_partner_set_refused(openssl, gateway):
    """A supported cipher the partner's settings do not allow is refused, naming it and the allowed set."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes128")
    with pytest.raises(cms.AlgorithmRefused, match="aes128-cbc is refused; accepted: aes256-gcm") as refused:
        cms.decrypt(der, [gateway], ciphers=("aes256-gcm",))
    assert refused.value.algorithm == "aes128-cbc"


def test_key_transport_outside_the_partner_set_refused(openssl, gateway):
    """OAEP-SHA1 is refused where only OAEP-SHA256 is allowed."""
    der = openssl.encrypt(PAYLOAD, gateway[1], "-aes256", keyopts=OPENSSL_TRANSPORTS["rsa-oaep-sha1"])
    with pytest.raises(cms.AlgorithmRefused) as refused:
        cms.decrypt(der, [gateway], key_transports=("rsa-oaep-sha256",))
    assert refused.value.algorithm == "rsa-oaep-sha1"


def _cbc(key: bytes, iv: bytes, content: bytes) -> bytes:
    padder = PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()


def test_oaep_without_parameters_means_sha1(gateway):
    """RSAES-OAEP with its parameters absent is decrypted with the RFC 4055 defaults (SHA-1, MGF1-SHA-1)."""
    key, cert = gateway
    cek, iv = os.urandom(16), os.urandom(16)
    sha1 = rsa_padding.OAEP(rsa_padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)  # noqa: S303 -- the default
    der = vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSAES_OAEP)), cert.public_key().encrypt(cek, sha1),
        vectors.seq(vectors.oid(vectors.AES128_CBC), vectors.octets(iv)), _cbc(cek, iv, PAYLOAD),
    )
    assert cms.decrypt(der, [gateway]) == cms.Decrypted(PAYLOAD, "aes128-cbc", "rsa-oaep-sha1")


def test_recipient_issuer_matched_as_a_name_not_as_bytes(gateway):
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
    assert cms.decrypt(der, [gateway]).content == PAYLOAD


def test_content_key_of_the_wrong_length_is_refused(gateway):
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
        cms.decrypt(der, [gateway])


@pytest.mark.parametrize("tag_length", [16, 12])
def test_gcm_authenticated_attributes_and_short_tags(gateway, tag_length):
    """AuthEnvelopedData with authenticated attributes (the AAD) and a 12-byte tag (the RFC 5084 default)."""
    key, cert = gateway
    cek, nonce = os.urandom(16), os.urandom(12)
    attribute = vectors.seq(vectors.oid(vectors.CONTENT_TYPE), vectors.tlv(0x31, vectors.oid(vectors.DATA)))
    auth_attrs = vectors.tlv(0x31, attribute)
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(auth_attrs)
    ciphertext = encryptor.update(PAYLOAD) + encryptor.finalize()
    params = [vectors.octets(nonce)] + ([vectors.integer(tag_length)] if tag_length != 12 else [])
    der = vectors.envelope(
        cert, vectors.seq(vectors.oid(vectors.RSA_ENCRYPTION), b"\x05\x00"),
        cert.public_key().encrypt(cek, rsa_padding.PKCS1v15()),
        vectors.seq(vectors.oid(vectors.AES128_GCM), vectors.seq(*params)), ciphertext,
        auth_attrs=auth_attrs, mac=encryptor.tag[:tag_length],
    )
    assert cms.decrypt(der, [gateway]).content == PAYLOAD
    with pytest.raises(cms.DecryptionFailed):  # the attributes are authenticated
        cms.decrypt(der.replace(attribute, attribute[:-1] + b"\x02"), [gateway])


@pytest.fixture(scope="module")
def ec_signer(dev_ca):
    """An EC P-256 key in a dev CA certificate: valid, but not RSA."""
    return dev_ca.build("ec sign", "sign", key=ec.generate_private_key(ec.SECP256R1()))


def test_only_rsa_keys(openssl, ec_signer, now):
    """EC keys are refused by name for signing, encrypting and verifying."""
    key, cert = ec_signer
    with pytest.raises(cms.AlgorithmRefused, match="signing key type ec is refused; accepted: rsa"):
        cms.sign(PAYLOAD, key, cert)
    with pytest.raises(cms.AlgorithmRefused) as refused:
        cms.encrypt(PAYLOAD, cert)
    assert refused.value.algorithm == "ec"
    with pytest.raises(cms.AlgorithmRefused, match="signature algorithm sha256-ecdsa"):
        cms.verify(openssl.sign(PAYLOAD, key, cert), content=PAYLOAD, trusted=[cert], now=now)


def test_decrypt_refuses_other_structures(partner, gateway):
    """A SignedData handed to decrypt is Malformed, not a crash."""
    with pytest.raises(cms.Malformed, match="expected CMS enveloped or auth-enveloped data, got signed"):
        cms.decrypt(cms.sign(PAYLOAD, *partner), [gateway])


# --- OpenSSL decrypts what we encrypt ----------------------------------------------------------------


@pytest.mark.parametrize("transport", cms.KEY_TRANSPORTS)
@pytest.mark.parametrize("cipher", cms.CIPHERS)
def test_openssl_decrypts_our_envelopes(openssl, gateway, cipher, transport):
    """Every cipher and key transport we write is accepted by ``openssl cms -decrypt``."""
    key, cert = gateway
    der = cms.encrypt(PAYLOAD, cert, cipher=cipher, key_transport=transport)
    result = openssl.decrypt(der, key, cert)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PAYLOAD
    assert cms.decrypt(der, [gateway]) == cms.Decrypted(PAYLOAD, cipher, transport)


def test_encrypt_refuses_unknown_algorithms(gateway):
    """Asking for a cipher or key transport we do not write is an AlgorithmRefused, not a KeyError."""
    with pytest.raises(cms.AlgorithmRefused, match="rc2"):
        cms.encrypt(PAYLOAD, gateway[1], cipher="rc2")
    with pytest.raises(cms.AlgorithmRefused, match="rsa-oaep-md5"):
        cms.encrypt(PAYLOAD, gateway[1], key_transport="rsa-oaep-md5")


# --- verify what OpenSSL signs -----------------------------------------------------------------------


@pytest.mark.parametrize("attached", [False, True], ids=["detached", "attached"])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha384", "sha512"])
def test_verifies_openssl_signatures(openssl, partner, now, digest, attached):
    """OpenSSL's v1.5 signatures verify, detached and encapsulated, for each digest."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-md", digest, *(["-nodetach"] if attached else []))
    verified = cms.verify(der, content=None if attached else PAYLOAD, trusted=[cert], digests=ALL_DIGESTS, now=now)
    assert verified == cms.Verified(cert, digest, False, PAYLOAD)


@pytest.mark.parametrize("digest, attached", [("sha256", False), ("sha512", True)])
def test_verifies_openssl_pss_signatures(openssl, partner, now, digest, attached):
    """RSASSA-PSS signatures verify with the parameters they carry."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-md", digest, *(["-nodetach"] if attached else []),
                       keyopts=("rsa_padding_mode:pss",))
    verified = cms.verify(der, content=None if attached else PAYLOAD, trusted=[cert], now=now)
    assert (verified.digest, verified.pss, verified.content) == (digest, True, PAYLOAD)


def test_verifies_openssl_stream_ber(openssl, partner, now):
    """``-stream -nodetach`` (indefinite lengths, content in chunks) verifies and yields the content."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-nodetach", "-stream")
    assert der[:2] == b"\x30\x80"
    assert cms.verify(der, content=None, trusted=[cert], now=now).content == PAYLOAD


@pytest.mark.parametrize("attached", [False, True], ids=["detached", "attached"])
def test_verifies_signatures_without_attributes(openssl, partner, now, attached):
    """``-noattr`` signatures (the signature covers the content itself) verify; a changed content does not."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-noattr", *(["-nodetach"] if attached else []))
    assert cms.verify(der, content=None if attached else PAYLOAD, trusted=[cert], now=now).content == PAYLOAD
    if not attached:
        with pytest.raises(cms.SignatureInvalid, match="does not verify"):
            cms.verify(der, content=PAYLOAD + b"\n", trusted=[cert], now=now)


def test_verifies_a_signer_named_by_key_identifier(openssl, partner, now):
    """A SignerInfo naming the signer by subject key identifier (``-keyid``) finds the trusted certificate."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-keyid", "-nocerts")
    assert cms.verify(der, content=PAYLOAD, trusted=[cert], now=now).signer == cert


def test_signed_attributes_are_verified_as_der(partner, now):
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
    assert cms.verify(unsorted, content=PAYLOAD, trusted=[partner[1]], now=now).signer == partner[1]


def test_content_type_attribute_must_match(partner, now):
    """A content-type attribute that names another type than the encapsulated one is refused as such."""
    der = cms.sign(PAYLOAD, *partner)
    signed_data = vectors.oid("1.2.840.113549.1.7.2")
    changed = der.replace(vectors.tlv(0x31, vectors.oid(vectors.DATA)), vectors.tlv(0x31, signed_data), 1)
    assert changed != der
    with pytest.raises(cms.SignatureInvalid, match="content-type attribute does not match"):
        cms.verify(changed, content=PAYLOAD, trusted=[partner[1]], now=now)


def test_changed_content_is_refused(openssl, partner, now):
    """One changed byte of detached content fails the message digest."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert)
    with pytest.raises(cms.SignatureInvalid, match="message digest does not match"):
        cms.verify(der, content=_flip(PAYLOAD, 5000), trusted=[cert], now=now)


def test_changed_signature_is_refused(openssl, partner, now):
    """A changed signature value (the last bytes of OpenSSL's DER) does not verify."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert)
    with pytest.raises(cms.SignatureInvalid, match="CN=partner sign"):
        cms.verify(_flip(der, -1), content=PAYLOAD, trusted=[cert], now=now)


def test_signer_not_among_the_trusted(openssl, partner, stranger, now):
    """A valid signature by someone else's certificate is not trusted; the message names the signer."""
    der = openssl.sign(PAYLOAD, *stranger)
    with pytest.raises(cms.SignerNotTrusted, match=r"CN=stranger sign.*not one of the trusted"):
        cms.verify(der, content=PAYLOAD, trusted=[partner[1]], now=now)


def test_signer_from_another_ca_is_not_trusted(openssl, dev_ca, stranger, now):
    """A signer that the trusted CA did not issue is refused, saying so."""
    der = openssl.sign(PAYLOAD, *stranger)
    with pytest.raises(cms.SignerNotTrusted, match=r"CN=stranger sign.*not issued by a trusted CA"):
        cms.verify(der, content=PAYLOAD, trusted=[], cas=[dev_ca.certificate], now=now)


def test_signer_issued_by_a_trusted_ca(openssl, dev_ca, partner, now):
    """A signer whose certificate (carried in the SignedData) a trusted CA issued is accepted."""
    der = openssl.sign(PAYLOAD, *partner)
    assert cms.verify(der, content=PAYLOAD, trusted=[], cas=[dev_ca.certificate], now=now).signer == partner[1]


def test_expired_signer_is_not_trusted(openssl, dev_ca, expired, now):
    """An expired certificate is refused whether it is trusted directly or through its CA."""
    der = openssl.sign(PAYLOAD, *expired)
    for trusted, cas in (([expired[1]], []), ([], [dev_ca.certificate])):
        with pytest.raises(cms.SignerNotTrusted, match=r"CN=partner sign expired.*expired on"):
            cms.verify(der, content=PAYLOAD, trusted=trusted, cas=cas, now=now)


def test_signer_not_yet_valid(openssl, partner, now):
    """Validity is checked at the ``now`` given, not the wall clock."""
    der = openssl.sign(PAYLOAD, *partner)
    with pytest.raises(cms.SignerNotTrusted, match="not valid before"):
        cms.verify(der, content=PAYLOAD, trusted=[partner[1]], now=now - timedelta(days=30))


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_digests_outside_the_allowed_set_refused(openssl, partner, now, digest):
    """SHA-1 is refused unless the caller lists it, and MD5 always is."""
    key, cert = partner
    der = openssl.sign(PAYLOAD, key, cert, "-md", digest)
    with pytest.raises(cms.AlgorithmRefused, match=f"digest algorithm {digest} is refused") as refused:
        cms.verify(der, content=PAYLOAD, trusted=[cert], now=now)
    assert refused.value.algorithm == digest
    if digest == "md5":
        with pytest.raises(cms.AlgorithmRefused):
            cms.verify(der, content=PAYLOAD, trusted=[cert], digests=[*ALL_DIGESTS, "md5"], now=now)


def test_detached_and_encapsulated_are_not_confused(partner, now):
    """A detached signature needs the content; an encapsulated one must not be given another."""
    cert = partner[1]
    with pytest.raises(cms.Malformed, match="no content"):
        cms.verify(cms.sign(PAYLOAD, *partner), content=None, trusted=[cert], now=now)
    with pytest.raises(cms.Malformed, match="carries its content"):
        cms.verify(cms.sign(PAYLOAD, *partner, detached=False), content=PAYLOAD, trusted=[cert], now=now)


def test_best_error_among_several_signers(openssl, partner, stranger, now):
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
        assert cms.verify(der, content=PAYLOAD, trusted=[signer], now=now).signer == signer
        with pytest.raises(cms.SignatureInvalid):
            cms.verify(der, content=PAYLOAD[:-1], trusted=[signer], now=now)


# --- OpenSSL verifies what we sign -------------------------------------------------------------------


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize("pss", [False, True], ids=["v1.5", "pss"])
@pytest.mark.parametrize("digest", cms.DIGESTS)
def test_openssl_verifies_our_signatures(openssl, dev_ca, partner, now, digest, pss, detached):
    """Every digest, padding and detached/attached choice we write passes ``openssl cms -verify`` (CA-checked)."""
    key, cert = partner
    der = cms.sign(PAYLOAD, key, cert, digest=digest, pss=pss, detached=detached)
    result = openssl.verify(der, dev_ca.certificate, PAYLOAD if detached else None)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PAYLOAD
    verified = cms.verify(der, content=PAYLOAD if detached else None, trusted=[cert], digests=ALL_DIGESTS, now=now)
    assert verified == cms.Verified(cert, digest, pss, PAYLOAD)


def test_our_signature_carries_the_chain(openssl, dev_ca, partner, now):
    """``chain`` certificates travel in the SignedData, so a CA-only verifier can find the signer."""
    der = cms.sign(PAYLOAD, *partner, chain=[dev_ca.certificate])
    printed = openssl.run("-cmsout", "-print", "-inform", "DER", "-in", openssl.file(der)).stdout
    assert printed.count(b"subject:") >= 2
    assert cms.verify(der, content=PAYLOAD, trusted=[], cas=[dev_ca.certificate], now=now).signer == partner[1]


# --- compression, MIC, content kinds -----------------------------------------------------------------


def test_compress_round_trip():
    """compress → decompress gives the content back, and the result is CompressedData."""
    der = cms.compress(PAYLOAD * 3)
    assert cms.content_kind(der) == "compressed"
    assert cms.decompress(der, max_size=30_000, max_ratio=10) == PAYLOAD * 3


def test_decompress_size_cap_is_inclusive():
    """Exactly ``max_size`` bytes is accepted; one more is refused."""
    der = cms.compress(bytes(1000))
    assert cms.decompress(der, max_size=1000, max_ratio=1000) == bytes(1000)
    with pytest.raises(cms.DecompressionRefused, match="size cap of 999 bytes"):
        cms.decompress(der, max_size=999, max_ratio=1000)


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


def test_bomb_refused_by_ratio_without_inflating_it(bomb):
    """A 1000:1 bomb is refused by the ratio cap, allocating no more than the cap allows."""
    assert len(bomb) < 100_000

    def call():
        with pytest.raises(cms.DecompressionRefused, match="ratio exceeds the cap of 20:1"):
            cms.decompress(bomb, max_size=100_000_000, max_ratio=20)

    assert _peak_while(call) < 3 * 20 * len(bomb)


def test_bomb_refused_by_size_without_inflating_it(bomb):
    """The same bomb under a generous ratio is refused by the 1 MB size cap, allocating a few MB, not 50."""

    def call():
        with pytest.raises(cms.DecompressionRefused, match="size cap of 1000000 bytes"):
            cms.decompress(bomb, max_size=1_000_000, max_ratio=100_000)

    assert _peak_while(call) < 3_000_000


@pytest.mark.parametrize("der", [b"garbage", b"\x30\x03\x02\x01\x00", _flip(cms.compress(PAYLOAD), -1),
                                 cms.compress(PAYLOAD)[:-10]], ids=["garbage", "not-cms", "bad-zlib", "truncated"])
def test_decompress_garbage_is_malformed(der):
    """Garbage, a broken zlib stream (bad checksum) and a truncated message are Malformed."""
    with pytest.raises(cms.Malformed):
        cms.decompress(der, max_size=1_000_000, max_ratio=1000)


@pytest.mark.parametrize("digest", cms.DIGESTS)
def test_mic_is_base64_of_the_digest(digest):
    """The MIC is the base64 digest of the exact bytes (hashlib as the oracle)."""
    assert cms.mic(PAYLOAD, digest) == base64.b64encode(hashlib.new(digest, PAYLOAD).digest()).decode()


def test_mic_refuses_md5():
    """MD5 is no MIC algorithm."""
    with pytest.raises(cms.AlgorithmRefused, match="md5"):
        cms.mic(PAYLOAD, "md5")


def test_content_kinds(openssl, gateway, partner):
    """Each structure is told apart, OpenSSL's plain data included; garbage and trailing bytes are Malformed."""
    assert cms.content_kind(cms.encrypt(b"x", gateway[1])) == "enveloped"
    assert cms.content_kind(cms.encrypt(b"x", gateway[1], cipher="aes256-gcm")) == "auth-enveloped"
    assert cms.content_kind(cms.sign(b"x", *partner)) == "signed"
    assert cms.content_kind(cms.compress(b"x")) == "compressed"
    out = openssl.file(b"")
    openssl.run("-data_create", "-binary", "-in", openssl.file(b"x"), "-outform", "DER", "-out", out)
    assert cms.content_kind(open(out, "rb").read()) == "data"
    for der in (b"", b"\x30\x80", cms.compress(b"x") + b"\x00"):
        with pytest.raises(cms.Malformed):
            cms.content_kind(der)


# --- properties --------------------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_cms_errors(data):
    """No input makes any parser raise anything but a CMSError."""
    for call in (
        lambda: cms.content_kind(data),
        lambda: cms.decrypt(data, []),
        lambda: cms.verify(data, content=None, trusted=[], now=datetime.now(UTC)),
        lambda: cms.decompress(data, max_size=1000, max_ratio=10),
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


@given(content=st.binary(max_size=600), cipher=st.sampled_from(cms.CIPHERS))
def test_encrypt_decrypt_round_trip(gateway, content, cipher):
    """Any content, any length (empty included), survives encrypt → decrypt."""
    assert cms.decrypt(cms.encrypt(content, gateway[1], cipher=cipher), [gateway]).content == content
