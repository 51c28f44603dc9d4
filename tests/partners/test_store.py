"""Tests for :mod:`partners.store`: validated, all-or-nothing changes to the partner directory."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import attrs
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError

from certs.errors import CertificateError
from certs.x509 import fingerprint
from partners import store
from partners.errors import DuplicateError, InvalidValueError, NotFoundError, UnknownPartnerError
from partners.networks import parse_network
from partners.policy import Policy
from partners.schema import allowlist, certificates, directory_state, identifiers, metadata, partners, ssh_keys
from partners.store import NewPartner

DEPENDENTS = (identifiers, certificates, ssh_keys, allowlist)


def dump(engine) -> dict[str, list[tuple]]:
    """Every row of every table, for comparing the whole database before and after a change."""
    with engine.connect() as conn:
        return {t.name: sorted((tuple(r) for r in conn.execute(select(t))), key=repr) for t in metadata.sorted_tables}


def version(engine) -> int:
    """The directory's change counter, read in its own transaction."""
    with engine.connect() as conn:
        return store.directory_version(conn)


def refused(engine, change, error: type[Exception], match: str) -> Exception:
    """Run ``change(conn)`` in its own transaction, expect ``error``, and check nothing changed at all."""
    before = dump(engine)
    with pytest.raises(error, match=match) as caught:
        with engine.begin() as conn:
            change(conn)
    assert dump(engine) == before
    return caught.value


def colon_upper(fp: str) -> str:
    """A fingerprint the way ``openssl x509 -fingerprint`` prints it: AB:CD:…"""
    return ":".join(fp[i:i + 2] for i in range(0, len(fp), 2)).upper()


@pytest.fixture
def world(engine, now, certs, dev_ca, full_partner, make_ssh_key) -> SimpleNamespace:
    """A database with acme registered in full and globex registered bare (mailbox delivery)."""
    acme = full_partner("acme", participant_ids=("0192:NO987654321MVA",))
    with engine.begin() as conn:
        store.add_partner(conn, acme, now)
        store.add_partner(conn, NewPartner(id="globex", name="Globex"), now)
    return SimpleNamespace(
        engine=engine, now=now, later=now + timedelta(minutes=5), certs=certs, dev_ca=dev_ca, acme=acme,
        acme_key=acme.ssh_keys[0], spare_key=make_ssh_key("spare@sftp"),
    )


# -- adding, listing, showing ---------------------------------------------------------------------


def test_add_partner_registers_everything(world):
    """add_partner stores identifiers (normalised), networks, certificates incl. a CA, SSH keys, delivery and policy."""
    c = world
    with c.engine.connect() as conn:
        shown = store.show_partner(conn, "acme")
    assert shown == {
        "id": "acme",
        "name": "Acme Corporation",
        "status": "active",
        "deliver": "as2",
        "as2_ids": ["ACME-AS2"],
        "participant_ids": ["0192:no987654321mva"],
        "emails": ["invoices@acme.example"],
        "allow_ips": ["192.0.2.0/24", "2001:db8::/32"],
        "certificates": shown["certificates"],
        "ssh_keys": [{"fingerprint": c.acme_key.fingerprint, "type": "ssh-ed25519", "comment": "acme@sftp",
                      "ca": False}],
        "as2_url": "https://as2.acme.example/receive",
        "sftp_url": None,
        "sftp_host_key": None,
        "sftp_host_key_fingerprint": None,
        "policy": Policy().to_json(),
        "created_at": c.now.isoformat(),
        "updated_at": c.now.isoformat(),
    }
    registered = {(row["usage"], row["fingerprint"], row["ca"]) for row in shown["certificates"]}
    assert registered == {
        ("tls", fingerprint(c.certs.tls), False),
        ("sign", fingerprint(c.certs.sign), False),
        ("encrypt", fingerprint(c.certs.encrypt), False),
        ("tls", fingerprint(c.dev_ca.certificate), True),
    }
    ca_row = next(row for row in shown["certificates"] if row["ca"])
    assert ca_row["subject"] == ca_row["issuer"] == c.dev_ca.certificate.subject.rfc4514_string()
    assert ca_row["not_after"] == c.dev_ca.certificate.not_valid_after_utc.isoformat()
    assert ca_row["serial"] == format(c.dev_ca.certificate.serial_number, "x")


