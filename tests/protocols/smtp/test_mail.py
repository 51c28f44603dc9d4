"""Tests for :mod:`protocols.smtp.mail`: real S/MIME mail from ``openssl cms``, every refusal, and hostile MIME.

``openssl cms -sign -crlfeol`` is the independent sender (detached ``multipart/signed`` and opaque
signed-data, then ``-encrypt`` to the gateway); the MIME around it is built byte by byte here. The
hypothesis tests hold :func:`read_mail` to its contract — a :class:`Mail` or a :class:`MailRefused`,
nothing else — and check the walk against a model of the tree it was given.
"""

import binascii
import itertools
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partners.directory import Partner, PartnerDirectory
from partners.networks import NetworkSet, parse_network
from partners.policy import Policy
from protocols.as2.mime import CHUNK, MAX_HEADER_BYTES, Region, base64_lines, build_entity
from protocols.smtp import mail
from protocols.smtp.mail import MailRefused
from tests.protocols.as2 import vectors
from tests.protocols.as2.vectors import OpenSSL

INVOICE = (Path(__file__).parents[2] / "fixtures/invoices/peppol-bis3/base-example.xml").read_bytes()
SECOND = (Path(__file__).parents[2] / "fixtures/invoices/peppol-bis3/vat-category-E.xml").read_bytes()
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
SENDER = "billing@acme.example"
SOURCE = "192.0.2.10"
HYPOTHESIS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], deadline=None)

_boundaries = itertools.count()


@attrs.frozen
class PKI:
    """The key pairs the tests sign, encrypt and decrypt with."""

    acme: tuple
    globex: tuple
    stranger: tuple
    gateway: tuple
    other_gateway: tuple


@pytest.fixture(scope="module")
def pki(dev_ca, other_ca) -> PKI:
    """Acme's and Globex's registered signing pairs, a stranger's, and the gateway's decryption pair."""
    return PKI(acme=dev_ca.build("acme sign", "sign"), globex=dev_ca.build("globex sign", "sign"),
               stranger=other_ca.build("acme sign", "sign"), gateway=dev_ca.build("gateway encrypt", "encrypt"),
               other_gateway=dev_ca.build("someone else encrypt", "encrypt"))


@pytest.fixture(scope="module")
def openssl(tmp_path_factory) -> OpenSSL:
    """``openssl cms`` in a directory of its own."""
    return OpenSSL(tmp_path_factory.mktemp("openssl"))


def directory_for(pki: PKI, **policy: bool) -> PartnerDirectory:
    """Acme (two addresses, 192.0.2.0/24, ``policy``) and Globex, each with its own signing certificate."""
    acme = Partner(id="acme", name="Acme", active=True, policy=Policy(**policy),
                   emails=(SENDER, "ap@acme.example"), networks=NetworkSet([parse_network("192.0.2.0/24")]),
                   certificates={"sign": (pki.acme[1],)})
    globex = Partner(id="globex", name="Globex", active=True, emails=("invoices@globex.example",),
                     networks=NetworkSet([parse_network("198.51.100.0/24")]), certificates={"sign": (pki.globex[1],)})
    return PartnerDirectory.build(1, [acme, globex])


@pytest.fixture(scope="module")
def directory(pki) -> PartnerDirectory:
    """The default directory: Acme's policy is strict (signed mail only, no PDF)."""
    return directory_for(pki)


# --- building mail ------------------------------------------------------------------------------------


def part(content_type: str, body: bytes, *headers: tuple[str, str]) -> bytes:
    """One MIME entity: ``Content-Type``, the other headers, the body as given."""
    return build_entity([("Content-Type", content_type), *headers], body)


def attachment(data: bytes = INVOICE, filename: str | None = "invoice.xml", content_type: str = "application/xml",
               encoding: str = "base64") -> bytes:
    """An attachment as mailers write it: base64 in 76-character lines unless ``encoding`` says otherwise."""
    disposition = [("Content-Disposition", f'attachment; filename="{filename}"')] if filename else []
    body = base64_lines(data) if encoding == "base64" else data
    return part(content_type, body, ("Content-Transfer-Encoding", encoding), *disposition)


def text(words: str = "Please find our invoice attached.") -> bytes:
    """A text/plain body part."""
    return part("text/plain; charset=utf-8", words.encode() + b"\r\n", ("Content-Transfer-Encoding", "8bit"))


def boundary() -> str:
    """A fresh boundary; none is a prefix of another, so nested delimiters never look alike."""
    return f"=_{next(_boundaries):06d}_="


def multipart(subtype: str, *parts: bytes, marker: str | None = None) -> bytes:
    """A multipart entity with a preamble; the CRLF before each delimiter is the delimiter's."""
    marker = marker or boundary()
    delimiter = b"--" + marker.encode()
    body = b"This is a multi-part message in MIME format.\r\n"
    body += b"".join(delimiter + b"\r\n" + p + b"\r\n" for p in parts) + delimiter + b"--\r\n"
    return part(f'multipart/{subtype}; boundary="{marker}"', body)


