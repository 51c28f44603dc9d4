# -*- test-case-name: tests.admin.test_tokens_cli -*-
"""``postroom token …``: portal API tokens."""

import click


@click.group("token")
def token() -> None:
    """API tokens for the portal's JSON API."""
