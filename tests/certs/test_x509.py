"""Tests for :mod:`certs.x509`: loaders for what partners send, fingerprints, validity and issuer checks."""

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.serialization import pkcs12

from certs.devca import DevCA
from certs.errors import (
    CertificateError,
    ExpiredError,
    KeyMismatchError,
    NotYetValidError,
    UntrustedIssuerError,
    WrongPasswordError,
)
from certs.x509 import (
    KeyAndCertificate,
    check_issued_by,
    check_key_matches,
    check_validity,
    common_name,
    describe,
    fingerprint,
    is_ca,
    issued_by,
    load_certificate,
    load_certificates,
    load_key_and_certificate,
    load_pkcs12,
    load_private_key,
    normalize_fingerprint,
    public_bytes,
    read_file,
    to_pem,
)
from tests.certs.conftest import der, ec_key, pem

Enc = serialization.Encoding
Fmt = serialization.PrivateFormat
ENCRYPTED_FORMATS = [(Enc.PEM, Fmt.PKCS8), (Enc.PEM, Fmt.TraditionalOpenSSL), (Enc.DER, Fmt.PKCS8)]


def same_key(a, b) -> bool:
    """Two private keys are the same key pair when their public halves are identical."""
    return public_bytes(a.public_key()) == public_bytes(b.public_key())


def private_bytes(key, encoding=Enc.PEM, fmt=Fmt.PKCS8, password: bytes | None = None) -> bytes:
    """Serialise a private key the way a partner's tool might have written it."""
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(encoding, fmt, encryption)


# --- load_certificates / load_certificate ---------------------------------------------------------


def test_single_pem_certificate_loads(ec_leaf):
    """A plain PEM certificate file gives back exactly that certificate."""
    assert load_certificates(pem(ec_leaf.certificate), "acme.pem") == [ec_leaf.certificate]
    assert load_certificate(pem(ec_leaf.certificate), "acme.pem") == ec_leaf.certificate


def test_pem_bundle_keeps_file_order(ec_leaf, dev_ca):
    """A bundle loads every certificate in file order, so the leaf-first convention holds."""
    leaf, ca = ec_leaf.certificate, dev_ca.certificate
    assert load_certificates(pem(leaf) + pem(ca)) == [leaf, ca]
    assert load_certificates(pem(ca) + pem(leaf)) == [ca, leaf]
    assert load_certificate(pem(leaf) + pem(ca)) == leaf


def test_pem_with_text_around_blocks_loads(ec_leaf, dev_ca):
    """Bundles exported by openssl carry 'subject=' or 'Bag Attributes' lines; they are not an error."""
    data = (b"Bag Attributes\n    friendlyName: acme\nsubject=CN=globex\n" + pem(ec_leaf.certificate)
            + b"\nissuer=CN=Test CA\n" + pem(dev_ca.certificate) + b"\n")
    assert load_certificates(data) == [ec_leaf.certificate, dev_ca.certificate]


def test_der_certificate_loads(ec_leaf):
    """A binary DER certificate (.cer from Windows tools) loads like a PEM one."""
    assert load_certificates(der(ec_leaf.certificate), "acme.cer") == [ec_leaf.certificate]
    assert load_certificate(der(ec_leaf.certificate), "acme.cer") == ec_leaf.certificate


@pytest.mark.parametrize(
    "fmt, password, label",
    [
        (Fmt.PKCS8, None, b"-----BEGIN PRIVATE KEY-----"),
        (Fmt.TraditionalOpenSSL, None, b"-----BEGIN RSA PRIVATE KEY-----"),
        (Fmt.PKCS8, b"secret", b"-----BEGIN ENCRYPTED PRIVATE KEY-----"),
    ],
)
def test_pem_private_key_given_as_certificate_is_named(dev_ca, fmt, password, label):
    """Handing in the key file instead of the certificate gets a message saying exactly that."""
    data = private_bytes(dev_ca.key, Enc.PEM, fmt, password)
    assert data.startswith(label)
    with pytest.raises(CertificateError, match=r"^acme\.pem holds a private key, not a certificate$"):
        load_certificates(data, "acme.pem")


