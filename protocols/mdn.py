# -*- test-case-name: tests.protocols.test_mdn -*-
"""Receipts: one RFC 8098 disposition notification for every door, signed by the gateway.

A receipt is a ``multipart/report; report-type=disposition-notification`` entity — a human-readable
part and a ``message/disposition-notification`` part — wrapped in an RFC 1847 ``multipart/signed``
with a detached CMS signature (SHA-256) by the gateway's signing key. The result is exact bytes: the
spool keeps them, and a duplicate is answered with the very same bytes. How a receipt travels (HTTP
response, async POST, ``/receipts/`` file, email) is the door's business.

Rejections carry their findings twice: as text for people, and as ``Postroom-Finding`` extension
fields (RFC 8098 §3.3) for programs, one per finding: ``CODE; message``.
"""

import base64
import secrets
from collections.abc import Sequence

import attrs

from certs.x509 import Certificate, PrivateKey
from protocols.as2 import cms
from protocols.findings import Finding

CRLF = "\r\n"

#: RFC 4130 §7.4.3 and RFC 8098 modifiers a receipt may carry.
ERRORS = frozenset({
    "authentication-failed", "decryption-failed", "insufficient-message-security", "integrity-check-failed",
    "unexpected-processing-error", "unsupported-format",
})
WARNINGS = frozenset({"duplicate-document"})


class ReceiptError(ValueError):
    """A receipt cannot be built as asked (a value that would corrupt the MIME structure)."""


@attrs.frozen
class Disposition:
    """``processed``, ``processed/error: X`` or ``processed/warning: X`` (RFC 8098 §3.2.6).

    Receipts sent at intake are ``automatic-action`` ``processed``; return receipts, which say a person
    at the recipient downloaded (``displayed``) or acknowledged (``processed``) the document, are
    ``manual-action``.
    """

    error: str | None = None
    warning: str | None = None
    type: str = attrs.field(default="processed", validator=attrs.validators.in_(("processed", "displayed")))
    manual: bool = False

    def __attrs_post_init__(self) -> None:
        if self.error is not None and self.error not in ERRORS:
            raise ReceiptError(f"unknown disposition error {self.error!r}; one of {', '.join(sorted(ERRORS))}")
        if self.warning is not None and self.warning not in WARNINGS:
            raise ReceiptError(f"unknown disposition warning {self.warning!r}")
        if self.error and self.warning:
            raise ReceiptError("a disposition carries an error or a warning, not both")

    @property
    def positive(self) -> bool:
        """True when the message was accepted (possibly with a warning)."""
        return self.error is None

    def field(self) -> str:
        """The ``Disposition:`` field value."""
        mode = "manual-action" if self.manual else "automatic-action"
        value = f"{mode}/MDN-sent-automatically; {self.type}"
        if self.error:
            value += f"/error: {self.error}"
        elif self.warning:
            value += f"/warning: {self.warning}"
        return value


@attrs.frozen
class Receipt:
    """What a receipt says about one received message."""

    original_message_id: str
    reporting_ua: str
    recipient: str  #: our identity as the sender addressed it (AS2-To, mailbox, SFTP user)
    disposition: Disposition
    text: str
    mic: str | None = None  #: base64 digest of what was received
    mic_algorithm: str = "sha-256"
    findings: tuple[Finding, ...] = attrs.field(default=(), converter=tuple)


def _clean(name: str, value: str) -> str:
    """Header values must not smuggle line breaks into the notification."""
    if any(c in value for c in "\r\n\0"):
        raise ReceiptError(f"{name} must not contain line breaks")
    return value


def _quoted_id(message_id: str) -> str:
    value = _clean("original message ID", message_id.strip())
    return value if value.startswith("<") else f"<{value}>"


def notification_fields(receipt: Receipt) -> list[tuple[str, str]]:
    """The ``message/disposition-notification`` fields, in order."""
    fields = [
        ("Reporting-UA", _clean("reporting UA", receipt.reporting_ua)),
        ("Original-Recipient", f"rfc822; {_clean('recipient', receipt.recipient)}"),
        ("Final-Recipient", f"rfc822; {receipt.recipient}"),
        ("Original-Message-ID", _quoted_id(receipt.original_message_id)),
        ("Disposition", receipt.disposition.field()),
    ]
    if receipt.mic is not None:
        fields.append(("Received-Content-MIC", f"{_clean('MIC', receipt.mic)}, {receipt.mic_algorithm}"))
    for finding in receipt.findings:
        if not receipt.disposition.positive:
            fields.append(("Error", _clean("finding", f"{finding.code}: {finding.message}")))
        fields.append(("Postroom-Finding", _clean("finding", f"{finding.code}; {finding.message}")))
    return fields


