# -*- test-case-name: tests.e2e.test_as2_door -*-
"""The ``/as2`` door on the mutual-TLS listener: HTTP in, the intake, an MDN out (RFC 4130).

The partner must be proven three ways before anything is stored: its client certificate, its own
allowlist (both in :class:`~protocols.partner_auth.PartnerResource`), and ``AS2-From`` naming one of
its AS2 IDs while ``AS2-To`` names us. The body arrives spooled to disk (the listener's request class);
the S/MIME work runs on the CPU pool; the answer waits for the intake's durable decision, so a
positive MDN is never sent for data that is not on disk.
"""

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import formatdate
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.web import server
from twisted.web.iweb import IRequest

from certs.x509 import Certificate, PrivateKey
from partners.directory import Partner
from protocols.as2 import inbound, outbound
from protocols.as2.mime import Headers, Region, Scratch, memory_scratch, parse_content_type
from protocols.envelope import Decision, Envelope, IntakeUnavailable
from protocols.partner_auth import DirectorySource, Now, PartnerResource


@attrs.frozen
class AS2Settings:
    """What the door needs from the gateway."""

    as2_id: str  #: our AS2 ID: ``AS2-To`` must name it
    hostname: str  #: for the MDNs' ``Message-ID``
    recipients: tuple[tuple[PrivateKey, Certificate], ...] = attrs.field(repr=False)  #: decryption keys
    max_decompressed: int
    accept: Callable[[Envelope, Any], Deferred]
    refuse: Callable[[Envelope, Sequence[Any], Any], Deferred]
    run_cpu: Callable[..., Deferred]
    scratch: Scratch = attrs.field(default=memory_scratch, repr=False)  #: temporary files for unwrapped layers
    #: ``receipt_arrived(partner_id, original_id, disposition, status, mic) -> Deferred[str]``: an async MDN
    #: for one of our pushes (the delivery queue settles it)
    receipt_arrived: Callable[..., Deferred] | None = None


def _headers(request: IRequest) -> Headers:
    return Headers.of((name.decode("latin-1"), value.decode("latin-1"))
                      for name, values in request.requestHeaders.getAllRawHeaders() for value in values)


def is_mdn(headers: Headers, content: IO[bytes]) -> bool:
    """True when the body is an MDN (``multipart/report``, maybe inside ``multipart/signed``), not a message."""
    content_type = parse_content_type(headers.get("content-type") or "text/plain")
    if content_type.mime_type == "multipart/report":
        return True
    boundary = content_type.param("boundary")
    if content_type.mime_type != "multipart/signed" or not boundary:
        return False
    content.seek(0)
    head = content.read(8192)
    first = head.find(b"--" + boundary.encode("latin-1"))  # the first delimiter, then the first part's headers
    if first == -1:
        return False
    part = head[first:].split(b"\n", 1)[-1]
    headers_end = re.search(rb"\r?\n\r?\n", part)
    block = part[:headers_end.start()] if headers_end else part
    return re.search(rb"(?im)^content-type:[ \t]*multipart/report\b", block) is not None


def thd_read_mdn(content: IO[bytes], headers: Headers, partner: Partner, now: datetime) -> outbound.MDN:
    """Read and check an async MDN (CPU pool); :class:`outbound.MDNError` when it cannot be trusted."""
    content.seek(0)
    options = outbound.SendOptions.from_stored(partner.as2_options)
    return outbound.read_mdn(headers, content.read(), trusted=partner.certificates.get("sign", ()),
                             cas=partner.cas.get("sign", ()), now=now, require_signature=options.signed_mdn)


def thd_unwrap(content: IO[bytes], headers: Headers, partner: Partner, settings: AS2Settings, digest: str,
               now: datetime) -> inbound.Unwrapped | inbound.AS2Refused:
    """Peel the spooled body (CPU pool), layer by layer through temporary files; a refusal is returned, not raised."""
    try:
        return inbound.unwrap(
            headers, Region.of_file(content), recipients=settings.recipients,
            trusted=partner.certificates.get("sign", ()), cas=partner.cas.get("sign", ()),
            security=inbound.Security.of(partner.policy), mic_digest=digest,
            max_decompressed=settings.max_decompressed, now=now, scratch=settings.scratch)
    except inbound.AS2Refused as refused:
        return refused


