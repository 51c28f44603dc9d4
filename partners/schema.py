# -*- test-case-name: tests.partners.test_store -*-
"""The partner directory's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Uniqueness that matters for security is enforced by the database, not only by the CLI: an AS2 ID,
participant ID, email address, certificate or SSH key identifies at most one partner.
"""

from datetime import UTC

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive, we read it back aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; Postroom stores UTC-aware timestamps only")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


#: Constraint names every Postroom table uses; migrations spell them out to match.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

partners = Table(
    "partners",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("deliver", String(16), nullable=False),
    Column("as2_url", String(2000)),
    Column("policy", JSON, nullable=False),
    Column("as2_options", JSON(none_as_null=True)),  #: how AS2 messages to the partner are wrapped (None: defaults)
    Column("sftp_url", String(2000)),  #: where the ``sftp`` push uploads: ``sftp://user@host:port/dir``
    Column("sftp_host_key", String(16000)),  #: the pinned OpenSSH host key line of that server
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint("status IN ('active', 'disabled')", name="status"),
    CheckConstraint("deliver IN ('mailbox', 'as2', 'sftp', 'email')", name="deliver"),
)

_partner_fk = dict(ondelete="CASCADE")

identifiers = Table(
    "partner_identifiers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partner_id", ForeignKey("partners.id", **_partner_fk), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("value", String(512), nullable=False),
    UniqueConstraint("kind", "value"),
    CheckConstraint("kind IN ('as2', 'participant', 'email')", name="kind"),
)

certificates = Table(
    "partner_certificates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partner_id", ForeignKey("partners.id", **_partner_fk), nullable=False, index=True),
    Column("usage", String(16), nullable=False),
    Column("is_ca", Boolean, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("issuer", Text, nullable=False),
    Column("serial", String(64), nullable=False),
    Column("not_before", UTCDateTime(), nullable=False),
    Column("not_after", UTCDateTime(), nullable=False),
    Column("pem", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("usage", "fingerprint"),
    CheckConstraint("usage IN ('tls', 'sign', 'encrypt')", name="usage"),
)

ssh_keys = Table(
    "partner_ssh_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partner_id", ForeignKey("partners.id", **_partner_fk), nullable=False, index=True),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("key_type", String(32), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("comment", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    #: a certificate authority: OpenSSH user certificates it signs for the partner's ID log in as the partner
    Column("is_ca", Boolean, nullable=False, server_default=false()),
)

allowlist = Table(
    "partner_allowlist",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partner_id", ForeignKey("partners.id", **_partner_fk), nullable=False, index=True),
    Column("network", String(64), nullable=False),
    UniqueConstraint("partner_id", "network"),
)

#: One row whose ``version`` every directory change increments in the same transaction, so a
#: running daemon notices a CLI change by polling one integer.
directory_state = Table(
    "directory_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),
)

#: Routing rules, tried in ``position`` order; the first whose non-null criteria all match decides the
#: recipient. No match falls back to the partner that owns the document's receiver identifier.
routes = Table(
    "routes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("sender_id", ForeignKey("partners.id", **_partner_fk)),
    Column("receiver", String(512)),
    Column("kind", String(32)),
    Column("channel", String(16)),
    Column("recipient_id", ForeignKey("partners.id", **_partner_fk), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("position"),
)

#: Portal API tokens: only the SHA-256 of the secret is kept (the secret has 256 random bits, so a
#: slow hash buys nothing); ``prefix`` lets admins and logs name a token without revealing it.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partner_id", ForeignKey("partners.id", **_partner_fk), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)


#: Invitations to the portal for a recipient's registered address. The one-time token is made when the
#: mail goes out and only its SHA-256 is kept, with its expiry; ``used_at`` is set when it is redeemed.
invitations = Table(
    "invitations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("partner_id", ForeignKey("partners.id", **_partner_fk), nullable=False, index=True),
    Column("email", String(320), nullable=False),
    Column("token_sha256", String(64), unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime()),
    Column("used_at", UTCDateTime()),
    UniqueConstraint("partner_id", "email"),
)
