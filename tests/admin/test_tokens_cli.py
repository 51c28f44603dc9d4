"""``postroom token``: create prints the secret once, list never does, revoke stops it; all audited."""

import getpass
import json
import re
from datetime import UTC, datetime

import pytest

from gateway.config import load
from partners.tokens import authenticate
from spool.database import create_engine

SECRET = re.compile(r"prt_[a-z0-9]{8}_[A-Za-z0-9_-]{43}")


def works(postroom, secret: str) -> str | None:
    """The partner the home's database authenticates ``secret`` as, or None."""
    engine = create_engine(load(postroom.home).database_url)
    try:
        with engine.connect() as conn:
            info = authenticate(conn, secret, datetime.now(UTC))
    finally:
        engine.dispose()
    return info.partner_id if info is not None else None


def test_create_prints_an_explanation_then_the_token_last(postroom):
    """The secret is the last word of stdout, appears once, and opens the partner's mailbox."""
    out = postroom.ok("token", "create", "--partner", "acme", "--name", "erp").stdout
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "acme" in lines[0]
    secret = out.split()[-1]
    assert SECRET.fullmatch(secret) and out.count(secret) == 1
    assert works(postroom, secret) == "acme"


def test_create_json_has_the_token_and_its_names(postroom):
    """--json prints id, partner, name, prefix and token for scripts."""
    created = postroom.json("token", "create", "--partner", "globex")
    assert set(created) == {"id", "partner", "name", "prefix", "token"}
    assert (created["partner"], created["name"]) == ("globex", "api")
    assert created["token"].split("_")[1] == created["prefix"]
    assert works(postroom, created["token"]) == "globex"


def test_list_shows_tokens_without_secrets(postroom):
    """A listing is an array of objects with an id; --partner filters; secrets never appear."""
    a = postroom.json("token", "create", "--partner", "acme")
    g = postroom.json("token", "create", "--partner", "globex")
    listing = postroom.json("token", "list")
    assert [(t["id"], t["partner"], t["prefix"], t["revoked_at"]) for t in listing] == [
        (a["id"], "acme", a["prefix"], None), (g["id"], "globex", g["prefix"], None)]
    assert [t["id"] for t in postroom.json("token", "list", "--partner", "globex")] == [g["id"]]
    table = postroom.ok("token", "list").stdout
    assert a["prefix"] in table and g["prefix"] in table
    for text in (table, json.dumps(listing)):
        assert a["token"] not in text and g["token"] not in text


def test_revoke_stops_the_token_at_once(postroom):
    """After revoke the secret no longer authenticates and the listing shows when it was revoked."""
    created = postroom.json("token", "create", "--partner", "acme")
    assert postroom.ok("token", "revoke", created["id"]).stdout == f"API token {created['id']} of acme revoked\n"
    assert works(postroom, created["token"]) is None
    assert postroom.json("token", "list")[0]["revoked_at"] is not None


@pytest.mark.parametrize("args, message", [
    (["token", "create", "--partner", "initech"], "no partner with ID 'initech'"),
    (["token", "create", "--partner", "acme", "--name", " "], "--name must be 1-200 printable characters"),
    (["token", "list", "--partner", "initech"], "no partner with ID 'initech'"),
    (["token", "revoke", "42"], "no API token with ID 42"),
])
def test_refusals_are_one_line_and_change_nothing(postroom, args, message):
    """Unknown partners and tokens, and bad names, exit 1 with one line and no audit event."""
    before = postroom.snapshot()
    assert postroom.refused(*args) == message
    assert postroom.snapshot() == before


def test_revoking_twice_is_refused(postroom):
    """The second revoke says when the first happened and records nothing."""
    created = postroom.json("token", "create", "--partner", "acme")
    postroom.ok("token", "revoke", created["id"])
    before = postroom.snapshot()
    assert postroom.refused("token", "revoke", created["id"]).startswith(f"API token {created['id']} was already "
                                                                         "revoked at ")
    assert postroom.snapshot() == before


def test_create_and_revoke_are_audited_without_the_secret(postroom):
    """One event each, by cli:<user>, naming the partner, token and prefix; the secret is nowhere in the trail."""
    created = postroom.json("token", "create", "--partner", "acme", "--name", "erp")
    postroom.ok("token", "revoke", created["id"])
    made, revoked = postroom.json("audit", "list")[-2:]
    assert (made["event"], made["actor"]) == ("token.created", f"cli:{getpass.getuser()}")
    assert made["details"] == {"partner": "acme", "token": created["id"], "name": "erp", "prefix": created["prefix"]}
    assert revoked["event"] == "token.revoked"
    assert revoked["details"] == {"partner": "acme", "token": created["id"], "prefix": created["prefix"]}
    trail = postroom.ok("audit", "list", "--json").stdout
    assert created["token"] not in trail and created["token"].split("_")[2] not in trail
    assert postroom.json("audit", "verify")["ok"] is True
