"""Tests for :mod:`partners.invitations`: one invitation per address, tokens hashed, redeemed once before expiry."""

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from partners import invitations, store
from partners.errors import NotFoundError
from partners.schema import invitations as table
from partners.store import NewPartner

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(engine):
    with engine.begin() as conn:
        store.add_partner(conn, NewPartner(id="globex", name="Globex"), T0)
    return engine


def test_an_address_is_invited_once_whatever_its_case(db):
    with db.begin() as conn:
        assert invitations.invite(conn, "i1", "globex", "AP@globex.example", T0) == "i1"
        assert invitations.invite(conn, "i2", "globex", "ap@GLOBEX.example", T0) is None
        assert conn.execute(select(table.c.id, table.c.email)).all() == [("i1", "ap@globex.example")]


def test_only_the_hash_of_the_latest_token_is_kept_and_it_is_redeemed_once(db):
    with db.begin() as conn:
        invitations.invite(conn, "i1", "globex", "ap@globex.example", T0)
        first = invitations.issue_token(conn, "i1", T0)
        token = invitations.issue_token(conn, "i1", T0)  # a retried mail: the first link stops working
        stored = conn.scalar(select(table.c.token_sha256))
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored and len(token) >= 43
    with db.begin() as conn, pytest.raises(NotFoundError):
        invitations.redeem(conn, first, T0)
    with db.begin() as conn:
        assert invitations.redeem(conn, token, T0 + timedelta(days=1)) == ("globex", "ap@globex.example")
    with db.begin() as conn, pytest.raises(NotFoundError, match="used already"):
        invitations.redeem(conn, token, T0 + timedelta(days=1))
    with db.begin() as conn, pytest.raises(NotFoundError):
        invitations.issue_token(conn, "i1", T0)  # redeemed: no new token


def test_an_expired_token_is_refused(db):
    with db.begin() as conn:
        invitations.invite(conn, "i1", "globex", "ap@globex.example", T0)
        token = invitations.issue_token(conn, "i1", T0)
    with db.begin() as conn, pytest.raises(NotFoundError, match="expired"):
        invitations.redeem(conn, token, T0 + invitations.LIFETIME + timedelta(seconds=1))


def test_a_dead_invitation_is_renewed_under_its_own_id_and_a_redeemed_one_never(db):
    """Expired unused, or never mailed within the lifetime: renewed (old token gone); redeemed: never again."""
    later = T0 + invitations.LIFETIME + timedelta(seconds=1)
    with db.begin() as conn:
        invitations.invite(conn, "i1", "globex", "ap@globex.example", T0)
        assert invitations.invite(conn, "x", "globex", "ap@globex.example", T0 + timedelta(days=1)) is None
        assert invitations.invite(conn, "x", "globex", "ap@globex.example", later) == "i1"  # never mailed
        token = invitations.issue_token(conn, "i1", later)
        assert invitations.invite(conn, "x", "globex", "ap@globex.example", later + timedelta(days=1)) is None
        expired = later + invitations.LIFETIME + timedelta(seconds=1)
        assert invitations.invite(conn, "x", "globex", "ap@globex.example", expired) == "i1"
        assert conn.scalar(select(table.c.token_sha256)) is None
    with db.begin() as conn, pytest.raises(NotFoundError):
        invitations.redeem(conn, token, expired)
    with db.begin() as conn:
        token = invitations.issue_token(conn, "i1", expired)
        invitations.redeem(conn, token, expired)
        assert invitations.invite(conn, "x", "globex", "ap@globex.example", expired + 10 * invitations.LIFETIME) is None
