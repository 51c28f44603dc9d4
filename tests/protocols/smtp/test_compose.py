"""Tests for :mod:`protocols.smtp.compose`: the mails parse as what they claim, hostile values cannot add headers,
and the S/MIME mails open with ``openssl cms`` (decrypt with the recipient's key, verify against the dev CA)."""

import email
import email.policy
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from certs.devca import key_pem
from certs.x509 import to_pem
from protocols import mdn
from protocols.as2.mime import Region
from protocols.as2.outbound import SendOptions
from protocols.smtp.compose import ComposeError, document_mail, invitation_mail, notification_mail, receipt_mail

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
SENDER, TO = "Postroom <postroom@gw.example>", "ap@buyer.example"
HOSTILE = "INV-42\r\nBcc: x@evil.example"


@pytest.fixture(scope="module")
def pki(dev_ca, tmp_path_factory):
    """The CA file, the gateway's signing pair, and the recipient's encryption pair (files for openssl too)."""
    folder = tmp_path_factory.mktemp("compose-pki")
    (folder / "ca.crt").write_bytes(to_pem(dev_ca.certificate))
    pairs = {"ours": dev_ca.build("gateway sign", "sign"), "theirs": dev_ca.build("buyer encrypt", "encrypt")}
    for name, (key, cert) in pairs.items():
        (folder / f"{name}.key").write_bytes(key_pem(key))
        (folder / f"{name}.crt").write_bytes(to_pem(cert))
    return folder, pairs


def parsed(data: bytes) -> email.message.EmailMessage:
    """The mail as a reader sees it (headers decoded)."""
    return email.message_from_bytes(data, policy=email.policy.default)


def assert_mailable(data: bytes) -> None:
    """7-bit, CRLF only, no line over 998 bytes: what any relay passes unchanged."""
    assert data.isascii()
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def openssl(*args: str) -> subprocess.CompletedProcess:
    """``openssl cms ARGS``, failing the test with openssl's own words."""
    done = subprocess.run(["openssl", "cms", *args], capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def receipt(**changes) -> mdn.Receipt:
    """A positive receipt for a mail we received."""
    return mdn.Receipt(**({"original_message_id": "<m-1@acme.example>", "reporting_ua": "gw.example; Postroom",
                           "recipient": "POSTROOM", "disposition": mdn.Disposition(),
                           "text": "The invoice was received and filed.", "mic": "2jmj7l5rSw0yVb/vlWAYkK/YBwk="}
                          | changes))


def test_a_receipt_mail_verifies_with_openssl_as_received(pki, tmp_path):
    """The mail file is the signed MDN with mail headers on top: openssl verifies it and returns the report."""
    folder, pairs = pki
    report = mdn.build_report(receipt())
    signed = mdn.sign(report, *pairs["ours"])
    data = receipt_mail(signed, sender=SENDER, to="edi@acme.example", subject="Receipt for INV-42",
                        in_reply_to="<m-1@acme.example>", now=NOW, message_id_domain="gw.example")
    (tmp_path / "mail.eml").write_bytes(data)
    done = openssl("-verify", "-inform", "SMIME", "-in", str(tmp_path / "mail.eml"), "-CAfile",
                   str(folder / "ca.crt"), "-purpose", "any")
    assert done.stdout.replace(b"\r\n", b"\n") == report.replace(b"\r\n", b"\n")
    entity = signed.as_mime().replace(b"MIME-Version: 1.0\r\n", b"")
    header_block = data.partition(b"\r\n\r\n")[0]
    assert data.endswith(b"\r\n" + entity) and header_block.count(b"\r\nContent-Type:") == 1
    mail = parsed(data)
    assert (mail["From"], mail["To"], mail["Subject"]) == (SENDER, "edi@acme.example", "Receipt for INV-42")
    assert mail["In-Reply-To"] == mail["References"] == "<m-1@acme.example>"
    assert mail["Date"] == "Mon, 23 Nov 2026 09:30:00 +0000" and mail["MIME-Version"] == "1.0"
    assert mail["Message-ID"].endswith("@gw.example>") and mail.get_content_type() == "multipart/signed"
    assert_mailable(data)


def test_an_unsigned_receipt_mail_is_a_multipart_report(pki):
    """A sender that asked for no signature gets the bare report as the mail body."""
    data = receipt_mail(mdn.unsigned(mdn.build_report(receipt())), sender=SENDER, to="edi@acme.example",
                        subject="Receipt", in_reply_to=None, now=NOW, message_id_domain="gw.example")
    mail = parsed(data)
    assert mail.get_content_type() == "multipart/report" and mail["In-Reply-To"] is None
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "message/disposition-notification"]


