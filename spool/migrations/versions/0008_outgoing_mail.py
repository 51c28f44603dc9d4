"""Outgoing mail (notifications, invitations) and portal invitations.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from partners.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outgoing_mail",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("partner_id", sa.String(63), nullable=False),
        sa.Column("message_id", sa.String(32), sa.ForeignKey("messages.id", name="fk_outgoing_mail_message_id_messages",
                                                             ondelete="CASCADE")),
        sa.Column("invitation_id", sa.String(32)),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("body", sa.LargeBinary()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", UTCDateTime()),
        sa.Column("last_error", sa.Text()),
        sa.CheckConstraint("kind IN ('notification', 'invitation')", name=op.f("ck_outgoing_mail_kind")),
        sa.CheckConstraint("state IN ('pending', 'sent', 'failed')", name=op.f("ck_outgoing_mail_state")),
    )
    op.create_index("ix_outgoing_mail_due", "outgoing_mail", ["state", "next_attempt_at"])
    op.create_index("ix_outgoing_mail_partner_id", "outgoing_mail", ["partner_id"])
    op.create_index("ix_outgoing_mail_message_id", "outgoing_mail", ["message_id"])
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("partner_id", sa.String(63), sa.ForeignKey("partners.id", name="fk_invitations_partner_id_partners",
                                                             ondelete="CASCADE"), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("token_sha256", sa.String(64)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime()),
        sa.Column("used_at", UTCDateTime()),
        sa.UniqueConstraint("partner_id", "email", name="uq_invitations_partner_id"),
        sa.UniqueConstraint("token_sha256", name="uq_invitations_token_sha256"),
    )
    op.create_index("ix_invitations_partner_id", "invitations", ["partner_id"])


def downgrade() -> None:
    op.drop_table("invitations")
    op.drop_table("outgoing_mail")
