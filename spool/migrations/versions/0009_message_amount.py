"""The amount due of each invoice (BT-115), for notifications and listings.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("amount", sa.String(40)))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("amount")