@pytest.mark.parametrize("fmt", [Fmt.PKCS8, Fmt.TraditionalOpenSSL])
def test_der_private_key_given_as_certificate_is_named(dev_ca, fmt):
    """A binary key file is recognised as a key too, not reported as unreadable garbage."""
    with pytest.raises(CertificateError, match=r"^acme\.der holds a private key, not a certificate$"):
        load_certificates(private_bytes(dev_ca.key, Enc.DER, fmt), "acme.der")


def test_pem_of_another_type_names_the_type(ec_leaf):
    """A PEM public key (or CSR) is reported by its PEM label so the sender knows what they sent."""
    data = ec_leaf.key.public_key().public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CertificateError, match=r"^acme\.pem holds a PEM PUBLIC KEY, not a certificate$"):
        load_certificates(data, "acme.pem")


@pytest.mark.parametrize("data", [b"", b"hello, this is not a certificate\n", bytes(range(256)),
                                  b"\x30\x82\x01\x00" + b"\x00" * 20])
def test_garbage_is_neither_pem_nor_der(data):
    """Bytes that are no certificate at all get one clear sentence, never a parser traceback."""
    with pytest.raises(CertificateError, match=r"^junk\.bin is neither a PEM nor a DER certificate$"):
        load_certificates(data, "junk.bin")


def test_damaged_pem_certificate_is_reported_as_damaged(ec_leaf):
    """A PEM certificate cut short or mangled in transit is called damaged, naming the file."""
    good = pem(ec_leaf.certificate)
    truncated = good[: len(good) // 2]
    mangled = good.replace(b"\n", b"\n!!", 2)
    for data in (truncated, mangled):
        with pytest.raises(CertificateError, match=r"^acme\.pem: damaged PEM certificate \("):
            load_certificates(data, "acme.pem")


def test_damaged_second_certificate_fails_the_whole_bundle(ec_leaf, dev_ca):
    """A bundle is all or nothing: a broken chain certificate is not silently dropped."""
    ca = pem(dev_ca.certificate)
    broken_ca = ca[:40] + b"!" + ca[41:]
    with pytest.raises(CertificateError, match="damaged PEM certificate"):
        load_certificates(pem(ec_leaf.certificate) + broken_ca, "bundle.pem")


# --- load_private_key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding, fmt",
    [(Enc.PEM, Fmt.PKCS8), (Enc.PEM, Fmt.TraditionalOpenSSL), (Enc.DER, Fmt.PKCS8), (Enc.DER, Fmt.TraditionalOpenSSL)],
)
def test_rsa_private_key_loads_in_every_unencrypted_format(dev_ca, encoding, fmt):
    """PKCS#8 and traditional RSA keys load from PEM and DER alike, as the same key."""
    key = load_private_key(private_bytes(dev_ca.key, encoding, fmt), "ca.key")
    assert same_key(key, dev_ca.key)


def test_ec_and_ed25519_private_keys_load():
    """EC and Ed25519 keys are supported key types, not only RSA."""
    for original in (ec_key(), ed25519.Ed25519PrivateKey.generate()):
        assert same_key(load_private_key(private_bytes(original)), original)


@pytest.mark.parametrize("encoding, fmt", ENCRYPTED_FORMATS)
def test_encrypted_private_key_loads_with_its_password(dev_ca, encoding, fmt):
    """An encrypted key opens with the right password and is the original key."""
    data = private_bytes(dev_ca.key, encoding, fmt, b"s3cret")
    assert same_key(load_private_key(data, "ca.key", b"s3cret"), dev_ca.key)


