# -*- test-case-name: tests.spool.test_records -*-
"""Message records and their state machine, the delivery queue, mailbox items, quarantine, receipts.

Blocking SQLAlchemy Core functions that run in the caller's transaction (the gateway calls them from
its database thread pool, the CLI directly). Each function does one step of the state machine and
refuses a transition the machine does not have, so two writers can never disagree silently::

    message:   accepted ──▶ delivered            delivery: pending ──claim──▶ claimed ──▶ done
                  │  ▲                                         ▲                 │
                  ▼  │ retry                                   └── backoff ──────┤
                failed                                                           ▼
                  (any ──recovery──▶ corrupt)                         dead ──retry──▶ pending

The audit events that go with each step are the caller's, written in the same transaction.
"""

import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from spool.schema import deliveries, mailbox_items, messages, outgoing_mail, quarantine, receipts


class RecordError(Exception):
    """Base of the record layer's refusals."""


class UnknownMessage(RecordError, LookupError):
    """No message (or no message in this mailbox) has this ID."""

    def __init__(self, message_id: str):
        super().__init__(f"no message {message_id!r}")
        self.message_id = message_id


def new_id(now: datetime) -> str:
    """A 32-hex-digit ID that sorts by creation time: 48 bits of milliseconds, then 80 random bits.

    Time order makes "newest first" listings and their cursors a plain index scan; the random part
    makes IDs unguessable enough that they never leak how much traffic another partner has.
    """
    return f"{int(now.timestamp() * 1000):012x}{secrets.token_hex(10)}"


