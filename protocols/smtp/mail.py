# -*- test-case-name: tests.protocols.smtp.test_mail -*-
"""Reading one received email for the email door: sans-IO, the spooled message in, the sender and its invoices out.

:func:`read_mail` checks who sent the mail (the envelope sender names a partner, the source address
is in that partner's allowlist, and every ``From:`` address is that partner's), peels S/MIME with
:func:`protocols.as2.inbound.unwrap` — encryption optional, the signature required unless the
partner's policy allows unsigned mail — and walks the MIME tree for the invoice attachments. A mail
that cannot be taken raises :class:`MailRefused` carrying the SMTP reply. Anything else is a bug, or
``scratch`` failing (``OSError``: a temporary failure, 451).

Reply codes (RFC 3463): 550 5.7.1 for who may send; 5.7.5, 5.7.6 and 5.7.7 for decryption, refused
algorithms and broken signatures; 554 5.6.0 for content the gateway cannot read; 552 5.3.4 for
per-mail limits the sender meets by sending smaller mails; 552 5.6.0 for header blocks over their
limit (as sendmail answers "Headers too large").

Hostile MIME is bounded before work is done: header blocks (64 KiB, 1000 fields each), multipart
depth, parts and attachments per mail, and the decoded bytes; a multipart's delimiter lines are
counted before it is split, so a body of a million tiny parts costs one scan, not a million objects.
Attachments stay in the spool file or in ``scratch`` files, decoded a chunk at a time.
"""

import binascii
import email.errors
import email.header
import email.message
import re
from collections.abc import Sequence
from datetime import datetime
from email.utils import getaddresses
from typing import BinaryIO

import attrs

from certs.x509 import Certificate, PrivateKey
from partners.directory import Partner, PartnerDirectory
from partners.policy import Policy
from protocols.as2 import cms, inbound
from protocols.as2.mime import (
    MAX_HEADER_BYTES,
    Entity,
    Headers,
    MIMEError,
    Region,
    Scratch,
    TooManyParts,
    memory_scratch,
    parse_entity,
    split_multipart,
)

#: Header fields one header block (the message's or a part's) may hold.
MAX_HEADER_FIELDS = 1000
#: Multiparts nested deeper than this are refused (S/MIME layers are not counted; real mail nests 3).
MAX_DEPTH = 8
#: Body parts in one mail, at every depth.
MAX_PARTS = 100
#: Invoice attachments in one mail (each becomes a message with its own receipt).
MAX_ATTACHMENTS = 50
#: The longest reply text: an SMTP reply line is at most 512 octets with its code (RFC 5321 §4.5.3.1.5).
MAX_TEXT = 400

_SMIME = ("multipart/signed", "application/pkcs7-mime", "application/x-pkcs7-mime")
_XML = ("application/xml", "text/xml")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(r"<([!-;=?-~]{1,995})>|([!-;=?-~]{1,995})")


class MailRefused(Exception):
    """The mail is refused with this SMTP reply: ``code``, enhanced ``status`` and one line of ASCII ``text``.

    The text says what to change; it carries only what the sender sent or may know (its own addresses,
    file names and certificates' names), cleaned to printable ASCII.
    """

    def __init__(self, code: int, status: str, text: str):
        self.code = code
        self.status = status
        self.text = "".join(c if " " <= c <= "~" else "?" for c in text)[:MAX_TEXT]
        super().__init__(f"{code} {status} {self.text}")


@attrs.frozen
class Attachment:
    """One invoice taken from a mail: its bytes as the sender attached them, transfer encoding undone."""

    filename: str | None
    content_type: str  #: the declared MIME type, lower-case
    body: Region  #: in the spooled message or a scratch file: read it before those are closed


@attrs.frozen
class Mail:
    """A mail the gateway takes: the sending partner and the invoices to hand the intake, in order.

    When ``signed`` is False the partner's policy allows unsigned mail, and nothing proves the
    attachments came from it: the intake must then require a valid XML-DSig on each invoice.
    """

    partner: Partner
    message_id: str | None  #: the ``Message-ID`` header without its ``<>`` (not covered by any signature)
    subject: str  #: RFC 2047 decoded, one line
    signed: bool  #: an S/MIME signature by one of the partner's registered signing certificates verified
    attachments: tuple[Attachment, ...]