def test_add_partner_bumps_the_directory_version(engine, now, full_partner):
    """Registering a partner moves the change counter forward so running daemons reload."""
    before = version(engine)
    with engine.begin() as conn:
        store.add_partner(conn, full_partner("acme"), now)
    assert version(engine) > before


def test_name_is_trimmed(engine, now):
    """The display name is stored without surrounding whitespace."""
    with engine.begin() as conn:
        store.add_partner(conn, NewPartner(id="acme", name="  Acme  "), now)
        assert store.show_partner(conn, "acme")["name"] == "Acme"


def test_list_partners_shape(world):
    """list_partners returns every partner ordered by ID, each row with an 'id' and counts of its credentials."""
    with world.engine.connect() as conn:
        rows = store.list_partners(conn)
    assert [row["id"] for row in rows] == ["acme", "globex"]
    assert all("id" in row for row in rows)
    assert rows[0] == {
        "id": "acme",
        "name": "Acme Corporation",
        "status": "active",
        "deliver": "as2",
        "as2_ids": ["ACME-AS2"],
        "participant_ids": ["0192:no987654321mva"],
        "emails": ["invoices@acme.example"],
        "allow_ips": ["192.0.2.0/24", "2001:db8::/32"],
        "certificates": 4,
        "ssh_keys": 1,
    }
    assert rows[1] == {
        "id": "globex", "name": "Globex", "status": "active", "deliver": "mailbox", "as2_ids": [],
        "participant_ids": [], "emails": [], "allow_ips": [], "certificates": 0, "ssh_keys": 0,
    }


def test_list_partners_of_an_empty_directory(engine):
    """A fresh database lists no partners and is at version 0."""
    with engine.connect() as conn:
        assert store.list_partners(conn) == []
        assert store.directory_version(conn) == 0


def test_list_certificates_rows_have_ids(world):
    """Every certificate row carries its fingerprint as 'id', ordered by usage then expiry."""
    with world.engine.connect() as conn:
        rows = store.list_certificates(conn, "acme")
        assert store.list_certificates(conn, "globex") == []
    assert all(row["id"] == row["fingerprint"] for row in rows)
    assert [row["usage"] for row in rows] == ["encrypt", "sign", "tls", "tls"]
    tls_rows = [row for row in rows if row["usage"] == "tls"]
    assert tls_rows[0]["not_after"] <= tls_rows[1]["not_after"]


def test_timestamps_come_back_utc_aware(world):
    """SQLite stores timestamps naive; they are read back timezone-aware in UTC and equal to what was stored."""
    c = world
    with c.engine.connect() as conn:
        created, updated = conn.execute(
            select(partners.c.created_at, partners.c.updated_at).where(partners.c.id == "acme")
        ).one()
        not_before, not_after, added = conn.execute(
            select(certificates.c.not_before, certificates.c.not_after, certificates.c.created_at)
            .where(certificates.c.fingerprint == fingerprint(c.certs.tls))
        ).one()
        changed_at = conn.execute(select(directory_state.c.changed_at)).scalar_one()
    for stamp in (created, updated, not_before, not_after, added, changed_at):
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == timedelta(0)
    assert created == updated == added == changed_at == c.now
    assert not_before == c.certs.tls.not_valid_before_utc
    assert not_after == c.certs.tls.not_valid_after_utc


def test_timestamps_in_other_zones_are_stored_as_utc(engine, now):
    """A timezone-aware time in another zone is stored as the same instant in UTC."""
    elsewhere = now.astimezone(timezone(timedelta(hours=5, minutes=30)))
    with engine.begin() as conn:
        store.add_partner(conn, NewPartner(id="acme", name="Acme"), elsewhere)
        created = conn.execute(select(partners.c.created_at)).scalar_one()
    assert created == now
    assert created.utcoffset() == timedelta(0)


def test_naive_timestamps_are_refused(engine):
    """A naive datetime is a programming error and is refused rather than stored ambiguously."""
    with pytest.raises(StatementError, match="naive datetime"):
        with engine.begin() as conn:
            store.add_partner(conn, NewPartner(id="acme", name="Acme"), datetime.now())
    assert dump(engine)["partners"] == []


