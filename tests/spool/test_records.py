"""Tests for :mod:`spool.records`: the message and delivery state machines, mailboxes and receipts.

Every test runs on SQLite and on a fresh database of the session's throwaway PostgreSQL; the last one
runs on PostgreSQL only, where two nodes claim from the same queue at once.
"""

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import sqlalchemy
from sqlalchemy import event, func, select, text

from spool import records
from spool.database import create_engine, upgrade
from spool.records import Message, RecordError, StoredReceipt, UnknownMessage
from spool.schema import mailbox_items, messages

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=10)
SHA = "ab" * 32


def fresh_engine(request, tmp_path, backend: str):
    """A migrated, empty database of ``backend``."""
    if backend == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'records.db'}")
    else:
        engine = create_engine(request.getfixturevalue("postgres_server").new_database(f"records_{uuid.uuid4().hex}"))
    upgrade(engine)
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    """A migrated, empty database of each backend."""
    engine = fresh_engine(request, tmp_path, request.param)
    yield engine
    engine.dispose()


_NUMBERS = itertools.count(1)


def message(received_at: datetime = T0, *, sender_id: str = "acme", recipient_id: str = "globex",
            **fields) -> Message:
    """An accepted message as the intake records it."""
    values = dict(id=records.new_id(received_at), received_at=received_at, sender_id=sender_id,
                  recipient_id=recipient_id, channel="as2", sha256=SHA, size=1234, kind="ubl-invoice", signed=False,
                  route="receiver", state="accepted", updated_at=received_at, number=f"INV-{next(_NUMBERS)}",
                  issue_date="2026-11-20")
    values.update(fields)
    return Message(**values)


def insert(engine, msg: Message, targets=("mailbox",)) -> Message:
    """Record ``msg`` with one delivery per target, all for its recipient."""
    with engine.begin() as conn:
        records.insert_message(conn, msg, [(msg.recipient_id, t) for t in targets])
    return msg


def claim(engine, now: datetime, worker: str = "node-1", limit: int = 100) -> list[records.Delivery]:
    """Claim in a transaction of its own."""
    with engine.begin() as conn:
        return records.claim_due(conn, now, worker, limit, LEASE)


def deliveries(engine, msg: Message) -> list[records.Delivery]:
    """A message's deliveries, as stored now."""
    with engine.connect() as conn:
        return records.deliveries_of(conn, msg.id)


def state(engine, msg: Message) -> str:
    """A message's state, as stored now."""
    with engine.connect() as conn:
        return records.get_message(conn, msg.id).state


# ---------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------

def test_an_inserted_message_has_pending_deliveries_due_at_once(db):
    """insert_message returns the delivery IDs; each delivery is pending, unattempted, due at receipt."""
    msg = message()
    with db.begin() as conn:
        ids = records.insert_message(conn, msg, [("globex", "mailbox"), ("globex", "as2")])
    with db.connect() as conn:
        assert records.get_message(conn, msg.id) == msg
    planned = deliveries(db, msg)
    assert [d.id for d in planned] == ids
    assert [(d.target, d.state, d.attempts, d.next_attempt_at, d.claimed_by) for d in planned] == [
        ("mailbox", "pending", 0, T0, None), ("as2", "pending", 0, T0, None)]


def test_a_sender_cannot_use_an_external_id_twice(db):
    """The unique (sender_id, external_id) key refuses a second message, whatever the rest of it says."""
    first = insert(db, message(external_id="MSG-1"))
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.begin() as conn:
        records.insert_message(conn, message(T0 + timedelta(seconds=1), external_id="MSG-1", number="INV-2"), [])
    insert(db, message(sender_id="globex", recipient_id="acme", external_id="MSG-1"))  # another sender: fine
    insert(db, message(external_id=None))
    insert(db, message(external_id=None))  # no external ID never collides
    with db.connect() as conn:
        assert records.find_by_external_id(conn, "acme", "MSG-1") == first
        assert records.find_by_external_id(conn, "acme", "MSG-2") is None
        assert conn.scalar(select(func.count()).select_from(messages)) == 4


