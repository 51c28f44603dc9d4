"""Receipts by partner, newest first: what the SFTP door's ``/receipts/`` lists.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_receipts_partner", "receipts", ["partner_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_receipts_partner", table_name="receipts")