def test_not_yet_valid_certificate_is_accepted(world):
    """A certificate whose window starts in the future is accepted: that is a planned rollover."""
    with world.engine.begin() as conn:
        fp = store.add_certificate(conn, "globex", "tls", world.certs.future, world.now)
        assert fp == fingerprint(world.certs.future)
        assert [row["id"] for row in store.list_certificates(conn, "globex")] == [fp]


def test_add_identifier_returns_the_normalised_value(world):
    """add_identifier stores and returns the normalised identifier."""
    with world.engine.begin() as conn:
        assert store.add_identifier(conn, "globex", "email", " AP@Globex.Example ", world.now) == "ap@globex.example"
        assert store.add_identifier(conn, "globex", "participant", "GLN:ABC", world.now) == "gln:abc"
        assert store.add_identifier(conn, "globex", "as2", "GloBex", world.now) == "GloBex"
        row = store.list_partners(conn)[1]
    assert (row["emails"], row["participant_ids"], row["as2_ids"]) == (["ap@globex.example"], ["gln:abc"], ["GloBex"])


def test_as2_ids_differing_in_case_belong_to_different_partners(world):
    """AS2 IDs are case-sensitive (RFC 4130), so 'acme-as2' is not a duplicate of 'ACME-AS2'."""
    with world.engine.begin() as conn:
        store.add_identifier(conn, "globex", "as2", "acme-as2", world.now)
        assert store.list_partners(conn)[1]["as2_ids"] == ["acme-as2"]


def test_policy_round_trip(world):
    """set_policy replaces the stored policy and get_policy reads it back."""
    loosened = Policy(allow_sha1=True, as2_require_encryption=False)
    with world.engine.begin() as conn:
        assert store.get_policy(conn, "acme") == Policy()
        store.set_policy(conn, "acme", loosened, world.now)
        assert store.get_policy(conn, "acme") == loosened
        assert store.show_partner(conn, "acme")["policy"] == loosened.to_json()


def test_set_status_disables_and_enables(world):
    """set_status switches a partner between disabled and active."""
    with world.engine.begin() as conn:
        store.set_status(conn, "acme", "disabled", world.now)
        assert store.show_partner(conn, "acme")["status"] == "disabled"
        store.set_status(conn, "acme", "active", world.now)
        assert store.show_partner(conn, "acme")["status"] == "active"


def test_remove_certificate_accepts_openssl_fingerprints_and_removes_every_usage(world):
    """A fingerprint typed as AB:CD:… removes the certificate from every usage it was registered for."""
    c = world
    fp = fingerprint(c.certs.globex_tls)
    with c.engine.begin() as conn:
        store.add_certificate(conn, "globex", "tls", c.certs.globex_tls, c.now)
        store.add_certificate(conn, "globex", "sign", c.certs.globex_tls, c.now)
        store.remove_certificate(conn, "globex", colon_upper(fp), c.now)
        assert store.list_certificates(conn, "globex") == []
        assert len(store.list_certificates(conn, "acme")) == 4


def test_remove_ssh_key_accepts_a_fingerprint_without_prefix(world):
    """An SSH fingerprint given without 'SHA256:' still removes the key."""
    with world.engine.begin() as conn:
        store.remove_ssh_key(conn, "acme", world.acme_key.fingerprint.removeprefix("SHA256:"), world.now)
        assert store.show_partner(conn, "acme")["ssh_keys"] == []


def test_remove_partner_removes_all_dependents(world):
    """remove_partner deletes the partner and every identifier, certificate, key and network, and nothing else."""
    before = dump(world.engine)
    with world.engine.begin() as conn:
        store.remove_partner(conn, "acme", world.now)
    after = dump(world.engine)
    with world.engine.connect() as conn:
        for table in DEPENDENTS:
            left = conn.execute(select(func.count()).select_from(table).where(table.c.partner_id == "acme"))
            assert left.scalar_one() == 0, table.name
        assert [row["id"] for row in store.list_partners(conn)] == ["globex"]
    for table in DEPENDENTS:
        assert before[table.name] and not after[table.name], table.name  # only acme had any
    assert [row for row in before["partners"] if row[0] == "globex"] == after["partners"]