def test_find_same_document_matches_number_and_issue_date_oldest_first(db):
    """Same sender, number and issue date (including a missing date) find each other; nothing else does."""
    old = insert(db, message(T0, number="INV-7"))
    with pytest.raises(sqlalchemy.exc.IntegrityError):  # EN 16931: one invoice per number and seller
        insert(db, message(T0 + timedelta(minutes=1), number="INV-7"))
    insert(db, message(T0, number="INV-7", issue_date="2026-11-21"))
    insert(db, message(T0, number="INV-7", sender_id="globex", recipient_id="acme"))
    undated = insert(db, message(T0, number="INV-8", issue_date=None))
    with db.connect() as conn:
        assert records.find_same_document(conn, "acme", "INV-7", "2026-11-20") == [old]
        assert records.find_same_document(conn, "acme", "INV-8", None) == [undated]
        assert records.find_same_document(conn, "acme", "INV-8", "2026-11-20") == []


def test_messages_without_deliveries_lists_only_accepted_ones(db):
    """Recovery re-plans accepted messages that have no delivery at all, and only those."""
    bare = insert(db, message(T0), targets=())
    insert(db, message(T0 + timedelta(seconds=1)))
    insert(db, message(T0 + timedelta(seconds=2), state="delivered"), targets=())
    with db.begin() as conn:
        assert records.messages_without_deliveries(conn) == [bare]
        records.add_deliveries(conn, bare.id, [("globex", "mailbox")], T0 + timedelta(hours=1))
        assert records.messages_without_deliveries(conn) == []
    [planned] = deliveries(db, bare)
    assert (planned.state, planned.next_attempt_at) == ("pending", T0 + timedelta(hours=1))


# ---------------------------------------------------------------------------------------------------------------
# Delivery queue
# ---------------------------------------------------------------------------------------------------------------

def test_claim_due_takes_only_due_pending_rows(db):
    """Future, done and dead deliveries are left alone; claimed rows name their worker and time."""
    due = insert(db, message(T0))
    later = insert(db, message(T0 + timedelta(minutes=5)))
    done = insert(db, message(T0 - timedelta(minutes=1)))
    dead = insert(db, message(T0 - timedelta(minutes=2)))
    with db.begin() as conn:
        for d in records.claim_due(conn, T0, "setup", 100, LEASE):
            if d.message_id == done.id:
                records.complete(conn, d, "setup", T0)
            elif d.message_id == dead.id:
                records.fail(conn, d, "setup", T0, "refused", retry_at=None)
        records.release_claims(conn, "setup", T0)
    [claimed] = claim(db, T0)
    assert (claimed.message_id, claimed.state, claimed.claimed_by) == (due.id, "claimed", "node-1")
    assert claim(db, T0 + timedelta(minutes=1)) == []  # claimed, lease fresh: nobody else gets it
    [next_one] = claim(db, T0 + timedelta(minutes=5), worker="node-2")
    assert next_one.message_id == later.id


def test_claim_due_respects_the_limit_and_takes_the_oldest_first(db):
    """With more due than the limit, the earliest-due rows go first."""
    msgs = [insert(db, message(T0 + timedelta(seconds=i))) for i in range(5)]
    first = claim(db, T0 + timedelta(minutes=1), limit=2)
    assert [d.message_id for d in first] == [m.id for m in msgs[:2]]
    rest = claim(db, T0 + timedelta(minutes=1), limit=10)
    assert [d.message_id for d in rest] == [m.id for m in msgs[2:]]


def test_a_claim_whose_lease_ran_out_is_taken_over(db):
    """A dead node's claim is claimed again once the lease has passed, not before."""
    insert(db, message(T0))
    [mine] = claim(db, T0, worker="node-1")
    assert claim(db, T0 + LEASE - timedelta(seconds=1), worker="node-2") == []
    [taken] = claim(db, T0 + LEASE, worker="node-2")
    assert (taken.id, taken.claimed_by) == (mine.id, "node-2")


