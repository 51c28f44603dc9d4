"""Tests for :mod:`partners.directory`: the immutable snapshot every door asks "who is this?"."""

import ipaddress
from datetime import timedelta
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certs.x509 import fingerprint
from partners import store
from partners.directory import Partner, PartnerDirectory, load_directory
from partners.errors import DuplicateError
from partners.networks import NetworkSet, parse_network
from partners.policy import Policy
from partners.store import NewPartner


@pytest.fixture
def world(engine, now, certs, dev_ca, full_partner, make_ssh_key) -> SimpleNamespace:
    """acme in full (with dev_ca as its TLS CA), globex bare with a network, initech registered then disabled."""
    acme = full_partner("acme", participant_ids=("0192:NO987654321MVA",), policy=Policy(allow_sha1=True))
    initech_key = make_ssh_key("initech@sftp")
    with engine.begin() as conn:
        store.add_partner(conn, acme, now)
        store.add_partner(
            conn, NewPartner(id="globex", name="Globex", as2_ids=("GLOBEX",), emails=("ap@globex.example",),
                             networks=(parse_network("198.51.100.0/24"),)), now)
        store.add_partner(
            conn,
            NewPartner(id="initech", name="Initech", as2_ids=("INITECH",), emails=("ap@initech.example",),
                       participant_ids=("0088:7300010000001",), networks=(parse_network("203.0.113.0/24"),),
                       certificates=(("sign", certs.initech_sign),), ssh_keys=(initech_key,)),
            now,
        )
        store.set_status(conn, "initech", "disabled", now)
        directory = load_directory(conn)
        version = store.directory_version(conn)
    return SimpleNamespace(engine=engine, now=now, certs=certs, dev_ca=dev_ca, acme=acme, initech_key=initech_key,
                           directory=directory, version=version)


def reload(world) -> PartnerDirectory:
    """A fresh snapshot of the world's database."""
    with world.engine.connect() as conn:
        return load_directory(conn)


# -- loading ---------------------------------------------------------------------------------------


def test_load_directory_reads_every_partner(world):
    """The snapshot holds every partner, active or not, at the database's current version."""
    d = world.directory
    assert d.version == world.version > 0
    assert set(d.partners) == {"acme", "globex", "initech"}
    acme = d.get("acme")
    assert acme == Partner(
        id="acme", name="Acme Corporation", active=True, deliver="as2", as2_url="https://as2.acme.example/receive",
        policy=Policy(allow_sha1=True), as2_ids=("ACME-AS2",), participant_ids=("0192:no987654321mva",),
        emails=("invoices@acme.example",), ssh_keys=(world.acme.ssh_keys[0].openssh,),
    )
    assert acme.networks.networks == (parse_network("192.0.2.0/24"), parse_network("2001:db8::/32"))
    assert {u: [fingerprint(c) for c in cs] for u, cs in acme.certificates.items()} == {
        "tls": [fingerprint(world.certs.tls)],
        "sign": [fingerprint(world.certs.sign)],
        "encrypt": [fingerprint(world.certs.encrypt)],
    }
    assert {u: [fingerprint(c) for c in cs] for u, cs in acme.cas.items()} == {
        "tls": [fingerprint(world.dev_ca.certificate)],
    }


def test_a_reload_follows_changes(world):
    """A snapshot never changes; a new load sees the new version and the change."""
    with world.engine.begin() as conn:
        store.remove_partner(conn, "acme", world.now)
    fresh = reload(world)
    assert fresh.version == world.version + 1
    assert fresh.get("acme") is None and fresh.by_as2_id("ACME-AS2") is None
    assert world.directory.by_as2_id("ACME-AS2").id == "acme"


# -- identifier and key lookups --------------------------------------------------------------------


def test_by_as2_id_is_case_sensitive(world):
    """AS2 IDs match exactly as registered (RFC 4130); another case is a stranger."""
    d = world.directory
    assert d.by_as2_id("ACME-AS2").id == "acme"
    assert d.by_as2_id("GLOBEX").id == "globex"
    assert d.by_as2_id("acme-as2") is None
    assert d.by_as2_id("ACME-AS2 ") is None
    assert d.by_as2_id("NOBODY") is None


