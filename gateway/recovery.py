# -*- test-case-name: tests.gateway.test_recovery -*-
"""Start-up recovery, before any door listens or any delivery runs (STYLE §2.4 step 6).

What a crash can leave behind, and what we do about it:

* files in ``tmp/``: never published, nobody was told they were accepted → removed;
* deliveries this node had claimed: the attempt may or may not have happened → back to ``pending``,
  due now (mailbox filing is idempotent; a push is repeated with the same Message-ID);
* accepted messages without planned deliveries (written by an older version, or deliveries removed
  by hand) → routed again to their recorded recipient;
* in-flight messages whose blob is missing or no longer matches its hash → ``corrupt``, reported and
  audited, never deleted. Delivered messages are not re-hashed at every start (that would read the
  whole spool); ``postroom spool check`` does that.
"""

from datetime import datetime

import attrs
from sqlalchemy import select
from sqlalchemy.engine import Engine
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.database_service import DatabaseService
from gateway.milestone import Milestone
from gateway.router import targets_for
from partners.directory import PartnerDirectory
from spool import audit, records
from spool.blobs import BlobStore
from spool.check import Damage, mark_corrupt, problem_of
from spool.schema import messages

ACTOR = "gateway"


@attrs.frozen
class RecoveryReport:
    """What recovery found and did."""

    temp_files_removed: int
    claims_released: int
    rerouted: tuple[str, ...]
    corrupt: tuple[str, ...]


def thd_recover(engine: Engine, store: BlobStore, directory: PartnerDirectory, worker: str,
                now: datetime, pushable: frozenset[str] | None = None) -> RecoveryReport:
    """Run every recovery step; one transaction for the database steps."""
    removed = store.clean_tmp()
    with engine.begin() as conn:
        released = records.release_claims(conn, worker, now)
        rerouted = []
        for message in records.messages_without_deliveries(conn):
            recipient = directory.get(message.recipient_id)
            targets = (targets_for(recipient, pushable) if recipient is not None
                       else ((message.recipient_id, "mailbox"),))
            records.add_deliveries(conn, message.id, targets, now)
            audit.append(conn, ACTOR, "message.rerouted", now, message_id=message.id,
                         details={"recipient": message.recipient_id, "deliveries": [t for _, t in targets]})
            rerouted.append(message.id)
        corrupt = []
        in_flight = conn.execute(select(messages.c.id, messages.c.sha256).where(messages.c.state == "accepted"))
        for message_id, sha in list(in_flight):
            damage = Damage("message", message_id, sha, problem_of(store, sha) or "")
            if damage.corrupt and mark_corrupt(conn, damage, now, ACTOR):
                corrupt.append(message_id)
    return RecoveryReport(removed, released, tuple(rerouted), tuple(corrupt))


class RecoveryService(Service):
    """Runs :func:`thd_recover` once the directory is loaded; :meth:`when_done` gates doors and delivery."""

    name = "recovery"
    _log = Logger()

    def __init__(self, db: DatabaseService, store: BlobStore, directory_ready, directory, worker: str, now,
                 pushable: frozenset[str] | None = None):
        self._db = db
        self._store = store
        self._directory_ready = directory_ready
        self._directory = directory
        self._worker = worker
        self._now = now
        self._pushable = pushable
        self._done = Milestone()
        self.report: RecoveryReport | None = None

    def startService(self) -> None:
        """Recover in the background; waiters are released when it is done."""
        super().startService()
        Deferred.fromCoroutine(self._recover()).addErrback(self._done.fail)

    async def _recover(self) -> None:
        await self._directory_ready()
        report = await self._db.run(thd_recover, self._store, self._directory(), self._worker, self._now(),
                                    self._pushable)
        self.report = report
        self._log.info("recovery: {tmp} temporary files removed, {claims} deliveries re-queued, {rerouted} "
                       "messages re-routed, {corrupt} corrupt", tmp=report.temp_files_removed,
                       claims=report.claims_released, rerouted=len(report.rerouted), corrupt=len(report.corrupt))
        for message_id in report.corrupt:
            self._log.error("message {id} is corrupt: its stored bytes are missing or changed; restore the spool "
                            "from backup and run `postroom spool check`", id=message_id)
        self._done.reach(report)

    def when_done(self) -> Deferred:
        """Fires with the :class:`RecoveryReport` once recovery has finished (fails if it could not run)."""
        return self._done.wait()