def test_removed_partner_credentials_can_be_registered_again(world):
    """After removal nothing of the partner lingers: its ID, identifiers, certificates and key are free again."""
    with world.engine.begin() as conn:
        store.remove_partner(conn, "acme", world.now)
    with world.engine.begin() as conn:
        store.add_partner(conn, world.acme, world.now)
        assert store.list_partners(conn)[0]["certificates"] == 4


# -- every successful change bumps the version -----------------------------------------------------

MUTATIONS = {
    "set_status": lambda conn, c: store.set_status(conn, "acme", "disabled", c.later),
    "allow_ip": lambda conn, c: store.allow_ip(conn, "acme", parse_network("10.0.0.0/8"), c.later),
    "deny_ip": lambda conn, c: store.deny_ip(conn, "acme", parse_network("192.0.2.0/24"), c.later),
    "add_certificate": lambda conn, c: store.add_certificate(conn, "acme", "tls", c.certs.globex_tls, c.later),
    "remove_certificate": lambda conn, c: store.remove_certificate(conn, "acme", fingerprint(c.certs.tls), c.later),
    "add_ssh_key": lambda conn, c: store.add_ssh_key(conn, "acme", c.spare_key, c.later),
    "remove_ssh_key": lambda conn, c: store.remove_ssh_key(conn, "acme", c.acme_key.fingerprint, c.later),
    "set_policy": lambda conn, c: store.set_policy(conn, "acme", Policy(allow_sha1=True), c.later),
    "add_identifier": lambda conn, c: store.add_identifier(conn, "acme", "email", "ap@acme.example", c.later),
}


