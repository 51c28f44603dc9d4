"""Durability: the database engine and its migrations (and, with the durable-core work, the blob store,
message records, delivery queue, receipts and audit chain). No network code, no reactor."""

__all__ = ["database"]
