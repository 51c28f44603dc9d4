# -*- test-case-name: tests.e2e.test_as2_async -*-
"""The receipt courier: sends receipts that travel on their own (AS2 async MDNs), with retries.

A receipt stored ``pending`` with a ``dispatch`` (where and how it goes) was written in the same
transaction as the message it answers, so it survives a crash; the courier claims due ones with a
lease (no two nodes send the same receipt at once), sends the exact stored bytes, and records the
outcome: ``sent``, due again later (the delivery queue's backoff), or ``failed`` after the last
attempt. Every outcome is in the audit trail.
"""

import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.engine import Engine
from twisted.internet.defer import Deferred, succeed

from gateway.database_service import DatabaseService
from gateway.rounds import RoundsService
from spool import audit, records
from spool.records import StoredReceipt

ACTOR = "gateway"


class ReceiptSender(Protocol):
    """How one channel sends a receipt: fire on success, fail with any exception saying why."""

    def send(self, receipt: StoredReceipt) -> Deferred:
        """Send ``receipt`` to ``receipt.dispatch``."""


def thd_due(engine: Engine, now: datetime, limit: int, lease: timedelta) -> list[StoredReceipt]:
    """Claim due receipts."""
    with engine.begin() as conn:
        return records.due_receipts(conn, now, limit, lease)


def thd_record(engine: Engine, receipt: StoredReceipt, now: datetime, error: str | None,
               retry_at: datetime | None) -> None:
    """Record one attempt and its audit event."""
    with engine.begin() as conn:
        records.receipt_sent(conn, receipt, now, error, retry_at)
        event = "receipt.sent" if error is None else ("receipt.retrying" if retry_at else "receipt.failed")
        dispatch = receipt.dispatch or {}
        audit.append(conn, ACTOR, event, now, message_id=receipt.message_id, details={
            "receipt": receipt.id, "partner": receipt.partner_id, "kind": receipt.kind,
            "to": dispatch.get("url") or dispatch.get("to"), "attempt": receipt.attempts + 1, "error": error})


class ReceiptCourier(RoundsService):
    """Sends pending receipts through the sender registered for their ``dispatch["channel"]``."""

    name = "receipts"

    def __init__(self, db: DatabaseService, clock, now: Callable[[], datetime], senders: Mapping[str, ReceiptSender],
                 *, ready: Callable[[], Deferred] = lambda: succeed(None), max_attempts: int, backoff: float,
                 interval: float = 5.0, batch: int = 32, lease: timedelta = timedelta(minutes=5),
                 rng: random.Random | None = None):
        super().__init__(clock, interval, ready, now=now, max_attempts=max_attempts, backoff=backoff, rng=rng)
        self._db = db
        self._senders = dict(senders)
        self._batch = batch
        self._lease = lease

    async def _round(self) -> None:
        while self.running:
            due = await self._db.run(thd_due, self._now(), self._batch, self._lease)
            for receipt in due:
                await self._send(receipt)
            if len(due) < self._batch:
                return

    async def _send(self, receipt: StoredReceipt) -> None:
        channel = (receipt.dispatch or {}).get("channel", "")
        sender = self._senders.get(channel)
        error = None
        if sender is None:
            error = f"no sender for {channel!r} receipts"
        else:
            try:
                await sender.send(receipt)
            except Exception as e:  # any failure is one failed attempt, recorded and retried
                error = str(e) or type(e).__name__
        attempt = receipt.attempts + 1
        retry_at = self._retry_at(attempt) if error is not None else None
        if error is not None:
            self._log.warn("receipt {id} to {partner} not sent (attempt {n}): {error}", id=receipt.id,
                           partner=receipt.partner_id, n=attempt, error=error)
        await self._db.run(thd_record, receipt, self._now(), error, retry_at)
