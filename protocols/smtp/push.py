# -*- test-case-name: tests.e2e.test_smtp_door -*-
"""The ``email`` push target: the document as an attachment, S/MIME-signed by the gateway, encrypted to
the partner's registered encryption certificate when it has one, submitted through the relay.

The relay taking the mail (``250`` after DATA) is the delivery; a 5xx for the message or its recipient
is permanent (the delivery is dead-lettered with the relay's words), anything else is retried by the
delivery queue, under the same ``Message-ID`` (made from the message's ID), so a receiver can tell a
retry from a new document. The mail goes to the partner's first registered address.
"""

from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

import attrs
from twisted.internet.defer import Deferred

from protocols.as2.mime import Scratch
from protocols.as2.outbound import SendOptions
from protocols.envelope import DeliveryFailed, Pushed
from protocols.smtp import compose
from protocols.smtp.relay import Relay


@attrs.frozen
class Signer:
    """The gateway's S/MIME identity for outgoing documents."""

    sender: str  #: envelope and ``From:`` address
    domain: str  #: for ``Message-ID``
    key: Any = attrs.field(repr=False)
    certificate: Any = attrs.field(repr=False)


class EmailPush:
    """Pushes documents to partners whose delivery is ``email``."""

    def __init__(self, relay: Relay, signer: Signer, read_payload: Callable[[Any], Deferred],
                 run_cpu: Callable[..., Deferred], now: Callable[[], datetime], scratch: Scratch):
        self._relay = relay
        self._signer = signer
        self._read_payload = read_payload
        self._run_cpu = run_cpu
        self._now = now
        self._scratch = scratch

    def push(self, message: Any, delivery: Any, recipient: Any) -> Deferred:
        """Mail ``message`` to ``recipient``; fires with :class:`Pushed` once the relay took it."""
        return Deferred.fromCoroutine(self._push(message, recipient))

    async def _push(self, message: Any, recipient: Any) -> Pushed:
        if not recipient.emails:
            raise DeliveryFailed(f"partner {recipient.id} has no registered email address", permanent=True)
        to = recipient.emails[0]
        encrypt = recipient.certificates.get("encrypt", ())
        payload = await self._read_payload(message)
        what = f"Invoice {message.number}" if message.number else "Document"
        mail_id = f"<{message.id}@{self._signer.domain}>"
        mail = await self._run_cpu(partial(
            compose.document_mail, payload, filename=message.filename or f"{message.id}.xml",
            content_type=message.content_type or "application/xml", sender=self._signer.sender, to=to,
            subject=f"{what} from {message.sender_id} (Postroom {message.id})", options=SendOptions(),
            our_key=self._signer.key, our_cert=self._signer.certificate,
            their_encrypt_cert=encrypt[0] if encrypt else None, now=self._now(),
            message_id_domain=self._signer.domain, scratch=self._scratch,
            message_id=mail_id))
        reply = await self._relay.send(self._signer.sender, [to], mail)
        return Pushed(remote_id=mail_id, mic=None, detail=f"mailed to {to}: {reply}")
