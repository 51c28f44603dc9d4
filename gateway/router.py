# -*- test-case-name: tests.gateway.test_router -*-
"""Who receives a document, and through which targets: a pure function of the directory snapshot.

Order of evidence, first that decides wins:

1. a routing rule (``postroom route add``) matching sender, receiver identifier, kind and door;
2. the partner that owns the document's receiver identifier (UBL ``cac:AccountingCustomerParty``
   ``cbc:EndpointID``, CII ``ram:BuyerTradeParty`` ``ram:URIID``);
3. the recipient the door names (SFTP ``/inbox/<partner>/``, mail to ``<partner>@host``).

A document whose supplier identifier belongs to a *different* partner than the authenticated sender
is refused: a partner may not send in another registered partner's name. The recipient always gets a
mailbox item (its history in the portal and SFTP ``/outbox/``); a partner that asked for push
deliveries gets a push delivery as well.
"""

from collections.abc import Collection

import attrs

from partners.directory import Partner, PartnerDirectory
from partners.routes import first_match
from protocols.findings import Finding

GW_ROUTE_UNKNOWN = "GW-ROUTE-UNKNOWN"  #: no rule, no registered receiver identifier, no recipient named by the door
GW_ROUTE_INACTIVE = "GW-ROUTE-INACTIVE"  #: the recipient exists but is disabled
GW_ROUTE_SENDER = "GW-ROUTE-SENDER"  #: the supplier identifier belongs to another partner


class RouteRefused(Exception):
    """The document cannot be routed; :attr:`finding` says why, for the negative receipt."""

    def __init__(self, finding: Finding):
        super().__init__(finding.message)
        self.finding = finding


@attrs.frozen
class RouteDecision:
    """The recipient, the deliveries to plan (``(recipient_id, target)``), and which evidence decided."""

    recipient: Partner
    targets: tuple[tuple[str, str], ...]
    route: str  #: ``rule:<id>``, ``receiver`` or ``door``


def _owner(directory: PartnerDirectory, participant: str | None) -> Partner | None:
    """Who registered the identifier, even if disabled: "disabled" must not read as "unknown"."""
    return directory.participant_owner(participant) if participant is not None else None


def targets_for(recipient: Partner, pushable: Collection[str] | None = None) -> tuple[tuple[str, str], ...]:
    """Mailbox always; the partner's push target too when it asked for push and a client for it exists.

    :param pushable: the push targets this gateway has clients for (``None``: assume all). A push
        that could never run would keep the message ``accepted`` for ever.
    """
    planned = [(recipient.id, "mailbox")]
    if recipient.deliver != "mailbox" and (pushable is None or recipient.deliver in pushable):
        planned.append((recipient.id, recipient.deliver))
    return tuple(planned)


def route(directory: PartnerDirectory, sender: Partner, *, kind: str, channel: str, receiver: str | None,
          supplier: str | None, door_recipient: str | None,
          pushable: Collection[str] | None = None) -> RouteDecision:
    """Decide the recipient of one document.

    :param receiver: the document's receiver participant ID (``scheme:value``, normalised), if any.
    :param supplier: the document's supplier participant ID, if any.
    :param door_recipient: a partner ID the door derived from its own addressing, if any.
    :param pushable: see :func:`targets_for`.
    :raises RouteRefused: ``GW-ROUTE-SENDER``, ``GW-ROUTE-UNKNOWN`` or ``GW-ROUTE-INACTIVE``.
    """
    claimed = _owner(directory, supplier)
    if claimed is not None and claimed.id != sender.id:
        raise RouteRefused(Finding(GW_ROUTE_SENDER, f"The supplier identifier {supplier} is registered to another "
                                   "partner; you may only send invoices under your own identifiers.", "supplier"))
    rule = first_match(directory.routes, sender_id=sender.id, receiver=receiver, kind=kind, channel=channel)
    if rule is not None:
        return _decided(directory.get(rule.recipient_id), rule.recipient_id, f"rule:{rule.id}", pushable)
    owner = _owner(directory, receiver)
    if owner is not None:
        return _decided(owner, owner.id, "receiver", pushable)
    if door_recipient is not None:
        return _decided(directory.get(door_recipient), door_recipient, "door", pushable)
    problem = (f"No partner here has the receiver identifier {receiver}." if receiver
               else "The document names no receiver identifier.")
    raise RouteRefused(Finding(GW_ROUTE_UNKNOWN, f"{problem} Put the recipient's registered participant ID in the "
                               "customer's EndpointID (UBL) or URIID (CII) with its schemeID.", "customer"))


def _decided(recipient: Partner | None, recipient_id: str, evidence: str,
             pushable: Collection[str] | None) -> RouteDecision:
    if recipient is None or not recipient.active:
        raise RouteRefused(Finding(GW_ROUTE_INACTIVE, f"The recipient {recipient_id} does not accept documents "
                                   "at the moment; contact the gateway operator.", "customer"))
    return RouteDecision(recipient, targets_for(recipient, pushable), evidence)

