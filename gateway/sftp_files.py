# -*- test-case-name: tests.gateway.test_sftp_files -*-
"""What the SFTP door's ``/outbox/`` and ``/receipts/`` show a partner, read from the database.

``/outbox/`` is the partner's mailbox without what it acknowledged (removing a file acknowledges it, so
it leaves the folder); ``/receipts/`` holds the intake receipt of everything it sent, accepted or
refused, as ``<uploaded name>.mdn``. Both show the newest :data:`LISTING` entries, from light rows (no
document or receipt bytes); a single name is found in those same rows and only then is its receipt
read, so ``stat`` and ``get`` never build a whole listing. When two entries would share a name, the
older ones carry their record ID (``invoice.<id>.xml``, ``invoice.xml.<id>.mdn``).
"""

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection, Engine

from protocols.mdn import ReceiptEntity
from protocols.sftp.server import OutboxFile, ReceiptFile
from protocols.sftp.tree import MAX_NAME, PathRefused, check_name
from spool.schema import mailbox_items, messages, quarantine, receipts

LISTING = 1000  #: entries shown per folder, newest first


def file_name(name: str | None, fallback: str) -> str:
    """The last path segment of a stored file name, or ``fallback`` when there is none fit for the tree."""
    try:
        return check_name((name or "").replace("\\", "/").rsplit("/", 1)[-1])
    except PathRefused:
        return fallback


def _named(rows: Iterable[Any], name_of: Callable[[Any, bool], str]) -> dict[str, Any]:
    """Rows (newest first) by the name each shows: the newest keeps the plain name, older twins get their ID."""
    named: dict[str, Any] = {}
    for row in rows:
        name = name_of(row, False)
        if name in named:
            name = name_of(row, True)
        named[name] = row
    return named


# -- /outbox ------------------------------------------------------------------------------------------------

def _outbox_name(row: Any, with_id: bool) -> str:
    name = file_name(row.filename, f"{row.id}.xml")
    if not with_id:
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{row.id}.{ext}" if dot and stem else f"{name}.{row.id}"


def _outbox_rows(conn: Connection, partner_id: str) -> dict[str, Any]:
    rows = conn.execute(
        select(messages.c.id, messages.c.filename, messages.c.size, messages.c.sha256, messages.c.received_at)
        .join(mailbox_items, mailbox_items.c.message_id == messages.c.id)
        .where(mailbox_items.c.recipient_id == partner_id, mailbox_items.c.state != "acknowledged")
        .order_by(mailbox_items.c.message_id.desc()).limit(LISTING))  # walks the index (records.mailbox)
    return _named(rows, _outbox_name)


def _outbox_file(name: str, row: Any) -> OutboxFile:
    return OutboxFile(name, row.id, row.size, row.sha256, int(row.received_at.timestamp()))


def thd_outbox(engine: Engine, partner_id: str) -> list[OutboxFile]:
    """The partner's unacknowledged documents, newest first."""
    with engine.connect() as conn:
        return [_outbox_file(name, row) for name, row in _outbox_rows(conn, partner_id).items()]


def thd_outbox_file(engine: Engine, partner_id: str, name: str) -> OutboxFile | None:
    """The document ``/outbox/<name>`` shows, if any."""
    with engine.connect() as conn:
        row = _outbox_rows(conn, partner_id).get(name)
    return None if row is None else _outbox_file(name, row)


# -- /receipts ----------------------------------------------------------------------------------------------

def _receipt_name(row: Any, with_id: bool) -> str:
    base = file_name(row.filename, row.message_id or row.quarantine_id or row.id)
    name = f"{base}.{row.id}.mdn" if with_id else f"{base}.mdn"
    return name if len(name.encode("utf-8")) <= MAX_NAME else f"{row.id}.mdn"


def _header_size(content_type: str) -> int:
    return len(ReceiptEntity(content_type, b"").as_mime())


def _receipt_rows(conn: Connection, partner_id: str) -> dict[str, Any]:
    rows = conn.execute(
        select(receipts.c.id, receipts.c.message_id, receipts.c.quarantine_id, receipts.c.created_at,
               receipts.c.content_type, func.length(receipts.c.body).label("body_size"),
               func.coalesce(messages.c.filename, quarantine.c.filename).label("filename"))
        .outerjoin(messages, and_(receipts.c.message_id == messages.c.id, receipts.c.kind == "acceptance"))
        .outerjoin(quarantine, and_(receipts.c.quarantine_id == quarantine.c.id, receipts.c.kind == "rejection"))
        .where(receipts.c.partner_id == partner_id, receipts.c.kind.in_(("acceptance", "rejection")))
        .order_by(receipts.c.created_at.desc(), receipts.c.id.desc()).limit(LISTING))
    return _named(rows, _receipt_name)


def _receipt_file(name: str, row: Any, data: bytes | None = None) -> ReceiptFile:
    size = len(data) if data is not None else _header_size(row.content_type) + row.body_size
    return ReceiptFile(name, size, int(row.created_at.timestamp()), row.id, data)


def thd_receipts(engine: Engine, partner_id: str) -> list[ReceiptFile]:
    """The partner's intake receipts, newest first (names and sizes; no bytes)."""
    with engine.connect() as conn:
        return [_receipt_file(name, row) for name, row in _receipt_rows(conn, partner_id).items()]


def thd_receipt_file(engine: Engine, partner_id: str, name: str) -> ReceiptFile | None:
    """The receipt ``/receipts/<name>`` shows, with its bytes (the whole MIME entity), if any."""
    with engine.connect() as conn:
        row = _receipt_rows(conn, partner_id).get(name)
        if row is None:
            return None
        entity = ReceiptEntity(row.content_type, conn.scalar(select(receipts.c.body).where(receipts.c.id == row.id)))
    return _receipt_file(name, row, entity.as_mime())