def read_mail(body: Region, *, envelope_from: str, source: str, directory: PartnerDirectory,
              recipients: Sequence[tuple[PrivateKey, Certificate]], now: datetime, max_decompressed: int,
              scratch: Scratch = memory_scratch) -> Mail:
    """Read one received mail, or refuse it.

    :param body: the whole message as received in DATA (headers and body, CRLF, dot-unstuffed).
    :param envelope_from: the ``MAIL FROM`` address, without its angle brackets.
    :param source: the client's IP address.
    :param recipients: the gateway's decryption key pairs (more than one during a key rollover).
    :param max_decompressed: the most bytes decompression and the attachments together may produce.
    :param scratch: makes the temporary files decoded layers and attachments go to (the spool's ``tmp/``).
    :raises MailRefused: with the reply to send instead of 250.
    """
    partner = directory.by_email(envelope_from)
    if partner is None:
        raise MailRefused(550, "5.7.1", f"sender address {_shown(envelope_from)} is not registered with this gateway")
    if not partner.allows(source):
        raise MailRefused(550, "5.7.1", f"{_shown(source)} is not an allowed address for partner {partner.id}")
    message = _entity(body, "the message")
    _check_from(message.headers, partner, directory)
    content, signed = _peel(message, partner, recipients=recipients, now=now, max_decompressed=max_decompressed,
                            scratch=scratch)
    if not signed and not partner.policy.allow_unsigned_mail:
        raise MailRefused(550, "5.7.1", "unsigned mail is refused: sign it with S/MIME using the certificate "
                                        f"registered for partner {partner.id}")
    walk = _Walk(partner.policy, scratch, max_decompressed)
    walk.visit(content, "", 0)
    if not walk.attachments:
        kinds = "application/xml, text/xml or *.xml" + (", or application/pdf" if partner.policy.allow_opaque else "")
        raise MailRefused(554, "5.6.0", f"no invoice attachment ({kinds})")
    return Mail(partner=partner, message_id=_message_id(message.headers.get("message-id")),
                subject=_one_line(_decoded_words(_utf8(message.headers.get("subject") or ""))), signed=signed,
                attachments=tuple(walk.attachments))


def _shown(value: str) -> str:
    """A value the sender chose, short enough to quote in a reply."""
    return value if len(value) <= 80 else value[:77] + "..."


def _entity(region: Region, where: str) -> Entity:
    """The entity in ``region``, its header block within the limits."""
    try:
        entity = parse_entity(region)
    except MIMEError as e:
        if region.size > MAX_HEADER_BYTES and _HEADER_END.search(region.read(MAX_HEADER_BYTES + 4)) is None:
            raise MailRefused(552, "5.6.0", f"{where} has more than {MAX_HEADER_BYTES} bytes of headers") from None
        raise MailRefused(554, "5.6.0", f"{where} is not well-formed MIME: {e}") from None
    if len(entity.headers.fields) > MAX_HEADER_FIELDS:
        raise MailRefused(552, "5.6.0", f"{where} has more than {MAX_HEADER_FIELDS} header fields")
    return entity


def _utf8(value: str) -> str:
    """A header value as text: raw 8-bit header bytes are UTF-8 (RFC 6532), parse_headers read them as latin-1."""
    return value.encode("latin-1").decode("utf-8", "replace")


def _check_from(headers: Headers, partner: Partner, directory: PartnerDirectory) -> None:
    """Every ``From:`` address must be one the sending partner registered.

    The addresses are parsed before any RFC 2047 decoding: an encoded display name must not be able to
    turn into an address.
    """
    values = [_utf8(value) for name, value in headers.fields if name.lower() == "from"]
    if not values:
        raise MailRefused(550, "5.7.1", f"the mail has no From: header; send from an address of partner {partner.id}")
    try:
        addresses = [address for _, address in getaddresses(values)]
    except RecursionError:  # the parser recurses once per nested comment or group: "((((…" is enough
        raise MailRefused(550, "5.7.1", "the From: header nests comments or groups too deeply to be read") from None
    if not any(addresses):
        raise MailRefused(550, "5.7.1", f"the From: header names no address; use an address of partner {partner.id}")
    for address in addresses:
        owner = directory.by_email(address) if address else None
        if owner is None or owner.id != partner.id:
            shown = _shown(address) if address else "(unreadable)"
            raise MailRefused(550, "5.7.1", f"From: address {shown} is not registered to partner {partner.id}")


