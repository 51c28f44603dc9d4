"""Tests for :mod:`gateway.recovery`: what start-up recovery cleans, re-queues, re-plans and marks corrupt.

A real blob store in the test's directory and the ``engine`` fixture's SQLite, with messages made the
way the intake makes them (blob published, then rows); damage is done to the files directly.
:class:`~gateway.recovery.RecoveryService` runs on a real one-thread
:class:`~gateway.database_service.DatabaseService`.
"""

import errno
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.recovery import RecoveryReport, RecoveryService, thd_recover
from partners.directory import Partner, PartnerDirectory
from spool import audit, records
from spool.blobs import BlobStore
from spool.fs import OSFileSystem
from tests.spool.stored import UnreadableBlob, finish_deliveries, store_message
from tests.spool.test_blobs import stage, tmp_names

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
RESTART = T0 + timedelta(hours=1)
LEASE = timedelta(minutes=10)

GLOBEX = Partner("globex", "Globex", True)
INITECH = Partner("initech", "Initech", True, deliver="as2", as2_url="https://as2.initech.example/",
                  as2_ids=("INITECH",))
DIRECTORY = PartnerDirectory.build(1, [GLOBEX, INITECH])


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    """An empty blob store."""
    return BlobStore(tmp_path / "spool")


def accept(engine, blobs: BlobStore, data: bytes, at: datetime = T0, **fields) -> records.Message:
    """Publish ``data`` and record it as an accepted message for globex's mailbox."""
    with engine.begin() as conn:
        return store_message(conn, blobs, data, at, **fields)


def recover(engine, blobs: BlobStore, worker: str = "node-1") -> RecoveryReport:
    """Run every recovery step as ``worker`` at RESTART."""
    return thd_recover(engine, blobs, DIRECTORY, worker, RESTART)


def deliveries(engine, msg: records.Message) -> list[records.Delivery]:
    """A message's deliveries."""
    with engine.connect() as conn:
        return records.deliveries_of(conn, msg.id)


def state(engine, msg: records.Message) -> str:
    """A message's state."""
    with engine.connect() as conn:
        return records.get_message(conn, msg.id).state


def trail(engine, event: str) -> list[tuple[str, str, dict]]:
    """(message ID, actor, details) of every audit event named ``event``."""
    with engine.connect() as conn:
        return [(e.message_id, e.actor, e.details) for e in audit.events(conn) if e.event == event]


# ---------------------------------------------------------------------------------------------------------------
# thd_recover
# ---------------------------------------------------------------------------------------------------------------

def test_an_undamaged_spool_needs_nothing(engine, blobs):
    """Nothing in tmp/, nothing claimed, nothing damaged: an empty report, the message untouched."""
    msg = accept(engine, blobs, b"<Invoice/>")
    assert recover(engine, blobs) == RecoveryReport(0, 0, (), ())
    assert state(engine, msg) == "accepted"


def test_temporary_files_are_removed_and_published_blobs_kept(engine, blobs):
    """A staged-but-unpublished payload and a stray file in tmp/ go; the published blob stays."""
    msg = accept(engine, blobs, b"<Invoice/>")
    stage(blobs, b"never published")
    (blobs.root / "tmp" / "left-by-a-crash").write_bytes(b"half")
    assert recover(engine, blobs).temp_files_removed == 2
    assert tmp_names(blobs) == []
    assert blobs.verify(msg.sha256)


def test_this_workers_claims_are_released_and_another_workers_are_not(engine, blobs):
    """Deliveries node-1 had claimed are pending and due at the restart; node-2's claim is left to its lease."""
    mine = accept(engine, blobs, b"mine")
    with engine.begin() as conn:
        records.claim_due(conn, T0, "node-1", 10, LEASE)
    theirs = accept(engine, blobs, b"theirs", T0 + timedelta(seconds=1))
    with engine.begin() as conn:
        records.claim_due(conn, T0 + timedelta(seconds=1), "node-2", 10, LEASE)
    assert recover(engine, blobs, worker="node-1").claims_released == 1
    [released] = deliveries(engine, mine)
    assert (released.state, released.claimed_by, released.next_attempt_at) == ("pending", None, RESTART)
    assert [(d.state, d.claimed_by) for d in deliveries(engine, theirs)] == [("claimed", "node-2")]


