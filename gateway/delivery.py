# -*- test-case-name: tests.gateway.test_delivery -*-
"""Delivery workers: claim due deliveries, hand them to their target, record the outcome.

``mailbox`` deliveries are local, and the intake files new documents itself in the transaction that
accepts them (D36); what reaches a worker was planned later (recovery, an operator's retry). Filing
the item and completing the delivery happen in one transaction, so a crash can repeat the attempt but
never file a message twice (and the mailbox's unique key would refuse it anyway). Push targets (AS2,
SFTP, email — registered by their door issues through :class:`PushTarget`) run outside any
transaction; a crash after a push and before recording it repeats the push with the same Message-ID,
which receivers deduplicate.

Failed attempts wait ``backoff * 2^(attempt-1)`` seconds (capped at six hours), with "equal jitter"
(half fixed, half random) so a burst of failures does not come back in lockstep; after
``max_attempts`` the delivery is dead-lettered until ``postroom message retry``. Every transition is
in the audit trail.
"""

import random
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.database_service import DatabaseService
from gateway.filing import ACTOR, OnFiled, file_in_mailbox
from gateway.rounds import RoundsService
from partners.directory import Partner, PartnerDirectory
from protocols.envelope import DeliveryFailed, Pushed
from spool import audit, crashpoints, records
from spool.database import reading
from spool.records import Delivery, Message

_log = Logger()


class PushTarget(Protocol):
    """How a door's outbound client delivers: fire on success (with a :class:`Pushed`, or None when there
    is nothing to tell), fail with :class:`DeliveryFailed`."""

    def push(self, message: Message, delivery: Delivery, recipient: Partner) -> Deferred:
        """Deliver ``message`` to ``recipient``."""


def thd_claim(engine: Engine, now: datetime, worker: str, limit: int, lease: timedelta) -> list[Delivery]:
    """Claim due deliveries in their own short transaction."""
    with engine.begin() as conn:
        return records.claim_due(conn, now, worker, limit, lease)


def thd_file_in_mailboxes(engine: Engine, batch: list[Delivery], worker: str, now: datetime,
                          on_filed: OnFiled | None = None) -> int:
    """File each claimed mailbox delivery and complete it, all in one transaction; how many were filed.

    The intake files new documents itself; what comes here was planned later (recovery re-routing a
    message recorded without deliveries, an operator's retry)."""
    filed = 0
    with engine.begin() as conn:
        for delivery in batch:
            # the claim first: a worker whose lease ran out files nothing (the new holder does)
            if records.complete(conn, delivery, worker, now):
                filed += file_in_mailbox(conn, delivery.id, delivery.message_id, delivery.recipient_id, now,
                                         on_filed)
        crashpoints.reached("after-deliver")
    return filed


def thd_record_push(engine: Engine, delivery: Delivery, worker: str, now: datetime, error: str | None,
                    retry_at: datetime | None, pushed: Pushed | None = None) -> None:
    """Record one push attempt's outcome: done (or awaiting its receipt), waiting for ``retry_at``, or dead
    when that is ``None``."""
    with engine.begin() as conn:
        if error is None:
            details = {"delivery": delivery.id, "target": delivery.target, "recipient": delivery.recipient_id}
            if pushed is not None:
                details.update(remote_id=pushed.remote_id, detail=pushed.detail)
            if pushed is not None and pushed.awaiting_until is not None:
                if records.await_receipt(conn, delivery, worker, now, pushed.remote_id, pushed.mic,
                                         pushed.awaiting_until):
                    audit.append(conn, ACTOR, "delivery.awaiting-receipt", now, message_id=delivery.message_id,
                                 details={**details, "until": pushed.awaiting_until.isoformat()})
            elif records.complete(conn, delivery, worker, now):
                audit.append(conn, ACTOR, "delivery.done", now, message_id=delivery.message_id, details=details)
            return
        if records.fail(conn, delivery, worker, now, error, retry_at):
            event = "delivery.retrying" if retry_at is not None else "delivery.dead"
            audit.append(conn, ACTOR, event, now, message_id=delivery.message_id, details={
                "delivery": delivery.id, "target": delivery.target, "recipient": delivery.recipient_id,
                "attempt": delivery.attempts + 1, "error": error,
                "retry_at": retry_at.isoformat() if retry_at else None})


def thd_note_push(engine: Engine, delivery: Delivery, worker: str, remote_id: str, mic: str | None) -> bool:
    """Record the ID and MIC a push goes out under, before it goes."""
    with engine.begin() as conn:
        return records.note_push(conn, delivery, worker, remote_id, mic)


