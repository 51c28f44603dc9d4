"""The peer harness works on its own, without Postroom: the independent AS2 implementations talk to
each other through it, so a failure in Postroom's AS2 tests points at Postroom, not at the harness.

pyas2lib's builder sends text payloads with CRLF line ends (it flattens the MIME part with the HTTP
policy), so the payloads here use CRLF and compare byte for byte.
"""

import hashlib

import pytest

from tests.peers.harness import MdnCatcher

pytestmark = pytest.mark.peers

INVOICE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\r\n'
    b"<Invoice><ID>INV-2026-0001</ID><Amount currency=\"EUR\">1250.00</Amount></Invoice>\r\n"
)


@pytest.fixture
def invoice(tmp_path):
    path = tmp_path / "invoice-0001.xml"
    path.write_bytes(INVOICE)
    return path


@pytest.fixture
def sender(peer_identity):
    return peer_identity("PEERSEND")


@pytest.fixture
def receiver(peer_identity):
    return peer_identity("PEERRECV")


def test_pyas2lib_to_pyas2lib_signed_encrypted_compressed_with_signed_sync_mdn(pyas2lib, sender, receiver,
                                                                                invoice):
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    result = pyas2lib.send(sender.config([receiver.as_partner()]), server.url, invoice, sign=True, encrypt=True,
                           compress=True, digest="sha256", cipher="aes_256_cbc", mdn="sync", mdn_signed=True,
                           mdn_digest="sha256", message_id="harness-0001@peersend.test")

    assert result["http_status"] == 200
    assert result["message_id"] == "harness-0001@peersend.test"
    assert result["mdn_status"] == "processed", result
    assert result["detailed_status"] is None
    assert result["mdn_signed"] is True
    assert result["mic_ok"] is True
    assert result["original_message_id"] == result["message_id"]
    assert "multipart/signed" in result["mdn_headers"]["Content-Type"]

    (record,) = server.received()
    assert record["status"] == "processed"
    assert record["message_id"] == result["message_id"]
    assert (record["as2_from"], record["as2_to"]) == ("PEERSEND", "PEERRECV")
    assert (record["signed"], record["encrypted"], record["compressed"]) == (True, True, True)
    assert record["mic"] == result["mic"]
    assert record["filename"] == "invoice-0001.xml"
    assert server.payload(record) == INVOICE
    assert record["payload_sha256"] == hashlib.sha256(INVOICE).hexdigest()


@pytest.mark.parametrize("cipher", ["tripledes_192_cbc", "aes_128_cbc", "aes_192_cbc"])
def test_pyas2lib_other_ciphers_and_unsigned_mdn(pyas2lib, sender, receiver, invoice, cipher):
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    result = pyas2lib.send(sender.config([receiver.as_partner()]), server.url, invoice, cipher=cipher,
                           mdn_signed=False)
    assert result["mdn_status"] == "processed", result
    assert result["mdn_signed"] is False
    assert result["mic_ok"] is True
    assert server.payload(server.received()[0]) == INVOICE


def test_pyas2lib_async_mdn_reaches_a_receiver_in_the_test(pyas2lib, sender, receiver, invoice, mdn_catcher):
    sender_config = sender.config([receiver.as_partner()])
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    result = pyas2lib.send(sender_config, server.url, invoice, mdn="async", async_url=mdn_catcher.url)

    assert result["http_status"] == 200
    assert result["mdn_status"] is None  # the answer to the POST is not the MDN
    (caught,) = mdn_catcher.wait(1)
    headers = {k.lower(): v for k, v in caught.headers}
    assert headers["as2-from"] == "PEERRECV" and headers["as2-to"] == "PEERSEND"
    mdn = pyas2lib.verify_mdn(sender_config, caught.raw, result["message_id"], mic=result["mic"],
                              mdn_digest="sha256")
    assert mdn["mdn_status"] == "processed", mdn
    assert mdn["mdn_signed"] is True
    assert mdn["mic_ok"] is True
    assert mdn["original_message_id"] == result["message_id"]
    (outcome,) = server.wait_async_mdns(1)
    assert outcome["http_status"] == 200 and outcome["url"] == mdn_catcher.url