@pytest.mark.parametrize("encoding", [Enc.PEM, Enc.DER])
def test_encrypted_private_key_without_password_asks_for_it(encoding):
    """A missing password is a WrongPasswordError that tells the operator to give one."""
    data = private_bytes(ec_key(), encoding, Fmt.PKCS8, b"s3cret")
    with pytest.raises(WrongPasswordError, match=r"^acme\.key is encrypted: give its password$"):
        load_private_key(data, "acme.key")


@pytest.mark.parametrize("encoding, fmt", ENCRYPTED_FORMATS)
def test_encrypted_private_key_with_wrong_password_says_so(dev_ca, encoding, fmt):
    """A wrong password is reported as a wrong password, not as an unreadable file."""
    data = private_bytes(dev_ca.key, encoding, fmt, b"s3cret")
    with pytest.raises(WrongPasswordError, match=r"^ca\.key: wrong password$"):
        load_private_key(data, "ca.key", b"guess")


def test_password_for_unencrypted_key_is_refused():
    """A password given for a plain key is refused, so a mix-up of key files is noticed."""
    with pytest.raises(WrongPasswordError, match=r"^acme\.key is not encrypted: give no password$"):
        load_private_key(private_bytes(ec_key()), "acme.key", b"s3cret")


def test_certificate_given_as_private_key_is_named(ec_leaf):
    """Handing in the certificate where the key belongs says so, naming the file."""
    with pytest.raises(CertificateError, match=r"^acme\.crt holds a certificate, not a private key$"):
        load_private_key(pem(ec_leaf.certificate), "acme.crt")


def test_pem_public_key_given_as_private_key_names_the_type(ec_leaf):
    """A public key is not a private key, and the PEM label says what it is."""
    data = ec_leaf.key.public_key().public_bytes(Enc.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(CertificateError, match=r"^acme\.pub holds a PEM PUBLIC KEY, not a private key$"):
        load_private_key(data, "acme.pub")


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "is not a readable PEM or DER private key"),
        (b"not a key", "is not a readable PEM or DER private key"),
        (bytes(range(256)), "is not a readable PEM or DER private key"),
        ("der-certificate", "holds a certificate, not a private key"),
    ],
)
def test_unreadable_private_key_is_a_certificate_error(data, message, ec_leaf):
    """Garbage gives a plain CertificateError, a DER certificate is named as one; never a password complaint."""
    blob = der(ec_leaf.certificate) if data == "der-certificate" else data
    with pytest.raises(CertificateError, match=rf"^x\.key {message}$") as info:
        load_private_key(blob, "x.key")
    assert not isinstance(info.value, WrongPasswordError)


def test_unsupported_key_type_is_refused():
    """Key types the gateway cannot use (Ed448) are refused at load time, by name."""
    data = private_bytes(ed448.Ed448PrivateKey.generate())
    with pytest.raises(CertificateError, match=r"^x\.key: unsupported key type Ed448PrivateKey$"):
        load_private_key(data, "x.key")


# --- PKCS#12 --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def p12(ec_leaf, dev_ca) -> bytes:
    """A password-protected PKCS#12 bundle: the EC leaf, its key, and the CA as chain."""
    return pkcs12.serialize_key_and_certificates(
        b"globex", ec_leaf.key, ec_leaf.certificate, [dev_ca.certificate],
        serialization.BestAvailableEncryption(b"p12-pass"),
    )


def test_pkcs12_bundle_loads_key_certificate_and_chain(p12, ec_leaf, dev_ca):
    """A .p12 with the right password yields the matching key, the leaf and the chain."""
    loaded = load_pkcs12(p12, "globex.p12", b"p12-pass")
    assert isinstance(loaded, KeyAndCertificate)
    assert loaded.certificate == ec_leaf.certificate
    assert same_key(loaded.key, ec_leaf.key)
    assert loaded.chain == (dev_ca.certificate,)


@pytest.mark.parametrize("password", [b"wrong", None])
def test_pkcs12_wrong_or_missing_password(p12, password):
    """A wrong or missing .p12 password is a WrongPasswordError naming the file."""
    with pytest.raises(WrongPasswordError, match=r"^globex\.p12: wrong password for PKCS#12 file$"):
        load_pkcs12(p12, "globex.p12", password)