def message(content: bytes, *, sender: str = SENDER, message_id: str | None = "<inv-1@acme.example>",
            subject: str = "Invoice 1", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole mail: the envelope-ish headers, then ``content`` (an entity, its own headers first)."""
    fields = [("From", f"Acme Billing <{sender}>"), ("To", "invoices@gw.example"), ("Subject", subject),
              ("Date", "Mon, 23 Nov 2026 10:00:00 +0000"), *headers]
    if message_id is not None:
        fields.append(("Message-ID", message_id))
    if not content.startswith(b"MIME-Version:"):
        fields.append(("MIME-Version", "1.0"))
    return "".join(f"{name}: {value}\r\n" for name, value in fields).encode() + content


def invoice_mail(*attachments: bytes) -> bytes:
    """The usual content: multipart/mixed with a text part and the attachments (one invoice by default)."""
    return multipart("mixed", text(), *(attachments or (attachment(),)))


def sign(openssl: OpenSSL, content: bytes, pair: tuple, *options: str) -> bytes:
    """``openssl cms -sign`` in S/MIME form with CRLF line ends (detached multipart/signed by default)."""
    out = openssl.file(b"")
    openssl.run("-sign", "-crlfeol", *options, "-in", openssl.file(content), "-signer", openssl.cert(pair[1]),
                "-inkey", openssl.key(pair[0]), "-out", out)
    return Path(out).read_bytes()


def encrypt(openssl: OpenSSL, content: bytes, cert) -> bytes:
    """``openssl cms -encrypt`` of an entity, in S/MIME form (application/pkcs7-mime enveloped-data)."""
    out = openssl.file(b"")
    openssl.run("-encrypt", "-crlfeol", "-in", openssl.file(content), "-out", out, openssl.cert(cert))
    return Path(out).read_bytes()


def read(raw: bytes, directory: PartnerDirectory, *, sender: str = SENDER, source: str = SOURCE,
         recipients=(), max_decompressed: int = 10 << 20) -> mail.Mail:
    """:func:`mail.read_mail` over the bytes as the server spooled them."""
    return mail.read_mail(Region.of_bytes(raw), envelope_from=sender, source=source, directory=directory,
                          recipients=recipients, now=datetime.now(UTC), max_decompressed=max_decompressed)


def refusal(raw: bytes, directory: PartnerDirectory, **options) -> MailRefused:
    """The refusal :func:`read` must raise."""
    with pytest.raises(MailRefused) as refused:
        read(raw, directory, **options)
    return refused.value


def bodies(got: mail.Mail) -> list[bytes]:
    """The attachments' bytes, in order."""
    return [a.body.read() for a in got.attachments]


@pytest.fixture(scope="module")
def signed_mail(openssl, pki) -> bytes:
    """A detached-signed mail (multipart/signed over multipart/mixed: text and a base64 invoice)."""
    return message(sign(openssl, invoice_mail(), pki.acme))


@pytest.fixture(scope="module")
def encrypted_mail(openssl, pki) -> bytes:
    """Signed by Acme, encrypted to the gateway."""
    return message(encrypt(openssl, sign(openssl, invoice_mail(), pki.acme), pki.gateway[1]))


@pytest.fixture(scope="module")
def loose(pki) -> PartnerDirectory:
    """Acme may send unsigned mail (invoices must then carry XML-DSig; not this module's concern)."""
    return directory_for(pki, allow_unsigned_mail=True)


# --- what a good mail yields ----------------------------------------------------------------------------


def test_a_signed_mail_yields_the_partner_and_its_invoice_byte_for_byte(signed_mail, directory):
    """Detached multipart/signed: the signer is Acme's registered certificate, the XML comes out unchanged."""
    got = read(signed_mail, directory)
    assert (got.partner.id, got.message_id, got.subject, got.signed) == ("acme", "inv-1@acme.example", "Invoice 1",
                                                                          True)
    assert [(a.filename, a.content_type) for a in got.attachments] == [("invoice.xml", "application/xml")]
    assert bodies(got) == [INVOICE]


def test_opaque_signed_data_is_read_too(openssl, pki, directory):
    """application/pkcs7-mime; smime-type=signed-data (what Outlook sends with "opaque" signing)."""
    got = read(message(sign(openssl, invoice_mail(), pki.acme, "-nodetach")), directory)
    assert got.signed and bodies(got) == [INVOICE]


def test_an_encrypted_signed_mail_is_decrypted_with_the_gateway_key(openssl, pki, directory):
    """Signed, then encrypted to the gateway's encryption certificate; the key pair list may hold several."""
    raw = message(encrypt(openssl, sign(openssl, invoice_mail(), pki.acme), pki.gateway[1]))
    got = read(raw, directory, recipients=(pki.other_gateway, pki.gateway))
    assert got.signed and bodies(got) == [INVOICE]


def test_mail_encrypted_to_someone_else_is_refused_as_a_cryptographic_failure(openssl, pki, directory):
    """5.7.5, telling the sender which certificate to encrypt to, and nothing about our keys."""
    raw = message(encrypt(openssl, sign(openssl, invoice_mail(), pki.acme), pki.other_gateway[1]))
    refused = refusal(raw, directory, recipients=(pki.gateway,))
    assert (refused.code, refused.status) == (550, "5.7.5")
    assert refused.text == "cannot decrypt: encrypt to the gateway's encryption certificate"


def test_encryption_alone_is_not_a_signature(openssl, pki, directory, loose):
    """Encrypted but unsigned: refused under the strict policy, read (unsigned) where the policy allows it."""
    raw = message(encrypt(openssl, invoice_mail(), pki.gateway[1]))
    assert refusal(raw, directory, recipients=(pki.gateway,)).text.startswith("unsigned mail is refused")
    got = read(raw, loose, recipients=(pki.gateway,))
    assert not got.signed and bodies(got) == [INVOICE]


def test_two_attachments_come_out_in_order(openssl, pki, directory):
    """Every invoice in the mail, in the order attached, with its own name."""
    content = invoice_mail(attachment(SECOND, "second.xml", "text/xml"), attachment(INVOICE, "first.xml"))
    got = read(message(sign(openssl, content, pki.acme)), directory)
    assert [(a.filename, a.content_type) for a in got.attachments] == [("second.xml", "text/xml"),
                                                                       ("first.xml", "application/xml")]
    assert bodies(got) == [SECOND, INVOICE]


def test_nested_alternative_and_related_parts_are_walked_and_bodies_skipped(openssl, pki, directory):
    """mixed[alternative[text, related[html, image]], invoice]: only the invoice is taken."""
    html = part("text/html; charset=utf-8", b"<p>Invoice attached</p>\r\n")
    image = attachment(b"\x89PNG...", "logo.png", "image/png")
    content = multipart("mixed", multipart("alternative", text(), multipart("related", html, image)), attachment())
    got = read(message(sign(openssl, content, pki.acme)), directory)
    assert [a.filename for a in got.attachments] == ["invoice.xml"] and bodies(got) == [INVOICE]


def test_a_single_part_signed_invoice_is_taken(openssl, pki, directory):
    """The signed entity may be the invoice itself (no multipart/mixed at all)."""
    got = read(message(sign(openssl, attachment(), pki.acme)), directory)
    assert [(a.filename, a.content_type) for a in got.attachments] == [("invoice.xml", "application/xml")]
    assert bodies(got) == [INVOICE]


def test_quoted_printable_xml_is_decoded(loose):
    """A text/xml attachment in quoted-printable (soft line breaks, =3D, 8-bit escapes) decodes to the bytes."""
    qp = binascii.b2a_qp(INVOICE.replace(b"\n", b"\r\n") + "é€\r\n".encode())
    assert b"=\r\n" in qp.replace(b"=\n", b"=\r\n") and b"=3D" in qp
    got = read(message(invoice_mail(attachment(qp, "qp.xml", "text/xml", "quoted-printable"))), loose)
    assert bodies(got) == [binascii.a2b_qp(qp)]


@pytest.mark.parametrize("shift", range(-3, 3))
def test_quoted_printable_escapes_cut_by_a_chunk_end_decode_whole(loose, shift):
    """``=41`` and ``=\\r\\n`` straddling the 64 KiB read boundary decode as if read at once."""
    qp = b"<x>" + b"a" * (CHUNK - 3 - 2 + shift) + b"=41=\r\nb=3D=C3=A9" + b"c" * 100 + b"</x>"
    got = read(message(invoice_mail(attachment(qp, "big.xml", encoding="quoted-printable"))), loose)
    assert bodies(got) == [binascii.a2b_qp(qp)]


@HYPOTHESIS
@given(st.binary(max_size=300), st.integers(0, 90))
def test_streamed_quoted_printable_equals_decoding_it_whole(loose, data, shift):
    """Any QP text, shifted so the 64 KiB read boundary falls anywhere in it, decodes as binascii decodes it whole."""
    qp = b"<x>" + b"a" * (CHUNK - 3 - shift) + binascii.b2a_qp(data).replace(b"\n", b"\r\n")
    got = read(message(invoice_mail(attachment(qp, "big.xml", encoding="quoted-printable"))), loose)
    assert bodies(got) == [binascii.a2b_qp(qp)]


@pytest.mark.parametrize("headers, name", [
    ([("Content-Type", 'application/octet-stream; name="INV-1.XML"')], "INV-1.XML"),
    ([("Content-Type", "application/octet-stream"),
      ("Content-Disposition", "attachment; filename*=utf-8''r%C3%A9f.xml")], "réf.xml"),
    ([("Content-Type", "application/octet-stream"),
      ("Content-Disposition", 'attachment; filename="=?UTF-8?Q?Rechnung_=C3=A4.xml?="')], "Rechnung ä.xml"),
    ([("Content-Type", "application/octet-stream"), ("Content-Disposition", 'attachment; filename="C:\\out\\a.xml"')],
     "a.xml"),
])
def test_xml_is_recognised_by_its_file_name_however_the_mailer_wrote_it(loose, headers, name):
    """``*.xml`` in Content-Disposition filename (RFC 2231 or 2047) or Content-Type name; paths dropped."""
    raw_part = build_entity([*headers, ("Content-Transfer-Encoding", "base64")], base64_lines(INVOICE))
    got = read(message(invoice_mail(raw_part)), loose)
    assert [(a.filename, a.content_type) for a in got.attachments] == [(name, "application/octet-stream")]
    assert bodies(got) == [INVOICE]


def test_the_message_id_loses_its_brackets_and_the_subject_is_decoded(loose):
    """Message-ID without ``<>``; a missing one is None; an RFC 2047 subject is one line of text."""
    got = read(message(invoice_mail(), message_id=" <a.b@acme.example> ",
                       subject="=?utf-8?q?Rechnung_=C3=A4?= =?utf-8?q?=0D=0ABcc:_x?="), loose)
    assert (got.message_id, got.subject) == ("a.b@acme.example", "Rechnung ä  Bcc: x")
    assert read(message(invoice_mail(), message_id=None), loose).message_id is None
    assert read(message(invoice_mail(), message_id="<two words@x>"), loose).message_id is None


# --- who sent it ----------------------------------------------------------------------------------------


def test_an_unregistered_envelope_sender_is_refused(signed_mail, directory):
    """MAIL FROM must be an address of an active partner, whatever the mail says."""
    refused = refusal(signed_mail, directory, sender="mallory@evil.example")
    assert (refused.code, refused.status) == (550, "5.7.1")
    assert refused.text == "sender address mallory@evil.example is not registered with this gateway"


def test_a_disabled_partner_is_as_unknown_as_a_stranger(signed_mail, pki):
    """by_email only knows active partners."""
    disabled = PartnerDirectory.build(2, [attrs.evolve(p, active=False)
                                          for p in directory_for(pki).partners.values()])
    assert refusal(signed_mail, disabled).text.startswith(f"sender address {SENDER} is not registered")


def test_a_source_outside_the_partners_allowlist_is_refused(signed_mail, directory):
    """Globex's network is allowlisted, but not for Acme."""
    refused = refusal(signed_mail, directory, source="198.51.100.7")
    assert (refused.code, refused.status, refused.text) == (550, "5.7.1",
                                                            "198.51.100.7 is not an allowed address for partner acme")


@pytest.mark.parametrize("from_, shown", [
    ("Globex <invoices@globex.example>", "invoices@globex.example"),
    (f"{SENDER}, invoices@globex.example", "invoices@globex.example"),
    ("=?utf-8?q?billing=40acme.example?= <mallory@evil.example>", "mallory@evil.example"),
    ("undisclosed-recipients:;", None),
])
def test_every_from_address_must_be_the_senders_partners(openssl, pki, directory, from_, shown):
    """From: of another partner, of nobody, or hidden behind an encoded display name is refused."""
    raw = b"From: " + from_.encode() + b"\r\n" + message(sign(openssl, invoice_mail(), pki.acme)).split(b"\r\n", 1)[1]
    refused = refusal(raw, directory)
    assert (refused.code, refused.status) == (550, "5.7.1")
    assert (shown or "names no address") in refused.text


@pytest.mark.parametrize("nesting", ["(" * 3000, "a:" * 3000])
def test_a_from_header_nested_past_the_parsers_recursion_limit_is_refused(loose, nesting):
    """The stdlib address parser recurses per nested comment or group; that must be a refusal, not a crash."""
    refused = refusal(b"From: " + nesting.encode() + b"\r\n" + message(invoice_mail()).split(b"\r\n", 1)[1], loose)
    assert (refused.code, refused.status) == (550, "5.7.1") and "too deeply" in refused.text


def test_another_registered_address_of_the_same_partner_may_be_in_from(openssl, pki, directory):
    """The envelope and From: may differ, as long as both are Acme's."""
    raw = message(sign(openssl, invoice_mail(), pki.acme), sender="AP@acme.example")
    assert read(raw, directory).partner.id == "acme"


def test_a_mail_without_from_is_refused(loose):
    """RFC 5322 requires From:, and the check cannot be skipped by leaving it out."""
    raw = message(invoice_mail()).split(b"\r\n", 1)[1]
    refused = refusal(raw, loose)
    assert (refused.code, refused.status) == (550, "5.7.1") and "no From: header" in refused.text


# --- signatures -----------------------------------------------------------------------------------------


def test_a_signature_by_a_stranger_is_refused(openssl, pki, directory):
    """A certificate from another CA, with the same name as Acme's, does not speak for Acme."""
    refused = refusal(message(sign(openssl, invoice_mail(), pki.stranger)), directory)
    assert (refused.code, refused.status) == (550, "5.7.1")
    assert refused.text.startswith("signed by a certificate not registered to partner acme")


def test_a_signature_by_another_partner_is_refused(openssl, pki, directory):
    """Globex's registered certificate does not sign for Acme, though the same CA issued both."""
    refused = refusal(message(sign(openssl, invoice_mail(), pki.globex)), directory)
    assert (refused.code, refused.status) == (550, "5.7.1") and "partner acme" in refused.text


def test_a_tampered_mail_fails_its_integrity_check(signed_mail, directory):
    """One byte of the signed invoice changed in transit: 5.7.7, nothing taken."""
    encoded = base64_lines(INVOICE)
    assert encoded[:76] in signed_mail
    tampered = signed_mail.replace(encoded[:76], encoded[:75] + (b"A" if encoded[75:76] != b"A" else b"B"))
    refused = refusal(tampered, directory)
    assert (refused.code, refused.status) == (550, "5.7.7")
    assert refused.text.startswith("the signature does not verify")


def test_sha1_signatures_are_a_refused_algorithm_unless_the_partner_is_allowed_sha1(openssl, pki):
    """5.7.6 names the algorithm; allow_sha1 (legacy peers) lets the same mail through."""
    raw = message(sign(openssl, invoice_mail(), pki.acme, "-md", "sha1"))
    refused = refusal(raw, directory_for(pki))
    assert (refused.code, refused.status) == (550, "5.7.6") and "sha1" in refused.text
    assert read(raw, directory_for(pki, allow_sha1=True)).signed


def test_unsigned_mail_is_refused_unless_the_policy_allows_it(directory, loose):
    """Strict: 5.7.1 saying how to sign. Loose: read, ``signed`` False (the intake then requires XML-DSig)."""
    raw = message(invoice_mail())
    refused = refusal(raw, directory)
    assert (refused.code, refused.status, refused.text) == (
        550, "5.7.1", "unsigned mail is refused: sign it with S/MIME using the certificate registered for partner acme")
    got = read(raw, loose)
    assert not got.signed and bodies(got) == [INVOICE]


def test_malformed_smime_is_a_content_error(directory):
    """A pkcs7-mime body that is not CMS: 554 5.6.0 with the reason."""
    raw = message(part("application/pkcs7-mime; smime-type=signed-data", base64_lines(b"not DER"),
                       ("Content-Transfer-Encoding", "base64")))
    refused = refusal(raw, directory)
    assert (refused.code, refused.status) == (554, "5.6.0") and "CMS" in refused.text


# --- what is taken --------------------------------------------------------------------------------------


def test_pdf_is_skipped_unless_the_policy_allows_opaque_documents(pki, loose):
    """PDF only where the policy allows: without allow_opaque a PDF is skipped like any other attachment."""
    raw = message(invoice_mail(attachment(PDF, "scan.pdf", "application/pdf"), attachment()))
    assert [a.filename for a in read(raw, loose).attachments] == ["invoice.xml"]
    opaque = directory_for(pki, allow_unsigned_mail=True, allow_opaque=True)
    got = read(raw, opaque)
    assert [(a.filename, a.content_type) for a in got.attachments] == [("scan.pdf", "application/pdf"),
                                                                       ("invoice.xml", "application/xml")]
    assert bodies(got) == [PDF, INVOICE]


def test_compressed_signed_mail_is_read_and_a_decompression_bomb_is_too_big(openssl, pki, directory):
    """smime-type=compressed-data around the signed mail; past max_decompressed it is 552 5.3.4, not a format error."""
    signed = sign(openssl, invoice_mail(), pki.acme)
    raw = message(part("application/pkcs7-mime; smime-type=compressed-data", base64_lines(vectors.compressed(signed)),
                       ("Content-Transfer-Encoding", "base64")))
    assert bodies(read(raw, directory)) == [INVOICE]
    refused = refusal(raw, directory, max_decompressed=len(signed) - 1)
    assert (refused.code, refused.status) == (552, "5.3.4")


def test_a_mail_with_only_a_pdf_has_no_invoice_for_a_strict_policy(loose):
    """The refusal lists what would have been taken."""
    refused = refusal(message(invoice_mail(attachment(PDF, "scan.pdf", "application/pdf"))), loose)
    assert (refused.code, refused.status, refused.text) == (
        554, "5.6.0", "no invoice attachment (application/xml, text/xml or *.xml)")


def test_a_mail_without_attachments_is_refused(openssl, pki, directory):
    """A signed text-only mail has nothing to take."""
    refused = refusal(message(sign(openssl, multipart("mixed", text()), pki.acme)), directory)
    assert (refused.code, refused.status) == (554, "5.6.0") and refused.text.startswith("no invoice attachment")


def test_bad_base64_is_refused_naming_the_part(loose):
    """Strict base64: a character outside the alphabet refuses the mail and says which attachment."""
    broken = part("application/xml", base64_lines(INVOICE)[:100] + b"*" + base64_lines(INVOICE)[100:],
                  ("Content-Transfer-Encoding", "base64"), ("Content-Disposition", 'attachment; filename="bad.xml"'))
    refused = refusal(message(invoice_mail(broken)), loose)
    assert (refused.code, refused.status) == (554, "5.6.0")
    assert refused.text.startswith("part 2 (bad.xml): the base64 body does not decode")


def test_a_zero_byte_invoice_is_refused(loose):
    """An empty attachment is a mistake the sender should hear about, not an empty invoice."""
    refused = refusal(message(invoice_mail(attachment(b"", "empty.xml"))), loose)
    assert (refused.code, refused.status, refused.text) == (
        554, "5.6.0", "part 2 (empty.xml) is empty (0 bytes); attach the invoice itself")


def test_an_unknown_transfer_encoding_is_refused(loose):
    """x-uuencode and friends are not guessed at."""
    odd = attachment(b"begin 644 a.xml\r\n", "a.xml", encoding="x-uuencode")
    refused = refusal(message(invoice_mail(odd)), loose)
    assert (refused.code, refused.status) == (554, "5.6.0") and "x-uuencode" in refused.text


def test_binary_and_8bit_attachments_are_taken_in_place(loose):
    """No transfer encoding to undo: the region is a slice of the spooled message itself."""
    raw = message(invoice_mail(attachment(INVOICE, "a.xml", encoding="8bit")))
    spooled = Region.of_bytes(raw)
    got = mail.read_mail(spooled, envelope_from=SENDER, source=SOURCE, directory=loose, recipients=(),
                         now=datetime.now(UTC), max_decompressed=1 << 20)
    assert got.attachments[0].body.file is spooled.file and bodies(got) == [INVOICE]


# --- limits ---------------------------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    """``depth`` multiparts, one inside the other, the invoice in the innermost."""
    content = attachment()
    for _ in range(depth):
        content = multipart("mixed", content)
    return content


def test_multiparts_nest_eight_deep_and_no_deeper(loose):
    """Depth 8 is read; depth 9 is refused before its parts are looked at."""
    assert bodies(read(message(nested(mail.MAX_DEPTH)), loose)) == [INVOICE]
    refused = refusal(message(nested(mail.MAX_DEPTH + 1)), loose)
    assert (refused.code, refused.status) == (554, "5.6.0") and f"more than {mail.MAX_DEPTH} deep" in refused.text


def test_a_hundred_parts_are_read_and_one_more_is_refused(loose):
    """The part count covers every depth (here 1 text part + a nested multipart + the rest)."""
    def mail_with(parts: int) -> bytes:
        inner = multipart("mixed", *[text()] * (parts - 3))
        return message(multipart("mixed", inner, text(), attachment()))

    assert bodies(read(mail_with(mail.MAX_PARTS), loose)) == [INVOICE]
    refused = refusal(mail_with(mail.MAX_PARTS + 1), loose)
    assert (refused.code, refused.status) == (552, "5.3.4") and "more than 100 MIME parts" in refused.text


def test_a_million_empty_parts_cost_one_scan(loose):
    """The delimiters are counted, stopping at the limit, before the body is split."""
    marker = boundary()
    body = (b"--" + marker.encode() + b"\r\n") * 1_000_000
    refused = refusal(message(part(f"multipart/mixed; boundary={marker}", body)), loose)
    assert (refused.code, refused.status) == (552, "5.3.4")


def test_fifty_invoices_are_taken_and_fifty_one_refused(loose):
    """Each invoice becomes a message with a receipt; more than 50 per mail is sent as several mails."""
    small = attachment(b"<Invoice/>", "i.xml")
    assert len(read(message(multipart("mixed", *[small] * mail.MAX_ATTACHMENTS)), loose).attachments) == 50
    refused = refusal(message(multipart("mixed", *[small] * (mail.MAX_ATTACHMENTS + 1))), loose)
    assert (refused.code, refused.status) == (552, "5.3.4") and "more than 50 invoice attachments" in refused.text


def test_the_decoded_attachments_are_capped_together(loose):
    """max_decompressed bounds the sum of the attachments, not each one."""
    raw = message(invoice_mail(attachment(INVOICE, "a.xml"), attachment(INVOICE, "b.xml")))
    assert len(read(raw, loose, max_decompressed=2 * len(INVOICE)).attachments) == 2
    refused = refusal(raw, loose, max_decompressed=2 * len(INVOICE) - 1)
    assert (refused.code, refused.status) == (552, "5.3.4")


def test_huge_header_blocks_are_refused(loose):
    """The message's headers: at most 64 KiB and 1000 fields; a part's likewise."""
    long_header = (("X-Filler", "x" * MAX_HEADER_BYTES),)
    refused = refusal(message(invoice_mail(), headers=long_header), loose)
    assert (refused.code, refused.status) == (552, "5.6.0") and "the message" in refused.text
    plain = message(invoice_mail())
    room = mail.MAX_HEADER_FIELDS - plain[:plain.index(b"\r\n\r\n")].count(b"\r\n") - 1
    assert bodies(read(message(invoice_mail(), headers=(("X-Trace", "1"),) * room), loose)) == [INVOICE]
    refused = refusal(message(invoice_mail(), headers=(("X-Trace", "1"),) * (room + 1)), loose)
    assert (refused.code, refused.status) == (552, "5.6.0") and "more than 1000 header fields" in refused.text
    fat_part = build_entity([("Content-Type", "text/plain"), ("X-Filler", "y" * MAX_HEADER_BYTES)], b"hi\r\n")
    refused = refusal(message(invoice_mail(fat_part)), loose)
    assert (refused.code, refused.status) == (552, "5.6.0") and "part 2" in refused.text


def test_a_multipart_without_a_boundary_is_refused(loose):
    """Not guessed at: the sender's mailer is broken and should hear it."""
    refused = refusal(message(part("multipart/mixed", b"--x\r\n\r\nhi\r\n--x--\r\n")), loose)
    assert (refused.code, refused.status) == (554, "5.6.0") and "boundary" in refused.text


def test_reply_texts_are_printable_ascii_and_short(loose):
    """A non-ASCII or endless sender address cannot leak into the SMTP reply line."""
    refused = refusal(message(invoice_mail()), loose, sender="ä" * 500 + "@x\r\nRSET")
    assert refused.text.isascii() and refused.text.isprintable() and len(refused.text) <= mail.MAX_TEXT


# --- hostile MIME never crashes -------------------------------------------------------------------------


def survives(raw: bytes, directory: PartnerDirectory, **options) -> mail.Mail | MailRefused:
    """The outcome: a Mail or a MailRefused (any other exception fails the test)."""
    try:
        return read(raw, directory, **options)
    except MailRefused as refused:
        assert refused.code in (550, 552, 554) and refused.text.isascii()
        return refused


@HYPOTHESIS
@given(st.binary(max_size=4000))
def test_random_bytes_are_refused_never_a_crash(pki, data):
    """Arbitrary bytes, bare and after a plausible header block."""
    loose = directory_for(pki, allow_unsigned_mail=True, allow_opaque=True)
    survives(data, loose)
    head = f"From: {SENDER}\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n".encode()
    survives(head + data, loose)


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                               st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=4)


