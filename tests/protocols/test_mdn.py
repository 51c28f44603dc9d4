"""Tests for :mod:`protocols.mdn`: receipts verify with ``openssl cms`` and say what happened, exactly."""

import email
import email.policy
import subprocess

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from protocols.findings import Finding
from protocols.mdn import Disposition, Receipt, ReceiptError, build_report, build_signed, sign


@pytest.fixture(scope="module")
def gateway(dev_ca):
    """The gateway's signing key and certificate."""
    return dev_ca.build("gateway sign", "sign")


def receipt(**changes) -> Receipt:
    base = dict(original_message_id="<20261123.1@acme.example>", reporting_ua="gw.example; Postroom",
                recipient="POSTROOM", disposition=Disposition(), text="The invoice was received and filed.",
                mic="2jmj7l5rSw0yVb/vlWAYkK/YBwk=")
    return Receipt(**(base | changes))


def openssl_verify(signed, ca, tmp_path, tamper=None) -> subprocess.CompletedProcess:
    """Run ``openssl cms -verify`` on the receipt as one MIME file; returns the process (content in .stdout)."""
    data = signed.as_mime()
    if tamper:
        data = tamper(data)
    (tmp_path / "receipt.eml").write_bytes(data)
    (tmp_path / "ca.crt").write_bytes(ca.certificate.public_bytes(Encoding.PEM))
    return subprocess.run(["openssl", "cms", "-verify", "-inform", "SMIME", "-in", str(tmp_path / "receipt.eml"),
                           "-CAfile", str(tmp_path / "ca.crt"), "-purpose", "any"], capture_output=True)


def parsed_notification(report: bytes):
    message = email.message_from_bytes(report, policy=email.policy.compat32)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "disposition-notification"
    text, notification = message.get_payload()
    assert notification.get_content_type() == "message/disposition-notification"
    return text, email.message_from_string(notification.get_payload()[0].as_string())


@pytest.mark.parametrize("disposition", [Disposition(), Disposition(warning="duplicate-document"),
                                         Disposition(error="authentication-failed")])
def test_signed_receipt_verifies_with_openssl_and_carries_the_report(gateway, dev_ca, tmp_path, disposition):
    """openssl accepts the gateway's signature, and the signed content is exactly the report we built."""
    key, cert = gateway
    report = build_report(receipt(disposition=disposition))
    result = openssl_verify(sign(report, key, cert), dev_ca, tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr
    assert result.stdout.replace(b"\r\n", b"\n") == report.replace(b"\r\n", b"\n")
    _, fields = parsed_notification(result.stdout.replace(b"\r\n", b"\n"))
    assert fields["Disposition"] == disposition.field()
    assert fields["Original-Message-ID"] == "<20261123.1@acme.example>"
    assert fields["Received-Content-MIC"] == "2jmj7l5rSw0yVb/vlWAYkK/YBwk=, sha-256"


def test_a_changed_byte_fails_verification(gateway, dev_ca, tmp_path):
    """Altering the signed report after signing is detected by an independent verifier."""
    key, cert = gateway
    signed = build_signed(receipt(), key, cert)
    result = openssl_verify(signed, dev_ca, tmp_path, tamper=lambda b: b.replace(b"; processed", b"; processeD"))
    assert result.returncode != 0


def test_a_receipt_signed_by_another_ca_does_not_verify_against_ours(other_ca, dev_ca, tmp_path):
    """Trust comes from the signing certificate's issuer, not from the receipt's say-so."""
    key, cert = other_ca.build("impostor", "sign")
    result = openssl_verify(build_signed(receipt(), key, cert), dev_ca, tmp_path)
    assert result.returncode != 0


def test_rejection_lists_findings_for_people_and_programs():
    """Each finding appears in the text and as an Error and a Postroom-Finding field."""
    findings = [Finding("GW-SIG-INVALID", "the XML signature does not verify"),
                Finding("GW-ROUTE-UNKNOWN", "no partner owns receiver 0088:123")]
    r = receipt(disposition=Disposition(error="authentication-failed"), findings=findings, mic=None)
    text, fields = parsed_notification(build_report(r))
    assert "GW-SIG-INVALID: the XML signature does not verify" in text.get_payload()
    assert fields.get_all("Postroom-Finding") == ["GW-SIG-INVALID; the XML signature does not verify",
                                                  "GW-ROUTE-UNKNOWN; no partner owns receiver 0088:123"]
    assert fields.get_all("Error") == ["GW-SIG-INVALID: the XML signature does not verify",
                                       "GW-ROUTE-UNKNOWN: no partner owns receiver 0088:123"]
    assert fields["Received-Content-MIC"] is None


def test_a_positive_receipt_with_findings_has_no_error_field():
    """Warnings-only findings are listed, but a positive receipt never says Error."""
    r = receipt(disposition=Disposition(warning="duplicate-document"),
                findings=[Finding("GW-DUP", "already received on 2026-11-22")])
    _, fields = parsed_notification(build_report(r))
    assert fields["Error"] is None and fields["Postroom-Finding"] == "GW-DUP; already received on 2026-11-22"


def test_non_ascii_text_is_base64_and_survives(gateway):
    """An explanation in any language is carried safely (no raw 8-bit inside a signed entity)."""
    r = receipt(text="Rechnung empfangen — merci, ¡gracias!")
    report = build_report(r)
    assert report.isascii()
    text, _ = parsed_notification(report)
    assert text.get_payload(decode=True).decode("utf-8").startswith("Rechnung empfangen — merci")


@pytest.mark.parametrize("field", ["original_message_id", "recipient", "reporting_ua", "mic"])
def test_line_breaks_cannot_inject_fields(field):
    """A partner-chosen value with CR/LF (e.g. a Message-ID) cannot add fields to our receipt."""
    with pytest.raises(ReceiptError, match="must not contain line breaks"):
        build_report(receipt(**{field: "x\r\nDisposition: automatic-action/MDN-sent-automatically; processed"}))


def test_unknown_modifiers_are_refused():
    """Only the dispositions peers understand can be built."""
    with pytest.raises(ReceiptError, match="unknown disposition error"):
        Disposition(error="it-broke")
    with pytest.raises(ReceiptError, match="not both"):
        Disposition(error="decryption-failed", warning="duplicate-document")


def test_signed_entity_structure(gateway):
    """multipart/signed with the report first and a base64 application/pkcs7-signature second."""
    key, cert = gateway
    signed = sign(build_report(receipt()), key, cert)
    message = email.message_from_bytes(signed.as_mime(), policy=email.policy.compat32)
    assert message.get_content_type() == "multipart/signed"
    assert message.get_param("micalg") == "sha-256"
    report, signature = message.get_payload()
    assert report.get_content_type() == "multipart/report"
    assert signature.get_content_type() == "application/pkcs7-signature"
    assert signature.get_payload(decode=True)[:1] == b"\x30"  # DER SEQUENCE