@pytest.mark.parametrize("mutation", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_each_change_bumps_the_version_once_and_touches_the_partner(world, mutation):
    """Every successful change increments directory_version by one and stamps the partner and the state."""
    before = version(world.engine)
    with world.engine.begin() as conn:
        mutation(conn, world)
    assert version(world.engine) == before + 1
    with world.engine.connect() as conn:
        assert store.show_partner(conn, "acme")["updated_at"] == world.later.isoformat()
        assert conn.execute(select(directory_state.c.changed_at)).scalar_one() == world.later


def test_remove_partner_bumps_the_version(world):
    """Removing a partner increments directory_version by one."""
    before = version(world.engine)
    with world.engine.begin() as conn:
        store.remove_partner(conn, "acme", world.later)
    assert version(world.engine) == before + 1


def test_allow_ip_reports_whether_it_added(world):
    """allow_ip returns True for a new network and False (changing nothing, no bump) for one already allowed."""
    network = parse_network("198.51.100.0/24")
    with world.engine.begin() as conn:
        assert store.allow_ip(conn, "globex", network, world.now) is True
    before = dump(world.engine)
    with world.engine.begin() as conn:
        assert store.allow_ip(conn, "globex", network, world.later) is False
    assert dump(world.engine) == before


def test_the_same_network_may_be_allowed_for_two_partners(world):
    """Allowlists are per partner: two partners may share a network (e.g. behind one NAT)."""
    with world.engine.begin() as conn:
        assert store.allow_ip(conn, "globex", parse_network("192.0.2.0/24"), world.now) is True
        assert store.list_partners(conn)[1]["allow_ips"] == ["192.0.2.0/24"]


# -- refusals: the right typed error, a clear message, and nothing changed --------------------------

REFUSALS = {
    "duplicate partner ID": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="acme", name="Another Acme"), c.now),
        DuplicateError, r"^partner 'acme' already exists$",
    ),
    "duplicate AS2 ID via add_partner": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="initech", name="Initech", as2_ids=("ACME-AS2",)), c.now),
        DuplicateError, r"^AS2 ID 'ACME-AS2' is already registered to partner 'acme'$",
    ),
    "duplicate AS2 ID via add_identifier": (
        lambda conn, c: store.add_identifier(conn, "globex", "as2", "ACME-AS2", c.now),
        DuplicateError, r"^AS2 ID 'ACME-AS2' is already registered to partner 'acme'$",
    ),
    "duplicate participant ID in another case": (
        lambda conn, c: store.add_identifier(conn, "globex", "participant", "0192:no987654321MVA", c.now),
        DuplicateError, r"^participant ID '0192:no987654321mva' is already registered to partner 'acme'$",
    ),
    "duplicate email in another case": (
        lambda conn, c: store.add_identifier(conn, "globex", "email", "INVOICES@acme.example", c.now),
        DuplicateError, r"^email address 'invoices@acme.example' is already registered to partner 'acme'$",
    ),
    "duplicate email via add_partner": (
        lambda conn, c: store.add_partner(
            conn, NewPartner(id="initech", name="Initech", emails=("invoices@ACME.example",)), c.now),
        DuplicateError, r"'invoices@acme.example' is already registered to partner 'acme'$",
    ),
    "certificate registered to another partner": (
        lambda conn, c: store.add_certificate(conn, "globex", "tls", c.certs.tls, c.now),
        DuplicateError, r"^tls certificate [0-9a-f]{64} is already registered to partner 'acme'$",
    ),
    "CA registered to another partner": (
        lambda conn, c: store.add_certificate(conn, "globex", "tls", c.dev_ca.certificate, c.now),
        DuplicateError, r"^tls certificate [0-9a-f]{64} is already registered to partner 'acme'$",
    ),
    "certificate twice in one add_partner": (
        lambda conn, c: store.add_partner(
            conn, NewPartner(id="initech", name="Initech", certificates=(("tls", c.certs.future),) * 2), c.now),
        InvalidValueError, r"^tls certificate [0-9a-f]{64} is given twice$",
    ),
    "AS2 ID twice in one add_partner": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="initech", name="Initech", as2_ids=("X", "X")), c.now),
        InvalidValueError, r"^AS2 ID X is given twice$",
    ),
    "certificate of another partner under another usage": (
        lambda conn, c: store.add_certificate(conn, "globex", "sign", c.certs.tls, c.now),
        DuplicateError, r"^tls certificate [0-9a-f]{64} is already registered to partner 'acme'$",
    ),
    "name too long": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="initech", name="x" * 201), c.now),
        InvalidValueError, r"^--name must be 1-200 printable characters$",
    ),
    "SSH key registered to another partner": (
        lambda conn, c: store.add_ssh_key(conn, "globex", c.acme_key, c.now),
        DuplicateError, r"^SSH key SHA256:\S+ is already registered to partner 'acme'$",
    ),
    "expired certificate": (
        lambda conn, c: store.add_certificate(conn, "globex", "tls", c.certs.expired, c.now),
        InvalidValueError, r"^certificate .*CN=expired.* expired on \d{4}-\d\d-\d\d; register a current one$",
    ),
    "expired certificate via add_partner": (
        lambda conn, c: store.add_partner(
            conn, NewPartner(id="initech", name="Initech", networks=(parse_network("10.0.0.0/8"),),
                             certificates=(("tls", c.certs.globex_tls), ("sign", c.certs.expired))), c.now),
        InvalidValueError, r"expired on .*; register a current one$",
    ),
    "unknown certificate usage": (
        lambda conn, c: store.add_certificate(conn, "globex", "ssl", c.certs.globex_tls, c.now),
        InvalidValueError, r"^usage 'ssl' must be one of tls, sign, encrypt$",
    ),
    "invalid partner ID": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="Initech Ltd", name="Initech"), c.now),
        InvalidValueError, r"^partner ID 'Initech Ltd' must be 1-63 characters",
    ),
    "empty name": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="initech", name="   "), c.now),
        InvalidValueError, r"^--name must be 1-200 printable characters$",
    ),
    "as2 delivery without URL": (
        lambda conn, c: store.add_partner(
            conn, NewPartner(id="initech", name="Initech", as2_ids=("INITECH",), deliver="as2"), c.now),
        InvalidValueError, r"^--deliver as2 needs --as2-url https://",
    ),
    "as2 delivery without AS2 ID": (
        lambda conn, c: store.add_partner(
            conn, NewPartner(id="initech", name="Initech", deliver="as2", as2_url="https://initech.example/as2"),
            c.now),
        InvalidValueError, r"^--deliver as2 needs the partner's --as2-id$",
    ),
    "email delivery without email": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="initech", name="Initech", deliver="email"), c.now),
        InvalidValueError, r"^--deliver email needs at least one --email address$",
    ),
    "http URL": (
        lambda conn, c: store.add_partner(
            conn, NewPartner(id="initech", name="Initech", as2_ids=("INITECH",), deliver="as2",
                             as2_url="http://initech.example/as2"), c.now),
        InvalidValueError, r"^'http://initech.example/as2' must be an https:// URL$",
    ),
    "unknown delivery mode": (
        lambda conn, c: store.add_partner(conn, NewPartner(id="initech", name="Initech", deliver="pigeon"), c.now),
        InvalidValueError, r"^delivery 'pigeon' must be one of mailbox, as2, sftp, email$",
    ),
    "invalid identifier": (
        lambda conn, c: store.add_identifier(conn, "globex", "participant", "5798000000001", c.now),
        InvalidValueError, r"must look like SCHEME:VALUE",
    ),
    "unknown identifier kind": (
        lambda conn, c: store.add_identifier(conn, "globex", "phone", "+1 555 0100", c.now),
        InvalidValueError, r"^identifier kind 'phone' must be one of as2, participant, email$",
    ),
    "unknown status": (
        lambda conn, c: store.set_status(conn, "acme", "paused", c.now),
        InvalidValueError, r"^status 'paused' must be one of active, disabled$",
    ),
    "deny a network not allowed": (
        lambda conn, c: store.deny_ip(conn, "acme", parse_network("10.0.0.0/8"), c.now),
        NotFoundError, r"^10.0.0.0/8 is not in the allowlist of partner 'acme'$",
    ),
    "deny another partner's network": (
        lambda conn, c: store.deny_ip(conn, "globex", parse_network("192.0.2.0/24"), c.now),
        NotFoundError, r"^192.0.2.0/24 is not in the allowlist of partner 'globex'$",
    ),
    "remove a certificate not registered": (
        lambda conn, c: store.remove_certificate(conn, "acme", fingerprint(c.certs.globex_tls), c.now),
        NotFoundError, r"^no certificate [0-9a-f]{64} is registered to partner 'acme'$",
    ),
    "remove another partner's certificate": (
        lambda conn, c: store.remove_certificate(conn, "globex", fingerprint(c.certs.tls), c.now),
        NotFoundError, r"^no certificate [0-9a-f]{64} is registered to partner 'globex'$",
    ),
    "remove a certificate by a malformed fingerprint": (
        lambda conn, c: store.remove_certificate(conn, "acme", "abc123", c.now),
        CertificateError, r"is not a SHA-256 fingerprint",
    ),
    "remove an SSH key not registered": (
        lambda conn, c: store.remove_ssh_key(conn, "acme", c.spare_key.fingerprint, c.now),
        NotFoundError, r"^no SSH key SHA256:\S+ is registered to partner 'acme'$",
    ),
    "remove another partner's SSH key": (
        lambda conn, c: store.remove_ssh_key(conn, "globex", c.acme_key.fingerprint, c.now),
        NotFoundError, r"^no SSH key SHA256:\S+ is registered to partner 'globex'$",
    ),
}


