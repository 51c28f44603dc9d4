"""Tests for :mod:`gateway.router`: who receives a document, and through which targets.

The router is a pure function of a directory snapshot, so every case builds its own
:class:`~partners.directory.PartnerDirectory` from plain :class:`~partners.directory.Partner` and
:class:`~partners.routes.Route` values: no database, no reactor.
"""

import random

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.router import (
    GW_ROUTE_INACTIVE,
    GW_ROUTE_SENDER,
    GW_ROUTE_UNKNOWN,
    RouteDecision,
    RouteRefused,
    route,
    targets_for,
)
from partners.directory import Partner, PartnerDirectory
from partners.routes import CHANNELS, KINDS, Route, first_match

ACME = Partner("acme", "ACME", True, participant_ids=("0088:acme",))
GLOBEX = Partner("globex", "Globex", True, participant_ids=("0088:globex",))
INITECH = Partner("initech", "Initech", True, deliver="as2", as2_url="https://as2.initech.example/",
                  as2_ids=("INITECH",), participant_ids=("9930:initech",))
HOOLI = Partner("hooli", "Hooli", False, participant_ids=("0088:hooli",))  # disabled
PARTNERS = (ACME, GLOBEX, INITECH, HOOLI)


def directory(*rules: Route, partners=PARTNERS) -> PartnerDirectory:
    """A snapshot with acme, globex, initech (push over AS2), the disabled hooli, and ``rules``."""
    return PartnerDirectory.build(1, partners, rules)


def decide(snapshot: PartnerDirectory, *, sender: Partner = ACME, kind: str = "ubl-invoice", channel: str = "as2",
           receiver: str | None = None, supplier: str | None = None,
           door_recipient: str | None = None) -> RouteDecision:
    """Route one document from ``sender`` (acme by default) with the given evidence."""
    return route(snapshot, sender, kind=kind, channel=channel, receiver=receiver, supplier=supplier,
                 door_recipient=door_recipient)


def refusal(snapshot: PartnerDirectory, **evidence) -> RouteRefused:
    """The refusal routing raises for ``evidence``."""
    with pytest.raises(RouteRefused) as caught:
        decide(snapshot, **evidence)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# Order of evidence
# ---------------------------------------------------------------------------------------------------------------

def test_without_rules_the_receiver_identifiers_owner_receives():
    """No rule: the partner owning the receiver identifier is the recipient, through its mailbox."""
    decision = decide(directory(), receiver="0088:globex")
    assert decision == RouteDecision(GLOBEX, (("globex", "mailbox"),), "receiver")


def test_receiver_lookup_ignores_case():
    """Participant IDs compare case-insensitively, as in Peppol."""
    assert decide(directory(), receiver="0088:GLOBEX").recipient == GLOBEX


def test_a_matching_rule_beats_the_receiver_identifier():
    """A rule decides before the owner of the receiver identifier is even considered."""
    rule = Route(id=7, position=1, recipient_id="initech", sender_id="acme")
    decision = decide(directory(rule), receiver="0088:globex")
    assert (decision.recipient, decision.route) == (INITECH, "rule:7")


def test_rules_are_tried_in_position_order_and_the_first_match_wins():
    """The lowest position wins even when it was given last and a later rule is more specific."""
    specific = Route(id=1, position=2, recipient_id="globex", sender_id="acme", kind="ubl-invoice", channel="as2",
                     receiver="0088:globex")
    general = Route(id=2, position=1, recipient_id="initech", kind="ubl-invoice")
    assert decide(directory(specific, general), receiver="0088:globex").route == "rule:2"


def test_a_rule_whose_criteria_do_not_all_hold_is_skipped():
    """Each criterion a rule sets must hold; a single mismatch passes the document to the next rule."""
    rules = (
        Route(id=1, position=1, recipient_id="hooli", sender_id="globex"),
        Route(id=2, position=2, recipient_id="hooli", kind="cii-invoice"),
        Route(id=3, position=3, recipient_id="hooli", channel="sftp"),
        Route(id=4, position=4, recipient_id="hooli", receiver="0088:other"),
        Route(id=5, position=5, recipient_id="initech", sender_id="acme", kind="ubl-invoice", channel="as2",
              receiver="0088:globex"),
    )
    assert decide(directory(*rules), receiver="0088:globex").route == "rule:5"


def test_a_rule_without_criteria_matches_anything():
    """None criteria are wildcards: a catch-all rule takes even a document with no receiver at all."""
    catch_all = Route(id=9, position=1, recipient_id="globex")
    assert decide(directory(catch_all), sender=INITECH, kind="opaque", channel="sftp").route == "rule:9"


