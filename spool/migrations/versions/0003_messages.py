"""Messages, deliveries, mailbox items, quarantine, receipts; routes and API tokens.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")
_TS = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str, nullable: bool = False) -> sa.Column:
    return sa.Column(
        column,
        sa.String(32 if target in ("messages", "quarantine") else 63),
        sa.ForeignKey(f"{target}.id", name=f"fk_{table}_{column}_{target}", ondelete="CASCADE"),
        nullable=nullable,
    )


def upgrade() -> None:
    op.create_table(
        "routes",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        _fk("routes", "sender_id", "partners", nullable=True),
        sa.Column("receiver", sa.String(512)),
        sa.Column("kind", sa.String(32)),
        sa.Column("channel", sa.String(16)),
        _fk("routes", "recipient_id", "partners"),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_routes"),
        sa.UniqueConstraint("position", name="uq_routes_position"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, nullable=False),
        _fk("api_tokens", "partner_id", "partners"),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("secret_sha256", name="uq_api_tokens_secret_sha256"),
    )
    op.create_index("ix_api_tokens_partner_id", "api_tokens", ["partner_id"])
    op.create_table(
        "messages",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("sender_id", sa.String(63), nullable=False),
        sa.Column("recipient_id", sa.String(63), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("external_id", sa.String(998)),
        sa.Column("filename", sa.String(255)),
        sa.Column("content_type", sa.String(255)),
        sa.Column("size", _SEQ, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("number", sa.String(200)),
        sa.Column("issue_date", sa.String(10)),
        sa.Column("type_code", sa.String(16)),
        sa.Column("currency", sa.String(3)),
        sa.Column("supplier_id", sa.String(512)),
        sa.Column("customer_id", sa.String(512)),
        sa.Column("supplier_name", sa.String(500)),
        sa.Column("customer_name", sa.String(500)),
        sa.Column("signed", sa.Boolean, nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("sender_id", "external_id", name="uq_messages_sender_external_id"),
        sa.UniqueConstraint("sender_id", "number", "issue_date", name="uq_messages_sender_document"),
        sa.CheckConstraint("state IN ('accepted', 'delivered', 'failed', 'corrupt')", name=op.f("ck_messages_state")),
    )
    op.create_index("ix_messages_recipient_id", "messages", ["recipient_id"])
    op.create_index("ix_messages_sha256", "messages", ["sha256"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, nullable=False),
        _fk("deliveries", "message_id", "messages"),
        sa.Column("recipient_id", sa.String(63), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("claimed_by", sa.String(200)),
        sa.Column("claimed_at", _TS),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("message_id", "recipient_id", "target", name="uq_deliveries_message_recipient_target"),
        sa.CheckConstraint("state IN ('pending', 'claimed', 'done', 'dead')", name=op.f("ck_deliveries_state")),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])
    op.create_table(
        "mailbox_items",
        sa.Column("id", sa.Integer, nullable=False),
        _fk("mailbox_items", "message_id", "messages"),
        sa.Column("recipient_id", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("delivered_at", _TS, nullable=False),
        sa.Column("downloaded_at", _TS),
        sa.Column("acknowledged_at", _TS),
        sa.PrimaryKeyConstraint("id", name="pk_mailbox_items"),
        sa.UniqueConstraint("message_id", "recipient_id", name="uq_mailbox_items_message_recipient"),
        sa.CheckConstraint("state IN ('new', 'downloaded', 'acknowledged')", name=op.f("ck_mailbox_items_state")),
    )
    op.create_index("ix_mailbox_items_recipient", "mailbox_items", ["recipient_id", "message_id"])
    op.create_table(
        "quarantine",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("sender_id", sa.String(63), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("external_id", sa.String(998)),
        sa.Column("filename", sa.String(255)),
        sa.Column("content_type", sa.String(255)),
        sa.Column("size", _SEQ, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("codes", sa.String(500), nullable=False),
        sa.Column("findings", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index("ix_quarantine_sender_id", "quarantine", ["sender_id"])
    op.create_table(
        "receipts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _fk("receipts", "message_id", "messages", nullable=True),
        _fk("receipts", "quarantine_id", "quarantine", nullable=True),
        sa.Column("partner_id", sa.String(63), nullable=False),
        sa.Column("disposition", sa.String(200), nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_receipts"),
        sa.CheckConstraint("kind IN ('acceptance', 'rejection', 'return')", name=op.f("ck_receipts_kind")),
        sa.CheckConstraint("state IN ('sent', 'pending')", name=op.f("ck_receipts_state")),
    )
    op.create_index("ix_receipts_message_id", "receipts", ["message_id"])
    op.create_index("ix_receipts_quarantine_id", "receipts", ["quarantine_id"])


def downgrade() -> None:
    for table in ("receipts", "quarantine", "mailbox_items", "deliveries", "messages", "api_tokens", "routes"):
        op.drop_table(table)