@pytest.mark.parametrize(("change", "error", "match"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_raise_a_typed_error_and_change_nothing(world, change, error, match):
    """Each invalid change raises its typed error with an actionable message, and the database is unchanged."""
    refused(world.engine, lambda conn: change(conn, world), error, match)


UNKNOWN_PARTNER = {
    "set_status": lambda conn, c: store.set_status(conn, "nobody", "disabled", c.now),
    "set_policy": lambda conn, c: store.set_policy(conn, "nobody", Policy(), c.now),
    "get_policy": lambda conn, c: store.get_policy(conn, "nobody"),
    "remove_partner": lambda conn, c: store.remove_partner(conn, "nobody", c.now),
    "add_identifier": lambda conn, c: store.add_identifier(conn, "nobody", "as2", "NOBODY", c.now),
    "allow_ip": lambda conn, c: store.allow_ip(conn, "nobody", parse_network("10.0.0.0/8"), c.now),
    "deny_ip": lambda conn, c: store.deny_ip(conn, "nobody", parse_network("192.0.2.0/24"), c.now),
    "add_certificate": lambda conn, c: store.add_certificate(conn, "nobody", "tls", c.certs.globex_tls, c.now),
    "remove_certificate": lambda conn, c: store.remove_certificate(conn, "nobody", fingerprint(c.certs.tls), c.now),
    "add_ssh_key": lambda conn, c: store.add_ssh_key(conn, "nobody", c.spare_key, c.now),
    "remove_ssh_key": lambda conn, c: store.remove_ssh_key(conn, "nobody", c.acme_key.fingerprint, c.now),
    "list_certificates": lambda conn, c: store.list_certificates(conn, "nobody"),
    "show_partner": lambda conn, c: store.show_partner(conn, "nobody"),
}


@pytest.mark.parametrize("call", UNKNOWN_PARTNER.values(), ids=UNKNOWN_PARTNER.keys())
def test_unknown_partner_is_refused_everywhere(world, call):
    """Every call naming a partner that does not exist raises UnknownPartnerError and changes nothing."""
    refused(world.engine, lambda conn: call(conn, world), UnknownPartnerError, r"^no partner with ID 'nobody'$")


def test_refusal_inside_a_bigger_transaction_keeps_nothing_of_the_partner(world):
    """When add_partner fails half-way (its last certificate is expired) none of its earlier rows survive."""
    c = world
    half = NewPartner(
        id="initech", name="Initech", as2_ids=("INITECH",), emails=("ap@initech.example",),
        networks=(parse_network("203.0.113.0/24"),), ssh_keys=(c.spare_key,),
        certificates=(("tls", c.certs.globex_tls), ("encrypt", c.certs.expired)),
    )
    refused(c.engine, lambda conn: store.add_partner(conn, half, c.now), InvalidValueError, "expired on")
    with c.engine.begin() as conn:  # and everything it tried to claim is still free
        store.add_partner(conn, attrs.evolve(half, certificates=half.certificates[:1]), c.now)
        assert store.list_partners(conn)[-1]["certificates"] == 1


def test_one_certificate_may_serve_its_own_partner_for_several_usages(world):
    """A partner may register its one certificate for TLS and for signing; only other partners are refused."""
    with world.engine.begin() as conn:
        store.add_certificate(conn, "globex", "tls", world.certs.globex_tls, world.now)
        store.add_certificate(conn, "globex", "sign", world.certs.globex_tls, world.now)
        usages = sorted(c["usage"] for c in store.list_certificates(conn, "globex"))
    assert usages == ["sign", "tls"]


def test_sftp_delivery_is_stored_canonical_and_reaches_the_directory(engine, now, make_ssh_key):
    """``deliver sftp`` needs a URL and a pinned host key; both are checked, stored canonical, and loaded."""
    from partners.directory import load_directory

    key = make_ssh_key("root@files")
    with engine.begin() as conn:
        with pytest.raises(InvalidValueError, match="needs --sftp-url"):
            store.add_partner(conn, NewPartner(id="files", name="Files", deliver="sftp"), now)
        with pytest.raises(InvalidValueError, match="pinned --sftp-host-key"):
            store.add_partner(conn, NewPartner(id="files", name="Files", deliver="sftp",
                                               sftp_url="sftp://inv@files.example/in"), now)
        with pytest.raises(InvalidValueError, match="SFTP host key"):
            store.add_partner(conn, NewPartner(id="files", name="Files", deliver="sftp",
                                               sftp_url="sftp://inv@files.example/in", sftp_host_key="nope"), now)
        store.add_partner(conn, NewPartner(id="files", name="Files", deliver="sftp",
                                           sftp_url="sftp://inv@files.example/in/",
                                           sftp_host_key=f"{key.openssh} root@files"), now)
    with engine.connect() as conn:
        shown = store.show_partner(conn, "files")
        partner = load_directory(conn).get("files")
    assert (shown["sftp_url"], shown["sftp_host_key"], shown["sftp_host_key_fingerprint"]) == (
        "sftp://inv@files.example:22/in", key.openssh, key.fingerprint)
    assert (partner.deliver, partner.sftp_url, partner.sftp_host_key) == (
        "sftp", "sftp://inv@files.example:22/in", key.openssh)
    with engine.begin() as conn:
        with pytest.raises(InvalidValueError, match="needs the server's pinned"):
            store.set_delivery(conn, "files", now, sftp_host_key="")
        changed = store.set_delivery(conn, "files", now, sftp_url="sftp://other@files.example:2022/out")
    assert changed["sftp_url"] == "sftp://other@files.example:2022/out"
    assert changed["sftp_host_key"] == key.openssh
