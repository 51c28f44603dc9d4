# -*- test-case-name: tests.partners.test_routes -*-
"""Routing rules: which partner receives a document, when the document alone does not say.

A rule matches on any of sender, receiver identifier (``scheme:value``), document kind and door; a
criterion left empty matches anything. Rules are tried in ``position`` order and the first match
wins; when none matches, the partner that owns the document's receiver identifier receives it.
Rules are part of the partner directory snapshot, so a change reaches running daemons like any
other directory change.
"""

from collections.abc import Iterable

import attrs
from sqlalchemy import select
from sqlalchemy.engine import Connection

from partners.schema import routes


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


def load_routes(conn: Connection) -> tuple[Route, ...]:
    """Every rule, in position order."""
    rows = conn.execute(select(routes).order_by(routes.c.position))
    return tuple(Route(id=r.id, position=r.position, recipient_id=r.recipient_id, sender_id=r.sender_id,
                       receiver=r.receiver, kind=r.kind, channel=r.channel) for r in rows)
