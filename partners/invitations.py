# -*- test-case-name: tests.partners.test_invitations -*-
"""Invitations to the portal: one per registered address of a recipient, redeemed once with its token.

An invitation is recorded when a recipient first gets a document; its token is made only when the mail
goes out (each attempt makes a new one, so an undelivered mail leaves nothing usable) and only its
SHA-256 is kept, with an expiry. Redeeming checks hash, expiry and first use in one conditional
``UPDATE``. Blocking SQLAlchemy Core in the caller's transaction, like :mod:`partners.store`.
"""

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from partners.errors import NotFoundError
from partners.schema import invitations

LIFETIME = timedelta(days=7)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def invite(conn: Connection, invitation_id: str, partner_id: str, email: str, now: datetime) -> str | None:
    """The invitation to mail to ``email`` of ``partner_id`` now, or ``None`` when it has a live one.

    A new address gets ``invitation_id``. An earlier invitation counts as dead — and is renewed under its
    own ID — once it expired unused, or when its mail never went out within :data:`LIFETIME` (the relay
    refused it for good); a redeemed one is never renewed.
    """
    row = conn.execute(select(invitations).where(invitations.c.partner_id == partner_id,
                                                 invitations.c.email == email.lower())).first()
    if row is None:
        conn.execute(insert(invitations).values(id=invitation_id, partner_id=partner_id, email=email.lower(),
                                                created_at=now))
        return invitation_id
    dead = row.used_at is None and (row.expires_at < now if row.expires_at is not None
                                    else row.created_at < now - LIFETIME)
    if not dead:
        return None
    conn.execute(update(invitations).where(invitations.c.id == row.id)
                 .values(created_at=now, token_sha256=None, expires_at=None))
    return row.id


def issue_token(conn: Connection, invitation_id: str, now: datetime, lifetime: timedelta = LIFETIME) -> str:
    """A new one-time token for the invitation (any earlier one stops working); the caller mails it.

    :raises NotFoundError: no such invitation, or it was redeemed already.
    """
    token = secrets.token_urlsafe(32)
    done = conn.execute(update(invitations).where(invitations.c.id == invitation_id, invitations.c.used_at.is_(None))
                        .values(token_sha256=_digest(token), expires_at=now + lifetime))
    if done.rowcount != 1:
        raise NotFoundError(f"no open invitation {invitation_id}")
    return token


def redeem(conn: Connection, token: str, now: datetime) -> tuple[str, str]:
    """Use a token once: ``(partner_id, email)`` it was sent for.

    :raises NotFoundError: unknown, expired or already used (one message for all three, to the caller).
    """
    digest = _digest(token)
    row = conn.execute(select(invitations.c.partner_id, invitations.c.email).where(
        invitations.c.token_sha256 == digest)).first()
    done = conn.execute(update(invitations).where(
        invitations.c.token_sha256 == digest, invitations.c.used_at.is_(None), invitations.c.expires_at > now,
    ).values(used_at=now))
    if row is None or done.rowcount != 1:
        raise NotFoundError("this invitation link is unknown, expired or used already")
    return row.partner_id, row.email
