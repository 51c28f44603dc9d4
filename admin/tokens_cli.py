# -*- test-case-name: tests.admin.test_tokens_cli -*-
"""``postroom token …``: portal API tokens.

The secret is printed once, by ``create``, and kept nowhere: the database has only its hash, the
audit trail only its prefix. A lost token is revoked and replaced, never recovered.
"""

import click

from admin.context import Context, json_option, now, pass_ctx
from admin.output import emit_json, emit_table
from partners import tokens


@click.group("token")
def token() -> None:
    """API tokens for the portal's JSON API."""


@token.command("create")
@click.option("--partner", "partner_id", required=True, metavar="ID", help="The partner whose mailbox it opens.")
@click.option("--name", default="api", show_default=True, help="What the token is for, e.g. the program using it.")
@json_option
@pass_ctx
def token_create(c: Context, partner_id: str, name: str, as_json: bool) -> None:
    """Make a token; the secret is printed once, as the last word of the output."""
    with c.change("token.created", partner_id) as (conn, facts):
        info, secret = tokens.create_token(conn, partner_id, name, now())
        facts.update(token=info.id, name=info.name, prefix=info.prefix)
    if as_json:
        emit_json({"id": info.id, "partner": partner_id, "name": info.name, "prefix": info.prefix, "token": secret})
        return
    click.echo(f"API token {info.id} for {partner_id} (prefix {info.prefix}); it is shown only now, keep it safe:")
    click.echo(secret)


@token.command("list")
@click.option("--partner", "partner_id", metavar="ID", help="Only this partner's tokens.")
@json_option
@pass_ctx
def token_list(c: Context, partner_id: str | None, as_json: bool) -> None:
    """Tokens with their prefixes and revocation times (never their secrets)."""
    with c.transaction() as conn:
        rows = [t.to_json() for t in tokens.list_tokens(conn, partner_id)]
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["id", "partner", "name", "prefix", "created_at", "revoked_at"])


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@pass_ctx
def token_revoke(c: Context, token_id: int) -> None:
    """Stop a token working at once; it stays listed with its revocation time."""
    with c.change("token.revoked", None, token=token_id) as (conn, facts):
        revoked = tokens.revoke_token(conn, token_id, now())
        facts.update(partner=revoked.partner_id, prefix=revoked.prefix)
    click.echo(f"API token {token_id} of {revoked.partner_id} revoked")
