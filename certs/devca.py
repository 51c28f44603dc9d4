# -*- test-case-name: tests.certs.test_devca -*-
"""A small development CA for the demo home and the tests.

It issues exactly the certificate shapes Postroom uses — TLS client, TLS server, S/MIME signing and
encryption — so the demo and the tests exercise the same checks production certificates go through.
It is not a production CA: no revocation, no policy, keys on local disk.
"""

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs.errors import CertificateError
from certs.files import write_atomically, write_secret
from certs.x509 import Certificate, PrivateKey, load_key_and_certificate, read_file

USAGES = ("tls-client", "tls-server", "tls", "sign", "encrypt")

_EKU = {
    "tls-client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "tls-server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "tls": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "sign": [ExtendedKeyUsageOID.EMAIL_PROTECTION],
    "encrypt": [ExtendedKeyUsageOID.EMAIL_PROTECTION],
}

_NO_KEY_USAGE = dict(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)

_KEY_USAGE = {
    "tls-client": dict(_NO_KEY_USAGE, digital_signature=True),
    "tls-server": dict(_NO_KEY_USAGE, digital_signature=True, key_encipherment=True),
    "tls": dict(_NO_KEY_USAGE, digital_signature=True, key_encipherment=True),
    "sign": dict(_NO_KEY_USAGE, digital_signature=True, content_commitment=True),
    "encrypt": dict(_NO_KEY_USAGE, key_encipherment=True),
}


@attrs.frozen
class Issued:
    """Where an issued key and certificate were written."""

    key_path: Path
    cert_path: Path
    certificate: Certificate


def new_rsa_key(bits: int = 3072) -> rsa.RSAPrivateKey:
    """A fresh RSA key; RSA because AS2 and S/MIME peers still expect it."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM, for files written 0600."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Postroom development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _sans(hostnames: Iterable[str], emails: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    names.extend(x509.RFC822Name(e) for e in emails)
    return names


@attrs.define
class DevCA:
    """A CA key and self-signed certificate kept in one directory (``ca.key`` 0600, ``ca.crt``)."""

    key: PrivateKey
    certificate: Certificate
    key_bits: int = 3072

    @classmethod
    def create(cls, directory: Path, name: str = "Postroom Dev CA", *, key_bits: int = 3072,
               now: datetime | None = None, days: int = 3650) -> "DevCA":
        """Make a new CA in ``directory``; refuse if one is already there."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (directory / "ca.key").exists():
            raise CertificateError(f"{directory / 'ca.key'} already exists; not replacing a CA")
        now = now or datetime.now(UTC)
        key = new_rsa_key(key_bits)
        subject = _name(name)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(**dict(_NO_KEY_USAGE, key_cert_sign=True, crl_sign=True)), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_secret(directory / "ca.key", key_pem(key))
        write_atomically(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, key_bits)

    @classmethod
    def load(cls, directory: Path) -> "DevCA":
        """Open the CA kept in ``directory``."""
        directory = Path(directory)
        pair = load_key_and_certificate(
            read_file(directory / "ca.key"), read_file(directory / "ca.crt"),
            str(directory / "ca.key"), str(directory / "ca.crt"),
        )
        return cls(pair.key, pair.certificate, getattr(pair.key, "key_size", 3072))

    def build(self, common_name: str, usage: str, *, hostnames: Iterable[str] = (),
              emails: Iterable[str] = (), key: PrivateKey | None = None,
              not_before: datetime | None = None, days: int = 825) -> tuple[PrivateKey, Certificate]:
        """Issue a certificate for ``usage`` in memory (tests use this for odd validity windows)."""
        if usage not in USAGES:
            raise CertificateError(f"unknown usage {usage!r}; choose one of {', '.join(USAGES)}")
        key = key or new_rsa_key(self.key_bits)
        start = not_before or datetime.now(UTC) - timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(**_KEY_USAGE[usage]), critical=True)
            .add_extension(x509.ExtendedKeyUsage(_EKU[usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key()),
                critical=False,
            )
        )
        sans = _sans(hostnames, emails)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())

    def issue(self, name: str, usage: str, out_dir: Path, **options) -> Issued:
        """Issue and write ``out_dir/NAME.key`` (0600) and ``out_dir/NAME.crt``; never overwrite."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, cert_path = out_dir / f"{name}.key", out_dir / f"{name}.crt"
        for path in (key_path, cert_path):
            if path.exists():
                raise CertificateError(f"{path} already exists; not overwriting it")
        key, cert = self.build(name, usage, **options)
        write_secret(key_path, key_pem(key))
        write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return Issued(key_path, cert_path, cert)
