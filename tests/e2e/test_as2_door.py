"""End to end: the ``/as2`` door driven by ``openssl cms`` + curl, MDNs checked with ``openssl cms -verify``.

One daemon serves the whole module (the algorithm matrix alone is 18 messages); every test sends its
own invoice number so the duplicate checks never join two tests. Each positive case checks the
MDN's signature and MIC and that the message is in the database; each negative case checks the
disposition and the quarantine record.
"""

import itertools
import json
import re
import uuid

import pytest

from protocols.as2 import cms
from tests.e2e.as2 import build, disposition, payload_entity, received_mic, send, verify_mdn
from tests.e2e.daemon import Daemon, private_home
from tests.e2e.https import invoice, query
from tests.e2e.test_mtls_door import metric, wait_until

pytestmark = pytest.mark.e2e

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def daemon(demo_home_template, tmp_path_factory):
    """One daemon for the module, on a private copy of the demo home."""
    d = Daemon(private_home(demo_home_template, tmp_path_factory.mktemp("as2"))).start()
    yield d
    d.stop()


def fresh() -> bytes:
    """An invoice no other test sends."""
    return invoice(f"AS2-{uuid.uuid4().hex[:8]}-{next(_numbers)}")


def quarantined(daemon, message_id: str) -> list[tuple]:
    return query(daemon, "SELECT codes, channel FROM quarantine WHERE external_id = :id", id=message_id)


def accepted(daemon, message_id: str) -> list[tuple]:
    return query(daemon, "SELECT channel, filename, content_type, state FROM messages WHERE external_id = :id",
                 id=message_id)


def assert_processed(daemon, response, built, tmp_path, message_id):
    assert response.status == 200, response
    assert response.headers["as2-from"] == "POSTROOM"
    assert response.headers["as2-to"] == "ACME"
    report = verify_mdn(daemon, response, tmp_path)
    assert disposition(report) == "automatic-action/MDN-sent-automatically; processed", report
    assert received_mic(report) == built.mic
    assert f"Original-Message-ID: {message_id}" in report
    [(channel, filename, content_type, _)] = accepted(daemon, message_id)
    assert (channel, filename, content_type) == ("as2", "invoice.xml", "application/xml")


CIPHERS = ["-des3", "-aes128", "-aes192", "-aes256", "-aes-128-gcm", "-aes-256-gcm"]


@pytest.mark.parametrize("oaep", [None, "sha1", "sha256"])
@pytest.mark.parametrize("cipher", CIPHERS)
def test_every_cipher_and_key_transport(daemon, tmp_path, cipher, oaep):
    """openssl-encrypted with each content cipher and key transport → signed MDN ``processed``, MIC equal."""
    built = build(daemon.home, fresh(), tmp_path, cipher=cipher, oaep=oaep)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    assert_processed(daemon, send(daemon, built, tmp_path, message_id=message_id), built, tmp_path, message_id)


@pytest.mark.parametrize("variant", [
    {"digest": "sha384"}, {"digest": "sha512"}, {"pss": True}, {"stream": True},
    {"opaque_signature": True}, {"opaque_signature": True, "stream": True},
])
def test_signature_variants(daemon, tmp_path, variant):
    """SHA-384/512, RSASSA-PSS, BER (``-stream``) and pkcs7-mime signed-data all verify."""
    built = build(daemon.home, fresh(), tmp_path, **variant)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    assert_processed(daemon, send(daemon, built, tmp_path, message_id=message_id), built, tmp_path, message_id)


@pytest.mark.parametrize("entity_options", [
    {"content_type_line": "Content-Type:application/xml"},  # no space after the colon (RFC 5322 allows it)
    {"fold": True},  # folded Content-Disposition
    {"content_type_line": "content-type: application/xml"},
])
def test_header_variants_keep_the_mic_over_the_received_bytes(daemon, tmp_path, entity_options):
    """The MIC covers the bytes as sent: header spellings that ``email`` would rewrite still match."""
    entity = payload_entity(fresh(), **entity_options)
    built = build(daemon.home, b"", tmp_path, entity=entity)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    assert_processed(daemon, send(daemon, built, tmp_path, message_id=message_id), built, tmp_path, message_id)