@HYPOTHESIS
@given(MUTATIONS)
def test_a_mutated_signed_mail_reads_to_the_exact_invoice_or_is_refused(signed_mail, directory, pki, mutations):
    """Damage anywhere: either the signature still covers an untouched invoice, or the mail is refused."""
    raw = bytearray(signed_mail)
    for kind, where, data in mutations:
        at = int(where * len(raw))
        if kind == "flip":
            raw[at] ^= data[0] or 1
        elif kind == "insert":
            raw[at:at] = data
        elif kind == "delete":
            del raw[at:at + len(data)]
        else:
            del raw[at:]
        if not raw:
            raw = bytearray(b"\r\n")
    outcome = survives(bytes(raw), directory, recipients=(pki.gateway,))
    if isinstance(outcome, mail.Mail):
        assert outcome.signed and bodies(outcome) == [INVOICE]


@HYPOTHESIS
@given(MUTATIONS)
def test_a_mutated_encrypted_mail_never_crashes(pki, directory, encrypted_mail, mutations):
    """The same for the enveloped-data layer (damaged base64, DER, padding)."""
    raw = bytearray(encrypted_mail)
    for _, where, data in mutations:
        at = int(where * len(raw))
        raw[at:at + len(data)] = data
    outcome = survives(bytes(raw), directory, recipients=(pki.gateway,))
    if isinstance(outcome, mail.Mail):
        assert outcome.signed and bodies(outcome) == [INVOICE]


