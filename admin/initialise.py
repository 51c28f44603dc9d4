# -*- test-case-name: tests.admin.test_initialise -*-
"""``postroom init``: create a home — config, the gateway's keys, the database — and optionally a demo.

The demo is two partners, ``acme`` and ``globex``, with TLS client, signing and encryption
certificates from the home's dev CA and an SSH key each, allowlisted for 127.0.0.0/8. Their private
keys live in ``HOME/demo/<partner>/``; in real life a partner keeps its own keys and only sends
public certificates.
"""

import shutil
import tomllib
from datetime import UTC, datetime

import attrs

from certs.devca import DevCA
from certs.files import write_atomically
from certs.ssh import generate_keypair, parse_public_key
from certs.x509 import load_certificate
from gateway.config import GatewaySection, ListenSection, StorageSection, parse, render_default
from gateway.home import Home
from partners.networks import parse_network
from partners.store import NewPartner, add_partner
from spool import audit
from spool.database import create_engine, upgrade

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class HomeError(ValueError):
    """The home cannot be created as asked."""


@attrs.frozen
class DemoPartner:
    """A demo partner's registration and the files made for it."""

    id: str
    name: str
    as2_id: str
    participant_ids: tuple[str, ...]
    email: str


DEMO_PARTNERS = (
    DemoPartner("acme", "ACME Corporation", "ACME", ("0088:9482348239847239874", "0007:1234567890"),
                "invoices@acme.example"),
    DemoPartner("globex", "Globex Inc.", "GLOBEX", ("0002:FR23342", "0007:1234512345"),
                "ap@globex.example"),
)


def _managed_paths(home: Home) -> list:
    return [home.config_file, home.pki, home.demo, home.run, home.path / "spool", home.path / "postroom.db",
            home.path / "postroom.db-wal", home.path / "postroom.db-shm"]


def initialise(home: Home, *, demo: bool = False, force: bool = False, hostname: str = "localhost",
               as2_id: str = "POSTROOM", name: str = "Postroom", listen: ListenSection | None = None,
               key_bits: int = 3072, database_url: str | None = None, actor: str = "cli") -> list[str]:
    """Create the home; return the lines to print (what was made, and for a demo how to use it).

    :raises HomeError: when ``home`` already holds a Postroom home and ``force`` is not set.
    """
    if force:
        _remove_managed(home)
    elif home.config_file.exists():
        raise HomeError(
            f"{home.path} already holds a Postroom home; use --force to delete its configuration, "
            "keys, database and spool and start over"
        )
    elif any(path.exists() for path in _managed_paths(home)):
        raise HomeError(f"{home.path} holds parts of a Postroom home but no postroom.toml; "
                        "use --force to delete them and start over")
    try:
        return _create(home, demo=demo, hostname=hostname, as2_id=as2_id, name=name,
                       listen=listen or ListenSection(), key_bits=key_bits, database_url=database_url, actor=actor)
    except BaseException:
        _remove_managed(home)  # never leave half a home behind: it would block the next attempt
        raise


def _remove_managed(home: Home) -> None:
    for path in _managed_paths(home):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _create(home: Home, *, demo: bool, hostname: str, as2_id: str, name: str, listen: ListenSection,
            key_bits: int, database_url: str | None, actor: str) -> list[str]:
    """Make every part of the home; ``postroom.toml``, the mark of a complete home, comes last."""
    home.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.pki.mkdir(mode=0o700, exist_ok=True)
    hostnames = (hostname, *(n for n in LOCAL_NAMES if n != hostname))
    ca = DevCA.create(home.dev_ca, f"{name} Dev CA", key_bits=key_bits)
    ca.issue("tls", "tls", home.pki, hostnames=hostnames)
    ca.issue("sign", "sign", home.pki, emails=[f"invoices@{hostname}"])
    ca.issue("encrypt", "encrypt", home.pki, emails=[f"invoices@{hostname}"])
    generate_keypair(home.pki / "ssh_host_ed25519_key", f"postroom@{hostname}", "ed25519")
    generate_keypair(home.pki / "ssh_host_rsa_key", f"postroom@{hostname}", "rsa")
    storage = StorageSection(database_url=database_url) if database_url else StorageSection()
    config_text = render_default(GatewaySection(name=name, as2_id=as2_id, hostname=hostname), listen, storage)
    config = parse(tomllib.loads(config_text), home, str(home.config_file))
    home.resolve(config.storage.spool_dir).mkdir(mode=0o700, exist_ok=True)
    engine = create_engine(config.database_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            audit.append(conn, actor, "home.initialised", datetime.now(UTC),
                         details={"home": str(home.path), "as2_id": as2_id, "hostname": hostname, "demo": demo})
        lines = [f"Postroom home created in {home.path}", f"  config:   {home.config_file}",
                 f"  database: {config.database_url}", f"  dev CA:   {home.dev_ca / 'ca.crt'}"]
        if demo:
            lines += _demo(home, ca, engine, actor)
    finally:
        engine.dispose()
    write_atomically(home.config_file, config_text.encode("utf-8"), 0o640)
    return lines


def register_demo_partners(home: Home, engine, actor: str = "cli") -> None:
    """Register the demo partners from their files under ``HOME/demo`` (certificates, SSH key) in ``engine``'s
    database: what ``init --demo`` does after issuing them, and how a second database (several nodes, a
    benchmark) gets the very same partners."""
    now = datetime.now(UTC)
    for p in DEMO_PARTNERS:
        folder = home.demo / p.id
        files = {usage: folder / f"{p.id}-{usage}.crt" for usage in ("tls", "sign", "encrypt")}
        certificates = tuple((usage, load_certificate(path.read_bytes(), str(path))) for usage, path in files.items())
        ssh_key = parse_public_key((folder / "id_ed25519.pub").read_text(), str(folder / "id_ed25519.pub"))
        with engine.begin() as conn:
            add_partner(conn, NewPartner(
                id=p.id, name=p.name, as2_ids=(p.as2_id,), participant_ids=p.participant_ids,
                emails=(p.email,), networks=(parse_network("127.0.0.0/8"),),
                certificates=certificates, ssh_keys=(ssh_key,),
            ), now)
            audit.append(conn, actor, "partner.added", now, details={"partner": p.id, "name": p.name, "demo": True})


def _demo(home: Home, ca: DevCA, engine, actor: str) -> list[str]:
    lines = ["", "Demo partners (allowlisted for 127.0.0.0/8):"]
    for p in DEMO_PARTNERS:
        folder = home.demo / p.id
        for usage in ("tls", "sign", "encrypt"):
            ca.issue(f"{p.id}-{usage}", "tls-client" if usage == "tls" else usage, folder,
                     **({} if usage == "tls" else {"emails": [p.email]}))
        generate_keypair(folder / "id_ed25519", f"{p.id}@demo", "ed25519")
        lines.append(f"  {p.id:<7} AS2 ID {p.as2_id}, keys in {folder}")
    register_demo_partners(home, engine, actor)
    acme = home.demo / "acme"
    lines += [
        "",
        "Try it (after `postroom serve` is up; ports are in run/ports.json):",
        f"  curl --cacert {home.dev_ca / 'ca.crt'} --cert {acme / 'acme-tls.crt'} --key {acme / 'acme-tls.key'} \\",
        "       -X POST --data-binary @invoice.xml https://localhost:4443/as2",
        "  curl http://127.0.0.1:9464/healthz",
        f"  postroom --home {home.path} partner list",
    ]
    return lines
