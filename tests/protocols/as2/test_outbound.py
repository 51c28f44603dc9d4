"""Outbound AS2 messages read back by ``openssl cms`` and by our own inbound side; MDNs read and checked."""

import base64
import hashlib
import subprocess
from datetime import UTC, datetime

import pytest

from certs.devca import DevCA
from protocols import mdn
from protocols.as2 import inbound, outbound
from protocols.as2.mime import Headers, parse_entity


def current() -> datetime:
    """Now, read when used: certificates made during the run are valid from a few minutes before it."""
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, our signing pair and the partner's encryption and signing pairs (RSA-2048)."""
    folder = tmp_path_factory.mktemp("pki")
    ca = DevCA.create(folder / "ca", key_bits=2048)
    issued = {name: ca.issue(name, usage, folder)
              for name, usage in (("us-sign", "sign"), ("them-encrypt", "encrypt"), ("them-sign", "sign"))}
    return ca, folder, issued


def _pair(issued):
    from certs.x509 import load_certificate, load_private_key, read_file

    return load_private_key(read_file(issued.key_path)), load_certificate(read_file(issued.cert_path))


def _build(pki, options, payload=b"<Invoice>1</Invoice>"):
    _, _, issued = pki
    key, cert = _pair(issued["us-sign"])
    _, encrypt_cert = _pair(issued["them-encrypt"])
    return outbound.build(payload, content_type="application/xml", filename="inv 1.xml", options=options,
                          as2_from="POSTROOM", as2_to="PEER ONE", message_id="<m1@postroom>", sign_key=key,
                          sign_cert=cert, encrypt_cert=encrypt_cert, receipt_to="https://gw.example/as2")


@pytest.mark.parametrize("cipher, transport", [("aes256-cbc", "rsa-v1.5"), ("aes128-gcm", "rsa-oaep-sha256"),
                                               ("3des", "rsa-oaep-sha1")])
def test_openssl_decrypts_verifies_and_agrees_on_the_mic(pki, tmp_path, cipher, transport):
    ca, folder, issued = pki
    out = _build(pki, outbound.SendOptions(cipher=cipher, key_transport=transport))
    (tmp_path / "body.p7m").write_bytes(out.body.read())
    signed = subprocess.run(["openssl", "cms", "-decrypt", "-binary", "-inform", "DER",
                             "-in", str(tmp_path / "body.p7m"),
                             "-recip", str(issued["them-encrypt"].cert_path),
                             "-inkey", str(issued["them-encrypt"].key_path)], capture_output=True, check=True).stdout
    (tmp_path / "signed.mime").write_bytes(signed)
    part = subprocess.run(["openssl", "cms", "-verify", "-inform", "SMIME", "-in", str(tmp_path / "signed.mime"),
                           "-CAfile", str(folder / "ca" / "ca.crt"), "-purpose", "any"],
                          capture_output=True, check=True).stdout
    assert out.mic == base64.b64encode(hashlib.sha256(part).digest()).decode()
    headers = dict(out.headers)
    assert headers["AS2-To"] == '"PEER ONE"'
    assert headers["Disposition-Notification-Options"].endswith("signed-receipt-micalg=optional, sha-256")
    assert parse_entity(part).filename() == "inv 1.xml"


@pytest.mark.parametrize("options", [
    outbound.SendOptions(), outbound.SendOptions(compress=True), outbound.SendOptions(encrypt=False),
    outbound.SendOptions(sign=False), outbound.SendOptions(digest="sha512", pss=True, mdn="async"),
])
def test_our_inbound_side_reads_what_our_outbound_side_writes(pki, options):
    """Round trip through the door's unwrap: same payload, same MIC, the layers reported."""
    _, _, issued = pki
    out = _build(pki, options)
    their_key, their_cert = _pair(issued["them-encrypt"])
    _, our_cert = _pair(issued["us-sign"])
    got = inbound.unwrap(Headers.of(out.headers), out.body, recipients=[(their_key, their_cert)], trusted=[our_cert],
                         cas=(), security=inbound.Security(require_signature=options.sign,
                                                           require_encryption=options.encrypt),
                         mic_digest=options.digest, max_decompressed=1 << 20, now=current())
    assert got.payload.read() == b"<Invoice>1</Invoice>"
    assert (got.signed, got.encrypted, got.compressed) == (options.sign, options.encrypt, options.compress)
    assert got.mic == out.mic
    assert ("Receipt-Delivery-Option", "https://gw.example/as2") in out.headers if options.mdn == "async" else True