def test_pyas2lib_serve_takes_async_mdns_for_what_send_sent(pyas2lib, sender, receiver, invoice):
    """A pyas2lib server also receives the async MDNs answering its own side's sends (sent.jsonl)."""
    sender_server = pyas2lib.serve(sender.config([receiver.as_partner()]))
    receiver_server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    result = pyas2lib.send(sender_server.config, receiver_server.url, invoice, mdn="async",
                           async_url=sender_server.url)
    (mdn,) = sender_server.wait_mdns(1)
    assert mdn["original_message_id"] == result["message_id"]
    assert mdn["mdn_status"] == "processed", mdn
    assert mdn["mic_ok"] is True


def test_pyas2lib_https_with_client_certificate(pyas2lib, sender, receiver, invoice):
    server = pyas2lib.serve(receiver.config([sender.as_partner()]), tls_cert=receiver.tls_cert,
                            tls_key=receiver.tls_key, client_ca=receiver.ca_cert)
    assert server.url.startswith("https://127.0.0.1:")
    config = sender.config([receiver.as_partner()])

    result = pyas2lib.send(config, server.url, invoice, tls_cert=sender.tls_cert, tls_key=sender.tls_key,
                           ca=sender.ca_cert)
    assert result["mdn_status"] == "processed", result
    assert result["mic_ok"] is True
    (record,) = server.received()
    assert "commonName=peersend-tls" in record["tls_client_subject"]

    no_client_cert = dict(config, client_tls={"ca": str(sender.ca_cert)})
    refused = pyas2lib.send(no_client_cert, server.url, invoice, expect_transport_error=True)
    assert refused["http_status"] is None and refused["error"]  # an alert or EOF, depending on timing
    (tls_error,) = server.tls_errors()
    assert "certificate" in tls_error["error"].lower()
    assert len(server.received()) == 1


def test_pyas2lib_to_django_pyas2(pyas2lib, django_pyas2, sender, receiver, invoice):
    django = django_pyas2(receiver.config([sender.as_partner(compress=True)]))
    result = pyas2lib.send(sender.config([receiver.as_partner()]), django.url, invoice, compress=True)

    assert result["http_status"] == 200
    assert result["mdn_status"] == "processed", (result, django.log_text())
    assert result["mdn_signed"] is True
    assert result["mic_ok"] is True
    (message,) = django.messages("IN")
    assert message["message_id"] == result["message_id"]
    assert message["status"] == "S", message["detailed_status"]
    assert (message["signed"], message["encrypted"], message["compressed"]) == (True, True, True)
    assert message["payload_sha256"] == hashlib.sha256(INVOICE).hexdigest()
    assert message["mdn"]["disposition"].endswith("processed")
    assert message["mdn"]["received_mic"] == result["mic"]


def test_pyas2lib_to_django_pyas2_over_https_with_client_certificate(pyas2lib, django_pyas2, sender, receiver,
                                                                     invoice):
    django = django_pyas2(receiver.config([sender.as_partner()]), tls_cert=receiver.tls_cert,
                          tls_key=receiver.tls_key, client_ca=receiver.ca_cert)
    assert django.url.startswith("https://")
    config = sender.config([receiver.as_partner()])
    result = pyas2lib.send(config, django.url, invoice)
    assert result["mdn_status"] == "processed", (result, django.log_text())
    refused = pyas2lib.send(dict(config, client_tls={"ca": str(sender.ca_cert)}), django.url, invoice,
                            expect_transport_error=True)
    assert refused["http_status"] is None
    assert len(django.messages("IN")) == 1


def test_django_pyas2_to_pyas2lib(pyas2lib, django_pyas2, sender, receiver, invoice):
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    django = django_pyas2(sender.config([receiver.as_partner(url=server.url, compress=True,
                                                             cipher="tripledes_192_cbc")]), serve=False)
    sent = django.send("PEERRECV", invoice)

    assert sent["error"] is None, sent
    (message,) = sent["messages"]
    assert message["status"] == "S", message
    assert message["mdn"]["status"] == "R" and message["mdn"]["signed"] is True
    assert message["mdn"]["disposition"].endswith("processed")
    (record,) = server.received()
    assert record["status"] == "processed"
    assert record["message_id"] == message["message_id"]
    assert (record["signed"], record["encrypted"], record["compressed"]) == (True, True, True)
    assert record["enc_alg"] == "tripledes_192_cbc"
    assert record["filename"] == "invoice-0001.xml"
    assert server.payload(record) == INVOICE
    assert message["mdn"]["received_mic"] == record["mic"]


