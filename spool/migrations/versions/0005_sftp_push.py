"""SFTP push: the partner server's URL and pinned host key.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partners") as batch:
        batch.add_column(sa.Column("sftp_url", sa.String(2000)))
        batch.add_column(sa.Column("sftp_host_key", sa.String(16000)))


def downgrade() -> None:
    with op.batch_alter_table("partners") as batch:
        batch.drop_column("sftp_host_key")
        batch.drop_column("sftp_url")