def test_complete_and_fail_refuse_once_the_claim_was_lost(db):
    """The slow worker's outcome is refused after another took over; the new holder's is recorded."""
    msg = insert(db, message(T0))
    [slow] = claim(db, T0, worker="node-1")
    [fast] = claim(db, T0 + LEASE, worker="node-2")
    later = T0 + LEASE + timedelta(seconds=1)
    with db.begin() as conn:
        assert not records.complete(conn, slow, "node-1", later)
        assert not records.fail(conn, slow, "node-1", later, "timeout", retry_at=None)
        assert not records.complete(conn, fast, "node-1", later)  # the row is node-2's, whoever passes it in
    assert [(d.state, d.claimed_by, d.attempts) for d in deliveries(db, msg)] == [("claimed", "node-2", 0)]
    with db.begin() as conn:
        assert records.complete(conn, fast, "node-2", later)
    assert [(d.state, d.claimed_by, d.attempts) for d in deliveries(db, msg)] == [("done", None, 1)]
    assert state(db, msg) == "delivered"


def test_a_message_is_delivered_when_its_last_delivery_is_done(db):
    """Completing one of two deliveries leaves the message accepted; the second makes it delivered."""
    msg = insert(db, message(T0), targets=("mailbox", "as2"))
    mailbox, push = claim(db, T0)
    with db.begin() as conn:
        assert records.complete(conn, mailbox, "node-1", T0)
    assert state(db, msg) == "accepted"
    with db.begin() as conn:
        assert records.complete(conn, push, "node-1", T0 + timedelta(seconds=3))
    with db.connect() as conn:
        stored = records.get_message(conn, msg.id)
    assert (stored.state, stored.updated_at) == ("delivered", T0 + timedelta(seconds=3))


def test_a_failed_attempt_waits_until_its_retry_time(db):
    """fail() with a retry time: pending again, one more attempt, the error kept, not due before then."""
    msg = insert(db, message(T0))
    [d] = claim(db, T0)
    retry_at = T0 + timedelta(minutes=2)
    with db.begin() as conn:
        assert records.fail(conn, d, "node-1", T0, "connection refused", retry_at)
    [waiting] = deliveries(db, msg)
    assert (waiting.state, waiting.attempts, waiting.next_attempt_at, waiting.last_error, waiting.claimed_by) == (
        "pending", 1, retry_at, "connection refused", None)
    assert state(db, msg) == "accepted"
    assert claim(db, retry_at - timedelta(seconds=1)) == []
    [again] = claim(db, retry_at)
    assert again.attempts == 1
    with db.begin() as conn:
        assert records.complete(conn, again, "node-1", retry_at)
    [done] = deliveries(db, msg)
    assert (done.state, done.attempts, done.last_error) == ("done", 2, None)


def test_one_dead_delivery_fails_the_message(db):
    """A dead-lettered delivery makes its message failed, even though the other one was done."""
    msg = insert(db, message(T0), targets=("mailbox", "as2"))
    mailbox, push = claim(db, T0)
    with db.begin() as conn:
        records.complete(conn, mailbox, "node-1", T0)
        assert records.fail(conn, push, "node-1", T0, "x" * 5000, retry_at=None)
    assert state(db, msg) == "failed"
    dead = deliveries(db, msg)[1]
    assert (dead.state, dead.attempts, len(dead.last_error)) == ("dead", 1, 2000)  # the error is capped


def test_settled_state_is_what_the_deliveries_imply():
    """Any dead delivery fails the message; all done delivers it; anything else (or nothing) leaves it accepted."""
    cases = {
        frozenset({"done"}): "delivered",
        frozenset({"done", "dead"}): "failed",
        frozenset({"dead", "pending"}): "failed",
        frozenset({"done", "pending"}): "accepted",
        frozenset({"done", "claimed"}): "accepted",
        frozenset(): "accepted",
    }
    assert {states: records.settled_state(set(states)) for states in cases} == cases


def test_a_corrupt_message_keeps_its_state_when_its_deliveries_settle(db):
    """Completing the deliveries of a message recovery marked corrupt does not hide the corruption."""
    msg = insert(db, message(T0))
    [d] = claim(db, T0)
    with db.begin() as conn:
        records.set_message_state(conn, msg.id, "corrupt", T0)
        assert records.complete(conn, d, "node-1", T0)
    assert state(db, msg) == "corrupt"