def test_accepted_messages_without_deliveries_are_planned_again(engine, blobs):
    """Each is routed to its recorded recipient's targets (mailbox only if it left the directory), with an audit."""
    pushed = accept(engine, blobs, b"for initech", recipient_id="initech", targets=())
    orphan = accept(engine, blobs, b"for a partner since removed", T0 + timedelta(seconds=1), recipient_id="gone",
                    targets=())
    finished = accept(engine, blobs, b"delivered, deliveries purged", T0 + timedelta(seconds=2), targets=(),
                      state="delivered")
    report = recover(engine, blobs)
    assert report.rerouted == (pushed.id, orphan.id)
    assert [(d.recipient_id, d.target, d.state, d.next_attempt_at) for d in deliveries(engine, pushed)] == [
        ("initech", "mailbox", "pending", RESTART), ("initech", "as2", "pending", RESTART)]
    assert [(d.recipient_id, d.target) for d in deliveries(engine, orphan)] == [("gone", "mailbox")]
    assert deliveries(engine, finished) == []
    assert trail(engine, "message.rerouted") == [
        (pushed.id, "gateway", {"recipient": "initech", "deliveries": ["mailbox", "as2"]}),
        (orphan.id, "gateway", {"recipient": "gone", "deliveries": ["mailbox"]})]


def test_in_flight_messages_with_missing_or_changed_blobs_are_marked_corrupt(engine, blobs):
    """A deleted blob is 'missing', an overwritten one 'changed'; both messages are corrupt and audited."""
    intact = accept(engine, blobs, b"intact")
    missing = accept(engine, blobs, b"deleted", T0 + timedelta(seconds=1))
    changed = accept(engine, blobs, b"rotted", T0 + timedelta(seconds=2))
    blobs.path(missing.sha256).unlink()
    rotted = blobs.path(changed.sha256)
    rotted.chmod(0o600)
    rotted.write_bytes(b"r0tted")
    report = recover(engine, blobs)
    assert report.corrupt == (missing.id, changed.id)
    assert [state(engine, m) for m in (intact, missing, changed)] == ["accepted", "corrupt", "corrupt"]
    assert trail(engine, "message.corrupt") == [
        (missing.id, "gateway", {"sha256": missing.sha256, "problem": "missing"}),
        (changed.id, "gateway", {"sha256": changed.sha256, "problem": "changed"})]
    assert blobs.exists(changed.sha256)  # evidence is never deleted


def test_an_unreadable_blob_is_not_marked_and_does_not_stop_recovery(engine, blobs, tmp_path):
    """EIO reading a blob may pass: the message stays accepted, the others are still checked."""
    unreadable = accept(engine, blobs, b"on a bad sector")
    missing = accept(engine, blobs, b"deleted", T0 + timedelta(seconds=1))
    blobs.path(missing.sha256).unlink()
    flaky = BlobStore(tmp_path / "spool", fs=UnreadableBlob(unreadable.sha256))
    assert thd_recover(engine, flaky, DIRECTORY, "node-1", RESTART).corrupt == (missing.id,)
    assert (state(engine, unreadable), state(engine, missing)) == ("accepted", "corrupt")


def test_delivered_messages_are_not_rehashed(engine, blobs):
    """Recovery reads only the blobs of messages still in flight; a delivered one's damage is for `spool check`."""
    done = accept(engine, blobs, b"delivered long ago")
    with engine.begin() as conn:
        finish_deliveries(conn, done, T0)
    blobs.path(done.sha256).unlink()
    assert recover(engine, blobs).corrupt == ()
    assert state(engine, done) == "delivered"


