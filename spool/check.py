# -*- test-case-name: tests.spool.test_check -*-
"""``postroom spool check``: is every stored blob still the bytes its row names?

Blobs are content-addressed, so checking one is re-hashing it: a blob whose SHA-256 no longer matches
its name was changed behind Postroom's back (bit rot, a botched restore, tampering), and one that is
gone was deleted. Either way the message can never again be delivered or downloaded as received, so
it is marked ``corrupt`` with an audit event; nothing is ever deleted, the row stays as evidence and
for a restore from backup. A blob that could not be read at all (``EIO``, permissions) is reported but
not marked: the cause may pass, and a corrupt mark on good bytes would stop their deliveries for nothing.
Quarantined payloads are only reported: they are kept for the audit and have no state to change.

A message marked corrupt whose blob is intact again (restored from a backup) gets its state back, so
the check is also how an operator finishes a restore.

Blobs that no row names are counted, never removed: ``publish`` comes before the database commit
(DESIGN.md §2 step 5), so a crash between the two, or a commit in flight while the check runs, leaves
one behind, and deleting it could race a message being accepted.
"""

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import attrs
from sqlalchemy import func, select, union
from sqlalchemy.engine import Connection

from spool import audit
from spool.blobs import BlobStore
from spool.records import deliveries_of, get_message, iter_messages, set_message_state, settled_state
from spool.schema import messages, quarantine


@attrs.frozen
class Damage:
    """A row whose blob is missing, changed or unreadable."""

    #: ``message`` or ``quarantine``.
    kind: str
    id: str
    sha256: str
    #: ``missing``, ``changed``, or ``unreadable: <why>``.
    problem: str

    @property
    def corrupt(self) -> bool:
        """Whether the blob is known bad (missing or changed), not merely unreadable this time."""
        return self.problem in ("missing", "changed")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return attrs.asdict(self)


@attrs.frozen
class Report:
    """Everything one check found."""

    #: Message rows checked.
    messages: int
    #: Quarantine rows with a kept blob checked.
    quarantined: int
    damaged: tuple[Damage, ...]
    #: Messages marked corrupt whose blob is intact again.
    repaired: tuple[str, ...]
    #: Blobs on disk that no row names, sorted.
    unreferenced: tuple[str, ...]


def problem_of(blobs: BlobStore, sha: str) -> str | None:
    """What is wrong with blob ``sha``, or ``None``."""
    try:
        if blobs.verify(sha):
            return None
    except OSError as exc:
        return f"unreadable: {exc}"
    return "changed" if blobs.exists(sha) else "missing"


def _kept(conn: Connection) -> Iterator[tuple[str, str]]:
    """``(id, sha256)`` of every quarantine row that kept its payload, oldest first."""
    rows = conn.execute(select(quarantine.c.id, quarantine.c.sha256)
                        .where(quarantine.c.sha256.is_not(None)).order_by(quarantine.c.id))
    for row in rows:
        yield row.id, row.sha256


def survey(conn: Connection, blobs: BlobStore) -> tuple[list[Damage], list[str]]:
    """Re-hash every message's blob and every kept quarantined payload, once each.

    :returns: what is wrong (oldest first), and the IDs of messages marked corrupt whose blob
        verifies again (repaired, e.g. restored from a backup).
    """
    damaged, repaired = [], []
    for m in iter_messages(conn):
        problem = problem_of(blobs, m.sha256)
        if problem is not None:
            damaged.append(Damage("message", m.id, m.sha256, problem))
        elif m.state == "corrupt":
            repaired.append(m.id)
    damaged += [Damage("quarantine", item_id, sha, problem)
                for item_id, sha in _kept(conn) if (problem := problem_of(blobs, sha)) is not None]
    return damaged, repaired


def find_unreferenced(conn: Connection, blobs: BlobStore) -> list[str]:
    """Blobs on disk that no message or quarantine row names, sorted.

    Both sides come sorted, so this is a merge that never holds every name in memory. Names are
    lowercase hex digits of one length, which every database collation sorts as bytes, the order
    :meth:`BlobStore.iter_blobs` yields.
    """
    named = union(select(messages.c.sha256),
                  select(quarantine.c.sha256).where(quarantine.c.sha256.is_not(None))).subquery()
    referenced = iter(conn.scalars(select(named.c.sha256).order_by(named.c.sha256)))
    ref = next(referenced, None)
    loose = []
    for sha in blobs.iter_blobs():
        while ref is not None and ref < sha:
            ref = next(referenced, None)
        if ref != sha:
            loose.append(sha)
    return loose


def check_spool(conn: Connection, blobs: BlobStore) -> Report:
    """Run every check; changes nothing."""
    damaged, repaired = survey(conn, blobs)
    return Report(
        messages=conn.scalar(select(func.count()).select_from(messages)),
        quarantined=conn.scalar(select(func.count()).select_from(quarantine).where(quarantine.c.sha256.is_not(None))),
        damaged=tuple(damaged),
        repaired=tuple(repaired),
        unreferenced=tuple(find_unreferenced(conn, blobs)),
    )


def mark_corrupt(conn: Connection, damage: Damage, now: datetime, actor: str) -> bool:
    """Mark a damaged message ``corrupt`` and audit ``message.corrupt``, in the caller's transaction.

    :returns: False, changing nothing, when the message is already marked (a later check of the same
        damage adds no event).
    :raises ValueError: the damage is a quarantined payload's, or only unreadable: neither is marked.
    :raises spool.records.UnknownMessage: the message is gone.
    """
    if damage.kind != "message" or not damage.corrupt:
        raise ValueError(f"only a message whose blob is missing or changed is marked corrupt, not {damage}")
    if get_message(conn, damage.id).state == "corrupt":
        return False
    set_message_state(conn, damage.id, "corrupt", now)
    audit.append(conn, actor, "message.corrupt", now, message_id=damage.id,
                 details={"sha256": damage.sha256, "problem": damage.problem})
    return True


def mark_repaired(conn: Connection, message_id: str, now: datetime, actor: str) -> str:
    """Give a repaired message back the state its deliveries say, audit ``message.repaired``; return it.

    ``failed`` if a delivery is dead, ``delivered`` if all are done, else ``accepted``: its pending
    deliveries go ahead (``postroom message retry`` revives dead ones), and one without deliveries
    is routed by the gateway's recovery like any accepted message.
    """
    state = settled_state({d.state for d in deliveries_of(conn, message_id)})
    set_message_state(conn, message_id, state, now)
    audit.append(conn, actor, "message.repaired", now, message_id=message_id, details={"state": state})
    return state
