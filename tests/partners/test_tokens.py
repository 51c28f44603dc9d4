"""Tests for :mod:`partners.tokens`: secrets are shown once, stored hashed, and stop working when revoked."""

import hashlib
import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from partners import store
from partners.errors import InvalidValueError, NotFoundError, UnknownPartnerError
from partners.schema import api_tokens
from partners.store import NewPartner
from partners.tokens import authenticate, create_token, get_token, list_tokens, revoke_token
from tests.partners.test_store import dump


@pytest.fixture
def world(engine, now):
    """A database with partners acme and globex and no tokens."""
    with engine.begin() as conn:
        for partner_id in ("acme", "globex"):
            store.add_partner(conn, NewPartner(id=partner_id, name=partner_id.title()), now)
    return engine


def create(engine, partner_id, now, name="billing"):
    with engine.begin() as conn:
        return create_token(conn, partner_id, name, now)


def auth(engine, presented, now):
    with engine.connect() as conn:
        return authenticate(conn, presented, now)


def test_a_new_token_authenticates_as_its_partner(world, now):
    """The secret has the documented shape, and presenting it names the token and its partner."""
    info, secret = create(world, "acme", now)
    assert re.fullmatch(r"prt_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", secret)
    assert secret.split("_")[1] == info.prefix
    assert (info.partner_id, info.name, info.created_at, info.revoked_at) == ("acme", "billing", now, None)
    assert auth(world, secret, now) == info


def test_only_the_hash_of_the_secret_is_stored(world, now):
    """Nothing in the database contains the secret; its SHA-256 is there, and the JSON shows neither."""
    info, secret = create(world, "acme", now)
    stored = dump(world)
    assert secret not in repr(stored)
    with world.connect() as conn:
        row = conn.execute(select(api_tokens)).one()
    assert row.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert row.prefix == info.prefix
    assert set(info.to_json()) == {"id", "partner", "name", "prefix", "created_at", "revoked_at"}


def test_every_token_is_different(world, now):
    """Two tokens for the same partner and name have different secrets and prefixes."""
    (first, s1), (second, s2) = create(world, "acme", now), create(world, "acme", now)
    assert s1 != s2 and first.prefix != second.prefix and first.id != second.id


def test_a_revoked_token_is_refused(world, now):
    """Revocation is immediate and recorded; the token stays listed with its revocation time."""
    info, secret = create(world, "acme", now)
    later = now + timedelta(seconds=1)
    with world.begin() as conn:
        revoked = revoke_token(conn, info.id, later)
    assert revoked.revoked_at == later
    assert auth(world, secret, later) is None
    with world.connect() as conn:
        assert list_tokens(conn) == [revoked]


def test_revoking_twice_or_an_unknown_token_is_refused_without_change(world, now):
    """A second revoke keeps the first time; an unknown ID is named."""
    info, _ = create(world, "acme", now)
    with world.begin() as conn:
        revoke_token(conn, info.id, now)
    before = dump(world)
    with pytest.raises(NotFoundError, match=f"API token {info.id} was already revoked"), world.begin() as conn:
        revoke_token(conn, info.id, now + timedelta(hours=1))
    with pytest.raises(NotFoundError, match="no API token with ID 999"), world.begin() as conn:
        revoke_token(conn, 999, now)
    assert dump(world) == before


def test_a_disabled_partner_s_tokens_are_refused_until_it_is_enabled(world, now):
    """Disabling a partner closes the API to it as it closes every door."""
    _, secret = create(world, "acme", now)
    with world.begin() as conn:
        store.set_status(conn, "acme", "disabled", now)
    assert auth(world, secret, now) is None
    with world.begin() as conn:
        store.set_status(conn, "acme", "active", now)
    assert auth(world, secret, now) is not None


def test_removing_a_partner_removes_its_tokens(world, now):
    """Tokens belong to their partner and go with it."""
    _, secret = create(world, "acme", now)
    with world.begin() as conn:
        store.remove_partner(conn, "acme", now)
    assert auth(world, secret, now) is None
    with world.connect() as conn:
        assert list_tokens(conn) == []


def test_listing_filters_by_partner(world, now):
    """Oldest first; a partner filter shows that partner's only, an unknown partner is refused."""
    a1, _ = create(world, "acme", now)
    g1, _ = create(world, "globex", now)
    a2, _ = create(world, "acme", now)
    with world.connect() as conn:
        assert list_tokens(conn) == [a1, g1, a2]
        assert list_tokens(conn, "acme") == [a1, a2]
        assert get_token(conn, g1.id) == g1
        with pytest.raises(UnknownPartnerError, match="initech"):
            list_tokens(conn, "initech")


@pytest.mark.parametrize("partner_id, name, error", [
    ("initech", "billing", UnknownPartnerError),
    ("acme", "  ", InvalidValueError),
    ("acme", "x" * 201, InvalidValueError),
    ("acme", "bad\nname", InvalidValueError),
])
def test_create_refusals_change_nothing(world, now, partner_id, name, error):
    """An unknown partner or a bad name writes no row."""
    before = dump(world)
    with pytest.raises(error), world.begin() as conn:
        create_token(conn, partner_id, name, now)
    assert dump(world) == before


def test_near_misses_are_refused(world, now):
    """A secret with any character changed, cut short, lengthened or in another case does not authenticate."""
    _, secret = create(world, "acme", now)
    for wrong in (secret[:-1], secret + "A", secret.upper(), secret[:-1] + ("A" if secret[-1] != "A" else "B"),
                  "Bearer " + secret, secret.replace("prt_", "prx_"), " " + secret):
        assert auth(world, wrong, now) is None, wrong


class NoDatabase:
    """A connection stand-in that fails the test if anything queries the database."""

    def execute(self, *args, **kwargs):
        raise AssertionError("a malformed token reached the database")


@given(st.text(max_size=120))
def test_malformed_strings_never_reach_the_database(presented):
    """Anything that is not shaped like a secret is refused before a query is made."""
    if re.fullmatch(r"prt_[a-z0-9]{8}_[A-Za-z0-9_-]{43}", presented):
        return
    assert authenticate(NoDatabase(), presented, None) is None
