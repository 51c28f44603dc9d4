# -*- test-case-name: tests.admin.test_routes_cli -*-
"""``postroom route …``: routing rules."""

import click

from admin.context import Context, json_option, now, pass_ctx
from admin.output import emit_json, emit_table
from partners import routes


@click.group("route")
def route() -> None:
    """Routing rules: first match wins, else the owner of the receiver identifier."""


@route.command("add")
@click.option("--to", "recipient_id", required=True, metavar="PARTNER", help="The partner that receives matches.")
@click.option("--from", "sender_id", metavar="PARTNER", help="Match messages from this partner.")
@click.option("--receiver", metavar="SCHEME:VALUE", help="Match documents addressed to this participant ID.")
@click.option("--kind", type=click.Choice(routes.KINDS), help="Match this kind of document.")
@click.option("--channel", type=click.Choice(routes.CHANNELS), help="Match messages that came in through this door.")
@click.option("--position", type=click.IntRange(min=1), help="Insert before the rule at this position (default: last).")
@click.option("--catch-all", is_flag=True, help="A rule with no criteria: it matches every message.")
@pass_ctx
def route_add(c: Context, recipient_id: str, sender_id: str | None, receiver: str | None, kind: str | None,
              channel: str | None, position: int | None, catch_all: bool) -> None:
    """Add a rule; rules are tried in position order and the first match decides the recipient."""
    criteria = {"sender_id": sender_id, "receiver": receiver, "kind": kind, "channel": channel}
    with c.change("route.added", recipient_id) as (conn, facts):
        rule = routes.add_route(conn, recipient_id, now(), position=position, catch_all=catch_all, **criteria)
        facts["route"] = rule.to_json()
    click.echo(f"route {rule.id} added at position {rule.position}: matches go to {recipient_id}")


@route.command("list")
@json_option
@pass_ctx
def route_list(c: Context, as_json: bool) -> None:
    """Every rule in the order they are tried; '-' matches anything."""
    with c.transaction() as conn:
        rows = [r.to_json() for r in routes.load_routes(conn)]
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["position", "id", "sender_id", "receiver", "kind", "channel", "recipient_id"])


@route.command("remove")
@click.argument("route_id", metavar="ID", type=int)
@pass_ctx
def route_remove(c: Context, route_id: int) -> None:
    """Delete a rule by ID (see `postroom route list`)."""
    with c.change("route.removed", None) as (conn, facts):
        rule = routes.remove_route(conn, route_id, now())
        facts.update(partner=rule.recipient_id, route=rule.to_json())
    click.echo(f"route {route_id} removed")
