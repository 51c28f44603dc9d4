# -*- test-case-name: tests.e2e.test_as2_push -*-
"""The ``as2`` push target: send a message to a partner's AS2 URL and judge its MDN.

A sync MDN settles the attempt at once: ``processed`` (or a warning) with our MIC is success;
anything else is a failed attempt the delivery queue retries. When the partner's options ask for an
async MDN, a ``200`` means "sent": the delivery waits (``awaiting``) for the MDN to arrive at our
``/as2``, and is pushed again, under the same Message-ID, if it does not come in time. Retries always
reuse the first Message-ID, so a receiver that got the first try answers the second as a duplicate.
"""

from collections.abc import Callable
from datetime import datetime, timedelta
from email.utils import formatdate
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from certs.x509 import Certificate, PrivateKey
from partners.directory import Partner
from protocols.as2 import outbound
from protocols.as2.client import Poster, PostFailed
from protocols.as2.mime import Region, Scratch, memory_scratch
from protocols.envelope import DeliveryFailed, Pushed
from spool.records import Delivery, Message, StoredReceipt

#: How long an async MDN may take before the message is pushed again.
ASYNC_MDN_WAIT = timedelta(hours=1)


@attrs.frozen
class Identity:
    """What the gateway signs outbound messages with, and says it is."""

    as2_id: str
    hostname: str
    sign_key: PrivateKey = attrs.field(repr=False)
    sign_cert: Certificate
    receipt_url: Callable[[], str | None]  #: where partners send async MDNs to us (``[gateway] as2_url``)


class AS2Push:
    """``push(message, delivery, recipient)`` for the delivery queue."""

    _log = Logger()

    def __init__(self, poster: Poster, identity: Identity, read_payload: Callable[[Message], Deferred],
                 run_cpu: Callable[..., Deferred], now: Callable[[], datetime], scratch: Scratch = memory_scratch,
                 note_push: Callable[[Delivery, str, str | None], Deferred] | None = None):
        """``read_payload(message)`` fires with a :class:`Region` of the stored payload; each layer of the
        outgoing message goes to a ``scratch()`` file; ``note_push(delivery, message_id, mic)`` records
        the Message-ID and MIC before the POST (retries reuse the ID; an async MDN can come back at once)."""
        self._scratch = scratch
        self._note_push = note_push
        self._poster = poster
        self._identity = identity
        self._read_payload = read_payload
        self._run_cpu = run_cpu
        self._now = now

    def push(self, message: Message, delivery: Delivery, recipient: Partner) -> Deferred:
        """Send and judge; fires with :class:`Pushed`, fails with :class:`DeliveryFailed`."""
        return Deferred.fromCoroutine(self._push(message, delivery, recipient))

    async def _push(self, message: Message, delivery: Delivery, recipient: Partner) -> Pushed:
        if not recipient.as2_url or not recipient.as2_ids:
            raise DeliveryFailed(f"partner {recipient.id} has no AS2 URL or AS2 ID registered", permanent=True)
        try:
            options = outbound.SendOptions.from_stored(recipient.as2_options)
        except ValueError as e:
            raise DeliveryFailed(str(e), permanent=True) from e
        encrypt_certs = recipient.certificates.get("encrypt", ())
        if options.encrypt and not encrypt_certs:
            raise DeliveryFailed(f"partner {recipient.id} has no encryption certificate registered", permanent=True)
        receipt_to = self._identity.receipt_url()
        if options.mdn == "async" and receipt_to is None:
            raise DeliveryFailed("async MDNs need our AS2 URL; set [gateway] as2_url", permanent=True)
        remote_id = delivery.remote_id or outbound.new_message_id(self._identity.hostname)
        payload = await self._read_payload(message)
        outgoing = await self._run_cpu(_build, payload, message, options, self._identity, recipient, remote_id,
                                       encrypt_certs[0] if encrypt_certs else None, receipt_to, self._scratch)
        if self._note_push is not None and not (delivery.remote_id == remote_id and delivery.mic == outgoing.mic):
            await self._note_push(delivery, remote_id, outgoing.mic)
        try:
            answer = await self._poster.post(recipient, recipient.as2_url, outgoing.headers, outgoing.body)
        except PostFailed as e:
            raise DeliveryFailed(str(e)) from e
        if not 200 <= answer.code < 300:
            raise DeliveryFailed(f"{recipient.as2_url} answered HTTP {answer.code}: {answer.body[:200]!r}")
        if options.mdn == "none":
            return Pushed(remote_id, None, f"HTTP {answer.code}, no MDN requested")
        if options.mdn == "async":
            return Pushed(remote_id, outgoing.mic, f"HTTP {answer.code}, async MDN requested",
                          awaiting_until=self._now() + ASYNC_MDN_WAIT)
        mdn = await self._run_cpu(judge, answer.headers, answer.body, recipient, outgoing.message_id, outgoing.mic,
                                  outgoing.mic_algorithm, options.signed_mdn, self._now())
        return Pushed(remote_id, outgoing.mic, f"MDN {mdn.disposition}")


