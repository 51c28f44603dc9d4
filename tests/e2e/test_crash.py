"""Real-process crash tests: ``POSTROOM_CRASH_AT=<step>`` kills the daemon there with ``os._exit(137)``.

After each crash the daemon is restarted normally and the durability invariants are checked:

* nothing the sender was told was accepted is lost; nothing half-written is visible;
* a crash before the commit leaves no message: the sender's retry is accepted as new;
* a crash after the commit but before the reply leaves the message: the retry is a duplicate and
  gets the original receipt;
* deliveries resume, and a message is never filed twice in a mailbox;
* the audit chain is intact and ``tmp/`` is empty.

The intake files a document in the transaction that accepts it, so the delivery worker's crash points
(``after-claim``, ``after-deliver``) are reached by a mailbox delivery planned later: recovery re-routes a
message whose deliveries were removed by hand, and the worker files it.
"""

import pytest
from sqlalchemy import create_engine, text

from spool.crashpoints import STEPS
from tests.e2e.daemon import Daemon
from tests.e2e.https import invoice, post_document, query
from tests.e2e.test_mtls_door import wait_until

BEFORE_COMMIT = ("after-stage", "after-publish", "before-commit")
AFTER_COMMIT = ("after-commit",)
IN_DELIVERY = ("after-claim", "after-deliver")


def test_every_crash_point_is_exercised():
    """The three lists below cover exactly the crash points the code has."""
    assert sorted(BEFORE_COMMIT + AFTER_COMMIT + IN_DELIVERY) == sorted(STEPS)


def _crash_then_restart(home, tmp_path, step):
    crashing = Daemon(home).start(env={"POSTROOM_CRASH_AT": step})
    try:
        response = post_document(crashing, invoice("CRASH-1"), tmp_path, key="crash-1")
        assert crashing.process.wait(20) == 137, f"the daemon did not crash at {step}"
    finally:
        crashing.stop()
    return response, Daemon(home).start()


@pytest.mark.parametrize("step", BEFORE_COMMIT)
def test_crash_before_commit_loses_nothing_the_sender_was_told(home, tmp_path, step):
    """The sender got no answer; after restart nothing is recorded, tmp/ is clean, and the retry is accepted."""
    response, daemon = _crash_then_restart(home, tmp_path, step)
    try:
        assert response.status == 0 and response.curl_exit != 0  # no reply at all: the sender will retry
        assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]
        assert list((home.path / "spool" / "tmp").iterdir()) == []
        retry = post_document(daemon, invoice("CRASH-1"), tmp_path, key="crash-1")
        assert retry.status == 201 and retry.json()["outcome"] == "accepted"
        _check_invariants(daemon)
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("step", AFTER_COMMIT)
def test_crash_after_commit_keeps_the_message_and_delivers_it_once(home, tmp_path, step):
    """The message survives; the retry is a duplicate with the original receipt; exactly one mailbox item."""
    response, daemon = _crash_then_restart(home, tmp_path, step)
    try:
        [(message_id,)] = query(daemon, "SELECT id FROM messages")
        if response.status:  # the reply raced the crash out of the door: it must have been the real one
            assert response.status == 201 and response.json()["message"] == message_id
        retry = post_document(daemon, invoice("CRASH-1"), tmp_path, key="crash-1")
        assert retry.status == 200 and retry.json()["outcome"] == "duplicate"
        assert retry.json()["message"] == message_id
        _check_invariants(daemon)
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize("step", IN_DELIVERY)
def test_crash_in_a_delivery_round_files_the_message_once(home, tmp_path, step):
    """A re-routed message's mailbox delivery: the worker crashes while filing it; after the restart it is
    filed exactly once and no claim is left."""
    daemon = Daemon(home).start()
    try:
        assert post_document(daemon, invoice("CRASH-2"), tmp_path, key="crash-2").status == 201
    finally:
        assert daemon.stop() == 0
    engine = create_engine(f"sqlite:///{home.path / 'postroom.db'}")
    try:
        with engine.begin() as conn:  # the deliveries removed by hand: recovery plans them again at start
            conn.execute(text("DELETE FROM mailbox_items"))
            conn.execute(text("DELETE FROM deliveries"))
            conn.execute(text("UPDATE messages SET state = 'accepted'"))
    finally:
        engine.dispose()
    crashing = Daemon(home).launch(env={"POSTROOM_CRASH_AT": step})  # it may crash before it listens
    try:
        assert crashing.process.wait(20) == 137, f"the daemon did not crash at {step}"
    finally:
        crashing.stop()
    daemon = Daemon(home).start()
    try:
        _check_invariants(daemon)
    finally:
        assert daemon.stop() == 0


def _check_invariants(daemon):
    wait_until(lambda: query(daemon, "SELECT state FROM messages") == [("delivered",)])
    assert query(daemon, "SELECT message_id, count(*) FROM mailbox_items GROUP BY message_id") == [(
        query(daemon, "SELECT id FROM messages")[0][0], 1)]
    assert query(daemon, "SELECT count(*) FROM deliveries WHERE state = 'claimed'") == [(0,)]
    verify = daemon.cli("audit", "verify")
    assert "intact" in verify.stdout
    orphans = query(daemon, "SELECT m.id FROM messages m WHERE NOT EXISTS "
                            "(SELECT 1 FROM receipts r WHERE r.message_id = m.id AND r.kind = 'acceptance')")
    assert orphans == []
