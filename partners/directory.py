# -*- test-case-name: tests.partners.test_directory -*-
"""An immutable snapshot of the partner directory that doors query synchronously.

Doors ask "who is this?" on every connection, often from the reactor thread, so the answer must not
touch the database. The daemon builds a :class:`PartnerDirectory` in a thread with
:func:`load_directory`, swaps it in whole, and rebuilds it when ``directory_state.version`` changes.

Credential lookups (AS2 ID, certificate, SSH key, email, participant ID, allowlists) only ever return
**active** partners: a disabled partner is as unknown as a stranger.
"""

from datetime import datetime
from typing import Any, Iterable, Mapping

import attrs
from sqlalchemy import select
from sqlalchemy.engine import Connection

from certs import x509 as certs_x509
from certs.ssh import parse_public_key
from partners.networks import NetworkSet, parse_network
from partners.policy import Policy
from partners.routes import Route, load_routes
from partners.schema import allowlist, certificates, directory_state, identifiers, partners, ssh_keys


@attrs.frozen
class Partner:
    """One partner as the doors see it."""

    id: str
    name: str
    active: bool
    deliver: str = "mailbox"
    as2_url: str | None = None
    policy: Policy = attrs.field(factory=Policy)
    as2_ids: tuple[str, ...] = ()
    participant_ids: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    networks: NetworkSet = attrs.field(factory=NetworkSet, eq=False)
    #: Certificates by usage (``tls``, ``sign``, ``encrypt``); CA certificates are kept apart.
    certificates: Mapping[str, tuple[certs_x509.Certificate, ...]] = attrs.field(factory=dict, eq=False)
    cas: Mapping[str, tuple[certs_x509.Certificate, ...]] = attrs.field(factory=dict, eq=False)
    ssh_keys: tuple[str, ...] = ()  #: OpenSSH public key lines
    ssh_cas: tuple[str, ...] = ()  #: OpenSSH public key lines of CAs whose user certificates for ``id`` log in
    #: how to wrap what we send the partner over AS2 (``protocols.as2.outbound.SendOptions`` fields)
    as2_options: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    sftp_url: str | None = None  #: where the ``sftp`` push uploads (``sftp://user@host:port/dir``)
    sftp_host_key: str | None = None  #: the only host key that server may present (OpenSSH line)

    def allows(self, host: str) -> bool:
        """True when ``host`` is in this partner's own allowlist."""
        return host in self.networks


def _pin_key(usage: str, cert: certs_x509.Certificate) -> tuple[str, str]:
    return usage, certs_x509.fingerprint(cert)


