"""Tests for :mod:`spool.check`: finding missing, changed and unreadable blobs, marking messages corrupt
and repaired, and counting blobs no row names; a real blob store in the test's directory."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from spool import audit, records
from spool.blobs import BlobStore
from spool.check import (
    Damage,
    Report,
    check_spool,
    find_unreferenced,
    mark_corrupt,
    mark_repaired,
    survey,
)
from spool.database import create_engine, upgrade
from spool.schema import deliveries, messages, quarantine
from tests.spool.stored import (
    UnreadableBlob,
    finish_deliveries,
    kill_deliveries,
    put_blob,
    store_message,
    store_quarantined,
)


@pytest.fixture
def blobs(tmp_path) -> BlobStore:
    """An empty blob store."""
    return BlobStore(tmp_path / "spool")


def store(engine, blobs, now, data: bytes, **fields) -> records.Message:
    """One message in its own transaction."""
    with engine.begin() as conn:
        return store_message(conn, blobs, data, now, **fields)


def damaged(engine, blobs) -> list[Damage]:
    """What survey finds damaged, in its own transaction."""
    with engine.connect() as conn:
        return survey(conn, blobs)[0]


def test_an_intact_spool_has_no_damage(engine, blobs, now):
    """Every blob verifies: no damage, nothing repaired or left over, and the rows are counted."""
    store(engine, blobs, now, b"<Invoice>1</Invoice>")
    store(engine, blobs, now + timedelta(seconds=1), b"<Invoice>2</Invoice>")
    with engine.begin() as conn:
        store_quarantined(conn, blobs, b"not xml", now)
        store_quarantined(conn, blobs, None, now)  # refused before its bytes were kept: nothing to check
    with engine.connect() as conn:
        assert check_spool(conn, blobs) == Report(messages=2, quarantined=1, damaged=(), repaired=(), unreferenced=())


def test_a_deleted_blob_is_missing_and_a_modified_one_changed(engine, blobs, now):
    """Each damaged message is reported once, oldest first, with what is wrong with its blob."""
    gone = store(engine, blobs, now, b"<Invoice>gone</Invoice>")
    store(engine, blobs, now + timedelta(seconds=1), b"<Invoice>fine</Invoice>")
    edited = store(engine, blobs, now + timedelta(seconds=2), b"<Invoice>100.00</Invoice>")
    blobs.path(gone.sha256).unlink()
    blobs.path(edited.sha256).write_bytes(b"<Invoice>999.00</Invoice>")
    assert damaged(engine, blobs) == [
        Damage("message", gone.id, gone.sha256, "missing"),
        Damage("message", edited.id, edited.sha256, "changed"),
    ]


def test_a_blob_that_cannot_be_read_is_unreadable_not_corrupt(engine, tmp_path, now):
    """An I/O error is reported with its reason, and does not count as corrupt."""
    message = store(engine, BlobStore(tmp_path / "spool"), now, b"<Invoice/>")
    blobs = BlobStore(tmp_path / "spool", fs=UnreadableBlob(message.sha256))
    [damage] = damaged(engine, blobs)
    assert (damage.kind, damage.id) == ("message", message.id)
    assert damage.problem.startswith("unreadable: [Errno 5] Input/output error")
    assert not damage.corrupt


def test_quarantined_payloads_are_checked_too(engine, blobs, now):
    """A kept payload that went missing is reported under its quarantine ID."""
    with engine.begin() as conn:
        item = store_quarantined(conn, blobs, b"<refused/>", now)
    blobs.path(item.sha256).unlink()
    assert damaged(engine, blobs) == [Damage("quarantine", item.id, item.sha256, "missing")]


def test_every_message_sharing_a_damaged_blob_is_reported(engine, blobs, now):
    """Two messages with the same bytes share one blob; losing it damages both."""
    first = store(engine, blobs, now, b"<Invoice/>", sender_id="acme")
    second = store(engine, blobs, now + timedelta(seconds=1), b"<Invoice/>", sender_id="initech")
    assert first.sha256 == second.sha256
    blobs.path(first.sha256).unlink()
    assert [(d.id, d.problem) for d in damaged(engine, blobs)] == [(first.id, "missing"), (second.id, "missing")]


def test_blobs_no_row_names_are_unreferenced(engine, blobs, now):
    """A published blob without a row (a crash between publish and commit) is listed, sorted; named ones are not."""
    store(engine, blobs, now, b"<Invoice>kept</Invoice>")
    with engine.begin() as conn:
        store_quarantined(conn, blobs, b"refused", now)
    loose = sorted(put_blob(blobs, data) for data in (b"orphan 1", b"orphan 2", b"orphan 3"))
    with engine.connect() as conn:
        assert find_unreferenced(conn, blobs) == loose
        assert survey(conn, blobs)[0] == []


def test_mark_corrupt_changes_the_state_audits_and_deletes_nothing(engine, blobs, now):
    """The message becomes corrupt with a message.corrupt event naming the problem; rows and deliveries stay."""
    message = store(engine, blobs, now, b"<Invoice/>", targets=("mailbox", "as2"))
    blobs.path(message.sha256).unlink()
    [damage] = damaged(engine, blobs)
    later = now + timedelta(minutes=1)
    with engine.begin() as conn:
        assert mark_corrupt(conn, damage, later, "cli:test") is True
    with engine.begin() as conn:
        assert mark_corrupt(conn, damage, later, "cli:test") is False  # already marked: no second event
    with engine.connect() as conn:
        stored = records.get_message(conn, message.id)
        assert (stored.state, stored.updated_at) == ("corrupt", later)
        assert len(records.deliveries_of(conn, message.id)) == 2
        [event] = audit.events(conn, message_id=message.id)
        assert (event.actor, event.event, event.at) == ("cli:test", "message.corrupt", later)
        assert event.details == {"sha256": message.sha256, "problem": "missing"}
        assert audit.verify(conn).ok
        with pytest.raises(records.RecordError, match="is corrupt"):
            records.retry(conn, message.id, later)


@pytest.mark.parametrize("damage", [
    Damage("quarantine", "q1", "0" * 64, "missing"),
    Damage("message", "m1", "0" * 64, "unreadable: [Errno 5] Input/output error"),
])
def test_only_missing_or_changed_message_blobs_are_marked(engine, damage, now):
    """Quarantined payloads and unreadable blobs are reported only; asking to mark one is a caller's bug."""
    with pytest.raises(ValueError, match="only a message whose blob is missing or changed"), engine.begin() as conn:
        mark_corrupt(conn, damage, now, "cli:test")


