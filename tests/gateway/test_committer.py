"""Tests for :mod:`gateway.committer`: natural batching on one writer thread, per-commit outcomes, shutdown.

Everything is real: the reactor, the writer thread, a blob store in the test's directory and SQLite.
Commits are submitted in one reactor turn, so the batches they form are deterministic: the first runs
alone at once, the rest queue behind it.
"""

import threading
from datetime import UTC, datetime

import pytest
import pytest_twisted
from sqlalchemy import select
from twisted.internet import defer

from gateway.committer import GroupCommitter
from spool import records
from spool.blobs import BlobStore, SpoolWriteError
from spool.schema import messages
from tests.spool.test_blobs import FailingFileSystem, stage

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Refused(Exception):
    """What a record raises to refuse its own commit."""


def record_message(number: int, *, sha: str = "ab" * 32, refuse: bool = False):
    """A ``record`` that inserts message ``number`` and returns its value (or raises after the insert)."""
    def record(conn):
        msg = records.Message(id=records.new_id(T0), received_at=T0, sender_id="acme", recipient_id="globex",
                              channel="https", sha256=sha, size=1, kind="opaque", signed=False, route="door",
                              state="accepted", updated_at=T0, number=f"INV-{number}")
        records.insert_message(conn, msg, [("globex", "mailbox")])
        if refuse:
            raise Refused(f"commit {number} refused")
        return f"value-{number}", threading.current_thread().name
    return record


def numbers(engine) -> set[str]:
    """The document numbers of every recorded message."""
    with engine.connect() as conn:
        return set(conn.scalars(select(messages.c.number)))


def commit_threads() -> list[str]:
    """Live threads of the committer's pool."""
    return [t.name for t in threading.enumerate() if "postroom-commit" in t.name]


@pytest.fixture
def make_committer(tmp_path, engine):
    """Build and start a committer over SQLite (optionally over a given filesystem); stopped after the test."""
    from twisted.internet import reactor

    started = []

    def make(max_batch: int = 8, fs=None, on_batch=lambda size: None) -> GroupCommitter:
        BlobStore(tmp_path / "spool")  # the layout exists before any fault is injected
        committer = GroupCommitter(reactor, BlobStore(tmp_path / "spool", fs=fs), engine, max_batch=max_batch,
                                   on_batch=on_batch)
        committer.startService()
        started.append(committer)
        return committer

    yield make
    for committer in started:
        if committer.running:
            committer.stopService()


def test_max_batch_must_be_positive(tmp_path, engine):
    """A committer that could never take a commit is refused at construction."""
    from twisted.internet import reactor

    with pytest.raises(ValueError, match="max_batch"):
        GroupCommitter(reactor, BlobStore(tmp_path / "spool"), engine, max_batch=0)


@pytest_twisted.ensureDeferred
async def test_concurrent_commits_form_batches_and_each_gets_its_own_value(make_committer, engine):
    """20 commits in one turn with max_batch=8: batches [1, 8, 8, 3], each Deferred fires with its own value."""
    sizes = []
    committer = make_committer(max_batch=8, on_batch=sizes.append)
    results = await defer.gatherResults([committer.commit((), record_message(i)) for i in range(20)])
    assert list(committer.batch_sizes) == sizes == [1, 8, 8, 3]
    assert [value for value, _ in results] == [f"value-{i}" for i in range(20)]
    threads = {thread for _, thread in results}
    assert len(threads) == 1 and threads != {threading.current_thread().name}  # one writer, not the reactor
    assert numbers(engine) == {f"INV-{i}" for i in range(20)}


@pytest_twisted.ensureDeferred
async def test_a_lone_commit_runs_at_once(make_committer, engine):
    """Under light load every commit is its own batch: no timer waits for company."""
    committer = make_committer(max_batch=8)
    for i in range(3):
        await committer.commit((), record_message(i))
    assert list(committer.batch_sizes) == [1, 1, 1]


@pytest_twisted.ensureDeferred
async def test_a_record_that_raises_fails_only_its_own_commit(make_committer, engine):
    """Commits 5 and 13 raise: their Deferreds fail with their own error and rows; the other 18 are committed."""
    committer = make_committer(max_batch=8)
    waiting = [committer.commit((), record_message(i, refuse=i in (5, 13))) for i in range(20)]
    outcomes = await defer.DeferredList(waiting, consumeErrors=True)
    failed = {i: result for i, (ok, result) in enumerate(outcomes) if not ok}
    assert sorted(failed) == [5, 13]
    for i, failure in failed.items():
        assert failure.check(Refused) and str(failure.value) == f"commit {i} refused"
    assert [result[0] for ok, result in outcomes if ok] == [f"value-{i}" for i in range(20) if i not in (5, 13)]
    assert numbers(engine) == {f"INV-{i}" for i in range(20) if i not in (5, 13)}


@pytest_twisted.ensureDeferred
async def test_blobs_are_durable_when_the_commit_fires(make_committer, engine, tmp_path):
    """The Deferred fires after the blob is at its final name and the row names it."""
    committer = make_committer()
    staged = stage(BlobStore(tmp_path / "spool"), b"<Invoice/>")
    await committer.commit((staged,), record_message(1, sha=staged.sha256))
    assert BlobStore(tmp_path / "spool").verify(staged.sha256)
    with engine.connect() as conn:
        assert conn.scalar(select(messages.c.sha256)) == staged.sha256


@pytest_twisted.ensureDeferred
async def test_a_batch_that_cannot_be_made_durable_fails_all_its_commits_and_the_next_goes_on(
        make_committer, engine, tmp_path):
    """A rename failure fails every commit of its batch with SpoolWriteError; once the disk is back, commits succeed."""
    fs = FailingFileSystem("rename")
    committer = make_committer(fs=fs)
    store = BlobStore(tmp_path / "spool")
    waiting = [committer.commit((stage(store, f"doc {i}".encode()),), record_message(i)) for i in range(3)]
    outcomes = await defer.DeferredList(waiting, consumeErrors=True)
    assert [(ok, result.check(SpoolWriteError)) for ok, result in outcomes] == [(False, SpoolWriteError)] * 3
    assert list(committer.batch_sizes) == [1, 2]
    assert numbers(engine) == set()
    fs.failing.clear()
    staged = stage(store, b"after the fault")
    value, _ = await committer.commit((staged,), record_message(9, sha=staged.sha256))
    assert value == "value-9" and numbers(engine) == {"INV-9"}


@pytest_twisted.ensureDeferred
async def test_stop_service_leaves_no_writer_thread(make_committer):
    """After the last commit is answered, stopService ends the writer thread."""
    committer = make_committer()
    await defer.gatherResults([committer.commit((), record_message(i)) for i in range(4)])
    assert commit_threads() != []
    committer.stopService()
    assert commit_threads() == []


@pytest_twisted.ensureDeferred
async def test_commits_queued_when_the_committer_stops_are_all_answered(make_committer):
    """Stopping with commits queued behind the batch in flight answers every one of them (either way)."""
    from twisted.internet import reactor

    committer = make_committer(max_batch=8)
    waiting = [committer.commit((), record_message(i)) for i in range(20)]
    await defer.maybeDeferred(committer.stopService)
    everything = defer.DeferredList(waiting, consumeErrors=True)
    everything.addTimeout(2, reactor)  # on timeout the commits still waiting are cancelled
    outcomes = await everything
    unanswered = [i for i, (ok, result) in enumerate(outcomes) if not ok and result.check(defer.CancelledError)]
    assert unanswered == []
