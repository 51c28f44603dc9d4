"""Fixtures for the ``certs`` tests: a few leaf certificates of the session CAs, made once.

RSA key generation is the expensive part, so the RSA leaves (a TLS server and a TLS client) are
session-scoped; everything else uses EC P-256 keys, which cost next to nothing.
"""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs.x509 import KeyAndCertificate


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A fresh, cheap P-256 key for leaves whose key type does not matter."""
    return ec.generate_private_key(ec.SECP256R1())


def pem(cert) -> bytes:
    """A certificate's PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert) -> bytes:
    """A certificate's DER bytes."""
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="session")
def server_identity(dev_ca) -> KeyAndCertificate:
    """The gateway's TLS server identity for ``localhost`` (RSA, issued by dev_ca)."""
    key, cert = dev_ca.build("gateway", "tls-server", hostnames=["localhost"])
    return KeyAndCertificate(key, cert)


@pytest.fixture(scope="session")
def client_identity(dev_ca) -> KeyAndCertificate:
    """A partner's TLS client identity (RSA, issued by dev_ca)."""
    key, cert = dev_ca.build("acme", "tls-client")
    return KeyAndCertificate(key, cert)


@pytest.fixture(scope="session")
def ec_leaf(dev_ca) -> KeyAndCertificate:
    """A TLS client leaf of dev_ca with an EC key, for loaders and checks."""
    key, cert = dev_ca.build("globex", "tls-client", key=ec_key())
    return KeyAndCertificate(key, cert)
