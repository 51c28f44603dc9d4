# -*- test-case-name: tests.admin.test_messages_cli -*-
"""``postroom message …`` and ``postroom spool check``: the spool as operators see it."""

import click


@click.group("message")
def message() -> None:
    """Accepted messages, their deliveries and receipts."""


@click.group("spool")
def spool() -> None:
    """The durable spool's blobs."""
