"""Partner directory: partners, identifiers, certificates, SSH keys, allowlists, change counter.

Revision ID: 0001
Revises:
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _partner_fk() -> sa.Column:
    return sa.Column(
        "partner_id",
        sa.String(63),
        sa.ForeignKey("partners.id", name=None, ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def upgrade() -> None:
    op.create_table(
        "partners",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("deliver", sa.String(16), nullable=False),
        sa.Column("as2_url", sa.String(2000)),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('active', 'disabled')", name="ck_partners_status"),
        sa.CheckConstraint("deliver IN ('mailbox', 'as2', 'sftp', 'email')", name="ck_partners_deliver"),
    )
    op.create_table(
        "partner_identifiers",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk(),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.UniqueConstraint("kind", "value", name="uq_partner_identifiers_kind"),
        sa.CheckConstraint("kind IN ('as2', 'participant', 'email')", name="ck_partner_identifiers_kind"),
    )
    op.create_table(
        "partner_certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk(),
        sa.Column("usage", sa.String(16), nullable=False),
        sa.Column("is_ca", sa.Boolean, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("serial", sa.String(64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pem", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("usage", "fingerprint", name="uq_partner_certificates_usage"),
        sa.CheckConstraint("usage IN ('tls', 'sign', 'encrypt')", name="ck_partner_certificates_usage"),
    )
    op.create_table(
        "partner_ssh_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk(),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("comment", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "partner_allowlist",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk(),
        sa.Column("network", sa.String(64), nullable=False),
        sa.UniqueConstraint("partner_id", "network", name="uq_partner_allowlist_partner_id"),
    )
    state = op.create_table(
        "directory_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "version": 0, "changed_at": datetime.now(UTC)}])


def downgrade() -> None:
    for table in (
        "directory_state",
        "partner_allowlist",
        "partner_ssh_keys",
        "partner_certificates",
        "partner_identifiers",
        "partners",
    ):
        op.drop_table(table)
