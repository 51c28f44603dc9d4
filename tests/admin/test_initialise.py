"""Tests for :mod:`admin.initialise`: the home ``postroom init`` creates, called directly."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from admin.initialise import DEMO_PARTNERS, HomeError, initialise, register_demo_partners
from certs import x509 as certs_x509
from certs.devca import DevCA
from certs.ssh import parse_public_key
from gateway.config import ListenSection, load
from gateway.home import Home
from partners import store
from spool.database import check_current, create_engine, upgrade

HOSTNAME = "gateway.example"
EPHEMERAL = ListenSection(**{k: "tcp:0:interface=127.0.0.1" for k in ("as2", "portal", "sftp", "smtp", "metrics")})
USAGE_EKU = {
    "tls": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "sign": [ExtendedKeyUsageOID.EMAIL_PROTECTION],
    "encrypt": [ExtendedKeyUsageOID.EMAIL_PROTECTION],
}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Home, list[str]]:
    """A demo home for a gateway named ``gateway.example``, created once for this module."""
    home = Home(tmp_path_factory.mktemp("init") / "home")
    lines = initialise(home, demo=True, hostname=HOSTNAME, as2_id="GW-TEST", name="Test Gateway",
                       listen=EPHEMERAL, key_bits=2048)
    return home, lines


@pytest.fixture(scope="module")
def home(made) -> Home:
    """The home made by :func:`made`."""
    return made[0]


@pytest.fixture(scope="module")
def ca_cert(home) -> x509.Certificate:
    """The home's dev CA certificate."""
    return DevCA.load(home.dev_ca).certificate


def read_cert(path) -> x509.Certificate:
    """The certificate in a PEM file."""
    return certs_x509.load_certificate(path.read_bytes(), str(path))


def test_config_loads_and_points_at_files_that_exist(home):
    """The written postroom.toml passes the strict loader and every path in it names a real file."""
    config = load(home)
    assert config.gateway.hostname == HOSTNAME
    assert config.gateway.as2_id == "GW-TEST"
    assert config.gateway.name == "Test Gateway"
    assert config.listen == EPHEMERAL
    for path in (config.tls.certificate, config.tls.private_key, config.identity.sign_certificate,
                 config.identity.sign_private_key, config.identity.encrypt_certificate,
                 config.identity.encrypt_private_key):
        assert home.resolve(path).is_file(), path
    pairs = [(config.tls.private_key, config.tls.certificate),
             (config.identity.sign_private_key, config.identity.sign_certificate),
             (config.identity.encrypt_private_key, config.identity.encrypt_certificate)]
    for key, cert in pairs:  # each key is the private half of its certificate
        certs_x509.load_key_and_certificate(home.resolve(key).read_bytes(), home.resolve(cert).read_bytes())
    assert home.resolve(config.storage.spool_dir).is_dir()
    assert config.database_url == f"sqlite:///{home.path / 'postroom.db'}"
    engine = create_engine(config.database_url)
    try:
        check_current(engine)  # migrated to the schema this code needs
    finally:
        engine.dispose()


def test_lines_say_what_was_made_and_how_to_try_the_demo(made):
    """The returned lines (what ``init`` prints) name the home, the CA and each demo partner."""
    home, lines = made
    text = "\n".join(lines)
    assert f"Postroom home created in {home.path}" in text
    assert str(home.dev_ca / "ca.crt") in text
    for p in DEMO_PARTNERS:
        assert f"AS2 ID {p.as2_id}, keys in {home.demo / p.id}" in text