@attrs.frozen
class PartnerDirectory:
    """All partners at one ``version`` of the directory, indexed for every credential a door sees."""

    version: int
    partners: Mapping[str, Partner]
    _anyone: NetworkSet = attrs.field(eq=False)
    _identifiers: Mapping[tuple[str, str], Partner] = attrs.field(eq=False)
    _pins: Mapping[tuple[str, str], Partner] = attrs.field(eq=False)
    _ssh: Mapping[str, Partner] = attrs.field(eq=False)
    #: Routing rules in position order (:mod:`partners.routes`).
    routes: tuple[Route, ...] = ()
    #: Participant IDs of every partner, active or not: routing must tell "disabled" from "unknown".
    _participants: Mapping[str, Partner] = attrs.field(factory=dict, eq=False)

    @classmethod
    def build(cls, version: int, all_partners: Iterable[Partner], routes: Iterable[Route] = ()) -> "PartnerDirectory":
        """Index ``all_partners``; only active ones are reachable through credential lookups."""
        by_id = {p.id: p for p in all_partners}
        active = [p for p in by_id.values() if p.active]
        idents, pins, ssh = {}, {}, {}
        for p in active:
            for kind, values in (("as2", p.as2_ids), ("participant", p.participant_ids), ("email", p.emails)):
                idents.update({(kind, v): p for v in values})
            for usage, certs in p.certificates.items():
                pins.update({_pin_key(usage, c): p for c in certs})
            ssh.update({parse_public_key(line).fingerprint: p for line in p.ssh_keys})
        anyone = NetworkSet(n for p in active for n in p.networks.networks)
        participants = {v: p for p in by_id.values() for v in p.participant_ids}
        return cls(version, by_id, anyone, idents, pins, ssh, tuple(sorted(routes, key=lambda r: r.position)),
                   participants)

    @classmethod
    def empty(cls) -> "PartnerDirectory":
        """A directory that knows nobody: the state before the first load."""
        return cls.build(-1, [])

    def get(self, partner_id: str) -> Partner | None:
        """Any partner by ID, active or not (for messages and admin views)."""
        return self.partners.get(partner_id)

    def allows_anyone(self, host: str) -> bool:
        """True when some active partner allows connections from ``host``."""
        return host in self._anyone

    def by_as2_id(self, as2_id: str) -> Partner | None:
        """The active partner using ``as2_id`` (case-sensitive, RFC 4130)."""
        return self._identifiers.get(("as2", as2_id))

    def by_email(self, address: str) -> Partner | None:
        """The active partner that registered ``address`` (case-insensitive)."""
        return self._identifiers.get(("email", address.strip().lower()))

    def by_participant_id(self, scheme: str, value: str) -> Partner | None:
        """The active partner owning the routing identifier ``scheme:value`` (case-insensitive)."""
        return self._identifiers.get(("participant", f"{scheme.strip()}:{value.strip()}".lower()))

    def participant_owner(self, participant: str) -> Partner | None:
        """The partner, active *or disabled*, that registered ``scheme:value`` (as normalised by
        :func:`partners.identifiers.participant_id`); for routing decisions, never for authentication."""
        return self._participants.get(participant.strip().lower())

    def by_ssh_fingerprint(self, fingerprint: str) -> Partner | None:
        """The active partner that registered the SSH key with this ``SHA256:`` fingerprint."""
        return self._ssh.get(fingerprint)

    def by_certificate(self, usage: str, cert: certs_x509.Certificate, now: datetime) -> Partner | None:
        """The one active partner a certificate belongs to for ``usage``, or None.

        It belongs to a partner when it is within its validity window and either pinned (registered
        itself) or issued by a CA certificate that partner registered for ``usage``. A certificate
        that several partners' CAs would vouch for belongs to none: identity must be unambiguous.
        """
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return None
        pinned = self._pins.get(_pin_key(usage, cert))
        if pinned is not None:
            return pinned
        owners = {
            p.id: p
            for p in self.partners.values()
            if p.active
            for ca in p.cas.get(usage, ())
            if ca.subject == cert.issuer
            and ca.not_valid_before_utc <= now <= ca.not_valid_after_utc
            and certs_x509.issued_by(cert, ca)
        }
        return next(iter(owners.values())) if len(owners) == 1 else None


def load_directory(conn: Connection) -> PartnerDirectory:
    """Read the whole directory in one transaction (call it from a thread, never the reactor)."""
    version = conn.execute(select(directory_state.c.version).where(directory_state.c.id == 1)).scalar_one()
    idents: dict[str, dict[str, list[str]]] = {}
    for row in conn.execute(select(identifiers).order_by(identifiers.c.id)):
        idents.setdefault(row.partner_id, {}).setdefault(row.kind, []).append(row.value)
    nets: dict[str, list] = {}
    for row in conn.execute(select(allowlist)):
        nets.setdefault(row.partner_id, []).append(parse_network(row.network))
    leaves: dict[str, dict[str, list]] = {}
    cas: dict[str, dict[str, list]] = {}
    for row in conn.execute(select(certificates)):
        cert = certs_x509.load_certificate(row.pem.encode("ascii"), f"certificate {row.fingerprint}")
        target = cas if row.is_ca else leaves
        target.setdefault(row.partner_id, {}).setdefault(row.usage, []).append(cert)
    keys: dict[str, list[str]] = {}
    ssh_cas: dict[str, list[str]] = {}
    for row in conn.execute(select(ssh_keys).order_by(ssh_keys.c.id)):
        (ssh_cas if row.is_ca else keys).setdefault(row.partner_id, []).append(row.public_key)
    result = []
    for row in conn.execute(select(partners)):
        mine = idents.get(row.id, {})
        result.append(
            Partner(
                id=row.id,
                name=row.name,
                active=row.status == "active",
                deliver=row.deliver,
                as2_url=row.as2_url,
                policy=Policy.from_json(row.policy),
                as2_ids=tuple(mine.get("as2", ())),
                participant_ids=tuple(mine.get("participant", ())),
                emails=tuple(mine.get("email", ())),
                networks=NetworkSet(nets.get(row.id, ())),
                certificates={u: tuple(c) for u, c in leaves.get(row.id, {}).items()},
                cas={u: tuple(c) for u, c in cas.get(row.id, {}).items()},
                ssh_keys=tuple(keys.get(row.id, ())),
                ssh_cas=tuple(ssh_cas.get(row.id, ())),
                as2_options=dict(row.as2_options or {}),
                sftp_url=row.sftp_url,
                sftp_host_key=row.sftp_host_key,
            )
        )
    return PartnerDirectory.build(version, result, load_routes(conn))