def test_django_pyas2_sends_requested_async_mdn(pyas2lib, django_pyas2, sender, receiver, invoice):
    django = django_pyas2(receiver.config([sender.as_partner()]))
    sender_config = sender.config([receiver.as_partner()])
    with MdnCatcher() as catcher:
        result = pyas2lib.send(sender_config, django.url, invoice, mdn="async", async_url=catcher.url)
        assert result["http_status"] == 200 and result["mdn_status"] is None
        (message,) = django.messages("IN")
        assert message["mdn"]["status"] == "P"  # django-pyas2 leaves async MDNs to a cron job
        django.flush_async_mdns()
        (caught,) = catcher.wait(1)
    mdn = pyas2lib.verify_mdn(sender_config, caught.raw, result["message_id"], mic=result["mic"],
                              mdn_digest="sha256")
    assert mdn["mdn_status"] == "processed", mdn
    assert mdn["mic_ok"] is True


def test_negative_mdn_for_a_tampered_message(pyas2lib, sender, receiver, invoice):
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    result = pyas2lib.send(sender.config([receiver.as_partner()]), server.url, invoice, sign=True,
                           encrypt=False, compress=False, tamper=True)

    assert result["exit_code"] == 0
    assert result["http_status"] == 200
    assert result["mdn_status"] == "processed/Error"
    assert result["detailed_status"] == "authentication-failed"
    assert result["mic_ok"] is False
    (record,) = server.received()
    assert record["status"] == "processed/Error"
    assert record["detailed_status"] == "authentication-failed"
    assert record["payload_file"] is None


def test_negative_mdn_for_the_wrong_certificates(pyas2lib, peer_identity, sender, receiver, invoice):
    stranger = peer_identity("STRANGER")
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    config = sender.config([receiver.as_partner()])

    encrypted_for_someone_else = dict(config, partners=[dict(receiver.as_partner(),
                                                             encrypt_cert=str(stranger.encrypt_cert))])
    result = pyas2lib.send(encrypted_for_someone_else, server.url, invoice)
    assert (result["mdn_status"], result["detailed_status"]) == ("processed/Error", "decryption-failed")

    signed_by_someone_else = dict(config, key=str(stranger.sign_key), cert=str(stranger.sign_cert))
    result = pyas2lib.send(signed_by_someone_else, server.url, invoice)
    assert (result["mdn_status"], result["detailed_status"]) == ("processed/Error", "authentication-failed")
    assert [r["payload_file"] for r in server.received()] == [None, None]


def test_duplicate_message_id_gets_a_warning(pyas2lib, sender, receiver, invoice):
    server = pyas2lib.serve(receiver.config([sender.as_partner()]))
    config = sender.config([receiver.as_partner()])
    first = pyas2lib.send(config, server.url, invoice, message_id="dup-1@peersend.test")
    again = pyas2lib.send(config, server.url, invoice, message_id="dup-1@peersend.test")
    assert first["mdn_status"] == "processed"
    assert (again["mdn_status"], again["detailed_status"]) == ("processed/Warning", "duplicate-document")


def test_pyas2lib_serve_can_play_an_unavailable_partner(pyas2lib, sender, receiver, invoice):
    """``fail_first`` makes the server answer 503 without processing: for resend tests."""
    server = pyas2lib.serve(receiver.config([sender.as_partner()], fail_first=1))
    config = sender.config([receiver.as_partner()])
    first = pyas2lib.send(config, server.url, invoice, message_id="retry-1@peersend.test")
    again = pyas2lib.send(config, server.url, invoice, message_id="retry-1@peersend.test")
    assert (first["http_status"], first["mdn_status"]) == (503, None)
    assert (again["http_status"], again["mdn_status"]) == (200, "processed")
    assert len(server.received()) == 1
