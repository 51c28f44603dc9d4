"""Tests for :mod:`spool.commit` and :mod:`spool.crashpoints`: one publish pass and one transaction per batch.

A real blob store in the test's directory and a real database (SQLite and PostgreSQL for the savepoint
cases, where an error inside a transaction behaves very differently); faults come from the filesystem
seam and from ``record`` functions that raise.
"""

import errno
import os
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy
from sqlalchemy import func, select

from spool import crashpoints, records
from spool.blobs import BlobStore, SpoolWriteError
from spool.commit import Outcome, Work, commit_batch
from spool.database import create_engine, reading, upgrade
from spool.schema import messages
from tests.spool.test_blobs import FailingFileSystem, stage, tmp_names

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'commit.db'}")
    else:
        engine = create_engine(request.getfixturevalue("postgres_server").new_database(f"commit_{uuid.uuid4().hex}"))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(tmp_path) -> BlobStore:
    """An empty blob store on the real filesystem."""
    return BlobStore(tmp_path / "spool")


def recorder(data: bytes, sha: str, *, external_id: str | None = None, then=None):
    """A ``record`` that inserts a message for ``data`` (optionally calling ``then(conn)`` after) and returns its ID."""
    def record(conn):
        msg = records.Message(id=records.new_id(T0), received_at=T0, sender_id="acme", recipient_id="globex",
                              channel="https", sha256=sha, size=len(data), kind="opaque", signed=False, route="door",
                              state="accepted", updated_at=T0, external_id=external_id)
        records.insert_message(conn, msg, [("globex", "mailbox")])
        if then is not None:
            then(conn)
        return msg.id
    return record


def work(store: BlobStore, data: bytes, **options) -> Work:
    """Stage ``data`` and pair it with a recorder."""
    staged = stage(store, data)
    return Work((staged,), recorder(data, staged.sha256, **options))


def stored_ids(engine) -> set[str]:
    """The IDs of every recorded message (a reader: it neither waits for nor blocks a writer)."""
    with reading(engine) as conn:
        return set(conn.scalars(select(messages.c.id)))


def test_blobs_are_published_before_any_record_runs(store, engine):
    """When ``record`` runs, every blob of the batch is already at its final name and tmp/ is empty."""
    staged = [stage(store, f"payload {i}".encode()) for i in range(3)]
    seen = []

    def record(conn):
        seen.append(({s.sha256 for s in staged if store.verify(s.sha256)}, tmp_names(store)))
        return len(seen)

    outcomes = commit_batch(store, engine, [Work(staged[:2], record), Work(staged[2:], record)])
    everything = {s.sha256 for s in staged}
    assert seen == [(everything, []), (everything, [])]
    assert outcomes == [Outcome(value=1), Outcome(value=2)]


def test_outcomes_come_back_in_order_with_each_records_value(store, engine):
    """One outcome per work, in order; every row is committed."""
    works = [work(store, f"doc {i}".encode()) for i in range(5)]
    outcomes = commit_batch(store, engine, works)
    assert all(o.error is None for o in outcomes)
    assert stored_ids(engine) == {o.value for o in outcomes}
    assert len({o.value for o in outcomes}) == 5


def test_a_failing_work_does_not_affect_its_batch_mates(store, db):
    """A record that wrote rows and then raised loses its rows alone; the works around it are committed."""
    def explode(conn):
        raise ValueError("the receipt could not be signed")

    works = [work(store, b"first"), work(store, b"second", then=explode), work(store, b"third")]
    first, second, third = commit_batch(store, db, works)
    assert isinstance(second.error, ValueError) and second.value is None
    assert first.error is None and third.error is None
    assert stored_ids(db) == {first.value, third.value}
    assert all(store.exists(w.blobs[0].sha256) for w in works)  # the bytes are kept, only the row is gone


def test_a_duplicate_racing_into_the_same_batch_fails_alone(store, db):
    """The unique key refuses the second message of a sender's external ID; later works still commit.

    On PostgreSQL this needs the savepoint: without it the failed INSERT would abort the whole transaction.
    """
    works = [work(store, b"original", external_id="MSG-1"), work(store, b"repeat", external_id="MSG-1"),
             work(store, b"other", external_id="MSG-2")]
    original, repeat, other = commit_batch(store, db, works)
    assert isinstance(repeat.error, sqlalchemy.exc.IntegrityError)
    assert stored_ids(db) == {original.value, other.value}


def test_a_publish_failure_records_nothing(tmp_path, engine):
    """A rename failing (EIO) raises SpoolWriteError before the transaction: no record runs, no row, tmp/ empty."""
    BlobStore(tmp_path / "spool")  # the layout exists before the fault is injected
    fs = FailingFileSystem("rename", after=1)
    store = BlobStore(tmp_path / "spool", fs=fs)
    called = []
    works = [Work((stage(store, f"doc {i}".encode()),), lambda conn: called.append(conn)) for i in range(3)]
    with pytest.raises(SpoolWriteError):
        commit_batch(store, engine, works)
    assert called == []
    assert stored_ids(engine) == set()
    assert tmp_names(store) == []


@pytest.mark.parametrize("failing", ["fsync_dir", "rename"])
def test_no_record_runs_unless_the_batch_is_durable(tmp_path, engine, failing):
    """Whether the rename or the directory fsync fails, the batch is refused as a whole."""
    BlobStore(tmp_path / "spool")
    store = BlobStore(tmp_path / "spool", fs=FailingFileSystem(failing, code=errno.ENOSPC))
    with pytest.raises(SpoolWriteError, match="No space left"):
        commit_batch(store, engine, [work(store, b"doc")])
    assert stored_ids(engine) == set()


def test_crash_points_come_in_order_around_the_commit(store, engine, monkeypatch):
    """after-publish: blob durable, no row; before-commit: row invisible to others; after-commit: visible.

    The crash points are replaced by a probe that looks at the world from a second connection, which
    is what a restarted process would see if the crash happened there.
    """
    seen = []

    def probe(step):
        seen.append((step, store.exists(w.blobs[0].sha256), len(stored_ids(engine))))

    monkeypatch.setattr(crashpoints, "reached", probe)
    w = work(store, b"doc")
    commit_batch(store, engine, [w])
    assert seen == [("after-publish", True, 0), ("before-commit", True, 0), ("after-commit", True, 1)]


def test_a_crash_point_exits_only_at_its_own_step(monkeypatch):
    """POSTROOM_CRASH_AT names one step; reaching it exits with 137, every other step is a no-op."""
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.delenv("POSTROOM_CRASH_AT", raising=False)
    for step in crashpoints.STEPS:
        crashpoints.reached(step)
    assert exits == []
    monkeypatch.setenv("POSTROOM_CRASH_AT", "before-commit")
    for step in crashpoints.STEPS:
        crashpoints.reached(step)
    assert exits == [137]


def test_an_empty_batch_is_a_no_op(store, engine):
    """No works: nothing published, an empty transaction, no outcomes."""
    assert commit_batch(store, engine, []) == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(messages)) == 0