@pytest.mark.parametrize("address", ["invoices@acme.example", "INVOICES@ACME.EXAMPLE", " Invoices@Acme.Example\n"])
def test_by_email_is_case_insensitive(world, address):
    """Email lookups ignore case and surrounding whitespace."""
    assert world.directory.by_email(address).id == "acme"


def test_by_email_of_a_stranger(world):
    """An unregistered address belongs to nobody."""
    assert world.directory.by_email("invoices@acme.example.evil") is None


@pytest.mark.parametrize(("scheme", "value"), [("0192", "NO987654321MVA"), ("0192", "no987654321mva"),
                                               (" 0192", "No987654321Mva ")])
def test_by_participant_id_is_case_insensitive(world, scheme, value):
    """Participant IDs match whatever the case of scheme and value."""
    assert world.directory.by_participant_id(scheme, value).id == "acme"


def test_by_participant_id_needs_the_right_scheme(world):
    """The same value under another scheme is a different participant."""
    assert world.directory.by_participant_id("0088", "no987654321mva") is None


def test_by_ssh_fingerprint(world, make_ssh_key):
    """A registered SSH key's fingerprint names its partner; an unknown key names nobody."""
    assert world.directory.by_ssh_fingerprint(world.acme.ssh_keys[0].fingerprint).id == "acme"
    assert world.directory.by_ssh_fingerprint(make_ssh_key().fingerprint) is None


def test_an_ssh_ca_certifies_logins_but_is_no_login_key_itself(world, make_ssh_key):
    """A key registered with ``ca=True`` is listed in ``ssh_cas`` only: its own fingerprint logs nobody in."""
    ca = make_ssh_key("acme-ca")
    with world.engine.begin() as conn:
        store.add_ssh_key(conn, "acme", ca, world.now, ca=True)
    directory = reload(world)
    assert directory.get("acme").ssh_cas == (ca.openssh,)
    assert ca.openssh not in directory.get("acme").ssh_keys
    assert directory.by_ssh_fingerprint(ca.fingerprint) is None


# -- disabled partners -----------------------------------------------------------------------------


def test_disabled_partner_is_invisible_to_credential_lookups(world):
    """A disabled partner's AS2 ID, email, participant ID, SSH key, certificate and network all count for nothing."""
    d = world.directory
    assert d.by_as2_id("INITECH") is None
    assert d.by_email("ap@initech.example") is None
    assert d.by_participant_id("0088", "7300010000001") is None
    assert d.by_ssh_fingerprint(world.initech_key.fingerprint) is None
    assert d.by_certificate("sign", world.certs.initech_sign, world.now) is None
    assert not d.allows_anyone("203.0.113.9")


def test_disabled_partner_is_still_known_by_id(world):
    """get() returns a disabled partner, marked inactive, with its registrations intact for admin views."""
    initech = world.directory.get("initech")
    assert initech.active is False
    assert initech.as2_ids == ("INITECH",)
    assert initech.allows("203.0.113.9")


def test_enabling_again_makes_the_partner_visible(world):
    """After set_status active, every credential of the partner works again."""
    with world.engine.begin() as conn:
        store.set_status(conn, "initech", "active", world.now)
    d = reload(world)
    assert d.get("initech").active is True
    assert d.by_as2_id("INITECH").id == "initech"
    assert d.by_email("ap@initech.example").id == "initech"
    assert d.by_participant_id("0088", "7300010000001").id == "initech"
    assert d.by_ssh_fingerprint(world.initech_key.fingerprint).id == "initech"
    assert d.by_certificate("sign", world.certs.initech_sign, world.now).id == "initech"
    assert d.allows_anyone("203.0.113.9")


# -- allowlists ------------------------------------------------------------------------------------