def test_a_rule_on_the_receiver_identifier_matches_a_document_naming_nobody_registered():
    """A rule can route an identifier no partner owns (say, a buyer's old identifier)."""
    rule = Route(id=3, position=1, recipient_id="globex", receiver="0088:old-globex")
    assert decide(directory(rule), receiver="0088:old-globex").recipient == GLOBEX


def test_the_door_recipient_is_the_last_resort():
    """No rule and no known receiver identifier: the partner the door names receives it."""
    snapshot = directory()
    assert decide(snapshot, door_recipient="globex").route == "door"
    assert decide(snapshot, receiver="0088:nobody", door_recipient="globex").recipient == GLOBEX


def test_the_receiver_identifier_beats_the_door_recipient():
    """An SFTP upload into globex's inbox that names initech as the buyer goes to initech."""
    decision = decide(directory(), channel="sftp", receiver="9930:initech", door_recipient="globex")
    assert (decision.recipient, decision.route) == (INITECH, "receiver")


# ---------------------------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------------------------

def test_nothing_to_go_on_is_route_unknown():
    """No rule, no receiver identifier, no door recipient: GW-ROUTE-UNKNOWN, pointing at the customer."""
    refused = refusal(directory())
    assert (refused.finding.code, refused.finding.field) == (GW_ROUTE_UNKNOWN, "customer")
    assert "no receiver identifier" in refused.finding.message
    assert "EndpointID" in refused.finding.message and "URIID" in refused.finding.message


def test_an_unregistered_receiver_identifier_is_route_unknown_and_named():
    """The refusal names the identifier the document carried, so the sender can correct it."""
    refused = refusal(directory(), receiver="0088:nobody")
    assert refused.finding.code == GW_ROUTE_UNKNOWN
    assert "0088:nobody" in refused.finding.message


def test_the_unknown_receiver_message_says_it_cannot_be_delivered():
    """The sentence for an unregistered receiver identifier says that nobody can be delivered to."""
    message = refusal(directory(), receiver="0088:nobody").finding.message
    assert "has receiver identifier 0088:nobody that we can deliver to" not in message


def test_a_disabled_door_recipient_is_route_inactive():
    """The door names a disabled partner: GW-ROUTE-INACTIVE, naming the partner."""
    refused = refusal(directory(), door_recipient="hooli")
    assert (refused.finding.code, refused.finding.field) == (GW_ROUTE_INACTIVE, "customer")
    assert "hooli" in refused.finding.message


def test_a_rule_pointing_at_a_disabled_partner_is_route_inactive():
    """A matching rule decides, even for a disabled recipient: refused, not passed on to the next evidence."""
    rule = Route(id=1, position=1, recipient_id="hooli", sender_id="acme")
    assert refusal(directory(rule), receiver="0088:globex").finding.code == GW_ROUTE_INACTIVE


def test_a_rule_pointing_at_a_partner_missing_from_the_snapshot_is_route_inactive():
    """A rule whose recipient is not in the snapshot (deleted meanwhile) refuses instead of crashing."""
    rule = Route(id=1, position=1, recipient_id="gone")
    assert refusal(directory(rule)).finding.code == GW_ROUTE_INACTIVE


def test_a_receiver_identifier_of_a_disabled_partner_is_route_inactive():
    """A document addressed to a disabled partner is refused as inactive, not routed to the door's recipient."""
    assert refusal(directory(), receiver="0088:hooli", door_recipient="globex").finding.code == GW_ROUTE_INACTIVE


def test_a_supplier_identifier_of_another_partner_is_refused():
    """acme may not send in globex's name: GW-ROUTE-SENDER, pointing at the supplier, naming the identifier."""
    refused = refusal(directory(), supplier="0088:globex", receiver="9930:initech")
    assert (refused.finding.code, refused.finding.field) == (GW_ROUTE_SENDER, "supplier")
    assert "0088:globex" in refused.finding.message


def test_the_supplier_check_comes_before_any_rule():
    """Even a catch-all rule does not let a sender impersonate another partner."""
    catch_all = Route(id=1, position=1, recipient_id="globex")
    assert refusal(directory(catch_all), supplier="9930:INITECH").finding.code == GW_ROUTE_SENDER


def test_own_or_unknown_supplier_identifiers_are_fine():
    """The sender's own identifier, an unregistered one, or none at all do not stop routing."""
    snapshot = directory()
    for supplier in ("0088:acme", "0088:ACME", "0088:unregistered", None):
        assert decide(snapshot, supplier=supplier, receiver="0088:globex").recipient == GLOBEX


# ---------------------------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------------------------