@pytest.mark.parametrize("password", [None, b"p12-pass"])
def test_not_a_pkcs12_file(ec_leaf, password):
    """A PEM or DER certificate given as .p12 is unreadable, and not blamed on the password."""
    for data in (pem(ec_leaf.certificate), der(ec_leaf.certificate), b"garbage"):
        with pytest.raises(CertificateError, match=r"^x\.p12 is not a readable PKCS#12 file$") as info:
            load_pkcs12(data, "x.p12", password)
        assert not isinstance(info.value, WrongPasswordError)


def test_pkcs12_with_only_a_certificate_is_refused(ec_leaf):
    """A .p12 without a private key cannot be an identity, and the message says what is missing."""
    data = pkcs12.serialize_key_and_certificates(
        b"cert-only", None, ec_leaf.certificate, None, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(CertificateError, match=r"^x\.p12: PKCS#12 file must hold a private key and its certificate$"):
        load_pkcs12(data, "x.p12", b"pw")


# --- key and certificate pairs --------------------------------------------------------------------


def test_key_and_certificate_pair_loads_with_chain(ec_leaf, dev_ca):
    """A matching key and certificate bundle load together; extra certificates become the chain."""
    pair = load_key_and_certificate(
        private_bytes(ec_leaf.key), pem(ec_leaf.certificate) + pem(dev_ca.certificate)
    )
    assert pair.certificate == ec_leaf.certificate
    assert same_key(pair.key, ec_leaf.key)
    assert pair.chain == (dev_ca.certificate,)


def test_foreign_key_is_a_key_mismatch(ec_leaf):
    """A key that does not belong to the certificate is refused, naming both files."""
    with pytest.raises(KeyMismatchError, match=r"^a\.key and a\.crt: the private key does not match the certificate$"):
        load_key_and_certificate(private_bytes(ec_key()), pem(ec_leaf.certificate), "a.key", "a.crt")
    with pytest.raises(KeyMismatchError, match="does not match"):
        check_key_matches(ec_key(), ec_leaf.certificate, "pair")
    check_key_matches(ec_leaf.key, ec_leaf.certificate, "pair")


# --- fingerprints ---------------------------------------------------------------------------------


def test_fingerprint_equals_openssl(ec_leaf, dev_ca, tmp_path):
    """Our fingerprint is what operators get from ``openssl x509 -fingerprint -sha256``."""
    for cert in (ec_leaf.certificate, dev_ca.certificate):
        path = tmp_path / "cert.pem"
        path.write_bytes(pem(cert))
        out = subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(path)],
            capture_output=True, text=True, check=True,
        ).stdout
        expected = out.strip().split("=", 1)[1].replace(":", "").lower()
        assert fingerprint(cert) == expected
        assert len(expected) == 64


def test_normalize_fingerprint_accepts_human_forms(ec_leaf):
    """Fingerprints pasted with colons, in upper case or with a sha256 prefix all mean the same thing."""
    fp = fingerprint(ec_leaf.certificate)
    colons = ":".join(fp[i:i + 2] for i in range(0, 64, 2))
    for text in (fp, fp.upper(), colons, colons.upper(), f"sha256:{fp}", f"SHA256:{colons.upper()}",
                 f"sha256={colons}", f"  {fp}\n"):
        assert normalize_fingerprint(text) == fp, text


@pytest.mark.parametrize(
    "text",
    ["", "ab" * 31 + "a", "ab" * 33, "ab" * 16, "ab" * 20, "g" * 64, "ab" * 31 + "zz", "md5:" + "ab" * 32,
     "SHA256:" + "ab" * 31],
)
def test_normalize_fingerprint_refuses_other_text(text):
    """Anything but 32 bytes of hex (an MD5 or SHA-1, a typo) is refused with the input quoted."""
    with pytest.raises(CertificateError, match="is not a SHA-256 fingerprint"):
        normalize_fingerprint(text)