def _boundary(kind: str) -> str:
    return f"----=_postroom_{kind}_{secrets.token_hex(12)}"


def build_report(receipt: Receipt) -> bytes:
    """The unsigned ``multipart/report`` entity, headers included, CRLF line ends throughout."""
    boundary = _boundary("report")
    text = receipt.text.replace("\r\n", "\n").replace("\n", CRLF)
    if receipt.findings:
        text += CRLF + CRLF + CRLF.join(f"{f.code}: {f.message}" for f in receipt.findings)
    if text.isascii():
        encoding = "7bit"
    else:  # 8-bit text could be rewritten by a mail relay, breaking the signature
        encoding = "base64"
        text = base64.encodebytes(text.encode("utf-8")).decode("ascii").replace("\n", CRLF).rstrip(CRLF)
    notification = CRLF.join(f"{name}: {value}" for name, value in notification_fields(receipt))
    parts = [
        f"Content-Type: multipart/report; report-type=disposition-notification;{CRLF}"
        f'\tboundary="{boundary}"{CRLF}{CRLF}',
        f"--{boundary}{CRLF}",
        f"Content-Type: text/plain; charset=utf-8{CRLF}Content-Transfer-Encoding: {encoding}{CRLF}{CRLF}",
        f"{text}{CRLF}",
        f"--{boundary}{CRLF}",
        f"Content-Type: message/disposition-notification{CRLF}Content-Transfer-Encoding: 7bit{CRLF}{CRLF}",
        f"{notification}{CRLF}",
        f"--{boundary}--{CRLF}",
    ]
    return "".join(parts).encode("utf-8")


@attrs.frozen
class ReceiptEntity:
    """A receipt as sent: the top-level ``Content-Type`` and the body bytes that go with it."""

    content_type: str
    body: bytes

    def as_mime(self) -> bytes:
        """Header and body as one MIME entity (for files, email, and ``openssl cms -verify``)."""
        return f"Content-Type: {self.content_type}{CRLF}MIME-Version: 1.0{CRLF}{CRLF}".encode("ascii") + self.body


#: Digests a receipt signature may use, by ``micalg`` name (RFC 5751 §3.4.3.2).
SIGNATURE_DIGESTS = {"sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}


def unsigned(report: bytes) -> ReceiptEntity:
    """The report as an unsigned receipt, for senders that did not ask for a signed one."""
    head, _, body = report.partition(f"{CRLF}{CRLF}".encode("ascii"))
    content_type = head.decode("ascii").removeprefix("Content-Type: ").replace(f"{CRLF}\t", " ")
    return ReceiptEntity(content_type, body)


def sign(report: bytes, key: PrivateKey, certificate: Certificate,
         chain: Sequence[Certificate] = (), micalg: str = "sha-256") -> ReceiptEntity:
    """Wrap ``report`` (exact bytes, signed as they are) in ``multipart/signed`` with a detached CMS signature.

    ``micalg`` is one of :data:`SIGNATURE_DIGESTS`; anything weaker is signed with SHA-256.
    """
    micalg = micalg if micalg in SIGNATURE_DIGESTS else "sha-256"
    der = cms.sign(report, key, certificate, digest=SIGNATURE_DIGESTS[micalg], chain=chain)
    signature = base64.encodebytes(der).decode("ascii").replace("\n", CRLF)
    boundary = _boundary("signed")
    body = (
        f"--{boundary}{CRLF}".encode("ascii")
        + report
        + f"{CRLF}--{boundary}{CRLF}"
          f"Content-Type: application/pkcs7-signature; name=smime.p7s{CRLF}"
          f"Content-Transfer-Encoding: base64{CRLF}"
          f"Content-Disposition: attachment; filename=smime.p7s{CRLF}{CRLF}"
          f"{signature}"
          f"--{boundary}--{CRLF}".encode("ascii")
    )
    content_type = f'multipart/signed; protocol="application/pkcs7-signature"; micalg={micalg}; boundary="{boundary}"'
    return ReceiptEntity(content_type, body)


def build_signed(receipt: Receipt, key: PrivateKey, certificate: Certificate,
                 chain: Sequence[Certificate] = (), micalg: str = "sha-256") -> ReceiptEntity:
    """:func:`build_report` then :func:`sign`: the receipt exactly as it is sent and kept."""
    return sign(build_report(receipt), key, certificate, chain, micalg)
