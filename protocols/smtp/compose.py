# -*- test-case-name: tests.protocols.smtp.test_compose -*-
"""The mails the gateway sends — receipts, new-invoice notifications, invitations, documents — as RFC 5322 bytes.

Values that come from data (partner names, invoice numbers, subjects, file names) are reduced to one
line — control characters become spaces — and the ``email`` package encodes them (RFC 2047 words,
RFC 2231 parameters), so no value can start a header of its own. Addresses must parse as exactly one
ASCII mailbox, or the mail is not built. Plain-text mails are written whole by ``email``, 7-bit clean.

Signed mails are assembled by hand around the exact signed bytes — re-serialising a signed entity is
how signatures break — and those bytes must be 7-bit with CRLF lines SMTP will not rewrite. Documents
reuse the AS2 writer (:func:`protocols.as2.outbound.build`): a ``multipart/mixed`` (a short note and the
document, base64) signed as ``multipart/signed``, then enveloped to the recipient's certificate when
there is one. The payload is streamed through ``scratch()`` files, never held whole in memory.
"""

import email.utils
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.policy import SMTP
from typing import BinaryIO

import attrs

from certs.x509 import Certificate, PrivateKey
from protocols.as2.mime import Region, Scratch, base64_lines, build_entity, memory_scratch
from protocols.as2.outbound import SendOptions, build, new_message_id
from protocols.mdn import ReceiptEntity

#: ``email``'s SMTP policy (CRLF, RFC 2047 headers), with bodies kept 7-bit (relays need not offer 8BITMIME).
_POLICY = SMTP.clone(cte_type="7bit")
_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]{1,900}>")  # printable ASCII, no spaces or angle brackets inside
#: Message IDs are written as they are: ``email`` would fold a long one into RFC 2047 words, which is no msg-id.
_VERBATIM = frozenset({"message-id", "in-reply-to", "references"})
_LINK = re.compile(r"https?://[!-~]+")
_MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF


class ComposeError(ValueError):
    """A mail cannot be built from these values (an address, link or entity that would corrupt it); the text
    names the value."""


def receipt_mail(receipt: ReceiptEntity, *, sender: str, to: str, subject: str, in_reply_to: str | None,
                 now: datetime, message_id_domain: str) -> bytes:
    """A receipt (signed MDN or plain report) as the whole body of a mail: ``openssl cms -verify`` reads it as is.

    ``in_reply_to`` is the Message-ID of the mail the receipt answers; one that is not a plain ``<id>`` is
    left out (the report names the original message anyway).
    """
    if any(c in receipt.content_type for c in "\r\n"):
        raise ComposeError("the receipt's Content-Type contains a line break")
    _check_mailable(receipt.body, "the receipt")
    head = _head(sender=sender, to=[to], subject=subject, now=now, message_id_domain=message_id_domain,
                 in_reply_to=in_reply_to, auto="auto-replied")
    return _header_bytes(head) + f"Content-Type: {receipt.content_type}\r\n\r\n".encode("ascii") + receipt.body


def notification_mail(*, sender: str, to: Sequence[str], partner_name: str, from_partner: str,
                      invoice_number: str | None, amount: str | None, currency: str | None, portal_url: str,
                      message_id_domain: str, now: datetime) -> bytes:
    """Tells a partner "New invoice INV-42 from ACME Corp": who sent what, and the portal link; never the document."""
    sent_by, number = _one_line(from_partner), _one_line(invoice_number or "")
    subject = f"New invoice {number} from {sent_by}" if number else f"New invoice from {sent_by}"
    lines = [f"Hello {_one_line(partner_name)},", "", f"{sent_by} has sent you an invoice through Postroom.", ""]
    if number:
        lines.append(f"  Invoice number: {number}")
    if amount:
        lines.append(f"  Amount: {' '.join(_one_line(v) for v in (amount, currency or '') if v)}")
    lines += ["", "Open it in the portal:", _link(portal_url, "portal URL"), "",
              "The document is not attached to this mail; it waits for you in the portal."]
    head = _head(sender=sender, to=to, subject=subject, now=now, message_id_domain=message_id_domain)
    return _text_mail(head, lines)