def test_receipt_headers_from_data_cannot_add_headers(pki):
    """A hostile subject is one line; a hostile In-Reply-To is left out rather than written."""
    _, pairs = pki
    data = receipt_mail(mdn.build_signed(receipt(), *pairs["ours"]), sender=SENDER, to="edi@acme.example",
                        subject=f"Receipt for {HOSTILE}", in_reply_to="<m-1@acme.example>\r\nBcc: x@evil.example",
                        now=NOW, message_id_domain="gw.example")
    mail = parsed(data)
    assert mail["Bcc"] is None and mail["In-Reply-To"] is None and mail["References"] is None
    assert mail["Subject"] == "Receipt for INV-42 Bcc: x@evil.example"
    assert b"\r\nBcc:" not in data


def test_a_long_message_id_is_referenced_verbatim():
    """Threading needs the msg-id as it is: a long one is not folded into RFC 2047 words."""
    original = "<" + "a" * 150 + "@mail." + "b" * 60 + ".example>"
    data = receipt_mail(mdn.unsigned(mdn.build_report(receipt())), sender=SENDER, to=TO, subject="Receipt",
                        in_reply_to=original, now=NOW, message_id_domain="gw.example")
    assert f"\r\nIn-Reply-To: {original}\r\nReferences: {original}\r\n".encode() in data
    assert parsed(data)["In-Reply-To"] == original


@pytest.mark.parametrize("body", [b"--b\r\n" + b"x" * 999 + b"\r\n--b--\r\n", b"--b\nbare LF\r\n",
                                  "--b\r\nnon-ASCII \u00fc\r\n".encode()])
def test_a_receipt_a_relay_would_rewrite_is_refused(body):
    """Long lines, bare LFs and 8-bit bytes would be changed in transit and break the signature."""
    with pytest.raises(ComposeError, match="break the signature"):
        receipt_mail(mdn.ReceiptEntity('multipart/report; boundary="b"', body), sender=SENDER, to=TO,
                     subject="Receipt", in_reply_to=None, now=NOW, message_id_domain="gw.example")


def notification(**changes) -> bytes:
    """A notification for Globex about an invoice from ACME Corp."""
    return notification_mail(**({
        "sender": SENDER, "to": [TO, "Jörg Müller <jm@buyer.example>"], "partner_name": "Globex Müller GmbH",
        "from_partner": "ACME Corp", "invoice_number": "INV-42", "amount": "1234.50", "currency": "EUR",
        "portal_url": "https://portal.gw.example/messages/m-7", "message_id_domain": "gw.example", "now": NOW,
    } | changes))


def test_a_notification_says_who_sent_what_and_links_the_portal():
    """Subject, sender, number, amount and link; plain text only, no attachment; non-ASCII encoded, 7-bit."""
    data = notification()
    mail = parsed(data)
    assert mail["Subject"] == "New invoice INV-42 from ACME Corp"
    assert mail["To"].addresses[1].display_name == "Jörg Müller"
    assert not mail.is_multipart() and mail.get_content_type() == "text/plain"
    text = mail.get_content()
    assert "Hello Globex Müller GmbH," in text and "ACME Corp has sent you an invoice" in text
    assert "Invoice number: INV-42" in text and "Amount: 1234.50 EUR" in text
    assert "https://portal.gw.example/messages/m-7" in text
    assert_mailable(data)


def test_a_notification_without_number_or_amount_leaves_them_out():
    """Unknown number and amount: a generic subject, and no empty lines pretending to know them."""
    mail = parsed(notification(invoice_number=None, amount=None, currency=None))
    assert mail["Subject"] == "New invoice from ACME Corp"
    assert "Invoice number" not in mail.get_content() and "Amount" not in mail.get_content()


def test_a_hostile_invoice_number_cannot_add_a_header():
    """"\\r\\nBcc: x@evil" in the invoice number stays inside the subject and the text, on one line."""
    data = notification(invoice_number=HOSTILE, from_partner="ACME\r\nX-Evil: 1")
    mail = parsed(data)
    assert mail["Bcc"] is None and mail["X-Evil"] is None
    assert mail["Subject"] == "New invoice INV-42 Bcc: x@evil.example from ACME X-Evil: 1"
    assert "  Invoice number: INV-42 Bcc: x@evil.example" in mail.get_content().splitlines()
    assert b"\r\nBcc:" not in data and b"\r\nX-Evil:" not in data


@pytest.mark.parametrize("to", [["x@buyer.example\r\nBcc: y@evil.example"], ["not an address"], ["a@b, c@d"],
                                ["jörg@buyer.example"], []])
def test_recipients_that_are_not_one_mailbox_each_are_refused(to):
    """Line breaks, lists in one string, non-ASCII local parts, garbage, nobody: refused, not repaired."""
    with pytest.raises(ComposeError):
        notification(to=to)


