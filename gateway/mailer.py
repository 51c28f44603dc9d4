# -*- test-case-name: tests.e2e.test_smtp_door -*-
"""Mail the gateway sends on its own: recipient notifications and portal invitations, with retries.

:class:`MailPlanner` runs inside the transaction that files a document in a mailbox: it queues a
notification to the recipient's registered addresses (who sent what, and the portal link — never the
document) and, the first time an address gets one, an invitation to the portal. Both are rows of
``outgoing_mail`` committed with the filing, so a crash loses neither and a repeated filing queues
nothing twice. :class:`MailCourier` claims due rows with a lease and submits them through the relay,
with the delivery queue's backoff; an invitation's one-time token is made at each attempt (only its
hash is stored). Every outcome is an audit event (``mail.sent``, ``mail.retrying``, ``mail.failed``).
"""

import random
from collections.abc import Callable
from datetime import datetime, timedelta

import attrs
from sqlalchemy.engine import Connection, Engine
from twisted.internet.defer import Deferred, succeed

from gateway.database_service import DatabaseService
from gateway.rounds import RoundsService
from partners import invitations
from partners.directory import PartnerDirectory
from protocols.smtp import compose
from protocols.smtp.relay import Relay
from spool import audit, records
from spool.records import OutgoingMail

ACTOR = "gateway"


@attrs.frozen
class MailIdentity:
    """Who the gateway's mail comes from, and where its portal is."""

    sender: str  #: envelope and ``From:`` address
    domain: str  #: for ``Message-ID``
    portal_url: str  #: the portal's base URL, e.g. ``https://invoices.example.com``


class MailPlanner:
    """Queues the mail that filing a document in a mailbox calls for (blocking: in the filing transaction)."""

    def __init__(self, identity: MailIdentity, directory: Callable[[], PartnerDirectory]):
        self._identity = identity
        self._directory = directory

    def filed(self, conn: Connection, message_id: str, recipient_id: str, now: datetime) -> None:
        """A document was just filed in ``recipient_id``'s mailbox."""
        directory = self._directory()
        recipient = directory.get(recipient_id)
        if recipient is None or not recipient.emails:
            return
        message = records.get_message(conn, message_id)
        sender = directory.get(message.sender_id)
        body = compose.notification_mail(
            sender=self._identity.sender, to=list(recipient.emails), partner_name=recipient.name,
            from_partner=sender.name if sender is not None else message.sender_id, invoice_number=message.number,
            amount=message.amount, currency=message.currency, message_id_domain=self._identity.domain, now=now,
            portal_url=f"{self._identity.portal_url.rstrip('/')}/invoices/{message.id}")
        records.queue_mail(conn, OutgoingMail(id=records.new_id(now), kind="notification", partner_id=recipient_id,
                                              recipients=list(recipient.emails), created_at=now, body=body,
                                              message_id=message_id))
        for email in recipient.emails:
            invitation_id = invitations.invite(conn, records.new_id(now), recipient_id, email, now)
            if invitation_id is not None:
                records.queue_mail(conn, OutgoingMail(
                    id=records.new_id(now), kind="invitation", partner_id=recipient_id, recipients=[email.lower()],
                    created_at=now, invitation_id=invitation_id))


def thd_due(engine: Engine, now: datetime, limit: int, lease: timedelta) -> list[OutgoingMail]:
    """Claim due mail."""
    with engine.begin() as conn:
        return records.due_mail(conn, now, limit, lease)


def thd_invitation_body(engine: Engine, mail: OutgoingMail, identity: MailIdentity, partner_name: str,
                        now: datetime) -> bytes:
    """Compose an invitation with a fresh one-time token (only its hash is stored)."""
    with engine.begin() as conn:
        token = invitations.issue_token(conn, mail.invitation_id, now)
    return compose.invitation_mail(
        sender=identity.sender, to=mail.recipients[0], partner_name=partner_name,
        link=f"{identity.portal_url.rstrip('/')}/register?token={token}", expires_at=now + invitations.LIFETIME,
        now=now, message_id_domain=identity.domain)


def thd_record(engine: Engine, mail: OutgoingMail, now: datetime, error: str | None,
               retry_at: datetime | None) -> None:
    """Record one attempt and its audit event."""
    with engine.begin() as conn:
        records.mail_sent(conn, mail, error, retry_at)
        event = "mail.sent" if error is None else ("mail.retrying" if retry_at else "mail.failed")
        audit.append(conn, ACTOR, event, now, message_id=mail.message_id, details={
            "mail": mail.id, "kind": mail.kind, "partner": mail.partner_id, "to": mail.recipients,
            "attempt": mail.attempts + 1, "error": error})


class MailCourier(RoundsService):
    """Sends queued mail through the relay: a few at a time, so the lease outlasts a batch even when every
    mail waits out the relay's timeouts (4 x 90 s < 10 min)."""

    name = "mail"

    def __init__(self, db: DatabaseService, clock, now: Callable[[], datetime], relay: Relay, identity: MailIdentity,
                 directory: Callable[[], PartnerDirectory], *, ready: Callable[[], Deferred] = lambda: succeed(None),
                 max_attempts: int, backoff: float, interval: float = 5.0, batch: int = 4,
                 lease: timedelta = timedelta(minutes=10), rng: random.Random | None = None):
        super().__init__(clock, interval, ready, now=now, max_attempts=max_attempts, backoff=backoff, rng=rng)
        self._db = db
        self._relay = relay
        self._identity = identity
        self._directory = directory
        self._batch = batch
        self._lease = lease

    async def _round(self) -> None:
        while self.running:
            due = await self._db.run(thd_due, self._now(), self._batch, self._lease)
            for mail in due:
                await self._send(mail)
            if len(due) < self._batch:
                return

    async def _send(self, mail: OutgoingMail) -> None:
        error = None
        try:
            body = mail.body
            if mail.kind == "invitation":
                partner = self._directory().get(mail.partner_id)
                body = await self._db.run(thd_invitation_body, mail, self._identity,
                                          partner.name if partner is not None else mail.partner_id, self._now())
            await self._relay.send(self._identity.sender, mail.recipients, body)
        except Exception as e:  # any failure is one failed attempt, recorded and retried
            error = str(e) or type(e).__name__
        attempt = mail.attempts + 1
        retry_at = self._retry_at(attempt) if error is not None else None
        if error is not None:
            self._log.warn("{kind} mail {id} to {partner} not sent (attempt {n}): {error}", kind=mail.kind, id=mail.id,
                           partner=mail.partner_id, n=attempt, error=error)
        await self._db.run(thd_record, mail, self._now(), error, retry_at)
