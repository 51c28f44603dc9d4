# -*- test-case-name: tests.gateway.test_intake -*-
"""What a door hands the intake, and what it gets back: the contract between doors and the gateway.

Doors receive the intake as a callable ``accept(envelope, payload) -> Deferred[Decision]`` (they never
import :mod:`gateway`), so these types live here, beside the doors.
"""

import attrs

from partners.directory import Partner
from partners.routes import CHANNELS
from protocols.findings import Finding
from spool.records import StoredReceipt

#: The payload is larger than ``[limits] max_payload_bytes``; doors answer it as "too large" (HTTP 413).
GW_SIZE = "GW-SIZE"


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
