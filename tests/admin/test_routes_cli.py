"""``postroom route add|list|remove`` through the CLI: the rules' order, audit events and refusals."""

import getpass

import pytest


def routes(postroom) -> list[dict]:
    """``route list --json``."""
    return postroom.json("route", "list")


def test_add_list_and_remove(postroom):
    """Rules are listed in the order they are tried, as JSON objects with an ``id``, and go away by ID."""
    assert routes(postroom) == []
    assert postroom.ok("route", "list").stdout == "(none)\n"

    out = postroom.ok("route", "add", "--to", "globex", "--from", "acme", "--kind", "ubl-invoice").stdout
    assert out == "route 1 added at position 1: matches go to globex\n"
    postroom.ok("route", "add", "--to", "acme", "--receiver", "0088:ABC", "--channel", "sftp")
    out = postroom.ok("route", "add", "--to", "acme", "--kind", "opaque", "--position", "1").stdout
    assert out == "route 3 added at position 1: matches go to acme\n"

    assert routes(postroom) == [
        {"id": 3, "position": 1, "recipient_id": "acme", "sender_id": None, "receiver": None, "kind": "opaque",
         "channel": None},
        {"id": 1, "position": 2, "recipient_id": "globex", "sender_id": "acme", "receiver": None,
         "kind": "ubl-invoice", "channel": None},
        {"id": 2, "position": 3, "recipient_id": "acme", "sender_id": None, "receiver": "0088:abc", "kind": None,
         "channel": "sftp"},
    ]
    table = postroom.ok("route", "list").stdout.splitlines()
    assert table[0].split() == ["POSITION", "ID", "SENDER_ID", "RECEIVER", "KIND", "CHANNEL", "RECIPIENT_ID"]
    assert table[2].split() == ["2", "1", "acme", "-", "ubl-invoice", "-", "globex"]

    assert postroom.ok("route", "remove", "1").stdout == "route 1 removed\n"
    assert [r["id"] for r in routes(postroom)] == [3, 2]


def test_a_catch_all_rule_needs_the_flag(postroom):
    """A rule with no criteria is refused unless --catch-all says it is meant to match everything."""
    assert "pass --catch-all" in postroom.refused("route", "add", "--to", "globex")
    postroom.ok("route", "add", "--to", "globex", "--catch-all")
    [rule] = routes(postroom)
    assert (rule["sender_id"], rule["receiver"], rule["kind"], rule["channel"]) == (None, None, None, None)


def test_changes_are_audited_and_reach_the_daemons(postroom):
    """Each change is one audit event naming the recipient and the rule, and bumps the directory version."""
    before = postroom.snapshot()
    postroom.ok("route", "add", "--to", "globex", "--from", "acme")
    postroom.ok("route", "remove", "1")
    after = postroom.snapshot()
    assert after["version"] == before["version"] + 2
    added, removed = after["audit"][len(before["audit"]):]
    rule = {"id": 1, "position": 1, "recipient_id": "globex", "sender_id": "acme", "receiver": None, "kind": None,
            "channel": None}
    assert (added["event"], added["details"]) == ("route.added", {"partner": "globex", "route": rule})
    assert (removed["event"], removed["details"]) == ("route.removed", {"partner": "globex", "route": rule})
    assert added["actor"] == removed["actor"] == f"cli:{getpass.getuser()}"
    assert postroom.json("audit", "verify")["ok"] is True


@pytest.mark.parametrize("args, message", [
    (["add", "--to", "nobody", "--from", "acme"], "no partner with ID 'nobody'"),
    (["add", "--to", "globex", "--from", "nobody"], "no partner with ID 'nobody'"),
    (["add", "--to", "globex", "--receiver", "5798000000001"],
     "participant ID '5798000000001' must look like SCHEME:VALUE, e.g. 0088:5798000000001"),
    (["add", "--to", "globex", "--kind", "opaque", "--catch-all"],
     "--catch-all matches every message; it takes no --from, --receiver, --kind or --channel"),
    (["add", "--to", "globex", "--kind", "opaque", "--position", "3"],
     "position 3 is past the end: the last rule is at position 1 (leave the position out to add a rule at the end)"),
    (["remove", "7"], "no route with ID 7"),
])
def test_bad_changes_are_refused_and_change_nothing(postroom, args, message):
    """Exit 1 with one line saying why; the rules, the directory version and the audit trail are untouched."""
    postroom.ok("route", "add", "--to", "acme", "--kind", "cii-invoice")
    before = postroom.snapshot(), routes(postroom)
    assert postroom.refused("route", *args) == message
    assert (postroom.snapshot(), routes(postroom)) == before


@pytest.mark.parametrize("args", [
    ["add", "--from", "acme"],
    ["add", "--to", "globex", "--kind", "invoice"],
    ["add", "--to", "globex", "--channel", "ftp"],
    ["add", "--to", "globex", "--kind", "opaque", "--position", "0"],
    ["remove", "first"],
    ["remove"],
])
def test_usage_errors_exit_2(postroom, args):
    """A missing option, a value outside the choices or a non-number is a usage error, exit 2."""
    result = postroom("route", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert routes(postroom) == []