# --- validity -------------------------------------------------------------------------------------


def test_not_yet_valid_certificate(dev_ca, now):
    """A certificate whose window starts later is refused with the start date, as a typed error."""
    start = (now + timedelta(days=3)).replace(microsecond=0)
    _, cert = dev_ca.build("early", "tls-client", key=ec_key(), not_before=start, days=30)
    expected = f"^acme cert is not valid before {start:%Y-%m-%d %H:%M:%S} UTC$"
    with pytest.raises(NotYetValidError, match=expected):
        check_validity(cert, now, "acme cert")
    check_validity(cert, start + timedelta(seconds=1), "acme cert")
    with pytest.raises(NotYetValidError):
        check_validity(cert, start - timedelta(seconds=1), "acme cert")


def test_expired_certificate(dev_ca, now):
    """A certificate whose window has ended is refused with the expiry date, as a typed error."""
    start = (now - timedelta(days=40)).replace(microsecond=0)
    _, cert = dev_ca.build("late", "tls-client", key=ec_key(), not_before=start, days=10)
    end = start + timedelta(days=10)
    with pytest.raises(ExpiredError, match=f"^acme cert expired on {end:%Y-%m-%d %H:%M:%S} UTC$"):
        check_validity(cert, now, "acme cert")
    check_validity(cert, end - timedelta(seconds=1), "acme cert")
    with pytest.raises(ExpiredError):
        check_validity(cert, end + timedelta(seconds=1), "acme cert")


# --- issuer checks --------------------------------------------------------------------------------


def test_leaf_of_trusted_ca_is_accepted(ec_leaf, dev_ca, other_ca, now):
    """A leaf issued by one of the trusted CAs passes, and the issuing CA is returned."""
    assert issued_by(ec_leaf.certificate, dev_ca.certificate)
    ca = check_issued_by(ec_leaf.certificate, [other_ca.certificate, dev_ca.certificate], now)
    assert ca == dev_ca.certificate


def test_leaf_of_other_ca_is_untrusted(other_ca, dev_ca, now):
    """A leaf from an unrelated CA is refused where only dev_ca is trusted."""
    _, cert = other_ca.build("mallory", "tls-client", key=ec_key())
    assert not issued_by(cert, dev_ca.certificate)
    with pytest.raises(UntrustedIssuerError, match=r"^mallory cert was not issued by a trusted CA$"):
        check_issued_by(cert, [dev_ca.certificate], now, "mallory cert")
    with pytest.raises(UntrustedIssuerError):
        check_issued_by(cert, [], now)


def test_same_issuer_name_but_other_key_is_untrusted(other_ca, dev_ca, now):
    """Copying the trusted CA's name is not enough: the signature must be the CA key's."""
    forger = DevCA(other_ca.key, dev_ca.certificate)
    _, cert = forger.build("mallory", "tls-client", key=ec_key())
    assert cert.issuer == dev_ca.certificate.subject
    assert not issued_by(cert, dev_ca.certificate)
    with pytest.raises(UntrustedIssuerError):
        check_issued_by(cert, [dev_ca.certificate], now)


def test_non_ca_certificate_cannot_act_as_ca(ec_leaf, now):
    """A leaf (CA:FALSE) that signs another certificate is not an issuer, even though the signature checks."""
    _, sub = DevCA(ec_leaf.key, ec_leaf.certificate).build("sub", "tls-client", key=ec_key())
    sub.verify_directly_issued_by(ec_leaf.certificate)  # the signature itself is fine
    assert not is_ca(ec_leaf.certificate)
    assert not issued_by(sub, ec_leaf.certificate)
    with pytest.raises(UntrustedIssuerError):
        check_issued_by(sub, [ec_leaf.certificate], now)