def test_release_claims_puts_back_only_this_workers_claims(db):
    """Start-up releases what this node had claimed, due now; another node's claims are untouched."""
    mine_msg = insert(db, message(T0))
    [mine] = claim(db, T0, worker="node-1")
    theirs_msg = insert(db, message(T0 + timedelta(seconds=1)))
    [theirs] = claim(db, T0 + timedelta(seconds=1), worker="node-2")
    restart = T0 + timedelta(minutes=1)
    with db.begin() as conn:
        assert records.release_claims(conn, "node-1", restart) == 1
    [released] = deliveries(db, mine_msg)
    assert (released.state, released.claimed_by, released.next_attempt_at) == ("pending", None, restart)
    assert [(d.state, d.claimed_by) for d in deliveries(db, theirs_msg)] == [("claimed", "node-2")]


def test_retry_revives_dead_deliveries_and_the_message(db):
    """retry(): dead deliveries are due now, done ones stay done, the message is accepted again."""
    msg = insert(db, message(T0), targets=("mailbox", "as2"))
    mailbox, push = claim(db, T0)
    with db.begin() as conn:
        records.complete(conn, mailbox, "node-1", T0)
        records.fail(conn, push, "node-1", T0, "refused", retry_at=None)
    later = T0 + timedelta(hours=2)
    with db.begin() as conn:
        revived = records.retry(conn, msg.id, later)
    assert [(d.target, d.state) for d in revived] == [("mailbox", "done"), ("as2", "pending")]
    assert revived[1].next_attempt_at == later
    assert state(db, msg) == "accepted"
    assert [d.id for d in claim(db, later)] == [push.id]


def test_retry_refuses_corrupt_unknown_and_finished_messages(db):
    """Nothing to retry is an error the operator sees, and a corrupt message is never revived."""
    corrupt = insert(db, message(T0))
    delivered = insert(db, message(T0 + timedelta(seconds=1)))
    with db.begin() as conn:
        records.set_message_state(conn, corrupt.id, "corrupt", T0)
        for d in records.claim_due(conn, T0 + timedelta(seconds=1), "node-1", 10, LEASE):
            if d.message_id == delivered.id:
                records.complete(conn, d, "node-1", T0)
        records.release_claims(conn, "node-1", T0)
    with pytest.raises(RecordError, match="corrupt"), db.begin() as conn:
        records.retry(conn, corrupt.id, T0)
    with pytest.raises(RecordError, match="no failed or waiting delivery"), db.begin() as conn:
        records.retry(conn, delivered.id, T0)
    with pytest.raises(UnknownMessage), db.begin() as conn:
        records.retry(conn, "0" * 32, T0)
    assert (state(db, corrupt), state(db, delivered)) == ("corrupt", "delivered")


# ---------------------------------------------------------------------------------------------------------------
# Mailboxes
# ---------------------------------------------------------------------------------------------------------------

def file(engine, msg: Message, recipient_id: str = "globex", at: datetime = T0) -> bool:
    """put_in_mailbox in a transaction of its own."""
    with engine.begin() as conn:
        return records.put_in_mailbox(conn, msg.id, recipient_id, at)


def test_put_in_mailbox_files_a_message_once(db):
    """The second filing of the same message is a no-op that says so; there is one row."""
    msg = insert(db, message())
    assert file(db, msg)
    assert not file(db, msg, at=T0 + timedelta(minutes=1))
    with db.connect() as conn:
        assert records.mailbox_count(conn, msg.id) == 1
        item = records.mailbox_item(conn, "globex", msg.id)
    assert (item.message, item.state, item.delivered_at, item.downloaded_at, item.acknowledged_at) == (
        msg, "new", T0, None, None)


def test_the_mailbox_unique_key_refuses_a_second_row(db):
    """Even a writer skipping the check cannot file a message twice for one recipient."""
    msg = insert(db, message())
    file(db, msg)
    with pytest.raises(sqlalchemy.exc.IntegrityError), db.begin() as conn:
        conn.execute(mailbox_items.insert().values(message_id=msg.id, recipient_id="globex", state="new",
                                                   delivered_at=T0))


def mark(engine, msg: Message, event: str, at: datetime) -> bool:
    """mark_item for globex in a transaction of its own."""
    with engine.begin() as conn:
        return records.mark_item(conn, "globex", msg.id, event, at)


def item(engine, msg: Message) -> records.MailboxItem:
    """globex's item for ``msg``."""
    with engine.connect() as conn:
        return records.mailbox_item(conn, "globex", msg.id)


