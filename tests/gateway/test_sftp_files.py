"""Tests for :mod:`gateway.sftp_files`: the names ``/outbox/`` and ``/receipts/`` show, and finding one by name.

A migrated SQLite database with messages, mailbox items, quarantine entries and receipts written through
:mod:`spool.records`, as the intake and the delivery worker leave them.
"""

from datetime import UTC, datetime, timedelta

import pytest

from gateway import sftp_files
from gateway.sftp_files import thd_outbox, thd_outbox_file, thd_receipt_file, thd_receipts
from partners import store
from partners.store import NewPartner
from protocols.mdn import ReceiptEntity
from spool import records
from spool.records import Message, Quarantined, StoredReceipt

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def message(conn, at: datetime, filename: str | None, *, sender="acme", recipient="globex") -> Message:
    m = Message(id=records.new_id(at), received_at=at, sender_id=sender, recipient_id=recipient, channel="sftp",
                sha256="ab" * 32, size=len(filename or "") + 100, kind="ubl-invoice", signed=False, route="mailbox",
                state="delivered", updated_at=at, filename=filename)
    records.insert_message(conn, m, [(recipient, "mailbox")])
    records.put_in_mailbox(conn, m.id, recipient, at)
    return m


def receipt(conn, at: datetime, *, message_id=None, quarantine_id=None, partner="acme",
            body=b"signed") -> StoredReceipt:
    r = StoredReceipt(id=records.new_id(at), kind="acceptance" if message_id else "rejection", partner_id=partner,
                      disposition="automatic-action/MDN-sent-automatically; processed",
                      content_type='multipart/signed; boundary="b"', body=body, created_at=at, state="sent",
                      message_id=message_id, quarantine_id=quarantine_id)
    records.insert_receipt(conn, r)
    return r


@pytest.fixture
def db(engine):
    with engine.begin() as conn:
        for partner_id in ("acme", "globex"):
            store.add_partner(conn, NewPartner(id=partner_id, name=partner_id.title()), T0)
    return engine


def test_outbox_names_the_newest_twin_plainly_and_finds_each_by_its_name(db):
    """Two documents named alike: the newer shows the plain name, the older carries its ID; both are found."""
    with db.begin() as conn:
        old = message(conn, T0, "invoice.xml")
        new = message(conn, T0 + timedelta(minutes=1), "dir\\sub/invoice.xml")
        bare = message(conn, T0 + timedelta(minutes=2), None)
        message(conn, T0 + timedelta(minutes=3), "other.xml", recipient="acme")
    listing = thd_outbox(db, "globex")
    assert [f.name for f in listing] == [f"{bare.id}.xml", "invoice.xml", f"invoice.{old.id}.xml"]
    assert [f.message_id for f in listing] == [bare.id, new.id, old.id]
    for item in listing:
        assert thd_outbox_file(db, "globex", item.name) == item
    assert thd_outbox_file(db, "globex", "other.xml") is None  # acme's, not globex's
    assert thd_outbox_file(db, "globex", "nothing.xml") is None


def test_an_acknowledged_document_leaves_the_outbox(db):
    """Removing a file acknowledges it; it is then neither listed nor found, and its twin takes the plain name."""
    with db.begin() as conn:
        old = message(conn, T0, "invoice.xml")
        new = message(conn, T0 + timedelta(minutes=1), "invoice.xml")
        records.mark_item(conn, "globex", new.id, "acknowledged", T0 + timedelta(minutes=2))
    assert [(f.name, f.message_id) for f in thd_outbox(db, "globex")] == [("invoice.xml", old.id)]
    assert thd_outbox_file(db, "globex", "invoice.xml").message_id == old.id


def test_receipts_are_named_after_the_upload_and_carry_the_whole_entity_when_looked_up(db):
    """Accepted and refused uploads both have a receipt; sizes match the bytes served; other partners' are hidden."""
    with db.begin() as conn:
        accepted = message(conn, T0, "invoice-42.xml")
        first = receipt(conn, T0, message_id=accepted.id, body=b"first")
        refused = Quarantined(id=records.new_id(T0), received_at=T0, sender_id="acme", channel="sftp", size=3,
                              sha256=None, codes="GW-XML", findings=[], filename="invoice-42.xml")
        records.insert_quarantine(conn, refused)
        second = receipt(conn, T0 + timedelta(seconds=1), quarantine_id=refused.id, body=b"second, longer")
        receipt(conn, T0, message_id=message(conn, T0, "theirs.xml", sender="globex", recipient="acme").id,
                partner="globex")
    listing = thd_receipts(db, "acme")
    assert [(f.name, f.receipt_id) for f in listing] == [
        ("invoice-42.xml.mdn", second.id), (f"invoice-42.xml.{first.id}.mdn", first.id)]
    assert all(f.data is None for f in listing)
    for item, stored in zip(listing, (second, first), strict=True):
        found = thd_receipt_file(db, "acme", item.name)
        assert found.data == ReceiptEntity(stored.content_type, stored.body).as_mime()
        assert found.size == item.size == len(found.data)
    assert thd_receipt_file(db, "acme", "theirs.xml.mdn") is None
    assert thd_receipt_file(db, "globex", "invoice-42.xml.mdn") is None


def test_listings_stop_at_the_newest_thousand(db, monkeypatch):
    """Only the newest ``LISTING`` entries are shown, and only they are found by name."""
    monkeypatch.setattr(sftp_files, "LISTING", 2)
    with db.begin() as conn:
        for i in range(3):
            message(conn, T0 + timedelta(minutes=i), f"n{i}.xml")
    assert [f.name for f in thd_outbox(db, "globex")] == ["n2.xml", "n1.xml"]
    assert thd_outbox_file(db, "globex", "n0.xml") is None
