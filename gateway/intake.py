# -*- test-case-name: tests.gateway.test_intake -*-
"""The one intake every door hands payloads to: ``accept(envelope, payload) -> Decision``.

Steps (DESIGN §2, STYLE §2.4), each refusal typed and answered with a signed negative receipt::

    stage raw bytes ──▶ examine (thread) ──▶ group commit ──▶ Decision
    (tmp/, fsync;       hardened parse, XML-DSig,   duplicate checks, then message + deliveries +
     size cap)          identify, route, sign       receipt + audit in one transaction, blobs first
                        the receipt in advance

Only :class:`Decision` objects are answers: ``accepted`` and ``duplicate`` are positive (the message
is durable), ``rejected`` is negative (the bytes are in quarantine). Anything that stops the gateway
from making data durable — disk full, database down — raises :class:`IntakeUnavailable` instead, and
the door must answer "try again later", never a receipt.
"""

from collections.abc import Callable, Iterable
from contextlib import suppress
from datetime import datetime
from typing import IO, Any

import attrs
from sqlalchemy.engine import Connection
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.filing import OnFiled, file_in_mailbox
from gateway.receipts import ReceiptSigner
from gateway.router import RouteRefused, route
from partners.directory import PartnerDirectory
from protocols import xmldoc
from protocols.as2.inbound import DISPOSITION_ERRORS as AS2_DISPOSITION_ERRORS
from protocols.envelope import GW_SIZE, Decision, Envelope, IntakeUnavailable
from protocols.findings import Finding
from protocols.mdn import Disposition
from spool import audit, crashpoints, records
from spool.blobs import BlobStore, PayloadTooLarge, SpoolError, StagedBlob
from spool.records import Message, Quarantined, StoredReceipt

_log = Logger()

GW_DUP = "GW-DUP"  #: message ID or invoice number reused for different content

#: How each finding shows in the receipt's ``Disposition`` (RFC 4130 §7.4.3 modifiers).
_DISPOSITION_ERRORS = {
    xmldoc.GW_SIG_MISSING: "insufficient-message-security",
    xmldoc.GW_SIG_ALGORITHM: "insufficient-message-security",
    xmldoc.GW_SIG_LOCATION: "insufficient-message-security",
    xmldoc.GW_SIG_INVALID: "integrity-check-failed",
    xmldoc.GW_SIG_UNTRUSTED: "authentication-failed",
    xmldoc.GW_XML: "unsupported-format",
    xmldoc.GW_DOCTYPE: "unsupported-format",
    xmldoc.GW_DOC_UNKNOWN: "unsupported-format",
    **AS2_DISPOSITION_ERRORS,
}
_CHUNK = 1 << 16


# ---------------------------------------------------------------------------------------------------------------
# Blocking steps (threads)
# ---------------------------------------------------------------------------------------------------------------

def thd_stage(store: BlobStore, payload: bytes | IO[bytes]) -> StagedBlob:
    """Stream ``payload`` into ``tmp/``, fsynced and closed; never more than a chunk in memory."""
    with store.stage() as writer:
        if isinstance(payload, bytes | bytearray | memoryview):
            view = memoryview(payload)
            for start in range(0, len(view), _CHUNK):
                writer.write(bytes(view[start:start + _CHUNK]))
        else:
            while chunk := payload.read(_CHUNK):
                writer.write(chunk)
        return writer.finish()


@attrs.frozen
class _Examined:
    """A payload that passed every check: its facts, its route and its receipt, signed in advance."""

    message: Message
    targets: tuple[tuple[str, str], ...]
    receipt: StoredReceipt


@attrs.frozen
class _Refused:
    findings: tuple[Finding, ...]


