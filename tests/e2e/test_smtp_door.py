"""End to end: the email door driven by Python's ``smtplib`` with STARTTLS, mail signed by ``openssl smime``.

The demo partners have registered addresses (acme ``invoices@acme.example``, globex
``ap@globex.example``) and S/MIME signing certificates in ``HOME/demo/<id>/``; the gateway's hostname
is ``localhost``, so mail goes to ``invoices@localhost``.
"""

import email
import email.policy
import hashlib
import shutil
import smtplib
import ssl
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from certs.devca import key_pem
from certs.x509 import to_pem
from gateway.home import Home
from tests.e2e.daemon import POSTROOM, Daemon
from tests.e2e.https import BASE_EXAMPLE, query
from tests.e2e.test_mtls_door import restrict, wait_until
from tests.protocols.smtp.test_relay import Recorder, relay_server

ACME = "invoices@acme.example"


@pytest.fixture
def daemon(home):
    d = Daemon(home).start()
    yield d
    d.stop()


def mail_with(attachments: list[tuple[str, bytes]]) -> bytes:
    """A multipart/mixed mail: a text part and each ``(name, bytes)`` as a base64 XML attachment, CRLF."""
    message = EmailMessage()
    message["Subject"] = "Invoices"
    message.set_content("Please find our invoices attached.\n")
    for name, data in attachments:
        message.add_attachment(data, maintype="application", subtype="xml", filename=name)
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def signed(daemon, body: bytes, tmp: Path, *, signer: str = "acme", sender: str = ACME) -> bytes:
    """``body`` signed with ``openssl smime -sign`` by ``signer``'s demo signing key, with mail headers."""
    folder = daemon.home.demo / signer
    (tmp / "body.eml").write_bytes(body)
    subprocess.run(["openssl", "smime", "-sign", "-md", "sha256", "-in", str(tmp / "body.eml"),
                    "-signer", str(folder / f"{signer}-sign.crt"), "-inkey", str(folder / f"{signer}-sign.key"),
                    "-from", sender, "-to", "invoices@localhost", "-subject", "Invoices",
                    "-out", str(tmp / "signed.eml")], check=True, capture_output=True)
    return (tmp / "signed.eml").read_bytes()


def smtp(daemon, *, source: str = "127.0.0.1", starttls: bool = True) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], source_address=(source, 0), timeout=30)
    client.ehlo("client.example")
    if starttls:
        client.starttls(context=ssl.create_default_context(cafile=str(daemon.home.dev_ca / "ca.crt")))
        client.ehlo("client.example")
    return client


def send(daemon, message: bytes, *, sender: str = ACME, to: tuple[str, ...] = ("invoices@localhost",)) -> tuple:
    """Send and return ``(code, text)`` of the reply to DATA (or to the command that refused it)."""
    with smtp(daemon) as client:
        try:
            client.sendmail(sender, list(to), message)
        except smtplib.SMTPResponseException as e:
            return e.smtp_code, e.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as e:
            [(code, text)] = e.recipients.values()
            return code, text.decode()
        return 250, ""


def test_a_signed_mail_is_accepted_and_its_invoice_stored_byte_for_byte(daemon, tmp_path):
    """One signed mail, one invoice: 250 after DATA, one message from acme over email, the exact bytes."""
    message = signed(daemon, mail_with([("invoice-42.xml", BASE_EXAMPLE.read_bytes())]), tmp_path)
    assert send(daemon, message) == (250, "")
    [(sender, channel, filename, sha256)] = query(daemon, "SELECT sender_id, channel, filename, sha256 FROM messages")
    assert (sender, channel, filename) == ("acme", "email", "invoice-42.xml")
    assert sha256 == hashlib.sha256(BASE_EXAMPLE.read_bytes()).hexdigest()


def test_mail_from_before_starttls_is_refused(daemon):
    with smtp(daemon, starttls=False) as client:
        code, text = client.mail(ACME)
    assert code == 530 and b"STARTTLS" in text


def test_an_unknown_recipient_and_an_unregistered_sender_are_refused(daemon, tmp_path):
    message = signed(daemon, mail_with([("i.xml", BASE_EXAMPLE.read_bytes())]), tmp_path)
    code, text = send(daemon, message, to=("someone@localhost",))
    assert code == 550 and "5.1.1" in text
    code, text = send(daemon, message, sender="stranger@evil.example")
    assert code == 550 and "5.7.1" in text and "not registered" in text
    assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]


def test_unsigned_mail_and_mail_signed_by_another_partner_are_refused_with_the_reason(daemon, tmp_path):
    body = mail_with([("i.xml", BASE_EXAMPLE.read_bytes())])
    code, text = send(daemon, b"From: " + ACME.encode() + b"\r\nTo: invoices@localhost\r\n" + body)
    assert code == 550 and "5.7.1" in text and "unsigned" in text
    code, text = send(daemon, signed(daemon, body, tmp_path, signer="globex"))
    assert code == 550 and "5.7.1" in text
    assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]
    assert query(daemon, "SELECT count(*) FROM quarantine") == [(2,)]