def invitation_mail(*, sender: str, to: str, partner_name: str, link: str, expires_at: datetime, now: datetime,
                    message_id_domain: str) -> bytes:
    """The one-time registration link for a new portal user, and when it stops working (``expires_at``, aware)."""
    name = _one_line(partner_name)
    expiry = expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["Hello,", "", f"you are invited to receive the e-invoices for {name} through Postroom.",
             "Open this link to set up your access:", "", _link(link, "invitation link"), "",
             f"The link works once, and only until {expiry}.",
             "If you did not expect this invitation, you can ignore this mail."]
    head = _head(sender=sender, to=[to], subject=f"Your invitation to receive e-invoices for {name} through Postroom",
                 now=now, message_id_domain=message_id_domain)
    return _text_mail(head, lines)


def document_mail(payload: Region, *, filename: str, content_type: str, sender: str, to: str, subject: str,
                  options: SendOptions, our_key: PrivateKey, our_cert: Certificate,
                  their_encrypt_cert: Certificate | None, now: datetime, message_id_domain: str,
                  scratch: Scratch = memory_scratch, message_id: str | None = None) -> Region:
    """The document attached to a short note, S/MIME signed by the gateway, then encrypted to
    ``their_encrypt_cert`` when given; written to a ``scratch()`` file.

    ``options`` give the partner's algorithms (digest, PSS, cipher, key transport). The mail is always
    signed and never compressed — mail clients rarely read RFC 3274, and a compressed part would be binary
    in a signed-only mail; ``authEnveloped-data`` names an AES-GCM envelope (RFC 8551), which older clients
    cannot open: AES-256-CBC, the default, is what every S/MIME client reads.
    """
    head = _head(sender=sender, to=[to], subject=subject, now=now, message_id_domain=message_id_domain,
                 message_id=message_id)
    encrypt = their_encrypt_cert is not None
    name = _one_line(filename.replace("\\", "/").rsplit("/", 1)[-1]) or "document"
    note = [f"Attached: {name}", "", "This mail is signed (S/MIME) by the Postroom gateway that sent it"
            + (", and encrypted for you." if encrypt else ".")]
    mixed_type, mixed = _mixed(payload, name, content_type, note, scratch)
    options = attrs.evolve(options, sign=True, encrypt=encrypt, compress=False, mdn="none")
    built = build(mixed, content_type=mixed_type, filename=None, options=options, as2_from=sender, as2_to=to,
                  message_id=head["Message-ID"], sign_key=our_key, sign_cert=our_cert,
                  encrypt_cert=their_encrypt_cert, scratch=scratch)
    sink = scratch()
    sink.write(_header_bytes(head))
    if encrypt:
        kind = "authEnveloped-data" if options.cipher.endswith("-gcm") else "enveloped-data"
        sink.write(build_entity([("Content-Type", f'application/pkcs7-mime; smime-type={kind}; name="smime.p7m"'),
                                 ("Content-Transfer-Encoding", "base64"),
                                 ("Content-Disposition", 'attachment; filename="smime.p7m"')], b""))
        _write_base64(built.body, sink)
    else:
        sink.write(f"Content-Type: {dict(built.headers)['Content-Type']}\r\n\r\n".encode("ascii"))
        built.body.copy_to(sink)
    return Region.of_file(sink)


