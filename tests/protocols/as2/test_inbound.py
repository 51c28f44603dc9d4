"""The sans-IO reading of inbound AS2: what MDN was asked for, AS2 names, and refusals before any crypto."""

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from partners.policy import Policy
from protocols.as2 import inbound
from protocols.as2.mime import Headers


def current() -> datetime:
    """Now, read when used: certificates made during the run are valid from a few minutes before it."""
    return datetime.now(UTC)


def headers(**fields: str) -> Headers:
    return Headers.of((name.replace("_", "-"), value) for name, value in fields.items())


@pytest.mark.parametrize("options, signed, micalg", [
    ("signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256", True, "sha-256"),
    ("signed-receipt-protocol=required,pkcs7-signature;signed-receipt-micalg=required,SHA256,sha1", True, "sha256"),
    ("signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, md5, sha-384", True,
     "sha-384"),
    ("signed-receipt-micalg=optional, sha-512", False, "sha-512"),
    ("", False, "sha-256"),
])
def test_receipt_request_reads_the_options_as_peers_write_them(options, signed, micalg):
    got = inbound.receipt_request(headers(Disposition_Notification_To="x@y", Disposition_Notification_Options=options),
                                  sha1_allowed=False)
    assert (got.wanted, got.signed, got.mic_algorithm, got.async_url) == (True, signed, micalg, None)


def test_sha1_mics_only_for_partners_allowed_sha1():
    options = "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha1, sha-256"
    h = headers(Disposition_Notification_To="x@y", Disposition_Notification_Options=options)
    assert inbound.receipt_request(h, sha1_allowed=False).mic_algorithm == "sha-256"
    assert inbound.receipt_request(h, sha1_allowed=True).digest == "sha1"


def test_no_disposition_notification_to_means_no_mdn_and_an_async_url_means_async():
    assert not inbound.receipt_request(headers(), sha1_allowed=False).wanted
    got = inbound.receipt_request(headers(Disposition_Notification_To="x", Receipt_Delivery_Option=" https://p/mdn "),
                                  sha1_allowed=False)
    assert got.async_url == "https://p/mdn"


@pytest.mark.parametrize("raw, name", [('"ACME Corp"', "ACME Corp"), ('"a\\"b"', 'a"b'), ("  ACME ", "ACME"),
                                       ('""', None), (None, None)])
def test_as2_names_lose_their_quotes_but_keep_their_case(raw, name):
    assert inbound.as2_name(raw) == name


def test_security_follows_the_partner_policy():
    strict = inbound.Security.of(Policy())
    assert strict.require_signature and strict.require_encryption and "sha1" not in strict.digests
    loose = inbound.Security.of(Policy(as2_require_encryption=False, allow_sha1=True))
    assert not loose.require_encryption and "sha1" in loose.digests


STRICT = inbound.Security()


def unwrap(h: Headers, body: bytes, security: inbound.Security = STRICT):
    return inbound.unwrap(h, body, recipients=(), trusted=(), cas=(), security=security, mic_digest="sha256",
                          max_decompressed=1 << 20, now=current())


def test_a_plain_payload_is_refused_when_the_policy_wants_encryption_and_the_mic_is_still_given():
    with pytest.raises(inbound.AS2Refused) as refused:
        unwrap(headers(Content_Type="application/xml"), b"<Invoice/>")
    assert refused.value.finding.code == inbound.AS2_SECURITY
    assert refused.value.mic == base64.b64encode(hashlib.sha256(b"<Invoice/>").digest()).decode()  # bare content


def test_an_unprotected_payload_passes_when_the_policy_allows_it():
    got = unwrap(headers(Content_Type="application/xml", Content_Disposition='attachment; filename="a.xml"'),
                 b"<Invoice/>", inbound.Security(require_signature=False, require_encryption=False))
    assert (got.payload.read(), got.filename, got.signed, got.encrypted) == (b"<Invoice/>", "a.xml", False, False)


@pytest.mark.parametrize("content_type, body, code", [
    ("application/pkcs7-mime; smime-type=enveloped-data", b"not DER", inbound.AS2_FORMAT),
    ("multipart/signed; boundary=b", b"--b\r\nx\r\n--b--\r\n", inbound.AS2_FORMAT),
    ("multipart/signed; boundary=b", b"--b\r\n\r\nx\r\n--b\r\nContent-Type: text/plain\r\n\r\nsig\r\n--b--\r\n",
     inbound.AS2_FORMAT),
    ("multipart/signed; boundary=b", b"--b\r\n\r\nx\r\n" * 100_000 + b"--b--\r\n", inbound.AS2_FORMAT),
])
def test_malformed_structures_are_unexpected_processing_errors(content_type, body, code):
    with pytest.raises(inbound.AS2Refused) as refused:
        unwrap(headers(Content_Type=content_type), body)
    assert refused.value.finding.code == code
    assert inbound.DISPOSITION_ERRORS[code] == "unexpected-processing-error"


@given(st.binary(max_size=3000), st.sampled_from([
    "application/pkcs7-mime", "application/x-pkcs7-mime; smime-type=compressed-data", "multipart/signed; boundary=b",
    "application/xml"]))
def test_arbitrary_bodies_are_refused_with_a_finding_never_a_crash(body, content_type):
    try:
        unwrap(headers(Content_Type=content_type), body)
    except inbound.AS2Refused as refused:
        assert refused.finding.code in inbound.DISPOSITION_ERRORS