def test_micalg_spellings_and_x_pkcs7_signature(daemon, tmp_path):
    """``sha256`` without the dash is echoed as sent; ``application/x-pkcs7-signature`` is accepted."""
    built = build(daemon.home, fresh(), tmp_path, encrypt=False)
    old = built.content_type.replace("application/pkcs7-signature", "application/x-pkcs7-signature")
    built = type(built)(old, built.body.replace(b"application/pkcs7-signature", b"application/x-pkcs7-signature"),
                        built.mic)
    policy_unencrypted(daemon)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    response = send(daemon, built, tmp_path, message_id=message_id, micalg="sha256")
    report = verify_mdn(daemon, response, tmp_path)
    assert disposition(report).endswith("; processed"), report
    assert f"Received-Content-MIC: {built.mic}, sha256" in report


def set_policy(daemon, setting: str) -> None:
    """Change acme's policy through the CLI and wait until the daemon has loaded the change."""
    name, _, value = setting.partition("=")
    if json.loads(daemon.cli("partner", "policy", "acme", "--json").stdout)[name] == (value == "true"):
        return
    before = metric(daemon, "postroom_directory_version")
    daemon.cli("partner", "policy", "acme", setting)
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)


def policy_unencrypted(daemon):
    """Let acme send signed but unencrypted messages."""
    set_policy(daemon, "as2_require_encryption=false")


def test_a_resend_gets_the_same_mdn_bytes_and_creates_nothing(daemon, tmp_path):
    """Same Message-ID, re-encrypted (new CEK, other bytes on the wire): the original MDN, still one message."""
    payload = fresh()
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    first = send(daemon, build(daemon.home, payload, tmp_path), tmp_path, message_id=message_id)
    again = send(daemon, build(daemon.home, payload, tmp_path), tmp_path, message_id=message_id)
    assert first.status == again.status == 200
    assert again.body == first.body
    assert len(accepted(daemon, message_id)) == 1


def test_the_same_invoice_under_a_new_message_id_is_a_duplicate_document(daemon, tmp_path):
    """A new Message-ID for an invoice already accepted: ``processed/warning: duplicate-document`` for the new ID."""
    payload = fresh()
    send(daemon, build(daemon.home, payload, tmp_path), tmp_path)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    report = verify_mdn(daemon, send(daemon, build(daemon.home, payload, tmp_path), tmp_path,
                                     message_id=message_id), tmp_path)
    assert disposition(report).endswith("processed/warning: duplicate-document"), report
    assert f"Original-Message-ID: {message_id}" in report
    assert accepted(daemon, message_id) == []


def test_unsigned_mdn_and_no_mdn(daemon, tmp_path):
    """Without ``signed-receipt-protocol`` the MDN is a bare multipart/report; without the request, no body."""
    built = build(daemon.home, fresh(), tmp_path)
    plain = send(daemon, built, tmp_path, mdn="unsigned")
    assert plain.status == 200
    assert plain.headers["content-type"].startswith("multipart/report; report-type=disposition-notification")
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed" in plain.body
    silent = send(daemon, build(daemon.home, fresh(), tmp_path), tmp_path, mdn="none")
    assert (silent.status, silent.body) == (200, b"")


@pytest.mark.parametrize("headers, reason", [
    ({"as2_from": "GLOBEX"}, b"AS2-From GLOBEX is not an AS2 ID registered to partner acme"),
    ({"as2_to": "SOMEONE"}, b"AS2-To SOMEONE is not this gateway"),
])
def test_wrong_as2_addressing_is_forbidden_and_stores_nothing(daemon, tmp_path, headers, reason):
    built = build(daemon.home, fresh(), tmp_path)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    response = send(daemon, built, tmp_path, message_id=message_id, **headers)
    assert response.status == 403
    assert reason in response.body
    assert quarantined(daemon, message_id) == [] and accepted(daemon, message_id) == []


def _negative(daemon, tmp_path, built, expected: str, code: str, **send_options) -> str:
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    response = send(daemon, built, tmp_path, message_id=message_id, **send_options)
    assert response.status == 200, response
    report = verify_mdn(daemon, response, tmp_path)
    assert disposition(report) == f"automatic-action/MDN-sent-automatically; processed/error: {expected}", report
    assert quarantined(daemon, message_id) == [(code, "as2")]
    assert accepted(daemon, message_id) == []
    return report


def test_encrypted_to_another_certificate_is_decryption_failed(daemon, tmp_path):
    built = build(daemon.home, fresh(), tmp_path, recipient=daemon.home.demo / "acme" / "acme-encrypt.crt")
    _negative(daemon, tmp_path, built, "decryption-failed", "AS2-DECRYPT")


