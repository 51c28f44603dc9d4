"""Durability: the database engine and its migrations, the content-addressed blob store behind one
filesystem seam, and the hash-chained audit trail (message records, the delivery queue and group
commit join them with the durable-core work). No network code, no reactor."""

__all__ = ["audit", "blobs", "database", "fs", "schema"]