def _one_line(text: str) -> str:
    """Data for a header or a line of text: control characters (CR, LF, NUL, tabs, U+2028 …) become spaces."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def _mailbox(value: str, role: str) -> Address:
    """One ``name@domain`` or ``Name <name@domain>``, ASCII address; anything else is refused, not repaired."""
    if any(c in value for c in "\r\n\0"):
        raise ComposeError(f"the {role} address {value!r} contains a line break")
    try:
        header = _POLICY.header_factory("To", value)
    except (ValueError, HeaderParseError) as e:
        raise ComposeError(f"the {role} address {value!r} does not parse: {e}") from e
    addresses = header.addresses
    if header.defects or len(addresses) != 1 or not addresses[0].domain or not addresses[0].addr_spec.isascii():
        raise ComposeError(f"the {role} address {value!r} is not one plain mailbox (name@domain, ASCII)")
    return addresses[0]


def _link(url: str, what: str) -> str:
    """A link for a text body: http(s), printable ASCII, no spaces (nothing that could forge text around it)."""
    if not _LINK.fullmatch(url):
        raise ComposeError(f"the {what} {url!r} is not an http(s) URL of printable ASCII without spaces")
    return url


def _head(*, sender: str, to: Sequence[str], subject: str, now: datetime, message_id_domain: str,
          in_reply_to: str | None = None, auto: str = "auto-generated", message_id: str | None = None
          ) -> EmailMessage:
    """The top-level headers every mail carries (no content headers yet)."""
    if not _DOMAIN.fullmatch(message_id_domain):
        raise ComposeError(f"the Message-ID domain {message_id_domain!r} is not a host name")
    if not to:
        raise ComposeError("a mail needs at least one recipient")
    head = EmailMessage(policy=_POLICY)
    head["From"] = _mailbox(sender, "sender")
    head["To"] = [_mailbox(address, "recipient") for address in to]
    head["Subject"] = _one_line(subject)
    head["Date"] = email.utils.format_datetime(now)
    if message_id is not None and not _MESSAGE_ID.fullmatch(message_id):
        raise ComposeError(f"{message_id!r} is not a Message-ID")
    head["Message-ID"] = message_id or new_message_id(message_id_domain)
    reference = (in_reply_to or "").strip()
    reference = reference if reference.startswith("<") else f"<{reference}>"
    if _MESSAGE_ID.fullmatch(reference):
        head["In-Reply-To"] = head["References"] = reference
    head["Auto-Submitted"] = auto  # RFC 3834: autoresponders must not answer this
    head["MIME-Version"] = "1.0"
    return head


def _header_bytes(head: EmailMessage) -> bytes:
    """The header block, each field folded and encoded by the policy (IDs verbatim), without the empty line."""
    return b"".join(f"{name}: {value}\r\n".encode("ascii") if name.lower() in _VERBATIM
                    else _POLICY.fold_binary(name, value) for name, value in head.items())


def _text_mail(head: EmailMessage, lines: list[str]) -> bytes:
    """A ``text/plain; charset=utf-8`` mail; ``email`` picks 7bit, quoted-printable or base64."""
    body = MIMEPart(policy=_POLICY)
    body.set_content("\n".join(lines) + "\n")
    return _header_bytes(head) + body.as_bytes()


def _check_mailable(data: bytes, what: str) -> None:
    """Signed bytes go as they are: 7-bit, CRLF only, lines within SMTP's limit, or a relay would alter them."""
    bare = data.replace(b"\r\n", b"")
    if not data.isascii() or b"\0" in data or b"\r" in bare or b"\n" in bare \
            or any(len(line) > _MAX_LINE for line in data.split(b"\r\n")):
        raise ComposeError(f"{what} is not 7-bit text with CRLF lines of at most {_MAX_LINE} bytes; a relay "
                           "would rewrite it and break the signature")


def _mixed(payload: Region, name: str, content_type: str, note: list[str], scratch: Scratch) -> tuple[str, Region]:
    """``multipart/mixed``: the note, then the payload as a base64 attachment; its Content-Type and its body."""
    text = MIMEPart(policy=_POLICY)
    text.set_content("\n".join(note) + "\n")
    attachment = MIMEPart(policy=_POLICY)
    try:
        attachment["Content-Type"] = content_type
    except ValueError as e:
        raise ComposeError(f"the content type {content_type!r} is not a header value: {e}") from e
    if attachment.get_content_type() != content_type.split(";", 1)[0].strip().lower():
        raise ComposeError(f"the content type {content_type!r} is not a MIME type (type/subtype)")
    attachment.set_param("name", name)
    attachment["Content-Transfer-Encoding"] = "base64"
    attachment.add_header("Content-Disposition", "attachment", filename=name)
    boundary = f"----=_postroom_mixed_{secrets.token_hex(12)}"
    sink = scratch()
    sink.write(f"--{boundary}\r\n".encode("ascii") + text.as_bytes()
               + f"--{boundary}\r\n".encode("ascii") + attachment.as_bytes())
    _write_base64(payload, sink)
    sink.write(f"--{boundary}--\r\n".encode("ascii"))
    return f'multipart/mixed; boundary="{boundary}"', Region.of_file(sink)


def _write_base64(region: Region, sink: BinaryIO) -> None:
    """The region in base64, 76-character CRLF lines, encoded chunk by chunk."""
    pending = b""
    for chunk in region.chunks():
        pending += chunk
        whole = len(pending) - len(pending) % 57  # 57 bytes make one 76-character line
        sink.write(base64_lines(pending[:whole]))
        pending = pending[whole:]
    sink.write(base64_lines(pending))