def test_expired_ca_is_untrusted(tmp_path, now):
    """A valid leaf signed by a CA whose own window has ended is refused."""
    old = DevCA.create(tmp_path / "old-ca", "Old CA", key_bits=2048, now=now - timedelta(days=30), days=10)
    _, cert = old.build("acme", "tls-client", key=ec_key(), not_before=now - timedelta(days=28))
    check_validity(cert, now)
    assert issued_by(cert, old.certificate)
    with pytest.raises(UntrustedIssuerError):
        check_issued_by(cert, [old.certificate], now)
    assert check_issued_by(cert, [old.certificate], now - timedelta(days=25)) == old.certificate


def test_expired_leaf_is_refused_before_issuer_is_considered(dev_ca, now):
    """An expired leaf of a trusted CA fails on its dates, so the operator sees the real reason."""
    _, cert = dev_ca.build("late", "tls-client", key=ec_key(), not_before=now - timedelta(days=40), days=10)
    with pytest.raises(ExpiredError):
        check_issued_by(cert, [dev_ca.certificate], now)


# --- describe, names, files -----------------------------------------------------------------------


def test_describe_gives_operator_facts_json_ready(ec_leaf, dev_ca):
    """describe() names a certificate by fingerprint, names, serial, dates and CA flag, as JSON."""
    cert = ec_leaf.certificate
    facts = describe(cert)
    assert set(facts) == {"fingerprint", "subject", "issuer", "serial", "not_before", "not_after", "ca"}
    assert facts["fingerprint"] == fingerprint(cert)
    assert facts["subject"] == "CN=globex,O=Postroom development"
    assert facts["issuer"] == "CN=Test CA,O=Postroom development"
    assert int(facts["serial"], 16) == cert.serial_number
    assert facts["serial"] == facts["serial"].lower()
    assert datetime.fromisoformat(facts["not_before"]) == cert.not_valid_before_utc
    assert datetime.fromisoformat(facts["not_after"]) == cert.not_valid_after_utc
    assert datetime.fromisoformat(facts["not_after"]).tzinfo is not None
    assert facts["ca"] is False
    assert describe(dev_ca.certificate)["ca"] is True
    assert json.loads(json.dumps(facts)) == facts


def test_common_name_falls_back_to_subject(ec_leaf):
    """The common name is shown when present; a subject without one is shown whole."""
    assert common_name(ec_leaf.certificate) == "globex"
    key = ec_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "No CN Ltd")])
    start = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    assert common_name(cert) == "O=No CN Ltd"


def test_to_pem_round_trips(ec_leaf):
    """to_pem writes a PEM that loads back as the same certificate."""
    data = to_pem(ec_leaf.certificate)
    assert data.startswith(b"-----BEGIN CERTIFICATE-----")
    assert load_certificate(data) == ec_leaf.certificate


def test_read_file_reads_bytes(tmp_path):
    """read_file returns the file's bytes unchanged."""
    (tmp_path / "a.pem").write_bytes(b"\x00\xffdata")
    assert read_file(tmp_path / "a.pem") == b"\x00\xffdata"


def test_read_file_missing(tmp_path):
    """A missing file is one sentence naming the path, not an OSError traceback."""
    path = tmp_path / "nope.pem"
    with pytest.raises(CertificateError, match=f"^{path}: no such file$"):
        read_file(path)


def test_read_file_directory(tmp_path):
    """A directory where a file was expected is named as such."""
    with pytest.raises(CertificateError, match=f"^{tmp_path}: is a directory, expected a file$"):
        read_file(tmp_path)


def test_der_certificate_given_as_key_is_named_as_a_certificate(dev_ca):
    """A DER certificate where a key was expected is called a certificate, as the PEM case is."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from certs.errors import CertificateError
    from certs.x509 import load_private_key

    with pytest.raises(CertificateError, match="holds a certificate, not a private key"):
        load_private_key(dev_ca.certificate.public_bytes(Encoding.DER), "ca.der")