def _peel(message: Entity, partner: Partner, *, recipients: Sequence[tuple[PrivateKey, Certificate]],
          now: datetime, max_decompressed: int, scratch: Scratch) -> tuple[Entity, bool]:
    """The content under the S/MIME layers, and whether a signature by the partner covers it."""
    content_type = message.content_type
    if content_type.mime_type not in _SMIME:
        return message, False
    security = attrs.evolve(inbound.Security.of(partner.policy), require_signature=False, require_encryption=False)
    try:
        unwrapped = inbound.unwrap(
            message.headers, message.body, recipients=recipients, trusted=partner.certificates.get("sign", ()),
            cas=partner.cas.get("sign", ()), security=security, mic_digest="sha256",  # the MIC is AS2's; unused here
            max_decompressed=max_decompressed, now=now, scratch=scratch)
    except inbound.AS2Refused as refused:
        raise _smime_refusal(refused, partner) from None
    decoded = Headers(tuple((n, v) for n, v in unwrapped.headers.fields if n.lower() != "content-transfer-encoding"))
    return Entity(decoded, unwrapped.payload), unwrapped.signed


def _smime_refusal(refused: inbound.AS2Refused, partner: Partner) -> MailRefused:
    """The reply for what :func:`inbound.unwrap` refused (its findings are written for the sender already)."""
    code, detail = refused.finding.code, refused.finding.message
    if code == inbound.AS2_SIGNER:
        return MailRefused(550, "5.7.1", f"signed by a certificate not registered to partner {partner.id}: {detail}")
    if code == inbound.AS2_INTEGRITY:
        return MailRefused(550, "5.7.7", f"the signature does not verify: {detail}")
    if code == inbound.AS2_DECRYPT:
        return MailRefused(550, "5.7.5", "cannot decrypt: encrypt to the gateway's encryption certificate")
    if code == inbound.AS2_SECURITY:
        return MailRefused(550, "5.7.6", f"S/MIME algorithm refused: {detail}")
    if isinstance(refused.__cause__, cms.DecompressionRefused):
        return MailRefused(552, "5.3.4", detail)
    return MailRefused(554, "5.6.0", detail)


def _is_invoice(mime_type: str, filename: str | None, policy: Policy) -> bool:
    """XML by type or ``*.xml`` name; PDF only where the partner's policy allows opaque documents."""
    name = (filename or "").lower()
    if mime_type in _XML or name.endswith(".xml"):
        return True
    return policy.allow_opaque and (mime_type == "application/pdf" or name.endswith(".pdf"))


