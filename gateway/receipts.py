# -*- test-case-name: tests.gateway.test_receipts -*-
"""The gateway's receipts: what each outcome says, signed with the gateway's key, kept as exact bytes.

One builder for every door (``protocols.mdn`` does the format); the doors only decide how the
bytes travel. A stored receipt is never rebuilt: a duplicate gets the very bytes sent the first time.
"""

import base64
from collections.abc import Sequence
from datetime import datetime

import attrs

from certs.x509 import Certificate, PrivateKey, load_key_and_certificate, read_file
from gateway.config import Config
from protocols import mdn
from protocols.findings import Finding
from spool.records import Message, StoredReceipt, new_id


def mic_of(sha256_hex: str) -> str:
    """The ``Received-Content-MIC`` value for a payload's SHA-256 (base64 of the digest)."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


@attrs.frozen
class ReceiptSigner:
    """Signs receipts as the gateway: ``reporting_ua`` names it, ``identity`` is what senders addressed."""

    key: PrivateKey = attrs.field(repr=False)
    certificate: Certificate
    chain: tuple[Certificate, ...]
    reporting_ua: str
    identity: str

    @classmethod
    def from_config(cls, config: Config) -> "ReceiptSigner":
        """Load the ``[identity]`` signing key and certificate (the certificate file may carry a chain)."""
        home, ident = config.home, config.identity
        key_path, cert_path = home.resolve(ident.sign_private_key), home.resolve(ident.sign_certificate)
        loaded = load_key_and_certificate(read_file(key_path), read_file(cert_path), str(key_path), str(cert_path))
        return cls(loaded.key, loaded.certificate, tuple(loaded.chain), f"Postroom; {config.gateway.hostname}",
                   config.gateway.as2_id)

    def sign(self, receipt: mdn.Receipt, signed: bool = True) -> mdn.ReceiptEntity:
        """The signed ``multipart/signed`` receipt (its digest follows the MIC's where that is SHA-2),
        or the bare report when the sender asked for an unsigned one."""
        if not signed:
            return mdn.unsigned(mdn.build_report(receipt))
        micalg = "sha-" + receipt.mic_algorithm.lower().replace("-", "").removeprefix("sha")
        return mdn.build_signed(receipt, self.key, self.certificate, self.chain, micalg)

    def intake(self, *, kind: str, partner_id: str, original_id: str, sha256: str | None, now: datetime,
               disposition: mdn.Disposition, text: str, findings: Sequence[Finding] = (),
               mic: str | None = None, mic_algorithm: str = "sha-256", signed: bool = True,
               message_id: str | None = None, quarantine_id: str | None = None,
               dispatch: dict[str, str] | None = None) -> StoredReceipt:
        """The receipt for an intake outcome (``acceptance`` or ``rejection``), ready to store and send.

        ``mic`` (with ``mic_algorithm``) is the door's own MIC; by default the payload's SHA-256. With a
        ``dispatch`` the receipt is stored ``pending``, for the receipt courier to send.
        """
        if mic is None and sha256 is not None:
            mic, mic_algorithm = mic_of(sha256), "sha-256"
        receipt = mdn.Receipt(original_message_id=original_id, reporting_ua=self.reporting_ua,
                              recipient=self.identity, disposition=disposition, text=text, mic=mic,
                              mic_algorithm=mic_algorithm, findings=tuple(findings))
        stored = self._stored(kind, partner_id, disposition, receipt, now, "pending" if dispatch else "sent",
                              message_id, quarantine_id, signed)
        return attrs.evolve(stored, dispatch=dispatch)

    def returned(self, message: Message, event: str, now: datetime) -> StoredReceipt:
        """A return receipt for the original sender: the recipient ``downloaded`` or ``acknowledged`` it."""
        disposition = mdn.Disposition(type="displayed" if event == "downloaded" else "processed", manual=True)
        what = f"invoice {message.number}" if message.number else f"document {message.filename or message.id}"
        text = (f"{message.recipient_id} {event} {what}, which you sent on {message.received_at:%Y-%m-%d %H:%M} UTC "
                f"(Postroom message {message.id}).")
        receipt = mdn.Receipt(original_message_id=message.external_id or message.id, reporting_ua=self.reporting_ua,
                              recipient=message.recipient_id, disposition=disposition, text=text,
                              mic=mic_of(message.sha256))
        return self._stored("return", message.sender_id, disposition, receipt, now, "pending", message.id, None)

    def _stored(self, kind: str, partner_id: str, disposition: mdn.Disposition, receipt: mdn.Receipt,
                now: datetime, state: str, message_id: str | None, quarantine_id: str | None,
                signed: bool = True) -> StoredReceipt:
        entity = self.sign(receipt, signed)
        return StoredReceipt(id=new_id(now), kind=kind, partner_id=partner_id, disposition=disposition.field(),
                             content_type=entity.content_type, body=entity.body, created_at=now, state=state,
                             message_id=message_id, quarantine_id=quarantine_id)
