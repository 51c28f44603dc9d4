# -*- test-case-name: tests.gateway.test_delivery -*-
"""Delivery workers: claim due deliveries, hand them to their target, record the outcome.

``mailbox`` deliveries are local: filing the item and completing the delivery happen in one
transaction, so a crash can repeat the attempt but never file a message twice (and the mailbox's
unique key would refuse it anyway). Push targets (AS2, SFTP, email — registered by their door
issues through :class:`PushTarget`) run outside any transaction; a crash after a push and before
recording it repeats the push with the same Message-ID, which receivers deduplicate.

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
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.database_service import DatabaseService
from partners.directory import Partner, PartnerDirectory
from spool import audit, crashpoints, records
from spool.database import reading
from spool.records import Delivery, Message

ACTOR = "gateway"
MAX_DELAY = timedelta(hours=6)


class DeliveryFailed(Exception):
    """A push did not succeed; ``permanent`` skips the remaining attempts (e.g. the peer refused the content)."""

    def __init__(self, reason: str, permanent: bool = False):
        super().__init__(reason)
        self.permanent = permanent


class PushTarget(Protocol):
    """How a door's outbound client delivers: fire on success, fail with :class:`DeliveryFailed`."""

    def push(self, message: Message, delivery: Delivery, recipient: Partner) -> Deferred:
        """Deliver ``message`` to ``recipient``."""


def retry_delay(attempt: int, backoff: float, rng: random.Random) -> timedelta:
    """The wait after failed attempt number ``attempt`` (1-based): equal jitter on a capped exponential."""
    ceiling = min(backoff * 2 ** (attempt - 1), MAX_DELAY.total_seconds())
    return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))


def thd_claim(engine: Engine, now: datetime, worker: str, limit: int, lease: timedelta) -> list[Delivery]:
    """Claim due deliveries in their own short transaction."""
    with engine.begin() as conn:
        return records.claim_due(conn, now, worker, limit, lease)


def thd_file_in_mailboxes(engine: Engine, batch: list[Delivery], worker: str, now: datetime) -> int:
    """File each claimed mailbox delivery and complete it, all in one transaction; how many were filed."""
    filed = 0
    with engine.begin() as conn:
        for delivery in batch:
            # the claim first: a worker whose lease ran out files nothing (the new holder does)
            if records.complete(conn, delivery, worker, now):
                filed += records.put_in_mailbox(conn, delivery.message_id, delivery.recipient_id, now)
                audit.append(conn, ACTOR, "delivery.done", now, message_id=delivery.message_id, details={
                    "delivery": delivery.id, "target": "mailbox", "recipient": delivery.recipient_id})
        crashpoints.reached("after-deliver")
    return filed


def thd_record_push(engine: Engine, delivery: Delivery, worker: str, now: datetime, error: str | None,
                    retry_at: datetime | None) -> None:
    """Record one push attempt's outcome: done, waiting for ``retry_at``, or dead when that is ``None``."""
    with engine.begin() as conn:
        if error is None:
            if records.complete(conn, delivery, worker, now):
                audit.append(conn, ACTOR, "delivery.done", now, message_id=delivery.message_id, details={
                    "delivery": delivery.id, "target": delivery.target, "recipient": delivery.recipient_id})
            return
        if records.fail(conn, delivery, worker, now, error, retry_at):
            event = "delivery.retrying" if retry_at is not None else "delivery.dead"
            audit.append(conn, ACTOR, event, now, message_id=delivery.message_id, details={
                "delivery": delivery.id, "target": delivery.target, "recipient": delivery.recipient_id,
                "attempt": delivery.attempts + 1, "error": error,
                "retry_at": retry_at.isoformat() if retry_at else None})


def thd_postpone(engine: Engine, delivery: Delivery, worker: str, now: datetime, reason: str,
                 retry_at: datetime) -> None:
    """Give a delivery back without counting an attempt (no push client for its target yet)."""
    with engine.begin() as conn:
        records.postpone(conn, delivery, worker, now, reason, retry_at)


def thd_message(engine: Engine, message_id: str) -> Message:
    """Read one message."""
    with reading(engine) as conn:
        return records.get_message(conn, message_id)


class DeliveryService(Service):
    """Runs delivery rounds: now when woken (a message was accepted), else every ``interval`` seconds."""

    name = "delivery"
    _log = Logger()

    def __init__(self, db: DatabaseService, clock, now: Callable[[], datetime],
                 directory: Callable[[], PartnerDirectory], targets: Mapping[str, PushTarget], *,
                 ready: Callable[[], Deferred] = lambda: succeed(None),
                 max_attempts: int, backoff: float, interval: float = 5.0, batch: int = 64,
                 lease: timedelta = timedelta(minutes=10), worker: str | None = None,
                 rng: random.Random | None = None):
        self.worker = worker or socket.gethostname()
        self._db = db
        self._now = now
        self._directory = directory
        self._targets = dict(targets)
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._batch = batch
        self._lease = lease
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._loop = LoopingCall(self.wake)
        self._loop.clock = clock
        self._interval = interval
        self._ready = ready
        self._running: Deferred | None = None
        self._again = False

    def startService(self) -> None:
        """Once ``ready`` fires (recovery is done), poll every interval, starting with a round now."""
        super().startService()
        self._ready().addCallback(self._begin).addErrback(lambda f: self._log.failure("delivery cannot start", f))

    def _begin(self, _) -> None:
        if self.running and not self._loop.running:
            self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred:
        """Stop polling and wait for the round in flight."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._again = False
        return self._running if self._running is not None else succeed(None)

    def wake(self) -> None:
        """Run a round now, or right after the one in flight (rounds never overlap)."""
        if not self.running:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = Deferred.fromCoroutine(self._round())
        self._running.addErrback(lambda f: self._log.failure("delivery round failed", f))
        self._running.addBoth(self._finished)

    def _finished(self, _) -> None:
        self._running = None
        if self._again:
            self._again = False
            self.wake()

    async def _round(self) -> None:
        while self.running:
            claimed = await self._db.run(thd_claim, self._now(), self.worker, self._batch, self._lease)
            if not claimed:
                return
            crashpoints.reached("after-claim")
            local = [d for d in claimed if d.target == "mailbox"]
            if local:
                await self._db.run(thd_file_in_mailboxes, local, self.worker, self._now())
            for delivery in claimed:
                if delivery.target != "mailbox":
                    await self._push(delivery)
            if len(claimed) < self._batch:
                return

    async def _push(self, delivery: Delivery) -> None:
        target = self._targets.get(delivery.target)
        recipient = self._directory().get(delivery.recipient_id)
        error, permanent = None, False
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
                await target.push(message, delivery, recipient)
            except DeliveryFailed as e:
                error, permanent = str(e), e.permanent
            except Exception as e:  # a bug in a target must not stop the queue; it is recorded and retried
                self._log.failure("push of delivery {id} failed", id=delivery.id)
                error = f"internal error: {e}"
        retry_at = None
        if error is not None and not permanent and delivery.attempts + 1 < self._max_attempts:
            retry_at = self._now() + retry_delay(delivery.attempts + 1, self._backoff, self._rng)
        await self._db.run(thd_record_push, delivery, self.worker, self._now(), error, retry_at)

    def _postpone(self, delivery: Delivery, reason: str) -> Deferred:
        now = self._now()
        return self._db.run(thd_postpone, delivery, self.worker, now, reason, now + timedelta(seconds=self._backoff))