@attrs.define
class _Walk:
    """The attachments taken so far, against the per-mail limits."""

    policy: Policy
    scratch: Scratch
    max_decompressed: int
    parts: int = 0
    decoded: int = 0
    attachments: list[Attachment] = attrs.field(factory=list)

    def visit(self, entity: Entity, number: str, depth: int) -> None:
        """Take ``entity`` if it is an invoice, or walk its parts (``number`` as in IMAP: ``2.1``)."""
        content_type = entity.content_type
        if not content_type.mime_type.startswith("multipart/"):
            filename = _filename(entity.headers)
            if _is_invoice(content_type.mime_type, filename, self.policy):
                self._take(entity, _where(number, filename or content_type.mime_type), content_type.mime_type,
                           filename)
            return
        where = _where(number, content_type.mime_type)
        if depth == MAX_DEPTH:
            raise MailRefused(554, "5.6.0", f"{where} nests multiparts more than {MAX_DEPTH} deep")
        boundary = content_type.param("boundary") or ""
        try:
            regions = split_multipart(entity.body, boundary, max_parts=MAX_PARTS - self.parts)
        except TooManyParts:
            raise MailRefused(552, "5.3.4", f"the mail has more than {MAX_PARTS} MIME parts; send fewer "
                                            "attachments per mail") from None
        except MIMEError as e:
            raise MailRefused(554, "5.6.0", f"{where} is not well-formed MIME: {e}") from None
        self.parts += len(regions)
        for index, region in enumerate(regions, 1):
            child = f"{number}.{index}" if number else str(index)
            self.visit(_entity(region, f"part {child}"), child, depth + 1)

    def _take(self, entity: Entity, where: str, mime_type: str, filename: str | None) -> None:
        if len(self.attachments) == MAX_ATTACHMENTS:
            raise MailRefused(552, "5.3.4", f"the mail has more than {MAX_ATTACHMENTS} invoice attachments; send at "
                                            f"most {MAX_ATTACHMENTS} per mail")
        body = _decoded(entity, where, self.scratch)
        if body.size == 0:
            raise MailRefused(554, "5.6.0", f"{where} is empty (0 bytes); attach the invoice itself")
        self.decoded += body.size
        if self.decoded > self.max_decompressed:
            raise MailRefused(552, "5.3.4", f"the attachments decode to more than {self.max_decompressed} bytes; "
                                            "send fewer invoices per mail")
        self.attachments.append(Attachment(filename, mime_type, body))


def _where(number: str, what: str) -> str:
    """How a reply names a part: ``part 2.1 (invoice.xml)``, or the message body when it is not multipart."""
    return f"{'part ' + number if number else 'the message body'} ({_shown(what)})"


def _decoded(entity: Entity, where: str, scratch: Scratch) -> Region:
    """The part's bytes with the transfer encoding undone: in place, or a chunk at a time into ``scratch()``."""
    encoding = (entity.headers.get("content-transfer-encoding") or "7bit").strip().lower()
    try:
        if encoding == "quoted-printable":
            sink = scratch()
            _decode_quoted_printable(entity.body, sink)
            return Region.of_file(sink)
        if encoding in ("7bit", "8bit", "binary", "base64"):
            return entity.decoded(scratch)
    except MIMEError as e:
        raise MailRefused(554, "5.6.0", f"{where}: {e}") from None
    raise MailRefused(554, "5.6.0", f"{where} has the unknown Content-Transfer-Encoding {_shown(encoding)}; "
                                    "use base64")


def _decode_quoted_printable(body: Region, sink: BinaryIO) -> None:
    """Undo quoted-printable a chunk at a time; an ``=XX`` escape or ``=CRLF`` cut by a chunk end waits for the next."""
    pending = b""
    for chunk in body.chunks():
        pending += chunk
        escape = pending.find(b"=", max(len(pending) - 2, 0))
        cut = len(pending) if escape == -1 else escape
        sink.write(binascii.a2b_qp(pending[:cut]))
        pending = pending[cut:]
    sink.write(binascii.a2b_qp(pending))


def _filename(headers: Headers) -> str | None:
    """The ``Content-Disposition`` ``filename`` (else the ``Content-Type`` ``name``), decoded, as a base name."""
    parser = email.message.Message()
    for field in ("content-disposition", "content-type"):
        value = headers.get(field)
        if value is not None:
            parser[field] = _utf8(value)
    name = parser.get_filename()
    if not name:
        return None
    name = _decoded_words(name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:255] or None


def _decoded_words(value: str) -> str:
    """``value`` with its RFC 2047 encoded words decoded; as sent when they do not decode."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return value


def _one_line(value: str) -> str:
    """``value`` with control characters (an encoded CR LF too) as spaces: safe to put in a receipt's header."""
    return "".join(c if c.isprintable() else " " for c in value).strip()


def _message_id(value: str | None) -> str | None:
    """The ``Message-ID`` without its ``<>``; None when missing or not one printable ASCII token."""
    match = _MESSAGE_ID.fullmatch((value or "").strip())
    return (match.group(1) or match.group(2)) if match else None
