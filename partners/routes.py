# -*- test-case-name: tests.partners.test_routes -*-
"""Routing rules: which partner receives a document, when the document alone does not say.

A rule matches on any of sender, receiver identifier (``scheme:value``), document kind and door; a
criterion left empty matches anything. Rules are tried in ``position`` order and the first match
wins; when none matches, the partner that owns the document's receiver identifier receives it.
Rules are part of the partner directory snapshot, so a change reaches running daemons like any
other directory change: :func:`add_route` and :func:`remove_route` bump the directory version.
"""

from collections.abc import Iterable
from datetime import datetime

import attrs
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from partners import identifiers as ids
from partners.errors import InvalidValueError, NotFoundError
from partners.schema import routes
from partners.store import bump_version, require_partner

#: Document kinds a rule can match: what the document check identifies, and ``opaque`` for
#: payloads a partner's policy lets through without identifying them.
KINDS = ("ubl-invoice", "ubl-creditnote", "cii-invoice", "opaque")

#: Doors a rule can match: the channel a message came in through.
#: The doors a message can arrive through (``Envelope.channel``, ``messages.channel``).
CHANNELS = ("as2", "sftp", "email", "https")


@attrs.frozen
class Route:
    """One routing rule."""

    id: int
    position: int
    recipient_id: str
    sender_id: str | None = None
    receiver: str | None = None
    kind: str | None = None
    channel: str | None = None

    def matches(self, *, sender_id: str, receiver: str | None, kind: str, channel: str) -> bool:
        """Whether every criterion this rule sets holds for the message."""
        return all(want is None or want == have for want, have in (
            (self.sender_id, sender_id), (self.receiver, receiver), (self.kind, kind), (self.channel, channel)))

    def to_json(self) -> dict:
        """JSON-ready."""
        return attrs.asdict(self)


def first_match(rules: Iterable["Route"], *, sender_id: str, receiver: str | None, kind: str,
                channel: str) -> "Route | None":
    """The first rule (by position) that matches, or ``None``."""
    for rule in sorted(rules, key=lambda r: r.position):
        if rule.matches(sender_id=sender_id, receiver=receiver, kind=kind, channel=channel):
            return rule
    return None


def _route(row) -> Route:
    return Route(id=row.id, position=row.position, recipient_id=row.recipient_id, sender_id=row.sender_id,
                 receiver=row.receiver, kind=row.kind, channel=row.channel)


def load_routes(conn: Connection) -> tuple[Route, ...]:
    """Every rule, in position order."""
    return tuple(_route(r) for r in conn.execute(select(routes).order_by(routes.c.position)))


def _one_of(label: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise InvalidValueError(f"{label} {value!r} must be one of {', '.join(allowed)}")


def add_route(conn: Connection, recipient_id: str, now: datetime, *, sender_id: str | None = None,
              receiver: str | None = None, kind: str | None = None, channel: str | None = None,
              position: int | None = None, catch_all: bool = False) -> Route:
    """Add a rule sending matching messages to ``recipient_id``, and return it.

    ``position`` ``None`` puts the rule after the last one; an explicit position puts it before every
    rule at that position or later, which move down by one. A rule without criteria matches every
    message and hides every rule after it, so it needs ``catch_all``, and ``catch_all`` takes no
    criteria: the admin says which of the two was meant.

    :raises UnknownPartnerError: the recipient or the sender is not registered.
    :raises InvalidValueError: a malformed receiver, an unknown kind or channel, a position before 1 or
        past the end, criteria missing without ``catch_all`` or given with it.
    """
    require_partner(conn, recipient_id)
    if sender_id is not None:
        require_partner(conn, sender_id)
    if receiver is not None:
        receiver = ids.participant_id(receiver)
    _one_of("kind", kind, KINDS)
    _one_of("channel", channel, CHANNELS)
    has_criteria = any(c is not None for c in (sender_id, receiver, kind, channel))
    if not has_criteria and not catch_all:
        raise InvalidValueError("a rule without --from, --receiver, --kind or --channel would match every "
                                "message; pass --catch-all if that is what you mean")
    if has_criteria and catch_all:
        raise InvalidValueError("--catch-all matches every message; it takes no --from, --receiver, --kind "
                                "or --channel")
    last = conn.execute(select(func.max(routes.c.position))).scalar() or 0
    if position is None:
        position = last + 1
    elif position < 1:
        raise InvalidValueError(f"position {position} must be 1 or more")
    elif position > last + 1:
        where = f"the last rule is at position {last}" if last else "there are no rules yet"
        raise InvalidValueError(f"position {position} is past the end: {where} (leave the position out to add "
                                "a rule at the end)")
    elif position <= last:
        _shift(conn, position)
    route_id = conn.execute(insert(routes).values(
        position=position, sender_id=sender_id, receiver=receiver, kind=kind, channel=channel,
        recipient_id=recipient_id, created_at=now,
    )).inserted_primary_key[0]
    bump_version(conn, now)
    return Route(id=route_id, position=position, recipient_id=recipient_id, sender_id=sender_id,
                 receiver=receiver, kind=kind, channel=channel)


def _shift(conn: Connection, position: int) -> None:
    """Move every rule at ``position`` or later down by one.

    Positions are unique and both SQLite and PostgreSQL check that row by row during an UPDATE, so a
    plain ``position + 1`` collides with the next rule. The rules go through negative positions (no
    rule has one) and come back one further down.
    """
    conn.execute(update(routes).where(routes.c.position >= position).values(position=-(routes.c.position + 1)))
    conn.execute(update(routes).where(routes.c.position < 0).values(position=-routes.c.position))


def remove_route(conn: Connection, route_id: int, now: datetime) -> Route:
    """Delete a rule and return it; the rules after it keep their positions (only the order counts).

    :raises NotFoundError: no rule has this ID.
    """
    row = conn.execute(select(routes).where(routes.c.id == route_id)).first()
    if row is None:
        raise NotFoundError(f"no route with ID {route_id}")
    conn.execute(delete(routes).where(routes.c.id == route_id))
    bump_version(conn, now)
    return _route(row)