@attrs.frozen
class Message:
    """One accepted document and what the gateway knows about it."""

    id: str
    received_at: datetime
    sender_id: str
    recipient_id: str
    channel: str
    sha256: str
    size: int
    kind: str
    signed: bool
    route: str
    state: str
    updated_at: datetime
    external_id: str | None = None
    filename: str | None = None
    content_type: str | None = None
    number: str | None = None
    issue_date: str | None = None
    type_code: str | None = None
    currency: str | None = None
    supplier_id: str | None = None
    customer_id: str | None = None
    supplier_name: str | None = None
    customer_name: str | None = None
    amount: str | None = None  #: the amount due, as the document wrote it, in ``currency``

    @classmethod
    def from_row(cls, row: Row) -> "Message":
        """Build from a ``messages`` row."""
        return cls(**{f.name: getattr(row, f.name) for f in attrs.fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        data = attrs.asdict(self)
        data["received_at"] = self.received_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@attrs.frozen
class Delivery:
    """One planned hand-over of a message to a recipient through one target."""

    id: int
    message_id: str
    recipient_id: str
    target: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    claimed_by: str | None = None
    remote_id: str | None = None  #: the Message-ID the last push went out under
    mic: str | None = None  #: the MIC that push's receipt must return

    @classmethod
    def from_row(cls, row: Row) -> "Delivery":
        """Build from a ``deliveries`` row."""
        return cls(**{f.name: getattr(row, f.name) for f in attrs.fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**attrs.asdict(self), "next_attempt_at": self.next_attempt_at.isoformat()}


@attrs.frozen
class MailboxItem:
    """A message as its recipient sees it."""

    message: Message
    state: str
    delivered_at: datetime
    downloaded_at: datetime | None
    acknowledged_at: datetime | None


# ---------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------

def insert_message(conn: Connection, message: Message, targets: Iterable[tuple[str, str]], *,
                   filed: bool = False) -> list[int]:
    """Record an accepted message and its planned deliveries (``(recipient_id, target)`` pairs), due now.

    ``filed``: the caller files the ``mailbox`` deliveries in this very transaction (the intake does), so
    they are recorded ``done`` after one attempt, and the message ``delivered`` when nothing else is left.

    :returns: the new delivery IDs, in the order of ``targets``.
    :raises sqlalchemy.exc.IntegrityError: the sender already used this external ID (a duplicate that
        raced past :func:`find_duplicate`); run it in a savepoint to keep the rest of a batch.
    """
    targets = list(targets)
    states = ["done" if filed and target == "mailbox" else "pending" for _, target in targets]
    row = attrs.asdict(message)
    if targets:
        row["state"] = settled_state(set(states))
    conn.execute(_INSERT_MESSAGE, row)
    ids = []
    for (recipient_id, target), state in zip(targets, states, strict=True):
        ids.append(conn.execute(_INSERT_DELIVERY, {
            "message_id": message.id, "recipient_id": recipient_id, "target": target, "state": state,
            "attempts": int(state == "done"), "next_attempt_at": message.received_at,
            "updated_at": message.received_at,
        }).inserted_primary_key[0])
    return ids


# Built once: the intake's hot path passes values at execute time, so compiled statements are reused.
_INSERT_MESSAGE = insert(messages)
_INSERT_DELIVERY = insert(deliveries)
_INSERT_RECEIPT = insert(receipts)
_BY_EXTERNAL_ID = select(messages).where(messages.c.sender_id == bindparam("sender"),
                                         messages.c.external_id == bindparam("external_id"))
_SAME_DOCUMENT = select(messages).where(messages.c.sender_id == bindparam("sender"),
                                        messages.c.number == bindparam("number"),
                                        messages.c.issue_date == bindparam("issue_date")).order_by(messages.c.id)
_SAME_UNDATED_DOCUMENT = select(messages).where(messages.c.sender_id == bindparam("sender"),
                                                messages.c.number == bindparam("number"),
                                                messages.c.issue_date.is_(None)).order_by(messages.c.id)


def get_message(conn: Connection, message_id: str) -> Message:
    """:raises UnknownMessage: no such message."""
    row = conn.execute(select(messages).where(messages.c.id == message_id)).first()
    if row is None:
        raise UnknownMessage(message_id)
    return Message.from_row(row)


def find_by_external_id(conn: Connection, sender_id: str, external_id: str) -> Message | None:
    """The message this sender already sent under this message ID / idempotency key, if any."""
    row = conn.execute(_BY_EXTERNAL_ID, {"sender": sender_id, "external_id": external_id}).first()
    return Message.from_row(row) if row is not None else None


def find_same_document(conn: Connection, sender_id: str, number: str, issue_date: str | None) -> list[Message]:
    """Messages from this sender carrying the same document number and issue date, oldest first."""
    query = _SAME_UNDATED_DOCUMENT if issue_date is None else _SAME_DOCUMENT
    rows = conn.execute(query, {"sender": sender_id, "number": number, "issue_date": issue_date})
    return [Message.from_row(r) for r in rows]


def list_messages(conn: Connection, *, partner_id: str | None = None, state: str | None = None,
                  limit: int = 100) -> list[Message]:
    """Newest first; ``partner_id`` matches the sender or the recipient."""
    query = select(messages).order_by(messages.c.id.desc()).limit(limit)
    if partner_id is not None:
        query = query.where(or_(messages.c.sender_id == partner_id, messages.c.recipient_id == partner_id))
    if state is not None:
        query = query.where(messages.c.state == state)
    return [Message.from_row(r) for r in conn.execute(query)]


def iter_messages(conn: Connection) -> Iterable[Message]:
    """Every message, oldest first (recovery and ``spool check``)."""
    for row in conn.execute(select(messages).order_by(messages.c.id)):
        yield Message.from_row(row)


def set_message_state(conn: Connection, message_id: str, state: str, now: datetime) -> None:
    """Move a message to ``state`` (no transition checks: recovery may mark anything corrupt)."""
    conn.execute(update(messages).where(messages.c.id == message_id).values(state=state, updated_at=now))


def messages_without_deliveries(conn: Connection) -> list[Message]:
    """Accepted messages with no planned delivery: recovery routes them again."""
    planned = select(deliveries.c.id).where(deliveries.c.message_id == messages.c.id).exists()
    rows = conn.execute(select(messages).where(messages.c.state == "accepted", ~planned).order_by(messages.c.id))
    return [Message.from_row(r) for r in rows]


def add_deliveries(conn: Connection, message_id: str, targets: Iterable[tuple[str, str]], now: datetime) -> None:
    """Plan deliveries for a message recorded without them (recovery)."""
    for recipient_id, target in targets:
        conn.execute(insert(deliveries).values(
            message_id=message_id, recipient_id=recipient_id, target=target, state="pending", attempts=0,
            next_attempt_at=now, updated_at=now))


# ---------------------------------------------------------------------------------------------------------------
# Delivery queue
# ---------------------------------------------------------------------------------------------------------------

def deliveries_of(conn: Connection, message_id: str) -> list[Delivery]:
    """Every delivery of a message, in planning order."""
    rows = conn.execute(select(deliveries).where(deliveries.c.message_id == message_id).order_by(deliveries.c.id))
    return [Delivery.from_row(r) for r in rows]


def claim_due(conn: Connection, now: datetime, worker: str, limit: int, lease: timedelta) -> list[Delivery]:
    """Claim up to ``limit`` deliveries that are due, or whose claim's lease ran out (a dead node's), or
    whose receipt did not come back in time (an async MDN that never arrived: the push is repeated).

    On PostgreSQL the candidate rows are locked ``FOR UPDATE SKIP LOCKED`` so concurrent workers on
    several nodes never claim the same row; SQLite has one writer at a time anyway.
    """
    due = or_(
        and_(deliveries.c.state.in_(("pending", "awaiting")), deliveries.c.next_attempt_at <= now),
        and_(deliveries.c.state == "claimed", deliveries.c.claimed_at <= now - lease),
    )
    # A corrupt message's bytes are not what was received: nothing of it goes out until it is repaired.
    due = and_(due, ~select(messages.c.id).where(messages.c.id == deliveries.c.message_id,
                                                  messages.c.state == "corrupt").exists())
    query = select(deliveries.c.id).where(due).order_by(deliveries.c.next_attempt_at, deliveries.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.scalars(query))
    if not ids:
        return []
    conn.execute(update(deliveries).where(deliveries.c.id.in_(ids))
                 .values(state="claimed", claimed_by=worker, claimed_at=now, updated_at=now))
    rows = conn.execute(select(deliveries).where(deliveries.c.id.in_(ids)).order_by(deliveries.c.id))
    return [Delivery.from_row(r) for r in rows]


def _claimed(conn: Connection, delivery_id: int, worker: str, values: dict[str, Any]) -> bool:
    """Apply ``values`` to a delivery only while ``worker`` still holds its claim."""
    result = conn.execute(update(deliveries).where(
        deliveries.c.id == delivery_id, deliveries.c.state == "claimed", deliveries.c.claimed_by == worker,
    ).values(claimed_by=None, claimed_at=None, **values))
    return result.rowcount == 1


def complete(conn: Connection, delivery: Delivery, worker: str, now: datetime) -> bool:
    """Mark a claimed delivery done; the message becomes ``delivered`` when it was its last one.

    :returns: False when the claim was lost (the lease ran out and another worker took it over).
    """
    if not _claimed(conn, delivery.id, worker, {"state": "done", "attempts": delivery.attempts + 1,
                                                "last_error": None, "updated_at": now}):
        return False
    _settle_message(conn, delivery.message_id, now)
    return True


def fail(conn: Connection, delivery: Delivery, worker: str, now: datetime, error: str,
         retry_at: datetime | None) -> bool:
    """Record a failed attempt: back to ``pending`` until ``retry_at``, or ``dead`` when it is ``None``.

    :returns: False when the claim was lost.
    """
    values: dict[str, Any] = {"attempts": delivery.attempts + 1, "last_error": error[:2000], "updated_at": now}
    values.update({"state": "pending", "next_attempt_at": retry_at} if retry_at is not None else {"state": "dead"})
    if not _claimed(conn, delivery.id, worker, values):
        return False
    if retry_at is None:
        _settle_message(conn, delivery.message_id, now)
    return True


def await_receipt(conn: Connection, delivery: Delivery, worker: str, now: datetime, remote_id: str,
                  mic: str | None, deadline: datetime) -> bool:
    """A push went out and its receipt comes later (async MDN): wait for it until ``deadline``.

    :returns: False when the claim was lost.
    """
    return _claimed(conn, delivery.id, worker, {
        "state": "awaiting", "remote_id": remote_id, "mic": mic, "attempts": delivery.attempts + 1,
        "next_attempt_at": deadline, "last_error": None, "updated_at": now})


def note_push(conn: Connection, delivery: Delivery, worker: str, remote_id: str, mic: str | None) -> bool:
    """Record the ID and MIC a push is about to go out under, before it does: its retries reuse the ID, and
    an async receipt that comes back before the push is recorded still finds its delivery.

    :returns: False when the claim was lost.
    """
    result = conn.execute(update(deliveries).where(
        deliveries.c.id == delivery.id, deliveries.c.state == "claimed", deliveries.c.claimed_by == worker,
    ).values(remote_id=remote_id, mic=mic))
    return result.rowcount == 1


def awaited(conn: Connection, recipient_id: str, remote_id: str) -> Delivery | None:
    """The delivery to ``recipient_id`` pushed as ``remote_id``, if it still waits for its receipt (or is still
    being pushed: an async receipt can overtake the push's own bookkeeping)."""
    row = conn.execute(select(deliveries).where(
        deliveries.c.recipient_id == recipient_id, deliveries.c.remote_id == remote_id,
        deliveries.c.state.in_(("awaiting", "claimed")))).first()
    return Delivery.from_row(row) if row is not None else None


def settle_awaited(conn: Connection, delivery: Delivery, now: datetime, error: str | None,
                   retry_at: datetime | None) -> bool:
    """Record the receipt a delivery waited for: done, or failed like :func:`fail`.

    A delivery still ``claimed`` (its push has not been recorded yet) counts the attempt here; the
    pusher's own bookkeeping then finds the claim gone and leaves it alone.

    :returns: False when it no longer waits (settled already, or its deadline passed and it was re-claimed).
    """
    values: dict[str, Any] = {"updated_at": now, "last_error": error[:2000] if error else None,
                              "claimed_by": None, "claimed_at": None}
    if delivery.state == "claimed":
        values["attempts"] = delivery.attempts + 1
    if error is None:
        values["state"] = "done"
    else:
        values.update({"state": "pending", "next_attempt_at": retry_at} if retry_at is not None else {"state": "dead"})
    result = conn.execute(update(deliveries).where(deliveries.c.id == delivery.id,
                                                   deliveries.c.state == delivery.state).values(**values))
    if result.rowcount != 1:
        return False
    if values["state"] != "pending":
        _settle_message(conn, delivery.message_id, now)
    return True


def settled_state(delivery_states: set[str]) -> str:
    """The message state its deliveries' states imply: ``failed``, ``delivered`` or ``accepted``."""
    if "dead" in delivery_states:
        return "failed"
    return "delivered" if delivery_states == {"done"} else "accepted"


def postpone(conn: Connection, delivery: Delivery, worker: str, now: datetime, reason: str,
             retry_at: datetime) -> bool:
    """Give a claimed delivery back, due at ``retry_at``, *without* counting an attempt.

    For causes on our side that no attempt was made against (no client for the target yet): they must
    not use up the recipient's attempts and dead-letter the message.

    :returns: False when the claim was lost.
    """
    return _claimed(conn, delivery.id, worker, {"state": "pending", "next_attempt_at": retry_at,
                                                "last_error": reason[:2000], "updated_at": now})


def _settle_message(conn: Connection, message_id: str, now: datetime) -> None:
    states = set(conn.scalars(select(deliveries.c.state).where(deliveries.c.message_id == message_id)))
    new = settled_state(states)
    if new == "accepted":
        return
    conn.execute(update(messages).where(messages.c.id == message_id, messages.c.state != "corrupt")
                 .values(state=new, updated_at=now))


def release_claims(conn: Connection, worker: str, now: datetime) -> int:
    """Put every delivery ``worker`` had claimed back to ``pending``, due now (start-up recovery)."""
    return conn.execute(update(deliveries).where(deliveries.c.state == "claimed", deliveries.c.claimed_by == worker)
                        .values(state="pending", claimed_by=None, claimed_at=None, next_attempt_at=now,
                                updated_at=now)).rowcount


def retry(conn: Connection, message_id: str, now: datetime) -> list[Delivery]:
    """Make a message's dead (or waiting) deliveries due now; the message goes back to ``accepted``.

    :raises UnknownMessage: no such message.
    :raises RecordError: the message is corrupt, or has nothing left to retry.
    """
    message = get_message(conn, message_id)
    if message.state == "corrupt":
        raise RecordError(f"message {message_id} is corrupt (its stored bytes are missing or changed); "
                          "restore the blob from a backup, then run `postroom spool check`")
    revived = conn.execute(update(deliveries).where(
        deliveries.c.message_id == message_id, deliveries.c.state.in_(("dead", "pending")),
    ).values(state="pending", next_attempt_at=now, updated_at=now)).rowcount
    if not revived:
        raise RecordError(f"message {message_id} has no failed or waiting delivery to retry")
    set_message_state(conn, message_id, "accepted", now)
    return deliveries_of(conn, message_id)


# ---------------------------------------------------------------------------------------------------------------
# Mailboxes
# ---------------------------------------------------------------------------------------------------------------

def put_in_mailbox(conn: Connection, message_id: str, recipient_id: str, now: datetime) -> bool:
    """File a message in a recipient's mailbox once; False when it is already there (a repeated delivery)."""
    exists = conn.execute(select(mailbox_items.c.id).where(
        mailbox_items.c.message_id == message_id, mailbox_items.c.recipient_id == recipient_id)).first()
    if exists is not None:
        return False
    conn.execute(insert(mailbox_items).values(message_id=message_id, recipient_id=recipient_id, state="new",
                                              delivered_at=now))
    return True


def _mailbox_query(recipient_id: str):
    return (select(messages, mailbox_items.c.state.label("item_state"), mailbox_items.c.delivered_at,
                   mailbox_items.c.downloaded_at, mailbox_items.c.acknowledged_at)
            .join(mailbox_items, mailbox_items.c.message_id == messages.c.id)
            .where(mailbox_items.c.recipient_id == recipient_id))


def _item(row: Row) -> MailboxItem:
    return MailboxItem(Message.from_row(row), row.item_state, row.delivered_at, row.downloaded_at, row.acknowledged_at)


def mailbox(conn: Connection, recipient_id: str, *, limit: int, before: str | None = None,
            state: str | None = None, since: datetime | None = None) -> list[MailboxItem]:
    """A recipient's mailbox, newest first, ``limit`` items older than message ``before`` (a cursor).

    Ordered and bounded on ``mailbox_items.message_id`` (the same value as ``messages.id``), so the
    database walks the ``(recipient_id[, state], message_id)`` index backwards and stops after ``limit``
    rows: the cost does not grow with the mailbox (``bench/store.py``). Message IDs start with their
    creation time, so ``since`` bounds the walk too.
    """
    item_id = mailbox_items.c.message_id
    query = _mailbox_query(recipient_id).order_by(item_id.desc()).limit(limit)
    if before is not None:
        query = query.where(item_id < before)
    if state is not None:
        query = query.where(mailbox_items.c.state == state)
    if since is not None:
        query = query.where(item_id >= f"{max(0, int(since.timestamp() * 1000)):012x}",
                            messages.c.received_at >= since)
    return [_item(r) for r in conn.execute(query)]


def mailbox_item(conn: Connection, recipient_id: str, message_id: str) -> MailboxItem:
    """One item of a recipient's mailbox.

    :raises UnknownMessage: not in this mailbox, whether or not the message exists elsewhere.
    """
    row = conn.execute(_mailbox_query(recipient_id).where(messages.c.id == message_id)).first()
    if row is None:
        raise UnknownMessage(message_id)
    return _item(row)


def mark_item(conn: Connection, recipient_id: str, message_id: str, event: str, now: datetime) -> bool:
    """Record ``downloaded`` or ``acknowledged``; True the first time, False when it was already so.

    One conditional UPDATE, so of two concurrent marks exactly one wins on every backend. A download
    after an acknowledgement leaves the item acknowledged.

    :raises UnknownMessage: not in this mailbox.
    """
    column = {"downloaded": "downloaded_at", "acknowledged": "acknowledged_at"}[event]
    state = "acknowledged" if event == "acknowledged" else case(
        (mailbox_items.c.state == "new", "downloaded"), else_=mailbox_items.c.state)
    won = conn.execute(update(mailbox_items).where(
        mailbox_items.c.message_id == message_id, mailbox_items.c.recipient_id == recipient_id,
        mailbox_items.c[column].is_(None),
    ).values({column: now, "state": state})).rowcount == 1
    if not won:
        mailbox_item(conn, recipient_id, message_id)  # raises when it is not in this mailbox at all
    return won


def mailbox_count(conn: Connection, message_id: str) -> int:
    """How many mailbox items a message has (crash tests: never more than one per recipient)."""
    return conn.scalar(select(func.count()).select_from(mailbox_items).where(mailbox_items.c.message_id == message_id))


# ---------------------------------------------------------------------------------------------------------------
# Quarantine and receipts
# ---------------------------------------------------------------------------------------------------------------

@attrs.frozen
class Quarantined:
    """A refused payload, kept with what was wrong with it."""

    id: str
    received_at: datetime
    sender_id: str
    channel: str
    size: int
    sha256: str | None
    codes: str
    findings: list[dict[str, Any]]
    external_id: str | None = None
    filename: str | None = None
    content_type: str | None = None


def insert_quarantine(conn: Connection, item: Quarantined) -> None:
    """Record a refused payload (its blob, when kept, is published with the same batch)."""
    conn.execute(insert(quarantine).values(**attrs.asdict(item)))


@attrs.frozen
class StoredReceipt:
    """A receipt exactly as sent (or to be sent)."""

    id: str
    kind: str
    partner_id: str
    disposition: str
    content_type: str
    body: bytes
    created_at: datetime
    state: str
    message_id: str | None = None
    quarantine_id: str | None = None
    #: where a ``pending`` receipt still has to go, e.g. ``{"channel": "as2", "url": …, "as2_to": …}``
    dispatch: dict[str, str] | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> "StoredReceipt":
        """Build from a ``receipts`` row."""
        return cls(**{f.name: getattr(row, f.name) for f in attrs.fields(cls)})


def insert_receipt(conn: Connection, receipt: StoredReceipt) -> None:
    """Keep a receipt's exact bytes."""
    conn.execute(_INSERT_RECEIPT, attrs.asdict(receipt))


def _claim_due(conn: Connection, table: Any, now: datetime, limit: int, lease: timedelta, *where: Any) -> list[str]:
    """Claim up to ``limit`` due ``pending`` rows of ``table``; their IDs.

    The claim is a lease: ``next_attempt_at`` moves ``lease`` ahead, one conditional ``UPDATE`` per
    row, so two nodes never send the same thing at once and a dead node's claim runs out.
    """
    at = table.c.next_attempt_at
    query = (select(table.c.id, at).where(table.c.state == "pending", or_(at.is_(None), at <= now), *where)
             .order_by(at, table.c.id).limit(limit))
    claimed = []
    for row_id, due_at in conn.execute(query).all():
        won = conn.execute(update(table).where(
            table.c.id == row_id, table.c.state == "pending",
            at.is_(None) if due_at is None else at == due_at).values(next_attempt_at=now + lease))
        if won.rowcount == 1:
            claimed.append(row_id)
    return claimed


def _attempted(conn: Connection, table: Any, row_id: str, attempts: int, error: str | None,
               retry_at: datetime | None) -> None:
    """Record one attempt: ``sent``, due again at ``retry_at``, or ``failed`` when that is None."""
    values: dict[str, Any] = {"attempts": attempts + 1, "last_error": error[:2000] if error else None}
    if error is None:
        values["state"] = "sent"
    elif retry_at is not None:
        values["next_attempt_at"] = retry_at
    else:
        values["state"] = "failed"
    conn.execute(update(table).where(table.c.id == row_id, table.c.state == "pending").values(**values))


def due_receipts(conn: Connection, now: datetime, limit: int, lease: timedelta) -> list[StoredReceipt]:
    """Claim up to ``limit`` pending receipts that have somewhere to go and are due (a lease, see
    :func:`_claim_due`)."""
    claimed = _claim_due(conn, receipts, now, limit, lease, receipts.c.dispatch.is_not(None))
    rows = conn.execute(select(receipts).where(receipts.c.id.in_(claimed)).order_by(receipts.c.id)) if claimed else []
    return [StoredReceipt.from_row(r) for r in rows]


def receipt_sent(conn: Connection, receipt: StoredReceipt, now: datetime, error: str | None,
                 retry_at: datetime | None) -> None:
    """Record one attempt to send a receipt: ``sent``, due again at ``retry_at``, or ``failed`` when that is None."""
    _attempted(conn, receipts, receipt.id, receipt.attempts, error, retry_at)


def redispatch(conn: Connection, receipt: StoredReceipt, dispatch: dict[str, str]) -> StoredReceipt:
    """Send a stored receipt (its exact bytes) again, to ``dispatch``, due now."""
    conn.execute(update(receipts).where(receipts.c.id == receipt.id)
                 .values(state="pending", dispatch=dispatch, attempts=0, next_attempt_at=None, last_error=None))
    return attrs.evolve(receipt, state="pending", dispatch=dispatch, attempts=0, next_attempt_at=None, last_error=None)


def get_receipt(conn: Connection, receipt_id: str) -> StoredReceipt | None:
    """A receipt by ID."""
    row = conn.execute(select(receipts).where(receipts.c.id == receipt_id)).first()
    return StoredReceipt.from_row(row) if row is not None else None


def receipts_for(conn: Connection, message_id: str, kinds: Sequence[str] = ("acceptance",)) -> list[StoredReceipt]:
    """A message's receipts of the given kinds, oldest first."""
    rows = conn.execute(select(receipts).where(receipts.c.message_id == message_id, receipts.c.kind.in_(kinds))
                        .order_by(receipts.c.created_at, receipts.c.id))
    return [StoredReceipt.from_row(r) for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# Outgoing mail
# ---------------------------------------------------------------------------------------------------------------

@attrs.frozen
class OutgoingMail:
    """A mail the gateway sends on its own: a ``notification`` (composed ``body``) or an ``invitation``
    (composed when sent, with a fresh token)."""

    id: str
    kind: str
    partner_id: str
    recipients: list[str]
    created_at: datetime
    state: str = "pending"
    body: bytes | None = None
    message_id: str | None = None
    invitation_id: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> "OutgoingMail":
        """Build from an ``outgoing_mail`` row."""
        return cls(**{f.name: getattr(row, f.name) for f in attrs.fields(cls)})


def queue_mail(conn: Connection, mail: OutgoingMail) -> None:
    """Queue a mail; it is sent by the mail courier once the transaction commits."""
    conn.execute(insert(outgoing_mail).values(**attrs.asdict(mail)))


def due_mail(conn: Connection, now: datetime, limit: int, lease: timedelta) -> list[OutgoingMail]:
    """Claim up to ``limit`` due pending mails (a lease, see :func:`_claim_due`)."""
    claimed = _claim_due(conn, outgoing_mail, now, limit, lease)
    rows = (conn.execute(select(outgoing_mail).where(outgoing_mail.c.id.in_(claimed)).order_by(outgoing_mail.c.id))
            if claimed else [])
    return [OutgoingMail.from_row(r) for r in rows]


def mail_sent(conn: Connection, mail: OutgoingMail, error: str | None, retry_at: datetime | None) -> None:
    """Record one attempt to send a mail: ``sent``, due again at ``retry_at``, or ``failed`` when that is None."""
    _attempted(conn, outgoing_mail, mail.id, mail.attempts, error, retry_at)
