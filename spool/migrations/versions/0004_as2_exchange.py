"""AS2 exchange: per-partner sending options, receipts sent later (async MDNs), deliveries awaiting an MDN.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("partners") as batch:
        batch.add_column(sa.Column("as2_options", sa.JSON))
    with op.batch_alter_table("receipts") as batch:
        batch.add_column(sa.Column("dispatch", sa.JSON))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("next_attempt_at", _TS))
        batch.add_column(sa.Column("last_error", sa.Text))
        batch.drop_constraint(op.f("ck_receipts_state"), type_="check")
        batch.create_check_constraint(op.f("ck_receipts_state"), "state IN ('sent', 'pending', 'failed')")
        batch.create_index("ix_receipts_due", ["state", "next_attempt_at"])
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("remote_id", sa.String(998)))
        batch.add_column(sa.Column("mic", sa.String(200)))
        batch.drop_constraint(op.f("ck_deliveries_state"), type_="check")
        batch.create_check_constraint(op.f("ck_deliveries_state"),
                                      "state IN ('pending', 'claimed', 'awaiting', 'done', 'dead')")
        batch.create_index("ix_deliveries_remote_id", ["remote_id"])


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_index("ix_deliveries_remote_id")
        batch.drop_constraint(op.f("ck_deliveries_state"), type_="check")
        batch.create_check_constraint(op.f("ck_deliveries_state"), "state IN ('pending', 'claimed', 'done', 'dead')")
        batch.drop_column("mic")
        batch.drop_column("remote_id")
    with op.batch_alter_table("receipts") as batch:
        batch.drop_index("ix_receipts_due")
        batch.drop_constraint(op.f("ck_receipts_state"), type_="check")
        batch.create_check_constraint(op.f("ck_receipts_state"), "state IN ('sent', 'pending')")
        for column in ("last_error", "next_attempt_at", "attempts", "dispatch"):
            batch.drop_column(column)
    with op.batch_alter_table("partners") as batch:
        batch.drop_column("as2_options")
