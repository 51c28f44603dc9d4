# -*- test-case-name: tests.partners.test_tokens -*-
"""Portal API tokens: bearer secrets a partner's programs use to fetch their mailbox.

A secret looks like ``prt_<prefix>_<43 url-safe characters>``: 256 random bits after a random
8-character prefix. Only the secret's SHA-256 is stored (with that much entropy a slow hash buys
nothing), so a leaked database does not leak working tokens; the prefix is stored in clear so admins,
logs and the audit trail can name a token without revealing it. Blocking SQLAlchemy Core in the
caller's transaction, like :mod:`partners.store`.
"""

import hashlib
import re
import secrets
from datetime import datetime
from typing import Any

import attrs
from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from partners import identifiers as ids
from partners.errors import NotFoundError
from partners.schema import api_tokens, partners
from partners.store import require_partner

#: What every secret starts with, so secret scanners and people recognise a leaked one.
SCHEME = "prt_"

_PREFIX_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SECRET = re.compile(r"prt_([a-z0-9]{8})_[A-Za-z0-9_-]{43}")


@attrs.frozen
class TokenInfo:
    """A token as admins and the portal see it: never its secret, never the secret's hash."""

    id: int
    partner_id: str
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Row) -> "TokenInfo":
        """Build from an ``api_tokens`` row."""
        return cls(row.id, row.partner_id, row.name, row.prefix, row.created_at, row.revoked_at)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, with an ``id`` like every listing."""
        return {"id": self.id, "partner": self.partner_id, "name": self.name, "prefix": self.prefix,
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at is not None else None}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def create_token(conn: Connection, partner_id: str, name: str, now: datetime) -> tuple[TokenInfo, str]:
    """Make a token for ``partner_id``; returns it and its secret, which exists nowhere else afterwards.

    :raises UnknownPartnerError: no such partner.
    :raises InvalidValueError: the name is empty, too long or has control characters.
    """
    require_partner(conn, partner_id)
    name = ids.display_name(name)
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(8))
    secret = f"{SCHEME}{prefix}_{secrets.token_urlsafe(32)}"
    token_id = conn.execute(insert(api_tokens).values(
        partner_id=partner_id, name=name, prefix=prefix, secret_sha256=_digest(secret), created_at=now,
    )).inserted_primary_key[0]
    return TokenInfo(token_id, partner_id, name, prefix, now, None), secret


def list_tokens(conn: Connection, partner_id: str | None = None) -> list[TokenInfo]:
    """Every token (revoked ones too, for the record), or one partner's, oldest first.

    :raises UnknownPartnerError: ``partner_id`` is given and not registered.
    """
    query = select(api_tokens).order_by(api_tokens.c.id)
    if partner_id is not None:
        require_partner(conn, partner_id)
        query = query.where(api_tokens.c.partner_id == partner_id)
    return [TokenInfo.from_row(r) for r in conn.execute(query)]


def get_token(conn: Connection, token_id: int) -> TokenInfo:
    """:raises NotFoundError: no token has this ID."""
    row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).first()
    if row is None:
        raise NotFoundError(f"no API token with ID {token_id}")
    return TokenInfo.from_row(row)


def revoke_token(conn: Connection, token_id: int, now: datetime) -> TokenInfo:
    """Stop a token working from ``now`` on; it stays listed with its revocation time.

    :raises NotFoundError: no such token, or it was already revoked (its revocation time is kept).
    """
    token = get_token(conn, token_id)
    if token.revoked_at is not None:
        raise NotFoundError(f"API token {token_id} was already revoked at {token.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
    conn.execute(update(api_tokens).where(api_tokens.c.id == token_id).values(revoked_at=now))
    return attrs.evolve(token, revoked_at=now)


def authenticate(conn: Connection, presented: str, now: datetime) -> TokenInfo | None:
    """The token ``presented`` is, if it is live at ``now`` and its partner is active; else ``None``.

    The lookup is by the secret's hash, so the database never compares secrets and no timing of a
    string comparison can reveal one. A string that cannot be a secret is refused before any query.
    A revocation counts from its timestamp.
    """
    if not _SECRET.fullmatch(presented):
        return None
    row = conn.execute(
        select(api_tokens).join(partners, partners.c.id == api_tokens.c.partner_id)
        .where(api_tokens.c.secret_sha256 == _digest(presented), partners.c.status == "active",
               or_(api_tokens.c.revoked_at.is_(None), api_tokens.c.revoked_at > now))
    ).first()
    return TokenInfo.from_row(row) if row is not None else None
