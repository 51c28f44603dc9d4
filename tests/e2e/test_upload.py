"""End to end: the HTTPS upload door of a real daemon, driven with curl, receipts checked with openssl.

Each test posts as the demo partner ``acme`` (whose participant ID is the supplier of the BIS 3 base
example) to ``globex`` (its customer), and checks what the partner sees *and* what the gateway kept.
"""

import base64
import hashlib

from tests.e2e.https import BASE_EXAMPLE, FIXTURES, get, invoice, post_document, query, verify_receipt
from tests.e2e.test_mtls_door import metric, wait_until


def test_accepted_invoice_gets_a_signed_receipt_and_reaches_the_recipients_mailbox(daemon, tmp_path):
    """201 + Location; the receipt verifies with openssl and carries our MIC; globex gets one mailbox item."""
    response = post_document(daemon, BASE_EXAMPLE, tmp_path, key="acme-0001", filename="base-example.xml")
    assert response.status == 201, response
    body = response.json()
    assert body["outcome"] == "accepted" and body["findings"] == []
    assert response.headers["location"] == body["receipt"]

    receipt = get(daemon, body["receipt"], tmp_path)
    assert receipt.status == 200
    report = verify_receipt(daemon, receipt, tmp_path)
    mic = base64.b64encode(hashlib.sha256(BASE_EXAMPLE.read_bytes()).digest()).decode()
    assert f"Received-Content-MIC: {mic}, sha-256" in report
    assert "Original-Message-ID: <acme-0001>" in report
    assert "; processed\r\n" in report

    [(sender, recipient, number, filename, kind)] = query(
        daemon, "SELECT sender_id, recipient_id, number, filename, kind FROM messages WHERE id = :id",
        id=body["message"])
    assert (sender, recipient, number, filename, kind) == ("acme", "globex", "Snippet1", "base-example.xml",
                                                           "ubl-invoice")
    wait_until(lambda: query(daemon, "SELECT state FROM messages")[0][0] == "delivered")
    assert query(daemon, "SELECT recipient_id, state FROM mailbox_items") == [("globex", "new")]
    assert metric(daemon, 'postroom_messages_total{channel="https",outcome="accepted"}') == 1
    assert metric(daemon, "postroom_commit_batch_size_count") == 1


def test_a_repeat_gets_the_original_receipt_and_creates_nothing(daemon, tmp_path):
    """Same Idempotency-Key, or the same invoice without one: 200 and byte-identical receipt, still one message."""
    first = post_document(daemon, BASE_EXAMPLE, tmp_path, key="k-1")
    assert first.status == 201
    original = get(daemon, first.json()["receipt"], tmp_path).body
    for key in ("k-1", None):
        again = post_document(daemon, BASE_EXAMPLE, tmp_path, key=key)
        assert again.status == 200, again
        assert again.json()["outcome"] == "duplicate"
        assert again.json()["message"] == first.json()["message"]
        assert get(daemon, again.json()["receipt"], tmp_path).body == original
    assert query(daemon, "SELECT count(*) FROM messages") == [(1,)]
    events = [e for (e,) in query(daemon, "SELECT event FROM audit_log WHERE event LIKE 'message.%'")]
    assert events == ["message.accepted", "message.duplicate", "message.duplicate"]


def test_reused_invoice_number_or_message_id_for_other_content_is_refused(daemon, tmp_path):
    """GW-DUP with a reason, the second payload quarantined; the first message is untouched."""
    assert post_document(daemon, invoice("INV-7"), tmp_path, key="m-1").status == 201
    changed = post_document(daemon, invoice("INV-7", note="changed"), tmp_path, key="m-2")
    assert changed.status == 422
    assert [f["code"] for f in changed.json()["findings"]] == ["GW-DUP"]
    assert "INV-7" in changed.json()["findings"][0]["message"]
    reused_key = post_document(daemon, invoice("INV-8"), tmp_path, key="m-1")
    assert reused_key.status == 422
    assert "m-1" in reused_key.json()["findings"][0]["message"]
    assert query(daemon, "SELECT count(*) FROM messages") == [(1,)]
    assert query(daemon, "SELECT codes FROM quarantine") == [("GW-DUP",), ("GW-DUP",)]


def test_hostile_xml_is_refused_with_a_negative_receipt_and_kept_in_quarantine(daemon, tmp_path):
    """Billion laughs: 422 GW-DOCTYPE, a signed processed/error receipt, the exact bytes kept under their hash."""
    attack = FIXTURES / "attacks" / "billion-laughs.xml"
    response = post_document(daemon, attack, tmp_path)
    assert response.status == 422
    assert [f["code"] for f in response.json()["findings"]] == ["GW-DOCTYPE"]
    report = verify_receipt(daemon, get(daemon, response.json()["receipt"], tmp_path), tmp_path)
    assert "processed/error: unsupported-format" in report
    assert "Error: GW-DOCTYPE:" in report
    [(sha, size)] = query(daemon, "SELECT sha256, size FROM quarantine WHERE id = :id",
                          id=response.json()["quarantine"])
    kept = daemon.home.path / "spool" / "blobs" / sha[:2] / sha[2:4] / sha
    assert kept.read_bytes() == attack.read_bytes() and size == len(attack.read_bytes())
    assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]