def test_signed_by_someone_else_is_authentication_failed(daemon, tmp_path):
    globex = daemon.home.demo / "globex"
    built = build(daemon.home, fresh(), tmp_path, signer=(globex / "globex-sign.crt", globex / "globex-sign.key"))
    report = _negative(daemon, tmp_path, built, "authentication-failed", "AS2-SIGNER")
    assert "globex-sign" in report


def test_a_changed_signed_part_is_integrity_check_failed(daemon, tmp_path):
    policy_unencrypted(daemon)
    built = build(daemon.home, fresh(), tmp_path, encrypt=False)
    tampered = type(built)(built.content_type, built.body.replace(b"<cbc:ID>AS2-", b"<cbc:ID>AS3-", 1), built.mic)
    assert tampered.body != built.body
    _negative(daemon, tmp_path, tampered, "integrity-check-failed", "AS2-INTEGRITY")


def test_unsigned_when_signing_is_required_is_insufficient_security(daemon, tmp_path):
    built = build(daemon.home, fresh(), tmp_path, sign=False)
    report = _negative(daemon, tmp_path, built, "insufficient-message-security", "AS2-SECURITY")
    assert "must be signed" in report
    assert received_mic(report) == built.mic  # RFC 4130 §7.3.1: over the decrypted entity


def test_sha1_is_refused_unless_the_partner_is_allowed_it(daemon, tmp_path):
    built = build(daemon.home, fresh(), tmp_path, digest="sha1")
    _negative(daemon, tmp_path, built, "insufficient-message-security", "AS2-SECURITY")
    set_policy(daemon, "allow_sha1=true")
    try:
        built = build(daemon.home, fresh(), tmp_path, digest="sha1")
        message_id = f"<{uuid.uuid4().hex}@openssl>"
        response = send(daemon, built, tmp_path, message_id=message_id)
        assert_processed(daemon, response, built, tmp_path, message_id)
    finally:
        set_policy(daemon, "allow_sha1=false")


@pytest.mark.parametrize("cipher", ["-des", "-rc2"])
def test_a_legacy_cipher_is_refused(daemon, tmp_path, cipher):
    """Single DES and RC2 (made with OpenSSL's legacy provider) are refused: insufficient-message-security."""
    built = build(daemon.home, fresh(), tmp_path, cipher=cipher, legacy=True)
    report = _negative(daemon, tmp_path, built, "insufficient-message-security", "AS2-SECURITY")
    assert re.search(rf"content encryption algorithm {cipher.strip('-')}\S* is refused", report), report


def test_a_decompression_bomb_is_refused_and_harms_nothing(daemon, tmp_path):
    """50 MB of zeros compressed to ~50 KB: refused by the ratio cap with a clear message; the next message works."""
    bomb = payload_entity(b"\0" * (50 << 20))
    compressed = b'Content-Type: application/pkcs7-mime; smime-type=compressed-data; name="smime.p7z"\r\n' \
                 b"Content-Transfer-Encoding: binary\r\n\r\n" + cms.compress(bomb)
    built = build(daemon.home, b"", tmp_path, entity=compressed)
    report = _negative(daemon, tmp_path, built, "unexpected-processing-error", "AS2-FORMAT")
    assert "decompress" in report.lower()
    follow = build(daemon.home, fresh(), tmp_path)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    assert_processed(daemon, send(daemon, follow, tmp_path, message_id=message_id), follow, tmp_path, message_id)


def test_a_message_without_message_id_is_a_bad_request(daemon, tmp_path):
    built = build(daemon.home, fresh(), tmp_path)
    response = send(daemon, built, tmp_path, extra={"Message-ID": ""})
    assert response.status == 400
    assert b"Message-ID" in response.body


def test_a_chunked_request_body_is_taken_like_one_with_a_length(daemon, tmp_path):
    """``Transfer-Encoding: chunked`` (no Content-Length): spooled and read the same way."""
    built = build(daemon.home, fresh(), tmp_path)
    message_id = f"<{uuid.uuid4().hex}@openssl>"
    response = send(daemon, built, tmp_path, message_id=message_id, extra={"Transfer-Encoding": "chunked"})
    assert_processed(daemon, response, built, tmp_path, message_id)