def _receipt(pki, signed=True, **fields):
    _, _, issued = pki
    key, cert = _pair(issued["them-sign"])
    receipt = mdn.Receipt(original_message_id="<m1@postroom>", reporting_ua="peer", recipient="PEER",
                          disposition=fields.pop("disposition", mdn.Disposition()), text="ok",
                          mic=fields.pop("mic", "abc="), **fields)
    entity = mdn.build_signed(receipt, key, cert) if signed else mdn.unsigned(mdn.build_report(receipt))
    return Headers.of([("Content-Type", entity.content_type)]), entity.body


def test_a_signed_mdn_is_read_and_checked(pki):
    _, _, issued = pki
    _, cert = _pair(issued["them-sign"])
    headers, body = _receipt(pki)
    got = outbound.read_mdn(headers, body, trusted=[cert], cas=(), now=current(), require_signature=True)
    assert (got.status, got.signed, got.mic, got.mic_algorithm) == ("processed", True, "abc=", "sha-256")
    assert got.answers("m1@postroom")
    assert outbound.mic_matches("abc=", "sha256", got)
    assert not outbound.mic_matches("abd=", "sha-256", got)


def test_mdn_statuses(pki):
    _, _, issued = pki
    _, cert = _pair(issued["them-sign"])
    for disposition, status in ((mdn.Disposition(warning="duplicate-document"), "warning"),
                                (mdn.Disposition(error="decryption-failed"), "failed")):
        headers, body = _receipt(pki, disposition=disposition)
        got = outbound.read_mdn(headers, body, trusted=[cert], cas=(), now=current(), require_signature=True)
        assert got.status == status


def test_untrusted_tampered_or_unsigned_mdns_are_refused(pki):
    _, _, issued = pki
    _, stranger = _pair(issued["us-sign"])
    _, cert = _pair(issued["them-sign"])
    headers, body = _receipt(pki)
    with pytest.raises(outbound.MDNError, match="signature"):
        outbound.read_mdn(headers, body, trusted=[stranger], cas=(), now=current(), require_signature=True)
    with pytest.raises(outbound.MDNError, match="signature"):
        outbound.read_mdn(headers, body.replace(b"abc=", b"abd="), trusted=[cert], cas=(), now=current(),
                          require_signature=True)
    headers, body = _receipt(pki, signed=False)
    with pytest.raises(outbound.MDNError, match="not signed"):
        outbound.read_mdn(headers, body, trusted=[cert], cas=(), now=current(), require_signature=True)
    unsigned = outbound.read_mdn(headers, body, trusted=[cert], cas=(), now=current(), require_signature=False)
    assert unsigned.mic == "abc="


def test_sign_then_compress_is_read_too(pki):
    """RFC 5402 allows compression outside the signature as well as inside: the door reads both orders."""
    from protocols.as2 import cms
    from protocols.as2.mime import build_entity

    _, _, issued = pki
    _, our_cert = _pair(issued["us-sign"])
    signed = _build(pki, outbound.SendOptions(encrypt=False))
    signed_entity = build_entity([("Content-Type", dict(signed.headers)["Content-Type"])], signed.body.read())
    compressed = cms.compress(signed_entity)
    headers = Headers.of([("Content-Type", "application/pkcs7-mime; smime-type=compressed-data")])
    got = inbound.unwrap(headers, compressed, recipients=(), trusted=[our_cert], cas=(),
                         security=inbound.Security(require_encryption=False), mic_digest="sha256",
                         max_decompressed=1 << 20, now=current())
    assert got.payload.read() == b"<Invoice>1</Invoice>"
    assert (got.signed, got.compressed, got.encrypted) == (True, True, False)
    assert got.mic == signed.mic