def test_a_document_nobody_can_receive_is_refused(daemon, tmp_path):
    """No buyer endpoint and no rule: GW-ROUTE-UNKNOWN, telling the sender what to put where."""
    response = post_document(daemon, FIXTURES / "negative" / "peppol-no-buyer-endpoint.xml", tmp_path)
    assert response.status == 422
    [finding] = response.json()["findings"]
    assert finding["code"] == "GW-ROUTE-UNKNOWN" and "EndpointID" in finding["message"]


def test_sender_policy_requiring_xmldsig_refuses_unsigned_invoices(daemon, tmp_path):
    """After ``partner policy acme require_xmldsig=true`` an unsigned invoice gets GW-SIG-MISSING."""
    daemon.cli("partner", "policy", "acme", "require_xmldsig=true")
    wait_until(lambda: post_document(daemon, invoice("S-1"), tmp_path).status == 422)
    response = post_document(daemon, invoice("S-2"), tmp_path)
    assert [f["code"] for f in response.json()["findings"]] == ["GW-SIG-MISSING"]


def test_receipts_are_private_to_their_partner(daemon, tmp_path):
    """globex asking for acme's receipt gets 404, exactly like a receipt that does not exist."""
    receipt_path = post_document(daemon, BASE_EXAMPLE, tmp_path).json()["receipt"]
    assert get(daemon, receipt_path, tmp_path, partner="globex").status == 404
    assert get(daemon, "/api/v1/receipts/" + "0" * 32, tmp_path).status == 404
    assert get(daemon, "/api/v1/receipts/../../etc/passwd", tmp_path).status == 404


def test_oversized_payload_is_refused_with_413_and_nothing_kept(home, tmp_path):
    """Above ``[limits] max_payload_bytes``: 413 GW-SIZE, a quarantine record without bytes, tmp/ empty."""
    from tests.e2e.daemon import Daemon

    text = home.config_file.read_text().replace("max_payload_bytes = 104857600", "max_payload_bytes = 4096")
    home.config_file.write_text(text)
    daemon = Daemon(home).start()
    try:
        response = post_document(daemon, BASE_EXAMPLE, tmp_path)
        assert response.status == 413
        assert [f["code"] for f in response.json()["findings"]] == ["GW-SIZE"]
        assert query(daemon, "SELECT sha256, codes FROM quarantine") == [(None, "GW-SIZE")]
        assert list((home.path / "spool" / "tmp").iterdir()) == []
        # far above the listener's cap (2 x limit + 1 MiB): refused while the body is still arriving
        huge = post_document(daemon, b"<Invoice>" + b" " * (3 << 20), tmp_path)
        assert huge.status == 413 and huge.json()["error"]["code"] == "GW-SIZE"
        endless = post_document(daemon, b"<Invoice>" + b" " * (3 << 20), tmp_path, chunked=True)
        assert endless.status == 413
        assert post_document(daemon, BASE_EXAMPLE.read_bytes()[:4000], tmp_path, chunked=True).status == 422
        assert query(daemon, "SELECT codes FROM quarantine") == [("GW-SIZE",), ("GW-XML",)]
    finally:
        assert daemon.stop() == 0


def test_sigterm_under_load_exits_cleanly_and_keeps_every_accepted_invoice(home, tmp_path):
    """SIGTERM while uploads are in flight: exit 0, and every 201 the senders got names a stored message."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.e2e.daemon import Daemon

    daemon = Daemon(home).start()
    try:
        def send(i):
            folder = tmp_path / f"c{i}"
            folder.mkdir()
            return post_document(daemon, invoice(f"LOAD-{i}"), folder, key=f"load-{i}")

        with ThreadPoolExecutor(max_workers=12) as pool:
            pending = [pool.submit(send, i) for i in range(24)]
            wait_until(lambda: any(f.done() for f in pending), timeout=20)
            assert daemon.stop() == 0
            responses = [f.result() for f in pending]
    finally:
        daemon.stop()
    accepted = {r.json()["message"] for r in responses if r.status == 201}
    assert accepted, "no upload finished before the stop"
    stored = {m for (m,) in query(daemon, "SELECT id FROM messages")}
    assert accepted <= stored
    assert all(r.status in (0, 201, 503) for r in responses), [r.status for r in responses]


def test_the_openapi_document_lists_exactly_what_the_partner_api_serves(daemon, tmp_path):
    """``GET /api/v1/openapi.json`` (client certificate): OpenAPI 3.1 with documents, receipts and itself — each
    of which answers on the listener — and a path that is not in the document is 404."""
    from gateway.openapi import PARTNER_DOCUMENT

    response = get(daemon, "/api/v1/openapi.json", tmp_path)
    assert response.status == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    assert document == PARTNER_DOCUMENT and document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/documents", "/receipts/{id}", "/openapi.json"}
    assert get(daemon, "/api/v1/documents", tmp_path).status == 405  # exists; POST only
    assert get(daemon, "/api/v1/receipts/" + "0" * 32, tmp_path).status == 404
    assert get(daemon, "/api/v1/nothing-here", tmp_path).status == 404