def test_mark_item_records_download_then_acknowledgement_once_each(db):
    """new → downloaded → acknowledged; repeating either is False and keeps the first time."""
    msg = insert(db, message())
    file(db, msg)
    t1, t2, t3 = (T0 + timedelta(minutes=i) for i in (1, 2, 3))
    assert mark(db, msg, "downloaded", t1)
    assert (item(db, msg).state, item(db, msg).downloaded_at) == ("downloaded", t1)
    assert not mark(db, msg, "downloaded", t2)
    assert item(db, msg).downloaded_at == t1
    assert mark(db, msg, "acknowledged", t2)
    assert not mark(db, msg, "acknowledged", t3)
    final = item(db, msg)
    assert (final.state, final.downloaded_at, final.acknowledged_at) == ("acknowledged", t1, t2)


def test_a_download_after_an_acknowledgement_leaves_the_item_acknowledged(db):
    """Acknowledging without downloading is allowed; a later first download is recorded but not a step back."""
    msg = insert(db, message())
    file(db, msg)
    assert mark(db, msg, "acknowledged", T0 + timedelta(minutes=1))
    assert mark(db, msg, "downloaded", T0 + timedelta(minutes=2))
    final = item(db, msg)
    assert (final.state, final.downloaded_at, final.acknowledged_at) == (
        "acknowledged", T0 + timedelta(minutes=2), T0 + timedelta(minutes=1))


def test_another_recipients_item_is_unknown(db):
    """mailbox_item and mark_item answer UnknownMessage for a message that is not in this mailbox."""
    msg = insert(db, message())
    file(db, msg)
    with db.begin() as conn:
        with pytest.raises(UnknownMessage):
            records.mailbox_item(conn, "acme", msg.id)
        with pytest.raises(UnknownMessage):
            records.mark_item(conn, "acme", msg.id, "downloaded", T0)
        with pytest.raises(UnknownMessage):
            records.mailbox_item(conn, "globex", "f" * 32)


def test_mailbox_pages_newest_first_with_a_before_cursor(db):
    """Pages of two, each older than the last ID seen, cover the mailbox once; others' items never show."""
    mine = [insert(db, message(T0 + timedelta(minutes=i))) for i in range(5)]
    for msg in mine:
        file(db, msg)
    theirs = insert(db, message(T0 + timedelta(minutes=2), recipient_id="initech"))
    file(db, theirs, "initech")
    pages, before = [], None
    with db.connect() as conn:
        while page := records.mailbox(conn, "globex", limit=2, before=before):
            pages.append([i.message.id for i in page])
            before = page[-1].message.id
    newest_first = [m.id for m in reversed(mine)]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]]


def test_mailbox_filters_by_item_state_and_receipt_time(db):
    """``state`` selects new, downloaded or acknowledged items; ``since`` drops older messages."""
    msgs = [insert(db, message(T0 + timedelta(hours=i))) for i in range(3)]
    for msg in msgs:
        file(db, msg)
    mark(db, msgs[0], "downloaded", T0 + timedelta(hours=5))
    with db.connect() as conn:
        new = records.mailbox(conn, "globex", limit=10, state="new")
        downloaded = records.mailbox(conn, "globex", limit=10, state="downloaded")
        recent = records.mailbox(conn, "globex", limit=10, since=T0 + timedelta(hours=1))
    assert [i.message.id for i in new] == [msgs[2].id, msgs[1].id]
    assert [i.message.id for i in downloaded] == [msgs[0].id]
    assert [i.message.id for i in recent] == [msgs[2].id, msgs[1].id]


