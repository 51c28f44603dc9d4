# -*- test-case-name: tests.gateway.test_delivery -*-
"""Filing a document in a recipient's mailbox, inside the caller's transaction.

The intake files at once, in the transaction that accepts the document (D36), and the delivery worker
files the mailbox deliveries that recovery or an operator planned later; both go through here, so the
item, its ``delivery.done`` event and the recipient's notification are made the same way, all or none.
"""

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Connection
from twisted.logger import Logger

from spool import audit, records

ACTOR = "gateway"
_log = Logger()

#: ``on_filed(conn, message_id, recipient_id, now)``: runs in the filing transaction for each newly filed
#: item (the mail planner queues the recipient's notification there, so it is never lost nor doubled).
OnFiled = Callable[[Connection, str, str, datetime], None]


def file_in_mailbox(conn: Connection, delivery_id: int, message_id: str, recipient_id: str, now: datetime,
                    on_filed: OnFiled | None = None) -> bool:
    """File the message for ``recipient_id`` and audit the done delivery; False when it was filed already."""
    new = records.put_in_mailbox(conn, message_id, recipient_id, now)
    audit.append(conn, ACTOR, "delivery.done", now, message_id=message_id, details={
        "delivery": delivery_id, "target": "mailbox", "recipient": recipient_id})
    if new and on_filed is not None:
        _notify(conn, on_filed, message_id, recipient_id, now)
    return new


def _notify(conn: Connection, on_filed: OnFiled, message_id: str, recipient_id: str, now: datetime) -> None:
    """Run ``on_filed`` in a savepoint: a mail that cannot be composed must never undo or block the filing."""
    try:
        with conn.begin_nested():
            on_filed(conn, message_id, recipient_id, now)
    except Exception as e:
        _log.warn("cannot queue the mail about message {id} for {recipient}: {error}", id=message_id,
                  recipient=recipient_id, error=e)
        audit.append(conn, ACTOR, "mail.failed", now, message_id=message_id, details={
            "kind": "notification", "partner": recipient_id, "error": str(e)[:500]})