def test_recovery_twice_is_a_no_op_the_second_time(engine, blobs):
    """Everything recovery does is done once: a second run finds nothing left to do."""
    lost = accept(engine, blobs, b"lost")
    accept(engine, blobs, b"bare", T0 + timedelta(seconds=1), recipient_id="initech", targets=())
    with engine.begin() as conn:
        records.claim_due(conn, T0, "node-1", 1, LEASE)
    blobs.path(lost.sha256).unlink()
    stage(blobs, b"tmp")
    first = recover(engine, blobs)
    assert (first.temp_files_removed, first.claims_released, len(first.rerouted), len(first.corrupt)) == (1, 1, 1, 1)
    assert recover(engine, blobs) == RecoveryReport(0, 0, (), ())
    assert len(trail(engine, "message.corrupt")) == 1


# ---------------------------------------------------------------------------------------------------------------
# RecoveryService
# ---------------------------------------------------------------------------------------------------------------

class BrokenListdir(OSFileSystem):
    """The real filesystem, except that listing a directory fails with EIO (tmp/ cannot be cleaned)."""

    def listdir(self, path: Path) -> list[str]:
        raise OSError(errno.EIO, "Input/output error", str(path))


@pytest.fixture
def make_recovery(db):
    """Build recovery services for node-1 at RESTART; stopped after the test."""
    made = []

    def make(blobs: BlobStore, directory_ready, directory) -> RecoveryService:
        service = RecoveryService(db, blobs, directory_ready, directory, "node-1", lambda: RESTART)
        made.append(service)
        return service

    yield make
    for service in made:
        if service.running:
            service.stopService()


@pytest_twisted.ensureDeferred
async def test_recovery_waits_for_the_directory_and_uses_the_loaded_snapshot(make_recovery, engine, blobs):
    """Nothing happens before the directory is ready; then recovery routes with the snapshot just loaded."""
    bare = accept(engine, blobs, b"for initech", recipient_id="initech", targets=())
    stage(blobs, b"half-received")
    loaded: defer.Deferred = defer.Deferred()
    current = {"snapshot": PartnerDirectory.empty()}
    service = make_recovery(blobs, lambda: loaded, lambda: current["snapshot"])
    waiting = service.when_done()
    service.startService()
    assert not waiting.called and len(tmp_names(blobs)) == 1
    current["snapshot"] = DIRECTORY
    loaded.callback(None)
    report = await waiting
    assert (report.temp_files_removed, report.rerouted) == (1, (bare.id,))
    assert [d.target for d in deliveries(engine, bare)] == ["mailbox", "as2"]
    assert service.report == report
    assert (await service.when_done()) is report  # later callers are answered at once


@pytest_twisted.ensureDeferred
async def test_when_done_fails_if_recovery_raises(make_recovery, engine, tmp_path):
    """A spool that cannot be cleaned fails every waiter, before and after, so nothing opens on a bad state."""
    BlobStore(tmp_path / "spool")
    broken = BlobStore(tmp_path / "spool", fs=BrokenListdir())
    service = make_recovery(broken, lambda: defer.succeed(None), lambda: DIRECTORY)
    early = service.when_done()
    service.startService()
    with pytest.raises(OSError, match="Input/output error"):
        await early
    with pytest.raises(OSError, match="Input/output error"):
        await service.when_done()
    assert service.report is None


@pytest_twisted.ensureDeferred
async def test_when_done_fails_if_the_directory_never_loads(make_recovery, blobs):
    """A directory_ready that fails means no recovery ran, and the doors must not open."""
    service = make_recovery(blobs, lambda: defer.fail(RuntimeError("database is unavailable")), lambda: DIRECTORY)
    service.startService()
    with pytest.raises(RuntimeError, match="database is unavailable"):
        await service.when_done()