def test_allows_anyone_is_the_union_of_active_allowlists(world):
    """A host is admitted at the door when some active partner allows it, whichever partner that is."""
    d = world.directory
    assert d.allows_anyone("192.0.2.10")
    assert d.allows_anyone("2001:db8:1::5")
    assert d.allows_anyone("198.51.100.200")
    assert d.allows_anyone("::ffff:198.51.100.200")
    assert not d.allows_anyone("10.0.0.1")
    assert not d.allows_anyone("not-an-address")


def test_partner_allows_checks_only_its_own_allowlist(world):
    """Partner.allows ignores other partners' networks, so identity and source address must agree."""
    acme, globex = world.directory.get("acme"), world.directory.get("globex")
    assert acme.allows("192.0.2.10") and not acme.allows("198.51.100.200")
    assert globex.allows("198.51.100.200") and not globex.allows("192.0.2.10")


@st.composite
def networks(draw):
    """Any IPv4 or IPv6 network."""
    address = draw(st.ip_addresses())
    return ipaddress.ip_network(f"{address}/{draw(st.integers(0, address.max_prefixlen))}", strict=False)


@given(st.lists(st.tuples(st.booleans(), st.lists(networks(), max_size=4)), max_size=5), st.ip_addresses())
def test_allows_anyone_agrees_with_the_partners(entries, address):
    """For any partners, allows_anyone(host) is exactly 'some active partner allows host'."""
    partners = [Partner(id=f"p{i}", name=f"P{i}", active=active, networks=NetworkSet(nets))
                for i, (active, nets) in enumerate(entries)]
    d = PartnerDirectory.build(1, partners)
    for host in (address, str(address)):
        assert d.allows_anyone(host) == any(p.active and p.allows(host) for p in partners)


# -- certificates ----------------------------------------------------------------------------------


def test_pinned_leaf_names_its_partner_for_its_usage(world):
    """A registered certificate identifies its partner for the usage it was registered for, and no other."""
    d, c = world.directory, world.certs
    assert d.by_certificate("sign", c.sign, world.now).id == "acme"
    assert d.by_certificate("encrypt", c.encrypt, world.now).id == "acme"
    assert d.by_certificate("encrypt", c.sign, world.now) is None


def test_certificate_issued_by_a_registered_ca_names_its_partner(world):
    """A certificate acme never registered, issued by the CA acme registered for TLS, belongs to acme for TLS."""
    d, c = world.directory, world.certs
    assert d.by_certificate("tls", c.tls, world.now).id == "acme"  # pinned, and issued by the CA
    assert d.by_certificate("tls", c.globex_tls, world.now).id == "acme"  # through the CA only


def test_ca_registered_for_another_usage_does_not_vouch(world):
    """The CA counts only for the usage it was registered for: acme's TLS CA does not vouch for signing."""
    assert world.directory.by_certificate("sign", world.certs.tls, world.now) is None
    only_sign = Partner(id="acme", name="Acme", active=True, cas={"sign": (world.dev_ca.certificate,)})
    d = PartnerDirectory.build(1, [only_sign])
    assert d.by_certificate("tls", world.certs.globex_tls, world.now) is None
    assert d.by_certificate("sign", world.certs.globex_tls, world.now).id == "acme"


def test_certificate_from_an_unregistered_ca_names_nobody(world):
    """A certificate from a CA no partner registered identifies nobody, for every usage."""
    for usage in ("tls", "sign", "encrypt"):
        assert world.directory.by_certificate(usage, world.certs.stranger_tls, world.now) is None


def test_certificate_from_a_ca_with_the_same_name_but_another_key_names_nobody(world):
    """An impostor CA with the registered CA's subject but another key vouches for nobody: signatures are checked."""
    assert world.certs.from_impostor.issuer == world.dev_ca.certificate.subject
    assert world.directory.by_certificate("tls", world.certs.from_impostor, world.now) is None