# A MIME tree: ("xml", bytes) | ("text", str) | ("pdf", bytes) | ("multipart", subtype, [children]).
LEAVES = st.one_of(st.tuples(st.just("xml"), st.binary(min_size=1, max_size=40)),
                   st.tuples(st.just("text"), st.text(max_size=20)),
                   st.tuples(st.just("pdf"), st.binary(min_size=1, max_size=40)))
TREES = st.recursive(LEAVES, lambda children: st.tuples(
    st.just("multipart"), st.sampled_from(["mixed", "alternative", "related"]),
    st.lists(children, min_size=1, max_size=6)), max_leaves=160)
DEEP = st.integers(1, 14).flatmap(lambda depth: st.builds(
    lambda leaf, wraps: _wrap(leaf, wraps, depth), TREES, st.lists(st.integers(0, 3), min_size=depth, max_size=depth)))


def _wrap(tree, siblings: list[int], depth: int):
    """``tree`` under ``depth`` multiparts, each with some text siblings beside it."""
    for count in siblings[:depth]:
        tree = ("multipart", "mixed", [("text", "hi")] * count + [tree])
    return tree


def render(tree) -> bytes:
    """The tree as MIME bytes."""
    if tree[0] == "xml":
        return attachment(tree[1], "i.xml")
    if tree[0] == "pdf":
        return attachment(tree[1], "p.pdf", "application/pdf")
    if tree[0] == "text":
        return text(tree[1])
    return multipart(tree[1], *map(render, tree[2]))


