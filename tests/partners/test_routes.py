"""Tests for :mod:`partners.routes`: adding and removing routing rules, their order, and matching."""

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from partners import routes, store
from partners.errors import InvalidValueError, NotFoundError, UnknownPartnerError
from partners.routes import Route, add_route, first_match, load_routes, remove_route
from partners.schema import directory_state
from partners.store import NewPartner
from tests.partners.test_store import dump, version


@pytest.fixture
def world(engine, now):
    """A database with partners acme, globex and initech and no rules."""
    with engine.begin() as conn:
        for partner_id in ("acme", "globex", "initech"):
            store.add_partner(conn, NewPartner(id=partner_id, name=partner_id.title()), now)
    return engine


def add(engine, recipient_id: str, now, **criteria) -> Route:
    """Add one rule in its own transaction."""
    with engine.begin() as conn:
        return add_route(conn, recipient_id, now, **criteria)


def order(engine) -> list[tuple[int, int, str]]:
    """``(position, id, recipient)`` of every rule, in the order they are tried."""
    with engine.connect() as conn:
        return [(r.position, r.id, r.recipient_id) for r in load_routes(conn)]


def test_rules_go_after_the_last_one_by_default(world, now):
    """Without a position each rule lands at the end, and comes back from load_routes as it was added."""
    first = add(world, "globex", now, sender_id="acme")
    second = add(world, "initech", now, receiver="0088:5798000000001", kind="ubl-invoice", channel="as2")
    assert (first.position, second.position) == (1, 2)
    with world.connect() as conn:
        assert load_routes(conn) == (first, second)
    assert second.to_json() == {"id": second.id, "position": 2, "recipient_id": "initech", "sender_id": None,
                                "receiver": "0088:5798000000001", "kind": "ubl-invoice", "channel": "as2"}


def test_an_explicit_position_moves_the_later_rules_down(world, now):
    """Inserting at position 1 in front of several rules keeps positions unique and the order intended."""
    existing = [add(world, "globex", now, kind=kind) for kind in routes.KINDS]
    front = add(world, "initech", now, position=1, sender_id="acme")
    middle = add(world, "acme", now, position=3, channel="sftp")
    assert order(world) == [
        (1, front.id, "initech"), (2, existing[0].id, "globex"), (3, middle.id, "acme"),
        (4, existing[1].id, "globex"), (5, existing[2].id, "globex"), (6, existing[3].id, "globex"),
    ]


def test_position_just_past_the_end_appends(world, now):
    """Position last+1 is the same as no position: nothing moves."""
    first = add(world, "globex", now, kind="opaque")
    second = add(world, "acme", now, kind="cii-invoice", position=2)
    assert order(world) == [(1, first.id, "globex"), (2, second.id, "acme")]


@pytest.mark.parametrize("position, match", [
    (0, "position 0 must be 1 or more"),
    (-3, "position -3 must be 1 or more"),
    (3, "position 3 is past the end: the last rule is at position 1"),
])
def test_positions_outside_the_rules_are_refused(world, now, position, match):
    """A position before 1 or with a gap after the last rule is a typo, refused before anything changes."""
    add(world, "globex", now, kind="opaque")
    before = dump(world)
    with pytest.raises(InvalidValueError, match=match), world.begin() as conn:
        add_route(conn, "acme", now, kind="opaque", position=position)
    assert dump(world) == before


def test_the_first_rule_can_only_go_at_position_1(world, now):
    """With no rules yet the message says so."""
    with pytest.raises(InvalidValueError, match="past the end: there are no rules yet"), world.begin() as conn:
        add_route(conn, "acme", now, kind="opaque", position=2)


@pytest.mark.parametrize("recipient, criteria, error, match", [
    ("nobody", {"sender_id": "acme"}, UnknownPartnerError, "no partner with ID 'nobody'"),
    ("globex", {"sender_id": "nobody"}, UnknownPartnerError, "no partner with ID 'nobody'"),
    ("globex", {"receiver": "5798000000001"}, InvalidValueError, "must look like SCHEME:VALUE"),
    ("globex", {"receiver": "0088:"}, InvalidValueError, "must look like SCHEME:VALUE"),
    ("globex", {"kind": "invoice"}, InvalidValueError,
     "kind 'invoice' must be one of ubl-invoice, ubl-creditnote, cii-invoice, opaque"),
    ("globex", {"channel": "ftp"}, InvalidValueError, "channel 'ftp' must be one of as2, sftp, email, https"),
    ("globex", {}, InvalidValueError, "would match every message; pass --catch-all"),
    ("globex", {"kind": "opaque", "catch_all": True}, InvalidValueError, "--catch-all matches every message"),
])
def test_bad_rules_are_refused_and_change_nothing(world, now, recipient, criteria, error, match):
    """Each kind of bad input raises its typed error, the database and the directory version untouched."""
    before = dump(world)
    with pytest.raises(error, match=match), world.begin() as conn:
        add_route(conn, recipient, now, **criteria)
    assert dump(world) == before


