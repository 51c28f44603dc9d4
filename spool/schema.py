# -*- test-case-name: tests.spool.test_audit -*-
"""The spool's tables: the audit log now; messages, deliveries, receipts and quarantine join it.

They live on the one :data:`partners.schema.metadata`, so the whole schema is one object for
migrations and comparisons (and shares its constraint naming convention).
"""

from sqlalchemy import JSON, BigInteger, Column, Integer, String, Table

from partners.schema import UTCDateTime, metadata

#: Append-only and hash-chained: each row's ``hash`` covers its own fields and the previous row's hash.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("event", String(100), nullable=False),
    Column("message_id", String(64), index=True),
    Column("details", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: One row: the chain's head. Appenders update it first, which serialises them on every backend.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("hash", String(64), nullable=False),
)