@pytest.mark.parametrize("partner", DEMO_PARTNERS, ids=lambda p: p.id)
def test_demo_partners_are_registered_with_certificates_from_the_dev_ca(home, ca_cert, partner):
    """Each demo partner is active, allowlisted for loopback, and holds one tls, sign and encrypt cert from the CA."""
    engine = create_engine(load(home).database_url)
    try:
        with engine.connect() as conn:
            shown = store.show_partner(conn, partner.id)
    finally:
        engine.dispose()
    assert shown["status"] == "active"
    assert shown["name"] == partner.name
    assert shown["as2_ids"] == [partner.as2_id]
    assert shown["participant_ids"] == [v.lower() for v in partner.participant_ids]  # Peppol IDs compare lowercase
    assert shown["emails"] == [partner.email]
    assert shown["allow_ips"] == ["127.0.0.0/8"]
    demo_key = parse_public_key((home.demo / partner.id / "id_ed25519.pub").read_text())
    assert [k["fingerprint"] for k in shown["ssh_keys"]] == [demo_key.fingerprint]

    registered = {c["usage"]: c["fingerprint"] for c in shown["certificates"]}
    assert sorted(registered) == ["encrypt", "sign", "tls"]
    assert len(shown["certificates"]) == 3
    for usage, eku in USAGE_EKU.items():
        folder = home.demo / partner.id
        cert = read_cert(folder / f"{partner.id}-{usage}.crt")
        assert certs_x509.fingerprint(cert) == registered[usage]
        assert certs_x509.issued_by(cert, ca_cert)
        assert not certs_x509.is_ca(cert)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == eku
        key_usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert key_usage.digital_signature == (usage in ("tls", "sign"))
        assert key_usage.key_encipherment == (usage == "encrypt")
        certs_x509.load_key_and_certificate(  # the demo key is the private half of the registered cert
            (folder / f"{partner.id}-{usage}.key").read_bytes(), (folder / f"{partner.id}-{usage}.crt").read_bytes()
        )
        if usage != "tls":
            emails = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert emails.get_values_for_type(x509.RFC822Name) == [partner.email]


def test_gateway_tls_certificate_names_the_host_and_loopback(home, ca_cert):
    """The gateway's TLS cert is valid for its hostname, localhost, 127.0.0.1 and ::1, and issued by the dev CA."""
    cert = read_cert(home.pki / "tls.crt")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {HOSTNAME, "localhost"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
    }
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert certs_x509.issued_by(cert, ca_cert)
    for usage in ("sign", "encrypt"):
        assert certs_x509.issued_by(read_cert(home.pki / f"{usage}.crt"), ca_cert)


def test_home_and_pki_are_private(home):
    """Only the owner may enter the home and its key folder."""
    assert stat.S_IMODE(home.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.pki.stat().st_mode) == 0o700
    for key in ("tls.key", "sign.key", "encrypt.key", "dev-ca/ca.key"):
        assert stat.S_IMODE((home.pki / key).stat().st_mode) == 0o600, key


def test_existing_home_is_refused_without_force(home):
    """A second initialise on the same home raises HomeError pointing at --force, and leaves the home alone."""
    config = home.config_file.read_bytes()
    ca = (home.dev_ca / "ca.key").read_bytes()
    with pytest.raises(HomeError, match="--force"):
        initialise(home, key_bits=2048)
    assert home.config_file.read_bytes() == config
    assert (home.dev_ca / "ca.key").read_bytes() == ca


def test_a_failed_init_leaves_nothing_behind_and_can_be_retried(tmp_path, monkeypatch):
    """If init fails half-way (here: the SSH host key), it removes what it made, so a retry just works."""
    import admin.initialise as module
    from admin.initialise import HomeError, _managed_paths, initialise
    from gateway.home import Home

    home = Home(tmp_path / "home")
    real = module.generate_keypair

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "generate_keypair", broken)
    with pytest.raises(OSError, match="disk full"):
        initialise(home, key_bits=2048)
    assert not any(path.exists() for path in _managed_paths(home))
    monkeypatch.setattr(module, "generate_keypair", real)
    initialise(home, key_bits=2048)
    assert home.config_file.exists()
    with pytest.raises(HomeError, match="already holds a Postroom home"):
        initialise(home, key_bits=2048)


def test_leftovers_without_a_config_are_not_silently_reused(tmp_path):
    """Parts of a home without postroom.toml (someone else's files?) need --force, and say so."""
    from admin.initialise import HomeError, initialise
    from gateway.home import Home

    home = Home(tmp_path / "home")
    (home.pki).mkdir(parents=True)
    with pytest.raises(HomeError, match=r"no postroom\.toml; use --force"):
        initialise(home, key_bits=2048)
    initialise(home, key_bits=2048, force=True)
    assert home.config_file.exists()


def test_demo_partners_register_again_in_another_database(home, tmp_path):
    """A second database (another node's, a benchmark's) gets the very partners whose files the home holds."""
    def partners(url: str) -> list[dict]:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return [store.show_partner(conn, p.id) for p in DEMO_PARTNERS]
        finally:
            engine.dispose()

    other = f"sqlite:///{tmp_path / 'other.db'}"
    engine = create_engine(other)
    try:
        upgrade(engine)
        register_demo_partners(home, engine)
    finally:
        engine.dispose()
    first, second = partners(load(home).database_url), partners(other)
    for shown in (first, second):
        for partner in shown:
            for volatile in ("created_at", "updated_at"):
                partner.pop(volatile, None)
            for cert in partner["certificates"]:
                cert.pop("id", None)
    assert second == first