def thd_receipt_arrived(engine: Engine, recipient_id: str, original_id: str, disposition: str, status: str,
                        mic: str | None, now: datetime, retry_at: Callable[[int], datetime | None]) -> str:
    """Settle the delivery an async receipt answers; what was done, in words (for the log and the door)."""
    bare = original_id.strip().strip("<>").strip()
    with engine.begin() as conn:
        delivery = records.awaited(conn, recipient_id, f"<{bare}>") or records.awaited(conn, recipient_id, bare)
        if delivery is None:
            return f"no delivery to {recipient_id} awaits a receipt for {original_id}"
        error = None
        if status == "failed":
            error = f"{recipient_id} refused the message: {disposition}"
        elif delivery.mic is not None and mic != delivery.mic:
            error = f"the receipt returns MIC {mic}, we sent {delivery.mic}: what they received is not what we sent"
        when = retry_at(delivery.attempts) if error else None
        if not records.settle_awaited(conn, delivery, now, error, when):
            return f"the delivery for {original_id} was settled already"
        event = "delivery.done" if error is None else ("delivery.retrying" if when else "delivery.dead")
        audit.append(conn, ACTOR, event, now, message_id=delivery.message_id, details={
            "delivery": delivery.id, "target": delivery.target, "recipient": recipient_id,
            "remote_id": delivery.remote_id, "receipt": disposition, "error": error})
        return f"delivery {delivery.id}: {event.removeprefix('delivery.')}"


def thd_postpone(engine: Engine, delivery: Delivery, worker: str, now: datetime, reason: str,
                 retry_at: datetime) -> None:
    """Give a delivery back without counting an attempt (no push client for its target yet)."""
    with engine.begin() as conn:
        records.postpone(conn, delivery, worker, now, reason, retry_at)


def thd_message(engine: Engine, message_id: str) -> Message:
    """Read one message."""
    with reading(engine) as conn:
        return records.get_message(conn, message_id)


class DeliveryService(RoundsService):
    """Runs delivery rounds: now when woken (a message was accepted), else every ``interval`` seconds."""

    name = "delivery"
    _log = Logger()

    def __init__(self, db: DatabaseService, clock, now: Callable[[], datetime],
                 directory: Callable[[], PartnerDirectory], targets: Mapping[str, PushTarget], *,
                 ready: Callable[[], Deferred] = lambda: succeed(None),
                 max_attempts: int, backoff: float, interval: float = 5.0, batch: int = 64,
                 lease: timedelta = timedelta(minutes=10), worker: str | None = None,
                 rng: random.Random | None = None,
                 on_filed: OnFiled | None = None,
                 after_filing: Callable[[], None] = lambda: None):
        super().__init__(clock, interval, ready, now=now, max_attempts=max_attempts, backoff=backoff, rng=rng)
        self.worker = worker or socket.gethostname()
        self._db = db
        self._directory = directory
        self._targets = dict(targets)
        self._on_filed = on_filed
        self._after_filing = after_filing
        self._batch = batch
        self._lease = lease

    async def _round(self) -> None:
        while self.running:
            claimed = await self._db.run(thd_claim, self._now(), self.worker, self._batch, self._lease)
            if not claimed:
                return
            crashpoints.reached("after-claim")
            local = [d for d in claimed if d.target == "mailbox"]
            if local and await self._db.run(thd_file_in_mailboxes, local, self.worker, self._now(), self._on_filed):
                self._after_filing()
            for delivery in claimed:
                if delivery.target != "mailbox":
                    await self._push(delivery)
            if len(claimed) < self._batch:
                return

    async def _push(self, delivery: Delivery) -> None:
        target = self._targets.get(delivery.target)
        recipient = self._directory().get(delivery.recipient_id)
        error, permanent, pushed = None, False, None
        if target is None:  # nothing was attempted: wait without using up the recipient's attempts
            await self._postpone(delivery, f"this gateway has no {delivery.target} push client yet; the delivery waits")
            return
        if recipient is None:
            error, permanent = f"partner {delivery.recipient_id} no longer exists", True
        else:
            try:
                message = await self._db.run(thd_message, delivery.message_id)
            except Exception as e:  # our side failed, not the recipient: no attempt is used up
                await self._postpone(delivery, f"cannot load the message: {e}")
                return
            try:
                pushed = await target.push(message, delivery, recipient)
            except DeliveryFailed as e:
                error, permanent = str(e), e.permanent
            except Exception as e:  # a bug in a target must not stop the queue; it is recorded and retried
                self._log.failure("push of delivery {id} failed", id=delivery.id)
                error = f"internal error: {e}"
        retry_at = self._retry_at(delivery.attempts + 1) if error is not None and not permanent else None
        await self._db.run(thd_record_push, delivery, self.worker, self._now(), error, retry_at, pushed)

    def note_push(self, delivery: Delivery, remote_id: str, mic: str | None) -> Deferred:
        """A push target is about to send ``delivery`` as ``remote_id``: remember it first (see
        :func:`spool.records.note_push`)."""
        return self._db.run(thd_note_push, delivery, self.worker, remote_id, mic)

    def receipt_arrived(self, recipient_id: str, original_id: str, disposition: str, status: str,
                        mic: str | None) -> Deferred:
        """An async receipt (MDN) for one of our pushes arrived: settle the delivery that waits for it.

        ``status`` is ``processed``, ``warning`` or ``failed``; fires with what was done, in words.
        """
        d = self._db.run(thd_receipt_arrived, recipient_id, original_id, disposition, status, mic, self._now(),
                         self._retry_at)
        return d.addCallback(lambda done: (self.wake(), done)[1])

    def _postpone(self, delivery: Delivery, reason: str) -> Deferred:
        now = self._now()
        return self._db.run(thd_postpone, delivery, self.worker, now, reason, now + timedelta(seconds=self._backoff))