def test_a_mailbox_partner_gets_one_mailbox_delivery():
    """Mailbox partners collect through the portal or SFTP: one delivery, to the mailbox."""
    assert targets_for(GLOBEX) == (("globex", "mailbox"),)


@pytest.mark.parametrize("push", ["as2", "sftp", "email"])
def test_a_push_partner_gets_its_mailbox_and_a_push_delivery(push):
    """The mailbox always comes first (history in the portal), then the push target the partner chose."""
    partner = Partner("p", "P", True, deliver=push)
    assert targets_for(partner) == (("p", "mailbox"), ("p", push))


def test_route_plans_the_recipients_targets():
    """The decision carries targets_for(recipient), whatever evidence decided."""
    rule = Route(id=1, position=1, recipient_id="initech", kind="cii-invoice")
    snapshot = directory(rule)
    by_rule = decide(snapshot, kind="cii-invoice")
    by_receiver = decide(snapshot, receiver="9930:initech")
    by_door = decide(snapshot, door_recipient="initech")
    assert by_rule.targets == by_receiver.targets == by_door.targets == (("initech", "mailbox"), ("initech", "as2"))


# ---------------------------------------------------------------------------------------------------------------
# first_match against an oracle
# ---------------------------------------------------------------------------------------------------------------

SENDERS = ("acme", "globex", "initech")
RECEIVERS = ("0088:acme", "0088:globex", "9930:initech")


def maybe(values):
    """A criterion: one of ``values`` or None (match anything)."""
    return st.one_of(st.none(), st.sampled_from(values))


@st.composite
def rule_lists(draw):
    """Rules with unique IDs and positions, criteria drawn from small sets so that matches are common."""
    positions = draw(st.lists(st.integers(min_value=1, max_value=50), unique=True, max_size=12))
    return [Route(id=100 + i, position=position, recipient_id=draw(st.sampled_from(("acme", "globex", "initech"))),
                  sender_id=draw(maybe(SENDERS)), receiver=draw(maybe(RECEIVERS)), kind=draw(maybe(KINDS)),
                  channel=draw(maybe(CHANNELS)))
            for i, position in enumerate(positions)]


def oracle(rules, sender_id, receiver, kind, channel):
    """The naive reading of the spec: sort by position, take the first rule whose criteria all hold."""
    for rule in sorted(rules, key=lambda r: r.position):
        wanted = {"sender_id": sender_id, "receiver": receiver, "kind": kind, "channel": channel}
        if all(getattr(rule, name) in (None, value) for name, value in wanted.items()):
            return rule
    return None


messages_ = st.fixed_dictionaries({
    "sender_id": st.sampled_from(SENDERS), "receiver": st.one_of(st.none(), st.sampled_from(RECEIVERS)),
    "kind": st.sampled_from(KINDS), "channel": st.sampled_from(CHANNELS)})


@given(rules=rule_lists(), message=messages_, seed=st.integers(min_value=0, max_value=2**32))
def test_first_match_is_the_first_matching_rule_by_position(rules, message, seed):
    """Whatever order the rules come in, first_match agrees with the oracle."""
    shuffled = list(rules)
    random.Random(seed).shuffle(shuffled)
    assert first_match(shuffled, **message) == oracle(rules, **message)


@given(rules=rule_lists(), message=messages_)
def test_route_follows_the_first_matching_rule_or_the_receiver(rules, message):
    """route() decides by the oracle's rule when there is one, else by the receiver identifier's owner."""
    snapshot = PartnerDirectory.build(1, (ACME, GLOBEX, INITECH), rules)
    sender = snapshot.get(message["sender_id"])
    expected = oracle(rules, **message)
    try:
        decision = route(snapshot, sender, kind=message["kind"], channel=message["channel"],
                         receiver=message["receiver"], supplier=None, door_recipient=None)
    except RouteRefused as refused:
        assert expected is None and message["receiver"] is None
        assert refused.finding.code == GW_ROUTE_UNKNOWN
        return
    if expected is not None:
        assert (decision.route, decision.recipient.id) == (f"rule:{expected.id}", expected.recipient_id)
    else:
        assert decision.route == "receiver"
        assert message["receiver"] in decision.recipient.participant_ids


def test_a_push_target_without_a_client_is_not_planned():
    """A partner that asked for AS2 push gets only its mailbox delivery while no AS2 client exists."""
    pusher = attrs.evolve(GLOBEX, deliver="as2")
    assert targets_for(pusher, frozenset()) == (("globex", "mailbox"),)
    assert targets_for(pusher, frozenset({"as2"})) == (("globex", "mailbox"), ("globex", "as2"))