@pytest.mark.parametrize("url", ["javascript:alert(1)", "https://portal.example/a\r\nFake: text", "https://a b"])
def test_a_link_that_is_not_a_plain_url_is_refused(url):
    """The portal link is http(s), printable ASCII, without spaces."""
    with pytest.raises(ComposeError, match="portal URL"):
        notification(portal_url=url)


def test_an_invitation_carries_the_link_and_its_expiry():
    """The one-time link and its expiry in UTC; the partner's name in the subject."""
    expires = datetime(2026, 11, 30, 10, 0, tzinfo=UTC) + timedelta(hours=1)
    data = invitation_mail(sender=SENDER, to="new.user@buyer.example", partner_name="Globex\nBcc: x@evil.example",
                           link="https://portal.gw.example/register/Zm9vYmFy", expires_at=expires, now=NOW,
                           message_id_domain="gw.example")
    mail = parsed(data)
    assert mail["Subject"] == "Your invitation to receive e-invoices for Globex Bcc: x@evil.example through Postroom"
    assert mail["Bcc"] is None
    text = mail.get_content()
    assert "https://portal.gw.example/register/Zm9vYmFy" in text and "2026-11-30 11:00 UTC" in text
    assert_mailable(data)


def open_document(data: bytes, folder, tmp_path, encrypted: bool) -> email.message.EmailMessage:
    """Decrypt (when encrypted) and verify with openssl; the signed content as a parsed MIME entity."""
    (tmp_path / "mail.eml").write_bytes(data)
    signed = tmp_path / "mail.eml"
    if encrypted:
        signed = tmp_path / "signed.eml"
        openssl("-decrypt", "-inform", "SMIME", "-in", str(tmp_path / "mail.eml"), "-recip",
                str(folder / "theirs.crt"), "-inkey", str(folder / "theirs.key"), "-out", str(signed))
    content = openssl("-verify", "-inform", "SMIME", "-in", str(signed), "-CAfile", str(folder / "ca.crt"),
                      "-purpose", "any").stdout
    return parsed(content)


@pytest.mark.parametrize("options, encrypted, smime_type", [
    (SendOptions(), True, "enveloped-data"),
    (SendOptions(cipher="aes256-gcm", key_transport="rsa-oaep-sha256", digest="sha384"), True, "authEnveloped-data"),
    (SendOptions(compress=True, pss=True), False, None),
])
def test_a_document_mail_opens_with_openssl_and_gives_back_the_document(pki, tmp_path, options, encrypted,
                                                                        smime_type):
    """Decrypt with the recipient's key, verify against the CA: the note and the exact document bytes."""
    folder, pairs = pki
    document = os.urandom(100_003)  # binary, and not a whole number of base64 lines or read chunks
    our_key, our_cert = pairs["ours"]
    data = document_mail(Region.of_bytes(document), filename="Rechnung Müller 42.pdf",
                         content_type="application/pdf", sender=SENDER, to=TO, subject=f"Invoice {HOSTILE}",
                         options=options, our_key=our_key, our_cert=our_cert,
                         their_encrypt_cert=pairs["theirs"][1] if encrypted else None, now=NOW,
                         message_id_domain="gw.example").read()
    assert_mailable(data)
    mail = parsed(data)
    assert mail["Subject"] == "Invoice INV-42 Bcc: x@evil.example" and mail["Bcc"] is None
    if encrypted:
        assert mail.get_content_type() == "application/pkcs7-mime" and mail.get_param("smime-type") == smime_type
        assert document[:64] not in data and b"Rechnung" not in data
    else:
        assert mail.get_content_type() == "multipart/signed" and b"compressed-data" not in data
    content = open_document(data, folder, tmp_path, encrypted)
    note, attachment = content.iter_parts()
    assert note.get_content().startswith("Attached: Rechnung Müller 42.pdf")
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_filename() == "Rechnung Müller 42.pdf"
    assert attachment.get_content() == document


@pytest.mark.parametrize("content_type", ["application/pdf\r\nBcc: x@evil.example", "pdf"])
def test_a_document_content_type_that_is_not_a_mime_type_is_refused(pki, content_type):
    """The attachment's type comes from stored data: it must be ``type/subtype`` on one line."""
    _, pairs = pki
    with pytest.raises(ComposeError, match="content type"):
        document_mail(Region.of_bytes(b"%PDF"), filename="x.pdf", content_type=content_type, sender=SENDER, to=TO,
                      subject="Invoice", options=SendOptions(), our_key=pairs["ours"][0], our_cert=pairs["ours"][1],
                      their_encrypt_cert=None, now=NOW, message_id_domain="gw.example")
