"""Tests for :mod:`certs.devca`: the development CA and the certificate shapes it issues."""

import ipaddress
import stat
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

from certs.devca import USAGES, DevCA, key_pem
from certs.errors import CertificateError
from certs.x509 import check_key_matches, is_ca, issued_by, load_certificate, load_private_key, public_bytes
from tests.certs.conftest import ec_key, pem


def mode(path) -> int:
    """The permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


def ext(cert, kind):
    """The value of one extension, and whether it is critical."""
    found = cert.extensions.get_extension_for_class(kind)
    return found.value, found.critical


@pytest.fixture(scope="module")
def fresh_ca(tmp_path_factory):
    """A 30-day CA made by DevCA.create in its own directory: (directory, CA)."""
    directory = tmp_path_factory.mktemp("fresh") / "ca"
    return directory, DevCA.create(directory, "Fresh CA", key_bits=2048, days=30)


@pytest.fixture
def ca_file(dev_ca, tmp_path):
    """dev_ca's certificate written where ``openssl verify -CAfile`` can read it."""
    path = tmp_path / "ca.crt"
    path.write_bytes(pem(dev_ca.certificate))
    return path


def openssl_verify(ca_file, cert_file, *options: str) -> subprocess.CompletedProcess:
    """Run ``openssl verify`` the way an operator would check a certificate by hand."""
    return subprocess.run(["openssl", "verify", *options, "-CAfile", str(ca_file), str(cert_file)],
                          capture_output=True, text=True)


def test_create_writes_a_self_signed_ca(fresh_ca, now):
    """create() writes ca.key (0600) and ca.crt (0644) holding a self-signed CA:TRUE certificate."""
    directory, ca = fresh_ca
    assert mode(directory / "ca.key") == 0o600
    assert mode(directory / "ca.crt") == 0o644
    assert mode(directory) & 0o077 == 0
    cert = load_certificate((directory / "ca.crt").read_bytes())
    assert cert == ca.certificate
    check_key_matches(load_private_key((directory / "ca.key").read_bytes()), cert)
    assert isinstance(ca.key, rsa.RSAPrivateKey) and ca.key.key_size == 2048
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "Fresh CA"
    cert.verify_directly_issued_by(cert)
    assert ext(cert, x509.BasicConstraints) == (x509.BasicConstraints(ca=True, path_length=0), True)
    usage, critical = ext(cert, x509.KeyUsage)
    assert critical and usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    assert timedelta(days=29) < cert.not_valid_after_utc - now <= timedelta(days=30)


def test_create_refuses_to_replace_an_existing_ca(fresh_ca):
    """A second create() in the same directory fails and leaves the first CA untouched."""
    directory, _ = fresh_ca
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with pytest.raises(CertificateError, match=r"ca\.key already exists; not replacing a CA"):
        DevCA.create(directory, "Usurper", key_bits=2048)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_load_round_trips(fresh_ca):
    """load() gives back the same CA key and certificate that create() wrote."""
    directory, ca = fresh_ca
    loaded = DevCA.load(directory)
    assert loaded.certificate == ca.certificate
    assert public_bytes(loaded.key.public_key()) == public_bytes(ca.key.public_key())


def test_load_of_a_missing_ca_names_the_file(tmp_path):
    """Loading from an empty directory says which file is missing."""
    with pytest.raises(CertificateError, match=r"ca\.key: no such file"):
        DevCA.load(tmp_path)


def test_load_refuses_a_key_of_another_ca(fresh_ca, dev_ca, tmp_path):
    """A ca.key that does not belong to ca.crt is refused rather than issuing unverifiable certificates."""
    directory, _ = fresh_ca
    (tmp_path / "ca.crt").write_bytes((directory / "ca.crt").read_bytes())
    (tmp_path / "ca.key").write_bytes(key_pem(dev_ca.key))
    with pytest.raises(CertificateError, match="does not match"):
        DevCA.load(tmp_path)