def test_pin_wins_over_another_partners_ca(world):
    """A certificate pinned by one partner belongs to that partner even if another partner's CA issued it."""
    with world.engine.begin() as conn:
        store.add_certificate(conn, "globex", "tls", world.certs.globex_tls, world.now)
    assert reload(world).by_certificate("tls", world.certs.globex_tls, world.now).id == "globex"


def test_expired_pinned_leaf_names_nobody(certs, now):
    """A pinned certificate past its validity window identifies nobody."""
    d = PartnerDirectory.build(1, [Partner(id="acme", name="Acme", active=True,
                                           certificates={"tls": (certs.expired,)})])
    assert d.by_certificate("tls", certs.expired, now) is None
    assert d.by_certificate("tls", certs.expired, certs.expired.not_valid_after_utc).id == "acme"


def test_not_yet_valid_pinned_leaf_names_nobody_until_it_starts(world):
    """A certificate registered ahead of a rollover identifies its partner only once its window opens."""
    with world.engine.begin() as conn:
        store.add_certificate(conn, "globex", "sign", world.certs.future, world.now)
    d = reload(world)
    assert d.by_certificate("sign", world.certs.future, world.now) is None
    starts = world.certs.future.not_valid_before_utc
    assert d.by_certificate("sign", world.certs.future, starts - timedelta(seconds=1)) is None
    assert d.by_certificate("sign", world.certs.future, starts).id == "globex"


def test_expired_ca_vouches_for_nobody(certs, now):
    """A registered CA outside its own validity window no longer vouches for what it issued."""
    d = PartnerDirectory.build(1, [Partner(id="acme", name="Acme", active=True, cas={"tls": (certs.expired_ca,)})])
    assert certs.from_expired_ca.not_valid_before_utc <= now <= certs.from_expired_ca.not_valid_after_utc
    assert d.by_certificate("tls", certs.from_expired_ca, now) is None


def test_disabled_partners_ca_vouches_for_nobody(certs, dev_ca, now):
    """The CA of a disabled partner identifies nobody."""
    d = PartnerDirectory.build(1, [Partner(id="acme", name="Acme", active=False, cas={"tls": (dev_ca.certificate,)})])
    assert d.by_certificate("tls", certs.globex_tls, now) is None


def test_a_certificate_two_partners_cas_vouch_for_names_nobody(certs, dev_ca, now):
    """When the CAs of two active partners would both vouch for a certificate, identity is ambiguous: nobody."""
    both = [Partner(id=p, name=p, active=True, cas={"tls": (dev_ca.certificate,)}) for p in ("acme", "globex")]
    assert PartnerDirectory.build(1, both).by_certificate("tls", certs.globex_tls, now) is None
    one_disabled = [both[0], Partner(id="globex", name="globex", active=False, cas={"tls": (dev_ca.certificate,)})]
    assert PartnerDirectory.build(1, one_disabled).by_certificate("tls", certs.globex_tls, now).id == "acme"


def test_the_same_ca_under_two_partners_is_refused_by_the_store(world):
    """The store never lets two partners register one CA for one usage, so the ambiguity above needs build()."""
    with pytest.raises(DuplicateError, match="already registered to partner 'acme'"):
        with world.engine.begin() as conn:
            store.add_certificate(conn, "globex", "tls", world.dev_ca.certificate, world.now)


# -- the empty directory ---------------------------------------------------------------------------


def test_empty_directory_knows_nobody(certs, dev_ca, now, make_ssh_key):
    """Before the first load, every lookup answers nobody and no host is allowed."""
    d = PartnerDirectory.empty()
    assert d.version == -1
    assert d.partners == {}
    assert d.get("acme") is None
    assert d.by_as2_id("ACME-AS2") is None
    assert d.by_email("invoices@acme.example") is None
    assert d.by_participant_id("0088", "5798000000001") is None
    assert d.by_ssh_fingerprint(make_ssh_key().fingerprint) is None
    assert d.by_certificate("tls", certs.tls, now) is None
    assert not d.allows_anyone("192.0.2.1")
    assert not d.allows_anyone("::1")
