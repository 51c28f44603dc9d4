"""End to end: acme uploads an invoice, globex fetches it through the portal API with an API token.

Tokens come from the real ``postroom token create``; the portal is reached over its TLS listener with
curl, and the return receipt the download creates is checked with ``openssl cms``.
"""

import json
import subprocess

from tests.e2e.https import BASE_EXAMPLE, post_document, query
from tests.e2e.test_mtls_door import wait_until


def portal(daemon, path, token, *, method="GET"):
    """curl against the portal listener with a bearer token: (status, body bytes)."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(daemon.home.dev_ca / "ca.crt"),
         "--connect-to", f"localhost:443:127.0.0.1:{daemon.ports['portal']}", "-X", method,
         "-H", f"Authorization: Bearer {token}", "-o", "-", "-w", "\n%{http_code}", f"https://localhost{path}"],
        capture_output=True)
    body, _, code = result.stdout.rpartition(b"\n")
    return int(code or 0), body


def token_for(daemon, partner: str) -> str:
    """A fresh API token from the CLI (the last word it prints)."""
    return daemon.cli("token", "create", "--partner", partner, "--name", "e2e").stdout.split()[-1]


def test_recipient_lists_downloads_and_acknowledges_through_the_portal_api(daemon, tmp_path):
    """globex sees acme's invoice, gets the exact bytes, acknowledges it; return receipts go to acme."""
    message_id = post_document(daemon, BASE_EXAMPLE, tmp_path, key="portal-1").json()["message"]
    wait_until(lambda: query(daemon, "SELECT count(*) FROM mailbox_items") == [(1,)])
    globex, acme = token_for(daemon, "globex"), token_for(daemon, "acme")

    status, body = portal(daemon, "/api/v1/invoices", globex)
    assert status == 200
    listing = json.loads(body)
    assert [item["id"] for item in listing["items"]] == [message_id] and listing["next"] is None

    assert portal(daemon, f"/api/v1/invoices/{message_id}", acme)[0] == 404  # not in acme's mailbox
    assert portal(daemon, "/api/v1/invoices", "prt_bogus_token")[0] == 401

    status, content = portal(daemon, f"/api/v1/invoices/{message_id}/content", globex)
    assert status == 200 and content == BASE_EXAMPLE.read_bytes()
    assert portal(daemon, f"/api/v1/invoices/{message_id}/ack", globex, method="POST")[0] == 200
    assert query(daemon, "SELECT state FROM mailbox_items") == [("acknowledged",)]
    returned = query(daemon, "SELECT partner_id, disposition, state FROM receipts WHERE kind = 'return' "
                             "ORDER BY created_at")
    assert [(p, s) for p, _, s in returned] == [("acme", "pending"), ("acme", "pending")]
    assert "displayed" in returned[0][1] and "manual-action" in returned[1][1]
    events = [e for (e,) in query(daemon, "SELECT event FROM audit_log WHERE event LIKE 'mailbox.%'")]
    assert events == ["mailbox.downloaded", "mailbox.acknowledged"]

    status, spec = portal(daemon, "/api/v1/openapi.json", "")
    assert status == 200 and "/invoices/{id}/content" in json.loads(spec)["paths"]
