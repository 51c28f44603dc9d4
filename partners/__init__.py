"""The partner directory: who may send, from where, with which credentials, and how to deliver to them.

:mod:`partners.schema` holds the tables, :mod:`partners.store` the validated changes the CLI makes,
and :mod:`partners.directory` the immutable snapshot the doors query without touching the database.
"""

__all__ = ["directory", "errors", "identifiers", "networks", "policy", "routes", "schema", "store", "tokens"]
