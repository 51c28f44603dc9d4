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


# Constraint names are spelled out as partners.schema's naming convention makes them: env.py hands
# Alembic a list of metadata, so op.create_table applies no convention of its own, and later
# migrations (batch mode on SQLite) must be able to find every constraint by its conventional name.


def _partner_fk(table: str) -> sa.Column:
    return sa.Column(
        "partner_id",
        sa.String(63),
        sa.ForeignKey("partners.id", name=f"fk_{table}_partner_id_partners", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=f"pk_{table}")


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
        sa.CheckConstraint("status IN ('active', 'disabled')", name=op.f("ck_partners_status")),
        sa.CheckConstraint("deliver IN ('mailbox', 'as2', 'sftp', 'email')", name=op.f("ck_partners_deliver")),
        _pk("partners"),
    )
    op.create_table(
        "partner_identifiers",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk("partner_identifiers"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.UniqueConstraint("kind", "value", name="uq_partner_identifiers_kind"),
        sa.CheckConstraint("kind IN ('as2', 'participant', 'email')", name=op.f("ck_partner_identifiers_kind")),
        _pk("partner_identifiers"),
    )
    op.create_table(
        "partner_certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk("partner_certificates"),
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
        sa.CheckConstraint("usage IN ('tls', 'sign', 'encrypt')", name=op.f("ck_partner_certificates_usage")),
        _pk("partner_certificates"),
    )
    op.create_table(
        "partner_ssh_keys",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk("partner_ssh_keys"),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("key_type", sa.String(32), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("comment", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("fingerprint", name="uq_partner_ssh_keys_fingerprint"),
        _pk("partner_ssh_keys"),
    )
    op.create_table(
        "partner_allowlist",
        sa.Column("id", sa.Integer, primary_key=True),
        _partner_fk("partner_allowlist"),
        sa.Column("network", sa.String(64), nullable=False),
        sa.UniqueConstraint("partner_id", "network", name="uq_partner_allowlist_partner_id"),
        _pk("partner_allowlist"),
    )
    state = op.create_table(
        "directory_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        _pk("directory_state"),
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
