# -*- test-case-name: tests.gateway.test_intake -*-
"""What a door hands the intake, and what it gets back: the contract between doors and the gateway
(and, for outbound clients, how a failed push is reported).

Doors receive the intake as a callable ``accept(envelope, payload) -> Deferred[Decision]`` (they never
import :mod:`gateway`), so these types live here, beside the doors.
"""

from datetime import datetime

import attrs

from partners.directory import Partner
from partners.routes import CHANNELS
from protocols.findings import Finding
from spool.records import StoredReceipt

#: The payload is larger than ``[limits] max_payload_bytes``; doors answer it as "too large" (HTTP 413).
GW_SIZE = "GW-SIZE"


class DeliveryFailed(Exception):
    """A push did not succeed; ``permanent`` skips the remaining attempts (e.g. the peer refused the content)."""

    def __init__(self, reason: str, permanent: bool = False):
        super().__init__(reason)
        self.permanent = permanent


@attrs.frozen
class Pushed:
    """How a push went: the ID it went out under, the MIC its receipt must return, what the peer said,
    and, when the receipt comes later (async MDN), until when to wait for it."""

    remote_id: str
    mic: str | None
    detail: str
    awaiting_until: datetime | None = None


class IntakeUnavailable(Exception):
    """The gateway cannot make data durable right now; nothing was accepted, the sender must retry."""


@attrs.frozen
class Envelope:
    """What the door knows about a payload besides its bytes.

    :ivar sender: the partner the door authenticated (credential ∧ its allowlist).
    :ivar external_id: the sender's message ID (AS2 ``Message-ID``, mail ``Message-ID``, HTTP
        ``Idempotency-Key``); a repeat with the same ID is a duplicate.
    :ivar door_recipient: a partner ID the door's own addressing names (SFTP path, mail local part).
    :ivar mic: the door's own MIC for the receipt (AS2 computes it over the signed MIME part), in
        ``mic_algorithm`` as the sender named it; default: the SHA-256 of the payload.
    :ivar receipt_signed: False when the sender asked for an unsigned receipt (AS2 without
        ``signed-receipt-protocol``); every other receipt is signed.
    :ivar receipt_dispatch: where the receipt goes later, when not in the door's answer (an AS2 async
        MDN: ``{"channel": "as2", "url": …, "as2_to": …}``); it is stored ``pending`` and sent with retries.
    :ivar require_xmldsig: the door did not authenticate the content itself (unsigned mail a partner's
        policy allows), so the document must carry the partner's XML-DSig whatever the policy says.
    """

    sender: Partner
    channel: str = attrs.field(validator=attrs.validators.in_(CHANNELS))
    external_id: str | None = None
    filename: str | None = None
    content_type: str | None = None
    door_recipient: str | None = None
    mic: str | None = None
    mic_algorithm: str = "sha-256"
    receipt_signed: bool = True
    receipt_dispatch: dict[str, str] | None = attrs.field(default=None, eq=False)
    require_xmldsig: bool = False


@attrs.frozen
class Decision:
    """The intake's answer; ``receipt`` holds the exact bytes to send back."""

    outcome: str  #: ``accepted``, ``duplicate`` or ``rejected``
    receipt: StoredReceipt
    message_id: str | None = None
    quarantine_id: str | None = None
    findings: tuple[Finding, ...] = ()

    @property
    def accepted(self) -> bool:
        """True when the message is durable (accepted now or before)."""
        return self.outcome != "rejected"
