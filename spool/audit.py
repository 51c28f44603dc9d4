# -*- test-case-name: tests.spool.test_audit -*-
"""The audit trail: append-only, hash-chained, checkable by anyone with read access.

Each row's ``hash`` is SHA-256 over a canonical JSON of its own fields plus the previous row's hash,
so changing, deleting or reordering any row breaks every later link, and :func:`verify` names the
first broken one. The chain head (``audit_head``) is updated first in every append: that row lock
serialises concurrent appenders on PostgreSQL, and the write lock does the same on SQLite, so the
chain never forks. Rows are written in the caller's transaction: an event is recorded exactly when
the change it describes is committed.

What it cannot detect alone: someone with write access who truncates the tail and rewinds the head
consistently. Operators close that gap by keeping the head hash that ``postroom audit verify``
prints somewhere the database's writers cannot reach.
"""

import hashlib
import json
from datetime import datetime
from typing import Any, Iterator

import attrs
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from spool.schema import audit_head, audit_log

GENESIS = "0" * 64


@attrs.frozen
class Event:
    """One audit row."""

    seq: int
    at: datetime
    actor: str
    event: str
    message_id: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, with an ``id`` like every listing."""
        return {"id": self.seq, **attrs.asdict(self), "at": self.at.isoformat()}


@attrs.frozen
class Verdict:
    """What :func:`verify` found."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    reason: str | None = None


def _digest(seq: int, at: datetime, actor: str, event: str, message_id: str | None,
            details: dict[str, Any], prev_hash: str) -> str:
    canonical = json.dumps(
        [seq, at.isoformat(), actor, event, message_id, details, prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# Built once: the hot path passes values at execute time, so SQLAlchemy reuses the compiled statement.
_BUMP_HEAD = (update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq + 1)
              .returning(audit_head.c.seq, audit_head.c.hash))
_INSERT_EVENT = insert(audit_log)
_SET_HEAD_HASH = update(audit_head).where(audit_head.c.id == 1).values(hash=bindparam("head_hash"))


def append(conn: Connection, actor: str, event: str, now: datetime, *,
           message_id: str | None = None, details: dict[str, Any] | None = None) -> Event:
    """Append one event in the caller's transaction and return it.

    :param actor: who did it, e.g. ``cli:alice``, ``partner:acme``, ``gateway``.
    :param event: a dotted name, e.g. ``partner.disabled``.
    :param details: JSON-serialisable facts; never secrets.
    """
    details = json.loads(json.dumps(details or {}))  # exactly what the database will hand back
    seq, prev = conn.execute(_BUMP_HEAD).one()
    digest = _digest(seq, now, actor, event, message_id, details, prev)
    conn.execute(_INSERT_EVENT, {"seq": seq, "at": now, "actor": actor, "event": event, "message_id": message_id,
                                 "details": details, "prev_hash": prev, "hash": digest})
    conn.execute(_SET_HEAD_HASH, {"head_hash": digest})
    return Event(seq, now, actor, event, message_id, details, prev, digest)


def events(conn: Connection, *, after: int = 0, limit: int | None = None,
           message_id: str | None = None) -> Iterator[Event]:
    """Rows in chain order, optionally after a sequence number or for one message."""
    query = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq)
    if message_id is not None:
        query = query.where(audit_log.c.message_id == message_id)
    if limit is not None:
        query = query.limit(limit)
    for row in conn.execute(query):
        yield Event(row.seq, row.at, row.actor, row.event, row.message_id, row.details, row.prev_hash, row.hash)


def verify(conn: Connection) -> Verdict:
    """Walk the whole chain; report the first row whose link or hash is wrong."""
    head_seq, head_hash = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
    expected_seq, prev, checked = 1, GENESIS, 0
    for e in events(conn):
        if e.seq != expected_seq:
            return Verdict(False, checked, head_seq, head_hash, expected_seq,
                           f"row {expected_seq} is missing (next row is {e.seq})")
        if e.prev_hash != prev:
            return Verdict(False, checked, head_seq, head_hash, e.seq,
                           f"row {e.seq} does not link to row {e.seq - 1}")
        if _digest(e.seq, e.at, e.actor, e.event, e.message_id, e.details, e.prev_hash) != e.hash:
            return Verdict(False, checked, head_seq, head_hash, e.seq, f"row {e.seq} was changed after it was written")
        prev, expected_seq, checked = e.hash, e.seq + 1, checked + 1
    if (checked, prev) != (head_seq, head_hash):
        return Verdict(False, checked, head_seq, head_hash, checked + 1,
                       f"the head says {head_seq} rows but the log ends at row {checked}")
    return Verdict(True, checked, head_seq, head_hash)