def test_a_mailbox_page_walks_an_index_instead_of_sorting_the_mailbox(tmp_path):
    """SQLite's plan for every listing (plain, cursor, state, since) has no temporary sort: a page costs the
    same in a mailbox of ten or a million (bench/store.py measured 3.5 s at 1 M before)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    upgrade(engine)
    statements = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, params, *_: statements.append((statement, params)))
    with engine.connect() as conn:
        for options in ({}, {"before": "f" * 32}, {"state": "new"}, {"since": T0}):
            statements.clear()
            records.mailbox(conn, "globex", limit=50, **options)
            [(statement, params)] = [(st, pa) for st, pa in statements if "FROM messages JOIN mailbox_items" in st]
            plan = " | ".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params))
            assert "TEMP B-TREE" not in plan and "USING INDEX ix_mailbox_items_recipient" in plan, (options, plan)
    engine.dispose()


# ---------------------------------------------------------------------------------------------------------------
# Receipts
# ---------------------------------------------------------------------------------------------------------------

def receipt(kind: str, at: datetime, message_id: str, body: bytes = b"\x00MDN\xff") -> StoredReceipt:
    """A receipt for acme about ``message_id``."""
    return StoredReceipt(id=uuid.uuid4().hex, kind=kind, partner_id="acme", disposition="processed",
                         content_type="multipart/report", body=body, created_at=at, state="sent",
                         message_id=message_id)


def test_receipts_keep_their_exact_bytes_and_are_listed_by_kind_oldest_first(db):
    """get_receipt returns the bytes as stored; receipts_for filters by kind and orders by time."""
    msg = insert(db, message())
    acceptance = receipt("acceptance", T0, msg.id, body=bytes(range(256)))
    first_return = receipt("return", T0 + timedelta(minutes=1), msg.id)
    second_return = receipt("return", T0 + timedelta(minutes=2), msg.id)
    with db.begin() as conn:
        for r in (second_return, acceptance, first_return):
            records.insert_receipt(conn, r)
    with db.connect() as conn:
        assert records.get_receipt(conn, acceptance.id) == acceptance
        assert records.get_receipt(conn, "nope") is None
        assert records.receipts_for(conn, msg.id) == [acceptance]
        assert records.receipts_for(conn, msg.id, ("return",)) == [first_return, second_return]
        assert records.receipts_for(conn, msg.id, ("acceptance", "return")) == [
            acceptance, first_return, second_return]


def test_a_pending_receipt_with_somewhere_to_go_is_claimed_with_a_lease_until_sent(db):
    """due_receipts takes due, dispatched, pending receipts once per lease; receipt_sent settles or reschedules."""
    msg = insert(db, message())
    dispatch = {"channel": "as2", "url": "https://peer.example/mdn", "as2_to": "ACME"}
    owed = attrs.evolve(receipt("acceptance", T0, msg.id), state="pending", dispatch=dispatch)
    kept = attrs.evolve(receipt("return", T0, msg.id), state="pending")  # pending, but nowhere to go yet
    with db.begin() as conn:
        records.insert_receipt(conn, owed)
        records.insert_receipt(conn, kept)
    with db.begin() as conn:
        [claimed] = records.due_receipts(conn, T0, 10, LEASE)
        assert claimed.id == owed.id and claimed.dispatch == dispatch
        assert records.due_receipts(conn, T0 + timedelta(minutes=1), 10, LEASE) == []  # leased
        records.receipt_sent(conn, claimed, T0, "HTTP 503", T0 + timedelta(minutes=2))
    with db.begin() as conn:
        assert records.due_receipts(conn, T0 + timedelta(minutes=1), 10, LEASE) == []
        [again] = records.due_receipts(conn, T0 + timedelta(minutes=2), 10, LEASE)
        assert (again.attempts, again.last_error) == (1, "HTTP 503")
        records.receipt_sent(conn, again, T0, None, None)
    with db.begin() as conn:
        stored = records.get_receipt(conn, owed.id)
        assert (stored.state, stored.attempts, stored.body) == ("sent", 2, owed.body)
        assert records.due_receipts(conn, T0 + LEASE * 10, 10, LEASE) == []
        records.redispatch(conn, stored, dispatch)
        assert [r.id for r in records.due_receipts(conn, T0, 10, LEASE)] == [owed.id]


def test_a_receipt_out_of_attempts_fails(db):
    msg = insert(db, message())
    owed = attrs.evolve(receipt("acceptance", T0, msg.id), state="pending", dispatch={"channel": "as2", "url": "u"})
    with db.begin() as conn:
        records.insert_receipt(conn, owed)
        records.receipt_sent(conn, owed, T0, "refused", None)
    with db.connect() as conn:
        assert records.get_receipt(conn, owed.id).state == "failed"


def test_a_push_awaiting_its_receipt_is_settled_once_or_claimed_again_after_its_deadline(db):
    """await_receipt parks the delivery; awaited finds it by remote ID; settle_awaited settles it once."""
    msg = insert(db, message(), targets=("as2",))
    [delivery] = claim(db, T0)
    with db.begin() as conn:
        assert records.await_receipt(conn, delivery, "node-1", T0, "<r1@gw>", "mic=", T0 + timedelta(hours=1))
    assert claim(db, T0 + timedelta(minutes=59)) == []
    with db.begin() as conn:
        found = records.awaited(conn, "globex", "<r1@gw>")
        assert (found.state, found.remote_id, found.mic, found.attempts) == ("awaiting", "<r1@gw>", "mic=", 1)
        assert records.awaited(conn, "acme", "<r1@gw>") is None  # another partner cannot settle it
        assert records.settle_awaited(conn, found, T0, None, None)
        assert not records.settle_awaited(conn, found, T0, None, None)
    assert state(db, msg) == "delivered"
    other = insert(db, message(), targets=("as2",))
    [delivery] = claim(db, T0)
    with db.begin() as conn:
        records.await_receipt(conn, delivery, "node-1", T0, "<r2@gw>", None, T0 + timedelta(hours=1))
    [again] = claim(db, T0 + timedelta(hours=1))  # the MDN never came: pushed again, same remote ID
    assert (again.message_id, again.remote_id, again.attempts) == (other.id, "<r2@gw>", 1)
    with db.begin() as conn:  # a late MDN (or one overtaking the new push's bookkeeping) still settles it
        late = records.awaited(conn, "globex", "<r2@gw>")
        assert late.state == "claimed"
        assert records.settle_awaited(conn, late, T0, None, None)
        assert not records.complete(conn, late, "node-1", T0)  # the pusher finds its claim gone
    [settled] = deliveries(db, other)
    assert (settled.state, settled.attempts, settled.claimed_by) == ("done", 2, None)


def test_note_push_records_the_id_before_the_push_while_the_claim_holds(db):
    msg = insert(db, message(), targets=("as2",))
    [delivery] = claim(db, T0)
    with db.begin() as conn:
        assert records.note_push(conn, delivery, "node-1", "<n1@gw>", "mic=")
        assert not records.note_push(conn, delivery, "node-2", "<n2@gw>", None)
        assert records.fail(conn, delivery, "node-1", T0, "refused", T0 + timedelta(minutes=1))
    [stored] = deliveries(db, msg)
    assert (stored.remote_id, stored.mic, stored.state) == ("<n1@gw>", "mic=", "pending")


def test_a_failed_receipt_sends_the_awaiting_push_back_to_the_queue_or_kills_it(db):
    msg = insert(db, message(), targets=("as2",))
    [delivery] = claim(db, T0)
    with db.begin() as conn:
        records.await_receipt(conn, delivery, "node-1", T0, "<r3@gw>", None, T0 + timedelta(hours=1))
        found = records.awaited(conn, "globex", "<r3@gw>")
        assert records.settle_awaited(conn, found, T0, "decryption-failed", None)
    assert state(db, msg) == "failed"
    [stored] = deliveries(db, msg)
    assert (stored.state, stored.last_error) == ("dead", "decryption-failed")


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL: several nodes, one queue
# ---------------------------------------------------------------------------------------------------------------

def test_concurrent_claims_on_postgresql_get_disjoint_rows(request, tmp_path):
    """Two open transactions claiming at once never share a row: the second skips what the first locked."""
    engine = fresh_engine(request, tmp_path, "postgresql")
    try:
        msgs = [insert(engine, message(T0 + timedelta(seconds=i))) for i in range(5)]
        with engine.connect() as a, engine.connect() as b:
            ta = a.begin()
            first = records.claim_due(a, T0 + timedelta(minutes=1), "node-a", 3, LEASE)
            tb = b.begin()
            b.execute(text("SET LOCAL lock_timeout = '5s'"))  # a regression fails here instead of hanging
            second = records.claim_due(b, T0 + timedelta(minutes=1), "node-b", 3, LEASE)
            ta.commit()
            tb.commit()
        assert len(first) == 3 and len(second) == 2
        assert {d.id for d in first}.isdisjoint(d.id for d in second)
        with engine.connect() as conn:
            owners = {d.message_id: d.claimed_by for m in msgs for d in records.deliveries_of(conn, m.id)}
        assert sorted(owners.values()) == ["node-a"] * 3 + ["node-b"] * 2
    finally:
        engine.dispose()
