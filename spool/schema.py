# -*- test-case-name: tests.spool.test_records -*-
"""The spool's tables: messages, their deliveries and mailbox items, receipts, quarantine, audit log.

They live on the one :data:`partners.schema.metadata`, so the whole schema is one object for
migrations and comparisons (and shares its constraint naming convention). Partner IDs here are plain
strings, not foreign keys: a message is history and outlives the partner that sent it.
"""

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from partners.schema import UTCDateTime, metadata

_SEQ = BigInteger().with_variant(Integer, "sqlite")

#: Message states: ``accepted`` (durable, deliveries planned), ``delivered`` (every delivery done),
#: ``failed`` (a delivery was dead-lettered), ``corrupt`` (recovery found its blob missing or changed).
MESSAGE_STATES = ("accepted", "delivered", "failed", "corrupt")

#: One row per accepted document. ``id`` is time-ordered (see :func:`spool.records.new_id`).
messages = Table(
    "messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("sender_id", String(63), nullable=False),
    Column("recipient_id", String(63), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("external_id", String(998)),
    Column("filename", String(255)),
    Column("content_type", String(255)),
    Column("size", _SEQ, nullable=False),
    Column("sha256", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("number", String(200)),
    Column("issue_date", String(10)),
    Column("type_code", String(16)),
    Column("currency", String(3)),
    Column("amount", String(40)),
    Column("supplier_id", String(512)),
    Column("customer_id", String(512)),
    Column("supplier_name", String(500)),
    Column("customer_name", String(500)),
    Column("signed", Boolean, nullable=False),
    Column("route", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("sender_id", "external_id", name="uq_messages_sender_external_id"),
    # EN 16931: an invoice number is unique per seller. Enforced here too, so two nodes racing on the same
    # invoice cannot both accept it (rows without a number never collide: NULLs are distinct).
    UniqueConstraint("sender_id", "number", "issue_date", name="uq_messages_sender_document"),
    CheckConstraint("state IN ('accepted', 'delivered', 'failed', 'corrupt')", name="state"),
)

#: Delivery states: ``pending`` (due at ``next_attempt_at``), ``claimed`` (a worker has it),
#: ``done``, ``dead`` (gave up after the last attempt; ``postroom message retry`` revives it).
DELIVERY_STATES = ("pending", "claimed", "awaiting", "done", "dead")

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("recipient_id", String(63), nullable=False),
    Column("target", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_by", String(200)),
    Column("claimed_at", UTCDateTime()),
    Column("last_error", Text),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("remote_id", String(998)),  #: the Message-ID a push was sent under (async MDNs name it)
    Column("mic", String(200)),  #: the MIC that push's MDN must return
    UniqueConstraint("message_id", "recipient_id", "target", name="uq_deliveries_message_recipient_target"),
    Index("ix_deliveries_due", "state", "next_attempt_at"),
    Index("ix_deliveries_remote_id", "remote_id"),
    CheckConstraint("state IN ('pending', 'claimed', 'awaiting', 'done', 'dead')", name="state"),
)

#: Mailbox item states: ``new`` until downloaded, ``acknowledged`` once the recipient says so.
MAILBOX_STATES = ("new", "downloaded", "acknowledged")

#: What a recipient sees (SFTP ``/outbox/``, the portal). One row per (message, recipient), ever.
mailbox_items = Table(
    "mailbox_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("recipient_id", String(63), nullable=False),
    Column("state", String(16), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=False),
    Column("downloaded_at", UTCDateTime()),
    Column("acknowledged_at", UTCDateTime()),
    UniqueConstraint("message_id", "recipient_id", name="uq_mailbox_items_message_recipient"),
    Index("ix_mailbox_items_recipient", "recipient_id", "message_id"),
    Index("ix_mailbox_items_recipient_state", "recipient_id", "state", "message_id"),
    CheckConstraint("state IN ('new', 'downloaded', 'acknowledged')", name="state"),
)

#: Documents refused at intake, kept for the audit with what was wrong; never routed.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("sender_id", String(63), nullable=False, index=True),
    Column("channel", String(16), nullable=False),
    Column("external_id", String(998)),
    Column("filename", String(255)),
    Column("content_type", String(255)),
    Column("size", _SEQ, nullable=False),
    Column("sha256", String(64)),
    Column("codes", String(500), nullable=False),
    Column("findings", JSON, nullable=False),
)

#: ``acceptance`` and ``rejection`` answer a sender at intake; ``return`` tells it the recipient acted.
RECEIPT_KINDS = ("acceptance", "rejection", "return")

#: Receipts exactly as sent (or to be sent): ``acceptance`` and ``rejection`` go back to the sender
#: at intake; ``return`` receipts tell the original sender the recipient downloaded or acknowledged.
receipts = Table(
    "receipts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), index=True),
    Column("quarantine_id", ForeignKey("quarantine.id", ondelete="CASCADE"), index=True),
    Column("partner_id", String(63), nullable=False),
    Column("disposition", String(200), nullable=False),
    Column("content_type", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    #: where and how a receipt still has to travel, e.g. ``{"channel": "as2", "url": …, "as2_to": …}``
    Column("dispatch", JSON(none_as_null=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime()),
    Column("last_error", Text),
    Index("ix_receipts_due", "state", "next_attempt_at"),
    Index("ix_receipts_partner", "partner_id", "created_at"),
    CheckConstraint("kind IN ('acceptance', 'rejection', 'return')", name="kind"),
    CheckConstraint("state IN ('sent', 'pending', 'failed')", name="state"),
)

#: Mail the gateway sends on its own (receipts travel with ``receipts.dispatch``): ``notification`` (a
#: document landed in a mailbox; composed when queued) and ``invitation`` (composed, with a fresh one-time
#: token, at each attempt — so ``body`` is empty and no usable token is ever stored).
outgoing_mail = Table(
    "outgoing_mail",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("partner_id", String(63), nullable=False, index=True),
    Column("message_id", ForeignKey("messages.id", ondelete="CASCADE"), index=True),
    Column("invitation_id", String(32)),
    Column("recipients", JSON, nullable=False),
    Column("body", LargeBinary),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime()),
    Column("last_error", Text),
    Index("ix_outgoing_mail_due", "state", "next_attempt_at"),
    CheckConstraint("kind IN ('notification', 'invitation')", name="kind"),
    CheckConstraint("state IN ('pending', 'sent', 'failed')", name="state"),
)

#: Append-only and hash-chained: each row's ``hash`` covers its own fields and the previous row's hash.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("event", String(100), nullable=False),
    Column("message_id", String(64), index=True),
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: One row: the chain's head. Appenders update it first, which serialises them on every backend.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", _SEQ, nullable=False),
    Column("hash", String(64), nullable=False),
)