def _looks_like_xml(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<"


def thd_examine(staged: StagedBlob, envelope: Envelope, directory: PartnerDirectory, signer: ReceiptSigner,
                now: datetime, pushable: frozenset[str] | None = None) -> _Examined | _Refused:
    """Check the document, route it, and sign its acceptance receipt (CPU work, off the reactor)."""
    sender, policy = envelope.sender, envelope.sender.policy
    try:
        with staged.path.open("rb") as f:
            head = f.read(4096)
            # an opaque payload is never read whole: it may be far larger than memory should hold; one that
            # must carry an XML-DSig cannot be opaque
            opaque = policy.allow_opaque and not envelope.require_xmldsig and not _looks_like_xml(head)
            data = None if opaque else head + f.read()
    except OSError as e:
        raise IntakeUnavailable(f"cannot read the staged payload back: {e}") from e
    try:
        if data is not None:
            root = xmldoc.parse(data)
            result = xmldoc.verify_signature(
                root, sender.certificates.get("sign", ()), cas=sender.cas.get("sign", ()),
                require=policy.require_xmldsig or envelope.require_xmldsig, allow_sha1=policy.allow_sha1, now=now)
            document = xmldoc.identify(result.signed_xml if result.signed else root)
            if not policy.allow_opaque:
                xmldoc.require_known(document)
            signed = result.signed
        else:
            document, signed = None, False
        kind = document.kind if document is not None and document.known else "opaque"
        decision = route(directory, sender, kind=kind, channel=envelope.channel,
                         receiver=document.customer_id if document else None,
                         supplier=document.supplier_id if document else None,
                         door_recipient=envelope.door_recipient, pushable=pushable)
    except xmldoc.DocumentRejected as e:
        return _Refused(tuple(e.findings))
    except RouteRefused as e:
        return _Refused((e.finding,))
    facts: dict[str, Any] = {}
    if document is not None and document.known:
        facts = {name: getattr(document, name) for name in (
            "number", "issue_date", "type_code", "currency", "supplier_id", "customer_id", "supplier_name",
            "customer_name", "amount")}
    message = Message(
        id=records.new_id(now), received_at=now, sender_id=sender.id, recipient_id=decision.recipient.id,
        channel=envelope.channel, sha256=staged.sha256, size=staged.size, kind=kind, signed=signed,
        route=decision.route, state="accepted", updated_at=now, external_id=envelope.external_id,
        filename=envelope.filename, content_type=envelope.content_type, **facts)
    what = f"invoice {message.number}" if message.number else f"{kind} document"
    receipt = signer.intake(
        kind="acceptance", partner_id=sender.id, original_id=envelope.external_id or message.id,
        sha256=staged.sha256, mic=envelope.mic, mic_algorithm=envelope.mic_algorithm, signed=envelope.receipt_signed,
        dispatch=envelope.receipt_dispatch, now=now, disposition=Disposition(), message_id=message.id,
        text=f"Accepted {what} for {decision.recipient.id}; Postroom message {message.id}.")
    return _Examined(message, decision.targets, receipt)


def _quarantine_receipt(signer: ReceiptSigner, envelope: Envelope, findings: tuple[Finding, ...], size: int,
                        sha256: str | None, now: datetime) -> tuple[Quarantined, StoredReceipt]:
    item = Quarantined(
        id=records.new_id(now), received_at=now, sender_id=envelope.sender.id, channel=envelope.channel,
        size=size, sha256=sha256, codes=",".join(dict.fromkeys(f.code for f in findings))[:500],
        findings=[attrs.asdict(f) for f in findings], external_id=envelope.external_id,
        filename=envelope.filename, content_type=envelope.content_type)
    error = next((_DISPOSITION_ERRORS[f.code] for f in findings if f.code in _DISPOSITION_ERRORS),
                 "unexpected-processing-error")
    receipt = signer.intake(
        kind="rejection", partner_id=envelope.sender.id, original_id=envelope.external_id or item.id,
        sha256=sha256, mic=envelope.mic, mic_algorithm=envelope.mic_algorithm, signed=envelope.receipt_signed,
        dispatch=envelope.receipt_dispatch, now=now, disposition=Disposition(error=error), findings=findings,
        quarantine_id=item.id, text=f"Refused: {findings[0].message}")
    return item, receipt


def _actor(envelope: Envelope) -> str:
    return f"partner:{envelope.sender.id}"


def thd_record_rejection(conn: Connection, envelope: Envelope, item: Quarantined, receipt: StoredReceipt,
                         now: datetime) -> Decision:
    """Keep the refused payload's record, its negative receipt and the audit event."""
    records.insert_quarantine(conn, item)
    records.insert_receipt(conn, receipt)
    audit.append(conn, _actor(envelope), "message.rejected", now, details={
        "quarantine": item.id, "channel": item.channel, "codes": item.codes, "sha256": item.sha256,
        "size": item.size, "external_id": item.external_id})
    findings = tuple(Finding(**f) for f in item.findings)
    return Decision("rejected", receipt, quarantine_id=item.id, findings=findings)


class _Conflict(Exception):
    def __init__(self, finding: Finding):
        self.finding = finding


def _earlier(conn: Connection, message: Message) -> Message | None:
    """The message this one repeats, if any; :class:`_Conflict` when it reuses an ID for other content."""
    if message.external_id is not None:
        earlier = records.find_by_external_id(conn, message.sender_id, message.external_id)
        if earlier is not None:
            if earlier.sha256 == message.sha256:
                return earlier
            raise _Conflict(Finding(GW_DUP, f"Message ID {message.external_id} was already used on "
                                    f"{earlier.received_at:%Y-%m-%d %H:%M} UTC for different content; give every "
                                    "new message a new ID.", "message-id"))
    if message.number is not None:
        same = records.find_same_document(conn, message.sender_id, message.number, message.issue_date)
        for earlier in same:
            if earlier.sha256 == message.sha256:
                return earlier
        if same:
            raise _Conflict(Finding(GW_DUP, f"Invoice number {message.number} dated {message.issue_date or '-'} was "
                                    f"already accepted on {same[0].received_at:%Y-%m-%d %H:%M} UTC with different "
                                    "content; a corrected invoice needs a new number (or send a credit note).",
                                    "number"))
    return None


def thd_record_acceptance(conn: Connection, envelope: Envelope, examined: _Examined, signer: ReceiptSigner,
                          now: datetime, on_filed: OnFiled | None = None) -> Decision:
    """Duplicate checks, then the message, its deliveries, its receipt and the audit event; the document is
    filed in the recipient's mailbox right here, so what is accepted is visible at once (D36)."""
    message = examined.message
    try:
        earlier = _earlier(conn, message)
    except _Conflict as conflict:
        item, receipt = _quarantine_receipt(signer, envelope, (conflict.finding,), message.size, message.sha256, now)
        return thd_record_rejection(conn, envelope, item, receipt, now)
    if earlier is not None:
        audit.append(conn, _actor(envelope), "message.duplicate", now, message_id=earlier.id, details={
            "channel": envelope.channel, "external_id": envelope.external_id})
        if envelope.external_id is None or envelope.external_id == earlier.external_id:
            original = records.receipts_for(conn, earlier.id)[0]
            if envelope.receipt_dispatch is not None:  # a resend asking for an async receipt: send it again
                original = records.redispatch(conn, original, envelope.receipt_dispatch)
            return Decision("duplicate", original, message_id=earlier.id)
        # the same document under a new message ID: the sender matches receipts by ID, so this one
        # gets its own (rare: signed here, on the writer thread)
        receipt = signer.intake(
            kind="acceptance", partner_id=earlier.sender_id, original_id=envelope.external_id, sha256=earlier.sha256,
            mic=envelope.mic, mic_algorithm=envelope.mic_algorithm, signed=envelope.receipt_signed, now=now,
            dispatch=envelope.receipt_dispatch, disposition=Disposition(warning="duplicate-document"),
            message_id=earlier.id,
            text=f"Already accepted on {earlier.received_at:%Y-%m-%d %H:%M} UTC as Postroom message {earlier.id} "
                 f"(your message ID {earlier.external_id or '-'}); nothing new was created.")
        records.insert_receipt(conn, receipt)
        return Decision("duplicate", receipt, message_id=earlier.id)
    delivery_ids = records.insert_message(conn, message, examined.targets, filed=True)
    records.insert_receipt(conn, examined.receipt)
    audit.append(conn, _actor(envelope), "message.accepted", now, message_id=message.id, details={
        "channel": message.channel, "recipient": message.recipient_id, "route": message.route,
        "sha256": message.sha256, "size": message.size, "kind": message.kind, "number": message.number,
        "external_id": message.external_id, "deliveries": [t for _, t in examined.targets]})
    for delivery_id, (recipient_id, target) in zip(delivery_ids, examined.targets, strict=True):
        if target == "mailbox":
            file_in_mailbox(conn, delivery_id, message.id, recipient_id, now, on_filed)
    return Decision("accepted", examined.receipt, message_id=message.id)


# ---------------------------------------------------------------------------------------------------------------
# The intake
# ---------------------------------------------------------------------------------------------------------------

class Intake:
    """Runs the steps above: blocking ones on thread pools, commits through the group committer.

    :param run_io: ``run_io(fn, *args) -> Deferred`` on a pool sized for concurrent fsyncs.
    :param run_cpu: ``run_cpu(fn, *args) -> Deferred`` on a pool sized for the cores.
    :param commit: :meth:`gateway.committer.GroupCommitter.commit`.
    :param directory: returns the current partner directory snapshot.
    :param on_accepted: called (on the reactor) after each newly accepted message that still has pushes to
        make, e.g. to wake delivery.
    :param on_filed: runs in the accepting transaction for each mailbox the document is filed in (see
        :mod:`gateway.filing`).
    :param after_filing: called (on the reactor) after a commit that filed a document, e.g. to wake the mail
        courier for the notification ``on_filed`` queued.
    """

    def __init__(self, store: BlobStore, run_io: Callable[..., Deferred], run_cpu: Callable[..., Deferred],
                 commit: Callable[..., Deferred], directory: Callable[[], PartnerDirectory], signer: ReceiptSigner,
                 clock: Callable[[], datetime], on_accepted: Callable[[], None] = lambda: None,
                 pushable: frozenset[str] | None = None, on_filed: OnFiled | None = None,
                 after_filing: Callable[[], None] = lambda: None):
        self._store = store
        self._run_io = run_io
        self._run_cpu = run_cpu
        self._commit = commit
        self._directory = directory
        self._signer = signer
        self._clock = clock
        self._on_accepted = on_accepted
        self._pushable = pushable
        self._on_filed = on_filed
        self._after_filing = after_filing

    def accept(self, envelope: Envelope, payload: bytes | IO[bytes] | StagedBlob) -> Deferred:
        """Take one payload; fires with a :class:`Decision`, or fails with :class:`IntakeUnavailable`."""
        return Deferred.fromCoroutine(self._accept(envelope, payload))

    def refuse(self, envelope: Envelope, findings: Iterable[Finding], payload: bytes | IO[bytes]) -> Deferred:
        """Quarantine what a door refused before the document checks (e.g. it would not decrypt), with its
        negative receipt; fires with the ``rejected`` :class:`Decision`, or fails with :class:`IntakeUnavailable`."""
        return Deferred.fromCoroutine(self._refuse(envelope, tuple(findings), payload))

    async def _refuse(self, envelope: Envelope, findings: tuple[Finding, ...], payload: bytes | IO[bytes]) -> Decision:
        now = self._clock()
        try:
            staged = await self._run_io(thd_stage, self._store, payload)
        except PayloadTooLarge as e:
            return await self._reject(envelope, findings, None, e.seen, now)
        except SpoolError as e:
            raise IntakeUnavailable(f"cannot spool the payload: {e}") from e
        try:
            return await self._reject(envelope, findings, staged, staged.size, now)
        except BaseException:
            with suppress(Exception):
                await self._run_io(self._store.discard, staged)
            raise

    async def _accept(self, envelope: Envelope, payload: bytes | IO[bytes] | StagedBlob) -> Decision:
        now = self._clock()
        if isinstance(payload, StagedBlob):
            staged = payload
        else:
            try:
                staged = await self._run_io(thd_stage, self._store, payload)
            except PayloadTooLarge as e:
                finding = Finding(GW_SIZE, f"The payload is larger than this gateway accepts ({e.limit} bytes); "
                                  "split the batch or compress it.")
                return await self._reject(envelope, (finding,), None, e.seen, now)
            except SpoolError as e:
                raise IntakeUnavailable(f"cannot spool the payload: {e}") from e
        crashpoints.reached("after-stage")
        try:
            examined = await self._run_cpu(thd_examine, staged, envelope, self._directory(), self._signer, now,
                                           self._pushable)
            if isinstance(examined, _Refused):
                return await self._reject(envelope, examined.findings, staged, staged.size, now)
            decision = await self._durably(
                [staged], thd_record_acceptance, envelope, examined, self._signer, now, self._on_filed)
        except BaseException:
            # published or not, a staged file left behind is removed here (a published blob's temporary
            # name is gone already; discarding is then a no-op); what cannot be removed now, recovery does
            with suppress(Exception):
                await self._run_io(self._store.discard, staged)
            raise
        if decision.outcome == "accepted":
            targets = {target for _, target in examined.targets}
            if "mailbox" in targets:
                self._after_filing()
            if targets - {"mailbox"}:
                self._on_accepted()
        return decision

    async def _reject(self, envelope: Envelope, findings: Iterable[Finding], staged: StagedBlob | None, size: int,
                      now: datetime) -> Decision:
        findings = tuple(findings)
        item, receipt = await self._run_cpu(
            _quarantine_receipt, self._signer, envelope, findings, size, staged.sha256 if staged else None, now)
        return await self._durably([staged] if staged else [], thd_record_rejection, envelope, item, receipt, now)

    async def _durably(self, blobs: list[StagedBlob], fn: Callable[..., Decision], *args: Any) -> Decision:
        try:
            return await self._commit(blobs, lambda conn: fn(conn, *args))
        except Exception as e:
            _log.error("cannot commit a message from {sender}: {error}", sender=args[0].sender.id, error=e)
            raise IntakeUnavailable(f"cannot commit the message durably: {e}") from e
