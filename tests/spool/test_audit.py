"""Tests for :mod:`spool.audit`: the chain links, tampering is found, appenders never fork the chain.

Every test runs on SQLite and on a throwaway PostgreSQL.
"""

import itertools
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, text, update

from spool import audit
from spool.database import create_engine, upgrade
from spool.schema import audit_head, audit_log

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    else:
        server = request.getfixturevalue("postgres_server")
        engine = create_engine(server.new_database(f"audit_{request.node.name.split('[')[0][-40:]}".lower()))
    upgrade(engine)
    yield engine
    engine.dispose()


def fill(engine, n: int = 5) -> list[audit.Event]:
    """Append ``n`` events, one transaction each."""
    out = []
    for i in range(n):
        with engine.begin() as conn:
            out.append(audit.append(conn, "cli:alice", "partner.added", T0 + timedelta(seconds=i),
                                    details={"partner": f"p{i}", "name": "Zoë & Co", "nested": {"n": [i]}}))
    return out


def verdict(engine) -> audit.Verdict:
    with engine.begin() as conn:
        return audit.verify(conn)


def test_events_chain_from_genesis_and_verify(db):
    """Each event links to the one before; the head names the last; verify walks it all."""
    made = fill(db)
    assert [e.seq for e in made] == [1, 2, 3, 4, 5]
    assert made[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(made))
    result = verdict(db)
    assert result == audit.Verdict(True, 5, 5, made[-1].hash)
    with db.begin() as conn:
        assert list(audit.events(conn)) == made  # what is read back hashes to what was written


def test_an_empty_trail_verifies(db):
    """A fresh database has an intact, empty chain."""
    assert verdict(db) == audit.Verdict(True, 0, 0, audit.GENESIS)


def test_a_changed_field_is_found(db):
    """Editing any field of a row breaks that row's hash."""
    fill(db)
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(actor="cli:mallory"))
    result = verdict(db)
    assert (result.ok, result.broken_seq) == (False, 3)
    assert result.reason == "row 3 was changed after it was written"


def test_changed_details_are_found(db):
    """Editing the JSON details is found too."""
    fill(db)
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(details={"partner": "p9"}))
    assert verdict(db).broken_seq == 2


def test_a_rehashed_forgery_breaks_the_next_link(db):
    """Rewriting a row with a fresh, correct hash still breaks the link from the row after it."""
    made = fill(db)
    forged = audit._digest(2, made[1].at, "cli:mallory", made[1].event, None, made[1].details, made[1].prev_hash)
    with db.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="cli:mallory", hash=forged))
    result = verdict(db)
    assert (result.broken_seq, result.reason) == (3, "row 3 does not link to row 2")


def test_a_deleted_row_is_found(db):
    """A gap in the sequence is reported as the missing row."""
    fill(db)
    with db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 2))
    result = verdict(db)
    assert (result.broken_seq, result.reason) == (2, "row 2 is missing (next row is 3)")


def test_a_truncated_tail_disagrees_with_the_head(db):
    """Deleting the newest rows leaves the head pointing past the end."""
    fill(db)
    with db.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq >= 4))
    result = verdict(db)
    assert (result.ok, result.reason) == (False, "the head says 5 rows but the log ends at row 3")


def test_rolled_back_change_leaves_no_event(db):
    """The event shares the caller's transaction: no commit, no event, no gap in the chain."""
    fill(db, 2)
    with pytest.raises(RuntimeError), db.begin() as conn:
        audit.append(conn, "cli:alice", "partner.removed", T0, details={"partner": "p0"})
        raise RuntimeError("the change itself failed")
    fill(db, 1)
    assert verdict(db).ok and verdict(db).checked == 3


def test_concurrent_appenders_never_fork_the_chain(db):
    """Four writers appending at once produce one gap-free, correctly linked chain."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(15):
                with db.begin() as conn:
                    audit.append(conn, f"writer:{n}", "tick", datetime.now(UTC), details={"i": i})
        except BaseException as e:  # reported below; a thread's exception would vanish otherwise
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = verdict(db)
    assert (result.ok, result.checked) == (True, 60)
    with db.begin() as conn:
        assert conn.execute(text("SELECT seq FROM audit_head")).scalar() == 60
        assert conn.execute(audit_head.select()).one().hash == result.head_hash


def test_events_filter_by_message_and_page(db):
    """Listing pages by sequence number and filters by message."""
    with db.begin() as conn:
        audit.append(conn, "gateway", "message.accepted", T0, message_id="m1")
        audit.append(conn, "gateway", "message.accepted", T0, message_id="m2")
        audit.append(conn, "gateway", "message.routed", T0, message_id="m1")
        assert [e.seq for e in audit.events(conn, message_id="m1")] == [1, 3]
        assert [e.seq for e in audit.events(conn, after=1, limit=1)] == [2]


def test_a_batch_is_chained_at_its_end(db):
    """Inside ``batched`` nothing is written until the block ends; then the events follow the head in order."""
    fill(db, 2)
    with db.begin() as conn:
        with audit.batched(conn):
            for i in range(3):
                assert audit.append(conn, "gateway", "message.accepted", T0, message_id=f"m{i}") is None
            assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == 2
        assert [e.message_id for e in audit.events(conn, after=2)] == ["m0", "m1", "m2"]
    fill(db, 1)
    assert verdict(db) == audit.Verdict(True, 6, 6, verdict(db).head_hash)


def test_a_rolled_back_savepoint_takes_its_events_with_it(db):
    """One work of a batch fails in its savepoint: its events go, its neighbours' (nested ones too) stay."""
    with db.begin() as conn:
        with audit.batched(conn):
            audit.append(conn, "gateway", "kept", T0, message_id="a")
            failed = conn.begin_nested()
            audit.append(conn, "gateway", "dropped", T0, message_id="b")
            inner = conn.begin_nested()
            audit.append(conn, "gateway", "dropped", T0, message_id="c")
            inner.commit()
            failed.rollback()
            ok = conn.begin_nested()
            audit.append(conn, "gateway", "kept", T0, message_id="d")
            inner = conn.begin_nested()
            audit.append(conn, "gateway", "dropped", T0, message_id="e")
            inner.rollback()
            ok.commit()
    with db.begin() as conn:
        assert [(e.event, e.message_id) for e in audit.events(conn)] == [("kept", "a"), ("kept", "d")]
    assert verdict(db).ok


def test_a_failed_batch_writes_nothing(db):
    """The batch's transaction rolls back: no event, no gap, and the next one chains from the old head."""
    fill(db, 1)
    with pytest.raises(RuntimeError), db.begin() as conn, audit.batched(conn):
        audit.append(conn, "gateway", "message.accepted", T0)
        raise RuntimeError("the commit failed")
    fill(db, 1)
    assert (verdict(db).ok, verdict(db).checked) == (True, 2)