def _build(payload: Region, message: Message, options: outbound.SendOptions, identity: Identity, recipient: Partner,
           remote_id: str, encrypt_cert: Certificate | None, receipt_to: str | None,
           scratch: Scratch) -> outbound.Outgoing:
    return outbound.build(
        payload, content_type=message.content_type or "application/xml", filename=message.filename,
        options=options, as2_from=identity.as2_id, as2_to=recipient.as2_ids[0], message_id=remote_id,
        sign_key=identity.sign_key, sign_cert=identity.sign_cert, encrypt_cert=encrypt_cert,
        receipt_to=receipt_to, scratch=scratch)


def judge(headers: Any, body: bytes, partner: Partner, message_id: str, mic: str | None, mic_algorithm: str,
          signed: bool, now: datetime) -> outbound.MDN:
    """Read an MDN for ``message_id`` and raise :class:`DeliveryFailed` unless it says ``processed`` with our MIC."""
    try:
        mdn = outbound.read_mdn(headers, body, trusted=partner.certificates.get("sign", ()),
                                cas=partner.cas.get("sign", ()), now=now, require_signature=signed)
    except outbound.MDNError as e:
        raise DeliveryFailed(f"the MDN from {partner.id} cannot be trusted: {e}") from e
    if not mdn.answers(message_id):
        raise DeliveryFailed(f"the MDN from {partner.id} answers {mdn.original_message_id}, not {message_id}")
    if mdn.status == "failed":
        raise DeliveryFailed(f"{partner.id} refused the message: {mdn.disposition} {mdn.text[:300]}".strip())
    if mdn.mic is None and not mdn.signed:
        return mdn  # RFC 4130 §7.4.3: the MIC is required in signed receipts only
    if not outbound.mic_matches(mic, mic_algorithm, mdn):
        raise DeliveryFailed(f"the MDN from {partner.id} returns MIC {mdn.mic} ({mdn.mic_algorithm}); we sent {mic} "
                             f"({mic_algorithm}): what they received is not what we sent")
    return mdn


class AS2Receipts:
    """Sends stored MDNs to the URL a sender asked for (``Receipt-Delivery-Option``): the courier's ``as2``."""

    def __init__(self, poster: Poster, directory: Callable[[], Any], as2_id: str, hostname: str):
        self._poster = poster
        self._directory = directory
        self._as2_id = as2_id
        self._hostname = hostname

    def send(self, receipt: StoredReceipt) -> Deferred:
        """POST the exact stored bytes; fails unless the partner answers 2xx."""
        return Deferred.fromCoroutine(self._send(receipt))

    async def _send(self, receipt: StoredReceipt) -> None:
        partner = self._directory().get(receipt.partner_id)
        if partner is None:
            raise DeliveryFailed(f"partner {receipt.partner_id} no longer exists")
        dispatch = receipt.dispatch or {}
        headers = outbound.receipt_headers(
            receipt_id=receipt.id, content_type=receipt.content_type, as2_from=self._as2_id,
            as2_to=dispatch.get("as2_to", ""), hostname=self._hostname, date=formatdate(usegmt=True))
        answer = await self._poster.post(partner, dispatch["url"], headers, receipt.body)
        if not 200 <= answer.code < 300:
            raise DeliveryFailed(f"{dispatch['url']} answered HTTP {answer.code}")