def test_a_catch_all_rule_needs_the_flag_and_matches_everything(world, now):
    """``catch_all`` stores a rule with no criteria, which matches any message."""
    rule = add(world, "globex", now, catch_all=True)
    assert (rule.sender_id, rule.receiver, rule.kind, rule.channel) == (None, None, None, None)
    assert rule.matches(sender_id="initech", receiver=None, kind="opaque", channel="email")


def test_the_receiver_is_stored_normalised(world, now):
    """Participant IDs are case-insensitive, so the rule keeps the lowercase form lookups compare with."""
    rule = add(world, "globex", now, receiver=" 9925:BE0123456789 ")
    assert rule.receiver == "9925:be0123456789"
    with world.connect() as conn:
        assert load_routes(conn)[0].receiver == "9925:be0123456789"


def test_every_change_bumps_the_directory_version(world, now):
    """Adding and removing a rule each count as one directory change, stamped with its time."""
    later = now + timedelta(minutes=5)
    before = version(world)
    rule = add(world, "globex", now, kind="opaque")
    assert version(world) == before + 1
    with world.begin() as conn:
        assert remove_route(conn, rule.id, later) == rule
    assert version(world) == before + 2
    with world.connect() as conn:
        assert conn.execute(select(directory_state.c.changed_at)).scalar_one() == later


def test_removing_keeps_the_order_of_the_others(world, now):
    """The remaining rules keep their positions; a new rule at the end goes after the last of them."""
    a, b, c = (add(world, "globex", now, channel=channel) for channel in ("as2", "sftp", "email"))
    with world.begin() as conn:
        remove_route(conn, b.id, now)
    d = add(world, "acme", now, channel="https")
    assert order(world) == [(1, a.id, "globex"), (3, c.id, "globex"), (4, d.id, "acme")]


def test_removing_an_unknown_rule_is_refused(world, now):
    """A wrong ID is a NotFoundError and nothing changes."""
    before = dump(world)
    with pytest.raises(NotFoundError, match="no route with ID 42"), world.begin() as conn:
        remove_route(conn, 42, now)
    assert dump(world) == before


def test_removing_a_partner_removes_its_rules(world, now):
    """Rules sending to or from a removed partner go with it (foreign keys cascade)."""
    add(world, "globex", now, sender_id="acme")
    add(world, "acme", now, sender_id="initech")
    kept = add(world, "initech", now, sender_id="globex")
    with world.begin() as conn:
        store.remove_partner(conn, "acme", now)
    assert order(world) == [(3, kept.id, "initech")]


def test_first_match_follows_the_stored_order(world, now):
    """A rule inserted in front wins over the one that matched before."""
    add(world, "globex", now, sender_id="acme")
    add(world, "initech", now, sender_id="acme", kind="ubl-creditnote", position=1)
    message = {"sender_id": "acme", "receiver": None, "channel": "as2"}
    with world.connect() as conn:
        rules = load_routes(conn)
    assert first_match(rules, kind="ubl-creditnote", **message).recipient_id == "initech"
    assert first_match(rules, kind="ubl-invoice", **message).recipient_id == "globex"
    assert first_match(rules, kind="ubl-invoice", sender_id="globex", receiver=None, channel="as2") is None


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=40)
@given(st.lists(st.one_of(st.tuples(st.just("add"), st.integers(min_value=0, max_value=8)),
                          st.tuples(st.just("remove"), st.integers(min_value=0, max_value=8))), max_size=12))
def test_any_sequence_of_changes_keeps_the_intended_order(world, now, steps):
    """Adds at any position (0 = the end) and removals behave like inserting into and deleting from a list.

    A rule added at position N goes in front of every rule at N or later, gaps left by removals or not.
    Each example runs in a transaction that is rolled back, so the shared database starts empty every time.
    """
    with world.connect() as conn, conn.begin() as transaction:
        model: list[int] = []
        for op, n in steps:
            if op == "add":
                positions = [r.position for r in load_routes(conn)]
                position = n if 1 <= n <= max(positions, default=0) + 1 else None
                rule = add_route(conn, "globex", now, kind="opaque", position=position)
                before = len(model) if position is None else sum(p < position for p in positions)
                model.insert(before, rule.id)
            elif model:
                remove_route(conn, model.pop(n % len(model)), now)
        loaded = load_routes(conn)
        assert [r.id for r in loaded] == model
        assert len({r.position for r in loaded}) == len(loaded)
        transaction.rollback()
