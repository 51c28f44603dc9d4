"""SSH certificate authorities: a partner's SSH key may be a CA whose user certificates log in as the partner.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partner_ssh_keys") as batch:
        batch.add_column(sa.Column("is_ca", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("partner_ssh_keys") as batch:
        batch.drop_column("is_ca")