def counts(engine) -> tuple[int, int, int]:
    """How many messages, deliveries and quarantine rows exist."""
    with engine.connect() as conn:
        return tuple(conn.scalar(select(func.count()).select_from(t)) for t in (messages, deliveries, quarantine))


def test_checking_changes_nothing(engine, blobs, now):
    """check_spool only reads: damaged messages keep their state until the caller marks them."""
    message = store(engine, blobs, now, b"<Invoice/>")
    blobs.path(message.sha256).write_bytes(b"tampered")
    before = counts(engine)
    with engine.connect() as conn:
        report = check_spool(conn, blobs)
        assert [d.id for d in report.damaged] == [message.id]
        assert records.get_message(conn, message.id).state == "accepted"
    assert counts(engine) == before


@pytest.mark.parametrize("settle, state", [
    (None, "accepted"),
    (kill_deliveries, "failed"),
    (finish_deliveries, "delivered"),
])
def test_a_restored_blob_repairs_the_message(engine, blobs, now, settle, state):
    """Once the bytes are back, the message gets the state its deliveries say, with a message.repaired event."""
    data = b"<Invoice>restore me</Invoice>"
    message = store(engine, blobs, now, data)
    if settle is not None:
        with engine.begin() as conn:
            settle(conn, message, now)
    blobs.path(message.sha256).unlink()
    [damage] = damaged(engine, blobs)
    with engine.begin() as conn:
        mark_corrupt(conn, damage, now, "cli:test")
        assert survey(conn, blobs)[1] == []
    put_blob(blobs, data)  # restored from the backup
    with engine.begin() as conn:
        assert survey(conn, blobs)[1] == [message.id]
        assert mark_repaired(conn, message.id, now, "cli:test") == state
    with engine.connect() as conn:
        assert records.get_message(conn, message.id).state == state
        assert [(e.event, e.details) for e in audit.events(conn, message_id=message.id)] == [
            ("message.corrupt", {"sha256": message.sha256, "problem": "missing"}),
            ("message.repaired", {"state": state}),
        ]
        assert survey(conn, blobs)[1] == []


@pytest.fixture(scope="module")
def pg_engine(postgres_server):
    """A migrated PostgreSQL database of this module's own."""
    engine = create_engine(postgres_server.new_database("spool_check"))
    upgrade(engine)
    yield engine
    engine.dispose()


def test_unreferenced_blobs_on_postgresql(pg_engine, blobs, now):
    """The merge relies on PostgreSQL sorting the names as bytes, like the blob store lists them."""
    named = [store(pg_engine, blobs, now + timedelta(seconds=i), f"<Invoice>{i}</Invoice>".encode())
             for i in range(20)]
    loose = sorted(put_blob(blobs, f"orphan {i}".encode()) for i in range(20))
    try:
        with pg_engine.connect() as conn:
            assert find_unreferenced(conn, blobs) == loose
            assert survey(conn, blobs)[0] == []
    finally:
        with pg_engine.begin() as conn:
            conn.execute(messages.delete().where(messages.c.id.in_([m.id for m in named])))
