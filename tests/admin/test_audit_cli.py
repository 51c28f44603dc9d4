"""The audit trail through the CLI: every change is recorded with who did it, and verify finds tampering."""

import getpass
import json
import sqlite3

import pytest


def test_init_and_demo_are_the_first_events(postroom):
    """A new home's trail starts with its creation and the demo partners, and verifies."""
    events = postroom.json("audit", "list")
    assert [(e["id"], e["event"], e["details"].get("partner")) for e in events] == [
        (1, "home.initialised", None), (2, "partner.added", "acme"), (3, "partner.added", "globex")]
    assert "audit trail intact: 3 events" in postroom.ok("audit", "verify").stdout


@pytest.mark.parametrize("args, event, facts", [
    (["partner", "disable", "acme"], "partner.disabled", {}),
    (["partner", "enable", "acme"], "partner.enabled", {}),
    (["partner", "allow-ip", "acme", "10.0.0.0/8"], "partner.allowlist.added", {"network": "10.0.0.0/8"}),
    (["partner", "deny-ip", "acme", "127.0.0.0/8"], "partner.allowlist.removed", {"network": "127.0.0.0/8"}),
    (["partner", "policy", "acme", "require_xmldsig=true"], "partner.policy.changed", {}),
    (["partner", "remove", "globex"], "partner.removed", {"partner": "globex"}),
])
def test_each_change_records_one_event_naming_the_admin(postroom, args, event, facts):
    """A successful change adds exactly one event, by cli:<user>, with the facts of the change."""
    before = postroom.json("audit", "list")
    postroom.ok(*args)
    after = postroom.json("audit", "list")
    assert len(after) == len(before) + 1
    last = after[-1]
    assert last["event"] == event and last["actor"] == f"cli:{getpass.getuser()}"
    assert facts.items() <= ({"partner": "acme"} | last["details"]).items()
    assert postroom.json("audit", "verify")["ok"] is True


def test_certificate_events_carry_the_fingerprint(postroom, write_cert):
    """Adding and removing a certificate records which one, by fingerprint."""
    from certs.x509 import fingerprint

    path, cert = write_cert("acme-next", "sign")
    postroom.ok("partner", "cert", "add", "acme", str(path), "--usage", "sign")
    postroom.ok("partner", "cert", "remove", "acme", fingerprint(cert))
    added, removed = postroom.json("audit", "list")[-2:]
    assert (added["event"], added["details"]["fingerprint"]) == ("partner.certificate.added", fingerprint(cert))
    assert removed["event"] == "partner.certificate.removed"


def test_verify_reports_the_first_tampered_event_and_exits_1(postroom):
    """Editing the database behind Postroom's back is found, named, and fails the command."""
    with sqlite3.connect(postroom.home.path / "postroom.db") as db:
        db.execute("UPDATE audit_log SET actor = 'cli:mallory' WHERE seq = 2")
    message = postroom.refused("audit", "verify")
    assert message == "audit trail broken at event 2: row 2 was changed after it was written"
    result = postroom("audit", "verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["broken_seq"] == 2
