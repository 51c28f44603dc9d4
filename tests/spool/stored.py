"""Accepted messages and quarantined payloads made the way the intake makes them: blob published, then rows.

Shared by the spool tests and the CLI tests that need messages to list, show, retry, export and check.
"""

import errno
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import Connection

from spool import records
from spool.blobs import BlobStore
from spool.fs import OSFileSystem
from spool.records import Message, Quarantined
from tests.spool.test_blobs import put as put_blob

__all__ = ["UnreadableBlob", "finish_deliveries", "kill_deliveries", "put_blob", "store_message", "store_quarantined"]


class UnreadableBlob(OSFileSystem):
    """The real filesystem, except that opening one blob fails with EIO."""

    def __init__(self, broken: str):
        self.broken = broken

    def open_read(self, path: Path):
        if path.name == self.broken:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return super().open_read(path)


def store_message(conn: Connection, blobs: BlobStore, data: bytes, received_at: datetime, *,
                  sender_id: str = "acme", recipient_id: str = "globex", targets: tuple[str, ...] = ("mailbox",),
                  **fields) -> Message:
    """Publish ``data`` and record it as an accepted message with one delivery per target."""
    sha = put_blob(blobs, data)
    values = dict(
        id=records.new_id(received_at), received_at=received_at, sender_id=sender_id, recipient_id=recipient_id,
        channel="as2", sha256=sha, size=len(data), kind="ubl-invoice", signed=True, route="owner",
        state="accepted", updated_at=received_at, number="INV-1", external_id=None,
    )
    values.update(fields)
    message = Message(**values)
    records.insert_message(conn, message, [(recipient_id, target) for target in targets])
    return message


def store_quarantined(conn: Connection, blobs: BlobStore, data: bytes | None, received_at: datetime) -> Quarantined:
    """Record a refused payload from acme, keeping its bytes unless ``data`` is None."""
    item = Quarantined(
        id=records.new_id(received_at), received_at=received_at, sender_id="acme", channel="sftp",
        size=len(data or b""), sha256=put_blob(blobs, data) if data is not None else None, codes="XML-NOT-WELL-FORMED",
        findings=[{"code": "XML-NOT-WELL-FORMED", "message": "not XML"}],
    )
    records.insert_quarantine(conn, item)
    return item


def kill_deliveries(conn: Connection, message: Message, now: datetime) -> None:
    """Dead-letter every due delivery of ``message``, as a worker does after its last attempt."""
    _settle(conn, message, now, lambda d: records.fail(conn, d, "worker-1", now, "connection refused", retry_at=None))


def finish_deliveries(conn: Connection, message: Message, now: datetime) -> None:
    """Complete every due delivery of ``message``."""
    _settle(conn, message, now, lambda d: records.complete(conn, d, "worker-1", now))


def _settle(conn: Connection, message: Message, now: datetime, outcome) -> None:
    """Claim what is due, apply ``outcome`` to this message's deliveries, and put the others back."""
    for delivery in records.claim_due(conn, now, "worker-1", 100, timedelta(minutes=5)):
        if delivery.message_id == message.id:
            assert outcome(delivery)
    records.release_claims(conn, "worker-1", now)