class _Refused(Exception):
    """The model's refusal: ``args`` are the code and status."""


class Model:
    """What :func:`read_mail` must make of a tree: the walk spelled out, limits and all."""

    def __init__(self) -> None:
        self.parts = 0
        self.taken: list[bytes] = []

    def outcome(self, tree) -> tuple:
        try:
            self.visit(tree, 0)
        except _Refused as refused:
            return refused.args
        return ("mail", self.taken) if self.taken else (554, "5.6.0")

    def visit(self, tree, depth: int) -> None:
        if tree[0] != "multipart":
            if tree[0] == "xml":
                if len(self.taken) == mail.MAX_ATTACHMENTS:
                    raise _Refused(552, "5.3.4")
                self.taken.append(tree[1])
            return
        if depth == mail.MAX_DEPTH:
            raise _Refused(554, "5.6.0")
        self.parts += len(tree[2])
        if self.parts > mail.MAX_PARTS:
            raise _Refused(552, "5.3.4")
        for child in tree[2]:
            self.visit(child, depth + 1)


@HYPOTHESIS
@given(st.one_of(TREES, DEEP))
def test_the_walk_matches_a_model_of_the_tree(loose, tree):
    """Random trees (deep, wide, mixed leaves): the invoices taken, or the limit that refuses, are the model's."""
    outcome = survives(message(render(tree)), loose)
    got = ("mail", bodies(outcome)) if isinstance(outcome, mail.Mail) else (outcome.code, outcome.status)
    assert got == Model().outcome(tree)