@pytest.mark.parametrize(
    "usage, ekus, key_usages",
    [
        ("tls-client", [EKU.CLIENT_AUTH], {"digital_signature"}),
        ("tls-server", [EKU.SERVER_AUTH], {"digital_signature", "key_encipherment"}),
        ("tls", [EKU.SERVER_AUTH, EKU.CLIENT_AUTH], {"digital_signature", "key_encipherment"}),
        ("sign", [EKU.EMAIL_PROTECTION], {"digital_signature", "content_commitment"}),
        ("encrypt", [EKU.EMAIL_PROTECTION], {"key_encipherment"}),
    ],
)
def test_issued_certificate_extensions_per_usage(dev_ca, usage, ekus, key_usages):
    """Each usage gets exactly its EKU and KeyUsage bits, as a non-CA leaf linked to the CA's key."""
    _, cert = dev_ca.build("acme", usage, key=ec_key())
    eku, eku_critical = ext(cert, x509.ExtendedKeyUsage)
    assert list(eku) == ekus and not eku_critical
    ku, ku_critical = ext(cert, x509.KeyUsage)
    assert ku_critical
    flags = {"digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign"}
    assert {flag for flag in flags if getattr(ku, flag)} == key_usages
    assert ext(cert, x509.BasicConstraints) == (x509.BasicConstraints(ca=False, path_length=None), True)
    assert not is_ca(cert)
    aki, _ = ext(cert, x509.AuthorityKeyIdentifier)
    ski, _ = ext(dev_ca.certificate, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.digest
    assert issued_by(cert, dev_ca.certificate)


def test_server_certificate_carries_dns_and_ip_names(dev_ca):
    """Host names become DNS SANs and literal addresses IP SANs, so clients can check either."""
    _, cert = dev_ca.build("gw", "tls-server", key=ec_key(), hostnames=["gw.example", "127.0.0.1", "::1"])
    sans, critical = ext(cert, x509.SubjectAlternativeName)
    assert not critical
    assert sans.get_values_for_type(x509.DNSName) == ["gw.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


def test_signing_certificate_carries_email(dev_ca):
    """S/MIME certificates carry the mailbox as an rfc822Name SAN; without names there is no SAN."""
    _, cert = dev_ca.build("acme", "sign", key=ec_key(), emails=["invoices@acme.example"])
    sans, _ = ext(cert, x509.SubjectAlternativeName)
    assert sans.get_values_for_type(x509.RFC822Name) == ["invoices@acme.example"]
    _, bare = dev_ca.build("acme", "tls-client", key=ec_key())
    with pytest.raises(x509.ExtensionNotFound):
        bare.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_validity_window_follows_not_before_and_days(dev_ca, now):
    """build() honours not_before and days, and by default starts slightly in the past."""
    start = (now - timedelta(days=2)).replace(microsecond=0)
    _, cert = dev_ca.build("acme", "sign", key=ec_key(), not_before=start, days=7)
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + timedelta(days=7)
    _, default = dev_ca.build("acme", "sign", key=ec_key())
    assert now - timedelta(minutes=10) < default.not_valid_before_utc <= now
    assert default.not_valid_after_utc - default.not_valid_before_utc == timedelta(days=825)


def test_build_without_key_makes_rsa_key_of_ca_size(dev_ca):
    """Without a key, build() makes an RSA key of the CA's key_bits that matches the certificate."""
    key, cert = dev_ca.build("acme", "encrypt")
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == dev_ca.key_bits
    check_key_matches(key, cert)


@pytest.mark.parametrize(
    "usage, purposes, wrong_purpose",
    [
        ("tls-client", ["sslclient"], "sslserver"),
        ("tls-server", ["sslserver"], "sslclient"),
        ("tls", ["sslserver", "sslclient"], "smimesign"),
        ("sign", ["smimesign"], "sslclient"),
        ("encrypt", ["smimeencrypt"], "sslserver"),
    ],
)
def test_issued_files_verify_with_openssl(dev_ca, ca_file, tmp_path, usage, purposes, wrong_purpose):
    """openssl verify accepts each issued certificate for its purpose, and refuses it for another."""
    issued = dev_ca.issue("acme", usage, tmp_path / "out", key=ec_key(), hostnames=["acme.example"])
    for purpose in purposes:
        result = openssl_verify(ca_file, issued.cert_path, "-purpose", purpose)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith(": OK")
    refused = openssl_verify(ca_file, issued.cert_path, "-purpose", wrong_purpose)
    assert refused.returncode != 0


def test_openssl_refuses_a_certificate_of_another_ca(other_ca, ca_file, tmp_path):
    """The openssl check above is real: a leaf of other_ca does not verify against dev_ca."""
    issued = other_ca.issue("mallory", "tls-client", tmp_path, key=ec_key())
    assert openssl_verify(ca_file, issued.cert_path).returncode != 0


def test_issue_writes_key_0600_and_certificate_0644(dev_ca, tmp_path):
    """The private key file is owner-only; the certificate is world-readable; both match."""
    out = tmp_path / "out"
    issued = dev_ca.issue("acme-tls", "tls-client", out, key=ec_key())
    assert issued.key_path == out / "acme-tls.key"
    assert issued.cert_path == out / "acme-tls.crt"
    assert mode(issued.key_path) == 0o600
    assert mode(issued.cert_path) == 0o644
    assert sorted(p.name for p in out.iterdir()) == ["acme-tls.crt", "acme-tls.key"]
    cert = load_certificate(issued.cert_path.read_bytes())
    assert cert == issued.certificate
    check_key_matches(load_private_key(issued.key_path.read_bytes()), cert)


@pytest.mark.parametrize("existing", ["acme.key", "acme.crt"])
def test_issue_refuses_to_overwrite(dev_ca, tmp_path, existing):
    """issue() never overwrites an existing key or certificate, and writes nothing when it refuses."""
    (tmp_path / existing).write_bytes(b"keep me")
    with pytest.raises(CertificateError, match=f"{existing} already exists; not overwriting it"):
        dev_ca.issue("acme", "tls-client", tmp_path, key=ec_key())
    assert [p.name for p in tmp_path.iterdir()] == [existing]
    assert (tmp_path / existing).read_bytes() == b"keep me"


def test_unknown_usage_is_refused(dev_ca, tmp_path):
    """A usage outside USAGES is a CertificateError listing the choices, and nothing is written."""
    assert "smtp" not in USAGES
    with pytest.raises(CertificateError, match=r"unknown usage 'smtp'; choose one of tls-client, tls-server"):
        dev_ca.build("acme", "smtp", key=ec_key())
    with pytest.raises(CertificateError, match="unknown usage 'smtp'"):
        dev_ca.issue("acme", "smtp", tmp_path / "out")
    assert list((tmp_path / "out").glob("*")) == []


def test_loaded_ca_issues_keys_of_its_own_size(tmp_path):
    """A CA reopened from disk keeps issuing keys the size of its own key, not a fixed default."""
    DevCA.create(tmp_path, "Small CA", key_bits=2048)
    assert DevCA.load(tmp_path).key_bits == 2048
