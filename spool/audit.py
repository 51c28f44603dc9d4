# -*- test-case-name: tests.spool.test_audit -*-
"""The audit trail: append-only, hash-chained, checkable by anyone with read access.

Each row's ``hash`` is SHA-256 over a canonical JSON of its own fields plus the previous row's hash,
so changing, deleting or reordering any row breaks every later link, and :func:`verify` names the
first broken one. The chain head (``audit_head``) is updated first in every append: that row lock
serialises concurrent appenders on PostgreSQL, and the write lock does the same on SQLite, so the
chain never forks. Rows are written in the caller's transaction: an event is recorded exactly when
the change it describes is committed.

A transaction that records many changes (the intake's group commit) wraps them in :func:`batched`:
its events are held back and written together at the end, three statements for the whole batch
instead of three per event, and the head row is locked only for those last statements and the
commit, so writers on other nodes wait for the chain that long and no longer. An event appended in
a savepoint that is rolled back is dropped with it.

What it cannot detect alone: someone with write access who truncates the tail and rewinds the head
consistently. Operators close that gap by keeping the head hash that ``postroom audit verify``
prints somewhere the database's writers cannot reach.
"""

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import attrs
from sqlalchemy import bindparam, event, insert, select, update
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
_BUMP_HEAD = (update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq + bindparam("count"))
              .returning(audit_head.c.seq, audit_head.c.hash))
_INSERT_EVENT = insert(audit_log)
_SET_HEAD_HASH = update(audit_head).where(audit_head.c.id == 1).values(hash=bindparam("head_hash"))
#: Execution option naming the list a :func:`batched` block collects its events in.
_PENDING = "postroom_audit_pending"

_Pending = tuple[datetime, str, str, "str | None", dict[str, Any]]


def append(conn: Connection, actor: str, event: str, now: datetime, *,
           message_id: str | None = None, details: dict[str, Any] | None = None) -> Event | None:
    """Append one event in the caller's transaction and return it; inside :func:`batched` it is written at
    the end of the block instead, and None is returned (its place in the chain is not known yet).

    :param actor: who did it, e.g. ``cli:alice``, ``partner:acme``, ``gateway``.
    :param event: a dotted name, e.g. ``partner.disabled``.
    :param details: JSON-serialisable facts; never secrets.
    """
    item = (now, actor, event, message_id, json.loads(json.dumps(details or {})))  # what the database hands back
    pending = conn.get_execution_options().get(_PENDING)
    if pending is not None:
        pending.append(item)
        return None
    return _write(conn, [item])[0]


@contextmanager
def batched(conn: Connection) -> Iterator[None]:
    """Hold back the events appended on ``conn`` in this block and write them when it ends (call it inside
    the transaction, so that they commit with it). Savepoints opened in the block keep their events only
    if they are released."""
    pending: list[_Pending] = []
    marks: list[int] = []

    def opened(_conn, _name) -> None:
        marks.append(len(pending))

    def released(_conn, _name, _context) -> None:
        marks.pop()

    def rolled_back(_conn, _name, _context) -> None:
        del pending[marks.pop():]

    listeners = (("savepoint", opened), ("release_savepoint", released), ("rollback_savepoint", rolled_back))
    for name, fn in listeners:
        event.listen(conn, name, fn)
    conn.execution_options(**{_PENDING: pending})
    try:
        yield
        _write(conn, pending)
    finally:
        conn.execution_options(**{_PENDING: None})
        for name, fn in listeners:
            event.remove(conn, name, fn)


def _write(conn: Connection, items: list[_Pending]) -> list[Event]:
    """Chain ``items`` after the head: one head update (it takes the head's row lock), one insert, one update."""
    if not items:
        return []
    last, prev = conn.execute(_BUMP_HEAD, {"count": len(items)}).one()
    written = []
    for seq, (at, actor, name, message_id, details) in enumerate(items, start=last - len(items) + 1):
        written.append(Event(seq, at, actor, name, message_id, details, prev,
                             _digest(seq, at, actor, name, message_id, details, prev)))
        prev = written[-1].hash
    conn.execute(_INSERT_EVENT, [{"seq": e.seq, "at": e.at, "actor": e.actor, "event": e.event,
                                  "message_id": e.message_id, "details": e.details, "prev_hash": e.prev_hash,
                                  "hash": e.hash} for e in written])
    conn.execute(_SET_HEAD_HASH, {"head_hash": prev})
    return written


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