HEADER_NAMES = st.sampled_from(["Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "From",
                                "Subject", "Message-ID", "X-Junk", "content-type"])
HEADER_VALUES = st.one_of(
    st.sampled_from(["multipart/mixed; boundary=b", "multipart/signed; boundary=b", "application/xml",
                     "application/pkcs7-mime", "text/xml; name*=utf-8''%FF%FE.xml", "multipart/x; boundary*0=b",
                     "base64", "quoted-printable", "x-weird", 'attachment; filename="=?x-unknown?q?a?=.xml"',
                     f"<{SENDER}>", "=?utf-8?b?!!!?=", '"\\', "(((", "multipart/mixed; boundary=\"\"",
                     "multipart/alternative; boundary*=utf-8''%E2%82%AC"]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"), max_size=60),
    st.builds(lambda unit, count: unit * count, st.sampled_from(["(", ":", "a:", "<", '"', ";", "\\", "=?"]),
              st.integers(0, 3000)))
ENTITIES = st.recursive(
    st.builds(lambda fields, body: (fields, body), st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5),
              st.binary(max_size=80)),
    lambda children: st.builds(lambda fields, parts: (fields, parts),
                               st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=3),
                               st.lists(children, max_size=4)),
    max_leaves=20)


def render_soup(entity) -> bytes:
    """Headers as drawn; a list body becomes parts between ``--b`` lines, whatever the headers claim."""
    fields, body = entity
    head = "".join(f"{name}: {value}\r\n" for name, value in fields).encode("latin-1")
    if isinstance(body, list):
        body = b"".join(b"--b\r\n" + render_soup(child) + b"\r\n" for child in body) + b"--b--\r\n"
    return head + b"\r\n" + body


