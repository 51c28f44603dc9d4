# -*- test-case-name: tests.admin.test_routes_cli -*-
"""``postroom route …``: routing rules."""

import click


@click.group("route")
def route() -> None:
    """Routing rules: first match wins, else the owner of the receiver identifier."""
