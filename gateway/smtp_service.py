# -*- test-case-name: tests.e2e.test_smtp_door -*-
"""The email door wired into the daemon: the ESMTP factory, and what happens to a mail once DATA ends.

A mail is read off the reactor (:func:`protocols.smtp.mail.read_mail`: S/MIME, the sender's identity,
its invoice attachments); each attachment then goes through the intake, one after another, and the
reply waits for every decision to be durable:

- every attachment accepted (or a duplicate): ``250``;
- some refused: still ``250`` — what was accepted is stored and must not be sent again — and the
  reply counts both; each refusal has its negative receipt;
- all refused, or the mail itself refused (unsigned, signed by a stranger, hostile MIME): a ``5xx``
  with the first reason; a mail from a known sender is quarantined with its negative receipt;
- the spool or the database failing: ``451``, nothing half-taken is acknowledged.

Receipts go back by mail to the envelope sender through the receipt courier when ``[smtp_relay]`` is
set (``dispatch = {"channel": "email", "to": …}``).
"""

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, ServerFactory
from twisted.logger import Logger

from protocols.as2.mime import Region, Scratch
from protocols.envelope import Decision, Envelope
from protocols.findings import Finding
from protocols.listen import PerSourceLimit
from protocols.smtp import mail as reader
from protocols.smtp.server import Backend, DoorESMTP, Received, Refused, Reply

_log = Logger()

PER_SOURCE = 20  #: SMTP connections one source address may hold open at once


class SMTPDoor:
    """The door's composition over the gateway's services."""

    def __init__(self, *, hostname: str, tls_creator: Any, directory: Callable, accept: Callable,
                 refuse: Callable, run_cpu: Callable[..., Deferred], scratch: Scratch,
                 recipients: Callable[[], Sequence], now: Callable[[], datetime], max_bytes: int,
                 max_decompressed: int, mail_receipts: bool):
        self._directory = directory
        self._accept, self._refuse = accept, refuse
        self._run_cpu = run_cpu
        self._scratch = scratch
        self._recipients = recipients
        self._now = now
        self._max_decompressed = max_decompressed
        self._mail_receipts = mail_receipts
        self._tls_creator = tls_creator
        self.backend = Backend(hostname=hostname, sender_allowed=self._sender_allowed, mailbox=self._mailbox,
                               take=lambda received: Deferred.fromCoroutine(self._take(received)),
                               scratch=scratch, max_bytes=max_bytes)

    def factory(self) -> Factory:
        """The factory to wrap with the allowlist guard and listen with: at most :data:`PER_SOURCE`
        connections from one address at once."""
        factory = ServerFactory()
        factory.noisy = False
        factory.protocol = lambda: DoorESMTP(self.backend, self._tls_creator)
        return PerSourceLimit(factory, PER_SOURCE, "smtp")

    def _sender_allowed(self, address: str, source: str) -> Reply | None:
        partner = self._directory().by_email(address)
        if partner is None or not partner.allows(source):  # one answer: no hint which addresses exist
            return Reply(550, "5.7.1", f"sender address {address} is not registered here for mail from {source}")
        return None

    def _mailbox(self, partner_id: str) -> bool:
        partner = self._directory().get(partner_id)
        return partner is not None and partner.active

    def _dispatch(self, received: Received, message_id: str | None) -> dict[str, str] | None:
        if not self._mail_receipts:
            return None
        dispatch = {"channel": "email", "to": received.envelope_from}
        return dispatch | ({"in_reply_to": message_id} if message_id else {})

    async def _take(self, received: Received) -> Reply:
        sender = self._directory().by_email(received.envelope_from)
        if sender is None:  # removed between MAIL FROM and the end of DATA
            raise Refused(Reply(550, "5.7.1", f"sender address {received.envelope_from} is not registered"))
        try:
            mail = await self._run_cpu(partial(
                reader.read_mail, Region.of_file(received.file), envelope_from=received.envelope_from,
                source=received.source, directory=self._directory(), recipients=self._recipients(),
                now=self._now(), max_decompressed=self._max_decompressed, scratch=self._scratch))
        except reader.MailRefused as e:
            reply = Reply(e.code, e.status, e.text)
            envelope = Envelope(sender=sender, channel="email", door_recipient=received.door_recipient,
                                receipt_dispatch=self._dispatch(received, None))
            received.file.seek(0)
            await self._refuse(envelope, [Finding(f"MAIL-{e.status}", e.text)], received.file)
            _log.info("smtp: refused mail from {sender} ({source}): {code} {text}", sender=received.envelope_from,
                      source=received.source, code=e.code, text=e.text)
            raise Refused(reply) from None
        decisions = [await self._accept(self._envelope(received, mail, i, attachment), attachment.body.reader())
                     for i, attachment in enumerate(mail.attachments)]
        reply = _reply(decisions)
        if reply.code >= 400:
            raise Refused(reply)
        return reply

    def _envelope(self, received: Received, mail: "reader.Mail", index: int, attachment: "reader.Attachment"
                  ) -> Envelope:
        external_id = None
        if mail.message_id:
            external_id = mail.message_id if index == 0 else f"{mail.message_id}#{index + 1}"
        return Envelope(sender=mail.partner, channel="email", external_id=external_id, filename=attachment.filename,
                        content_type=attachment.content_type, door_recipient=received.door_recipient,
                        receipt_dispatch=self._dispatch(received, mail.message_id),
                        require_xmldsig=not mail.signed)


def _reply(decisions: list[Decision]) -> Reply:
    """The reply for a mail whose attachments all have a durable decision."""
    taken = [d for d in decisions if d.accepted]
    refused = [d for d in decisions if not d.accepted]
    if not taken:
        first = refused[0].findings[0].message if refused[0].findings else "refused"
        return Reply(554, "5.6.0", f"refused: {first}")
    ids = ", ".join(d.message_id for d in taken if d.message_id)
    text = f"accepted {len(taken)} invoice(s) ({ids})"
    if refused:
        text += f"; refused {len(refused)}, the receipts say why"
    return Reply(250, "2.6.0", text)