@HYPOTHESIS
@given(ENTITIES)
def test_header_soup_is_refused_or_read_never_a_crash(pki, entity):
    """Plausible MIME with every header drawn from odd values: RFC 2231/2047 junk, bad boundaries, odd types."""
    survives(f"From: {SENDER}\r\n".encode() + render_soup(entity),
             directory_for(pki, allow_unsigned_mail=True, allow_opaque=True))


@HYPOTHESIS
@given(st.lists(st.integers(0, 3 * MAX_HEADER_BYTES // 2), min_size=1, max_size=3), st.integers(0, 1200))
def test_huge_header_lines_and_many_fields_hit_the_limits_exactly(loose, lengths, extra_fields):
    """A header block is refused exactly when it is over 64 KiB or 1000 fields, and read otherwise."""
    headers = tuple(("X-Long", "v" * n) for n in lengths) + tuple(("X-N", "1") for _ in range(extra_fields))
    raw = message(invoice_mail(), headers=headers)
    block = raw[:raw.index(b"\r\n\r\n")]
    outcome = survives(raw, loose)
    if len(block) > MAX_HEADER_BYTES or block.count(b"\r\n") + 1 > mail.MAX_HEADER_FIELDS:
        assert (outcome.code, outcome.status) == (552, "5.6.0")
    else:
        assert bodies(outcome) == [INVOICE]