class AS2Resource(PartnerResource):
    """``/as2``: inbound AS2 messages."""

    door = "as2"

    def __init__(self, directory: DirectorySource, now: Now, settings: AS2Settings):
        super().__init__(directory, now)
        self._settings = settings

    def handle_POST(self, request: IRequest, partner: Partner):
        """Check the AS2 addressing, then unwrap, take in and answer with the MDN."""
        headers = _headers(request)
        as2_from, as2_to = inbound.as2_name(headers.get("as2-from")), inbound.as2_name(headers.get("as2-to"))
        if as2_from is None or as2_from not in partner.as2_ids:
            return self._forbidden(request, f"AS2-From {as2_from or '(missing)'} is not an AS2 ID registered to "
                                            f"partner {partner.id}")
        if as2_to != self._settings.as2_id:
            return self._forbidden(request, f"AS2-To {as2_to or '(missing)'} is not this gateway; address "
                                            f"{self._settings.as2_id}")
        if self._settings.receipt_arrived is not None and is_mdn(headers, request.content):
            return self._mdn(request, headers, partner)
        message_id = (headers.get("message-id") or "").strip()
        if not message_id or len(message_id) > 998 or not message_id.isprintable():
            return self.answer(request, 400, "bad_request", "Every AS2 message needs a Message-ID header.")
        wanted = inbound.receipt_request(headers, partner.policy.allow_sha1)
        dispatch = None
        if wanted.async_url is not None:
            if urlsplit(wanted.async_url).scheme != "https" or not urlsplit(wanted.async_url).hostname:
                return self.answer(request, 400, "bad_request", f"Receipt-Delivery-Option {wanted.async_url} is not an "
                                   "https:// URL; async MDNs are sent over TLS only.")
            dispatch = {"channel": "as2", "url": wanted.async_url, "as2_to": as2_from}
        envelope = Envelope(sender=partner, channel="as2", external_id=message_id,
                            content_type=headers.get("content-type"), mic_algorithm=wanted.mic_algorithm,
                            receipt_signed=wanted.signed, receipt_dispatch=dispatch)
        d = self._settings.run_cpu(thd_unwrap, request.content, headers, partner, self._settings, wanted.digest,
                                   self._now())
        d.addCallback(self._take, request, envelope)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request, envelope, wanted, as2_from),
                       errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _mdn(self, request: IRequest, headers: Headers, partner: Partner):
        d = self._settings.run_cpu(thd_read_mdn, request.content, headers, partner, self._now())

        def arrived(mdn: outbound.MDN) -> Deferred:
            return self._settings.receipt_arrived(partner.id, mdn.original_message_id, mdn.disposition, mdn.status,
                                                  mdn.mic)

        def done(what: str) -> None:
            self._log.info("as2: async MDN from {partner}: {what}", partner=partner.id, what=what)
            self.finish(request, self.answer(request, 200, "ok", f"MDN received: {what}"))

        def refused(failure) -> None:
            if failure.check(outbound.MDNError, ValueError):
                self._log.info("as2: refused MDN from {partner}: {reason}", partner=partner.id,
                               reason=failure.getErrorMessage())
                self.finish(request, self.answer(request, 400, "bad_mdn", f"MDN refused: {failure.getErrorMessage()}"))
            else:
                self._failed(failure, request)

        d.addCallback(arrived).addCallbacks(done, refused)
        return server.NOT_DONE_YET

    def _forbidden(self, request: IRequest, reason: str) -> bytes:
        self._log.info("as2: refused request: {reason}", reason=reason)
        return self.answer(request, 403, "forbidden", f"Forbidden: {reason}")

    def _take(self, result: inbound.Unwrapped | inbound.AS2Refused, request: IRequest, envelope: Envelope) -> Deferred:
        if isinstance(result, inbound.AS2Refused):
            self._log.info("as2: refused message {id} from {partner}: {reason}", id=envelope.external_id,
                           partner=envelope.sender.id, reason=result.finding.message)
            envelope = attrs.evolve(envelope, mic=result.mic)
            request.content.seek(0)
            return self._settings.refuse(envelope, [result.finding], request.content)
        envelope = attrs.evolve(envelope, filename=result.filename, content_type=result.content_type, mic=result.mic)
        return self._settings.accept(envelope, result.payload.reader())

    def _answer(self, decision: Decision, request: IRequest, envelope: Envelope, wanted: inbound.ReceiptRequest,
                as2_from: str) -> None:
        self._log.info("as2: message {id} from {partner}: {outcome}", id=envelope.external_id,
                       partner=envelope.sender.id, outcome=decision.outcome)
        request.setResponseCode(200)
        if not wanted.wanted or wanted.async_url is not None:  # async: the courier sends the stored MDN
            self.finish(request, b"")
            return
        receipt = decision.receipt
        for name, value in outbound.receipt_headers(
                receipt_id=receipt.id, content_type=receipt.content_type, as2_from=self._settings.as2_id,
                as2_to=as2_from, hostname=self._settings.hostname, date=formatdate(usegmt=True)):
            request.setHeader(name.encode("ascii"), value.encode("latin-1"))
        self.finish(request, receipt.body)

    def _failed(self, failure, request: IRequest) -> None:
        request.setHeader(b"retry-after", b"30")
        if failure.check(IntakeUnavailable):
            self._log.warn("as2: temporary failure: {error}", error=failure.getErrorMessage())
            body = self.answer(request, 503, "temporarily_unavailable",
                               "The gateway cannot store messages right now; nothing was accepted. Resend later.")
        else:
            self._log.failure("as2: internal error", failure)
            body = self.answer(request, 500, "internal_error", "Internal error; nothing was accepted. Resend later.")
        self.finish(request, body)
