# -*- test-case-name: tests.e2e.test_smtp_door -*-
"""The receipt courier's ``email`` sender: the stored signed receipt, byte for byte, mailed to the sender.

A mailed invoice's receipt (``dispatch = {"channel": "email", "to": …, "in_reply_to": …}``) goes to the
envelope sender of the mail it answers, threaded under it, through the configured relay, with the null
reverse-path (RFC 8098 §3) and ``Auto-Submitted: auto-replied`` (RFC 3834), so no autoresponder or
bounce can start a loop with the door.
"""

from collections.abc import Callable
from datetime import datetime

from twisted.internet.defer import Deferred

from protocols.mdn import ReceiptEntity
from protocols.smtp import compose
from protocols.smtp.relay import Relay
from spool.records import StoredReceipt

_SUBJECTS = {"acceptance": "Receipt: accepted", "rejection": "Receipt: refused", "return": "Return receipt"}


class MailReceipts:
    """Mails receipts through ``relay`` from ``sender`` (an address at ``domain``)."""

    def __init__(self, relay: Relay, sender: str, domain: str, now: Callable[[], datetime]):
        self._relay = relay
        self._sender = sender
        self._domain = domain
        self._now = now

    def send(self, receipt: StoredReceipt) -> Deferred:
        """Fires once the relay took the mail; fails with the relay's reason."""
        dispatch = receipt.dispatch or {}
        in_reply_to = dispatch.get("in_reply_to")
        message = compose.receipt_mail(
            ReceiptEntity(receipt.content_type, receipt.body), sender=self._sender, to=dispatch["to"],
            subject=_SUBJECTS.get(receipt.kind, "Receipt"), in_reply_to=f"<{in_reply_to}>" if in_reply_to else None,
            now=self._now(), message_id_domain=self._domain)
        return self._relay.send("", [dispatch["to"]], message)  # null reverse-path: nothing answers a receipt