def test_an_oversized_mail_is_refused_at_mail_from(daemon):
    limit = int(smtp(daemon).esmtp_features["size"])
    with smtp(daemon) as client:
        code, _ = client.mail(ACME, options=[f"SIZE={limit + 1}"])
    assert code == 552


def test_a_source_no_partner_allows_gets_no_greeting(daemon):
    restrict(daemon, "acme", "127.0.0.1/32")
    restrict(daemon, "globex", "127.0.0.1/32")

    def refused() -> bool:
        try:
            smtp(daemon, source="127.0.0.2", starttls=False).close()
        except (smtplib.SMTPServerDisconnected, ConnectionError):
            return True
        return False

    wait_until(refused)


def test_a_spool_that_cannot_take_the_mail_answers_451_and_the_retry_is_accepted(daemon, tmp_path):
    """``spool/tmp`` replaced by a file: 451, never 250 or 5xx; once it is back, the same mail is taken."""
    message = signed(daemon, mail_with([("i.xml", BASE_EXAMPLE.read_bytes())]), tmp_path)
    tmp = daemon.home.path / "spool" / "tmp"
    shutil.move(tmp, tmp_path / "tmp-aside")
    tmp.write_bytes(b"")
    try:
        code, text = send(daemon, message)
    finally:
        tmp.unlink()
        shutil.move(tmp_path / "tmp-aside", tmp)
    assert code == 451 and "4.3.0" in text
    assert send(daemon, message) == (250, "")
    assert query(daemon, "SELECT count(*) FROM messages") == [(1,)]


@pytest.fixture
def relay_sink(dev_ca, tmp_path):
    """An aiosmtpd relay on 127.0.0.1 that requires STARTTLS (certificate from the test CA) and records mail."""
    key, cert = dev_ca.build("relay", "tls-server", hostnames=["127.0.0.1"])
    (tmp_path / "relay.key").write_bytes(key_pem(key))
    (tmp_path / "relay.crt").write_bytes(to_pem(cert))
    (tmp_path / "ca.crt").write_bytes(to_pem(dev_ca.certificate))
    recorder = Recorder()
    with relay_server(recorder, tmp_path, cert="relay") as controller:
        yield recorder, controller.port, tmp_path / "ca.crt"


@pytest.fixture
def relayed(home, relay_sink):
    """A daemon whose ``[smtp_relay]`` is the sink; yields ``(daemon, recorder)``."""
    recorder, port, ca_file = relay_sink
    text = home.config_file.read_text().replace(
        '[smtp_relay]\nhost = ""\nport = 587',
        f'[smtp_relay]\nhost = "127.0.0.1"\nport = {port}\nca_file = "{ca_file}"')
    home.config_file.write_text(text)
    daemon = Daemon(home).start()
    yield daemon, recorder
    daemon.stop()


