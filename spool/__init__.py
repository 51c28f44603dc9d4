"""Durability: the database engine and its migrations, the content-addressed blob store behind one
filesystem seam, message records and the delivery queue, the blocking half of group commit, spool
checks, and the hash-chained audit trail. No network code, no reactor."""

__all__ = ["audit", "blobs", "check", "commit", "crashpoints", "database", "fs", "records", "schema"]
