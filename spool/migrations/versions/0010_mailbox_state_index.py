"""Mailbox listings filtered by state walk an index too (``state=new``, newest first).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_mailbox_items_recipient_state", "mailbox_items", ["recipient_id", "state", "message_id"])


def downgrade() -> None:
    op.drop_index("ix_mailbox_items_recipient_state", table_name="mailbox_items")