def test_the_receipt_of_a_mailed_invoice_is_mailed_back_signed_through_the_relay(relayed, tmp_path):
    """``[smtp_relay]`` set: the signed MDN reaches the envelope sender through the relay, threaded under the
    mail it answers, and verifies with ``openssl cms -verify``; the audit trail says it was sent."""
    daemon, recorder = relayed
    body = mail_with([("invoice-42.xml", BASE_EXAMPLE.read_bytes())])
    message = b"Message-ID: <inv-42@acme.example>\r\n" + signed(daemon, body, tmp_path)
    assert send(daemon, message) == (250, "")
    wait_until(lambda: any(m["to"] == [ACME] for m in recorder.received))
    [mail] = [m for m in recorder.received if m["to"] == [ACME]]
    assert (mail["from"], mail["to"], mail["tls"]) == ("<>", [ACME], True)  # MAIL FROM:<>, the null reverse-path
    assert b"Auto-Submitted: auto-replied" in mail["content"] and b"From: invoices@localhost" in mail["content"]
    assert b"In-Reply-To: <inv-42@acme.example>" in mail["content"]
    (tmp_path / "receipt.eml").write_bytes(mail["content"])
    verify = subprocess.run(["openssl", "cms", "-verify", "-inform", "SMIME", "-in", str(tmp_path / "receipt.eml"),
                             "-CAfile", str(daemon.home.dev_ca / "ca.crt"), "-purpose", "any"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "processed" in verify.stdout and "inv-42@acme.example" in verify.stdout
    wait_until(lambda: query(daemon, "SELECT state FROM receipts WHERE kind = 'acceptance'") == [("sent",)])
    assert query(daemon, "SELECT count(*) FROM audit_log WHERE event = 'receipt.sent'") == [(1,)]


def test_the_recipient_is_notified_and_invited_once_through_the_relay(relayed, tmp_path):
    """An invoice filed in globex's mailbox: a notification to its registered address (the number, the sender,
    the portal link, never the document) and, the first time only, an invitation whose token only the mail
    holds (the database keeps its SHA-256)."""
    daemon, recorder = relayed
    for n in (1, 2):
        invoice = BASE_EXAMPLE.read_bytes().replace(b"<cbc:ID>Snippet1</cbc:ID>", f"<cbc:ID>INV-{n}</cbc:ID>".encode())
        assert invoice != BASE_EXAMPLE.read_bytes()
        message = signed(daemon, mail_with([(f"inv-{n}.xml", invoice)]), tmp_path)
        assert send(daemon, message) == (250, "")
    to_globex = lambda: [m for m in recorder.received if m["to"] == ["ap@globex.example"]]  # noqa: E731
    wait_until(lambda: len(to_globex()) == 3)
    notes = [m["content"] for m in to_globex() if b"Subject: New invoice" in m["content"]]
    [invitation] = [m["content"] for m in to_globex() if b"register?token=" in m["content"]]
    assert len(notes) == 2 and all(b"ACME Corporation" in n and b"/invoices/" in n for n in notes)
    assert all(b"Amount: 1656.25 EUR" in n for n in notes)  # BT-115 and the currency, from the invoice
    assert any(b"INV-1" in n for n in notes) and not any(b"<Invoice" in n or b"base64" in n for n in notes)
    text = email.message_from_bytes(invitation, policy=email.policy.default).get_content()
    token = text.split("register?token=")[1].split()[0]
    [(digest,)] = query(daemon, "SELECT token_sha256 FROM invitations")
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    wait_until(lambda: query(daemon, "SELECT count(*) FROM audit_log WHERE event = 'mail.sent'") == [(3,)])


def test_a_partner_that_asked_for_email_gets_the_document_signed_and_encrypted(relayed, tmp_path):
    """globex ``--deliver email``: what acme mails for it is pushed through the relay, S/MIME-signed by the
    gateway and encrypted to globex's certificate; ``openssl cms`` decrypts and verifies the exact bytes."""
    daemon, recorder = relayed
    daemon.cli("partner", "set", "globex", "--deliver", "email")
    wait_until(lambda: "email" in daemon.cli("partner", "show", "globex", "--json").stdout)
    time.sleep(0.5)  # the daemon reloads the directory within a quarter second
    assert send(daemon, signed(daemon, mail_with([("inv.xml", BASE_EXAMPLE.read_bytes())]), tmp_path)) == (250, "")
    wait_until(lambda: any(b"application/pkcs7-mime" in m["content"] for m in recorder.received))
    [pushed] = [m for m in recorder.received if b"application/pkcs7-mime" in m["content"]]
    assert pushed["to"] == ["ap@globex.example"]
    [(message_id,)] = query(daemon, "SELECT message_id FROM deliveries WHERE target = 'email'")
    assert f"Message-ID: <{message_id}@localhost>".encode() in pushed["content"]  # the same on every retry
    (tmp_path / "pushed.eml").write_bytes(pushed["content"])
    globex = daemon.home.demo / "globex"
    openssl = ["openssl", "cms"]
    subprocess.run([*openssl, "-decrypt", "-in", str(tmp_path / "pushed.eml"), "-recip",
                    str(globex / "globex-encrypt.crt"), "-inkey", str(globex / "globex-encrypt.key"),
                    "-out", str(tmp_path / "signed.eml")], check=True, capture_output=True)
    subprocess.run([*openssl, "-verify", "-in", str(tmp_path / "signed.eml"), "-CAfile",
                    str(daemon.home.dev_ca / "ca.crt"), "-purpose", "any", "-out", str(tmp_path / "inner.eml")],
                   check=True, capture_output=True)
    inner = email.message_from_bytes((tmp_path / "inner.eml").read_bytes(), policy=email.policy.default)
    [attachment] = list(inner.iter_attachments())
    assert attachment.get_filename() == "inv.xml"
    assert attachment.get_content() == BASE_EXAMPLE.read_bytes()
    wait_until(lambda: query(daemon, "SELECT state FROM deliveries WHERE target = 'email'") == [("done",)])


def test_a_database_outage_answers_451_and_the_same_mail_is_taken_afterwards(postgres_server, tmp_path):
    """On PostgreSQL, with the gateway's database refusing connections: 451 4.3.0 (never 250, never 5xx),
    nothing stored; once it is back, the very same mail is accepted."""
    url = postgres_server.new_database("e2e_smtp")
    home = Home(tmp_path / "home")
    subprocess.run([POSTROOM, "--home", str(home.path), "init", "--demo", "--ephemeral-ports", "--database-url", url],
                   check=True, capture_output=True)
    daemon = Daemon(home).start()
    try:
        message = signed(daemon, mail_with([("i.xml", BASE_EXAMPLE.read_bytes())]), tmp_path)
        postgres_server.sql("ALTER DATABASE e2e_smtp ALLOW_CONNECTIONS false")
        postgres_server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'e2e_smtp'")
        try:
            code, text = send(daemon, message)
        finally:
            postgres_server.sql("ALTER DATABASE e2e_smtp ALLOW_CONNECTIONS true")
        assert (code, text[:5]) == (451, "4.3.0")
        assert '"channel": "email"' not in daemon.cli("message", "list", "--json").stdout
        wait_until(lambda: send(daemon, message) == (250, ""))
        assert daemon.cli("message", "list", "--json").stdout.count('"channel": "email"') == 1
    finally:
        daemon.stop()
