"""Certificates, SSH keys and partner builders for the partner directory tests.

RSA key generation is the slow part, so every leaf certificate here shares one session key: each
certificate still has its own serial and therefore its own fingerprint.
"""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from certs.devca import DevCA, new_rsa_key
from certs.ssh import SSHPublicKey, parse_public_key
from certs.x509 import common_name
from partners.networks import parse_network
from partners.store import NewPartner


@pytest.fixture(scope="session")
def leaf_key():
    """One RSA key shared by every leaf certificate of the session."""
    return new_rsa_key(2048)


@pytest.fixture(scope="session")
def certs(dev_ca, other_ca, leaf_key, tmp_path_factory) -> SimpleNamespace:
    """Certificates for every case the directory distinguishes, issued once per session."""
    start = datetime.now(UTC)

    def leaf(ca, name, usage, **options):
        return ca.build(name, usage, key=leaf_key, **options)[1]

    expired_ca = DevCA.create(
        tmp_path_factory.mktemp("expired-ca"), "Expired CA", key_bits=2048, now=start - timedelta(days=30), days=1
    )
    # Same subject as dev_ca, different key: only a signature check tells their certificates apart.
    impostor_ca = DevCA.create(tmp_path_factory.mktemp("impostor-ca"), common_name(dev_ca.certificate), key_bits=2048)
    assert impostor_ca.certificate.subject == dev_ca.certificate.subject
    return SimpleNamespace(
        tls=leaf(dev_ca, "acme tls", "tls-client"),
        sign=leaf(dev_ca, "acme sign", "sign", emails=["invoices@acme.example"]),
        encrypt=leaf(dev_ca, "acme encrypt", "encrypt", emails=["invoices@acme.example"]),
        globex_tls=leaf(dev_ca, "globex tls", "tls-client"),
        initech_sign=leaf(dev_ca, "initech sign", "sign"),
        stranger_tls=leaf(other_ca, "stranger tls", "tls-client"),
        expired=leaf(dev_ca, "expired", "tls-client", not_before=start - timedelta(days=10), days=1),
        future=leaf(dev_ca, "future", "tls-client", not_before=start + timedelta(days=30), days=365),
        expired_ca=expired_ca.certificate,
        from_impostor=leaf(impostor_ca, "impostor tls", "tls-client"),
        from_expired_ca=leaf(expired_ca, "orphan tls", "tls-client", not_before=start - timedelta(minutes=5)),
    )


@pytest.fixture
def make_ssh_key():
    """A factory of fresh ed25519 SSH public keys, parsed as the CLI would."""

    def make(comment: str = "sftp@partner.example") -> SSHPublicKey:
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        return parse_public_key(f"{line.decode('ascii')} {comment}")

    return make


@pytest.fixture
def full_partner(certs, dev_ca, make_ssh_key):
    """A factory of :class:`NewPartner` with every kind of registration filled in."""

    def make(partner_id: str = "acme", **changes) -> NewPartner:
        fields = dict(
            id=partner_id,
            name="Acme Corporation",
            as2_ids=("ACME-AS2",),
            participant_ids=("0088:5798000000001",),
            emails=("Invoices@Acme.example",),
            networks=(parse_network("192.0.2.0/24"), parse_network("2001:db8::/32")),
            certificates=(("tls", certs.tls), ("sign", certs.sign), ("encrypt", certs.encrypt),
                          ("tls", dev_ca.certificate)),
            ssh_keys=(make_ssh_key("acme@sftp"),),
            deliver="as2",
            as2_url="https://as2.acme.example/receive",
        )
        fields.update(changes)
        return NewPartner(**fields)

    return make
