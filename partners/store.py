# -*- test-case-name: tests.partners.test_store -*-
"""Validated changes to the partner directory, one transaction each.

Every function takes an open SQLAlchemy connection inside a transaction and either makes the whole
change or raises a :class:`~partners.errors.PartnerError` (or a
:class:`~certs.errors.CertificateError`) before writing anything. Every change bumps
``directory_state.version`` so running daemons reload their snapshot.
"""

from datetime import datetime
from typing import Any, Iterable

import attrs
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from certs import x509 as certs_x509
from certs.ssh import SSHPublicKey, parse_public_key
from certs.ssh import normalize_fingerprint as normalize_ssh_fingerprint
from partners import identifiers as ids
from partners.errors import DuplicateError, InvalidValueError, NotFoundError, UnknownPartnerError
from partners.networks import IPNetwork
from partners.policy import Policy
from partners.schema import allowlist, certificates, directory_state, identifiers, partners, ssh_keys

CERT_USAGES = ("tls", "sign", "encrypt")
STATUSES = ("active", "disabled")
_IDENTIFIER_LABEL = {"as2": "AS2 ID", "participant": "participant ID", "email": "email address"}


@attrs.frozen
class NewPartner:
    """Everything ``postroom partner add`` can register in one go, already parsed."""

    id: str
    name: str
    as2_ids: tuple[str, ...] = ()
    participant_ids: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    certificates: tuple[tuple[str, certs_x509.Certificate], ...] = ()
    ssh_keys: tuple[SSHPublicKey, ...] = ()
    deliver: str = "mailbox"
    as2_url: str | None = None
    policy: Policy = attrs.field(factory=Policy)
    sftp_url: str | None = None  #: ``sftp://user@host[:port]/dir`` (checked and made canonical when stored)
    sftp_host_key: str | None = None  #: the OpenSSH host key line that server must present


def directory_version(conn: Connection) -> int:
    """The change counter a running daemon polls."""
    return conn.execute(select(directory_state.c.version).where(directory_state.c.id == 1)).scalar_one()


def bump_version(conn: Connection, now: datetime) -> None:
    """Count one directory change, in the caller's transaction, so running daemons reload their snapshot.

    Public for the parts of the directory whose changes live in their own module (routing rules).
    """
    conn.execute(
        update(directory_state)
        .where(directory_state.c.id == 1)
        .values(version=directory_state.c.version + 1, changed_at=now)
    )


def _touch(conn: Connection, partner_id: str, now: datetime) -> None:
    conn.execute(update(partners).where(partners.c.id == partner_id).values(updated_at=now))
    bump_version(conn, now)


def require_partner(conn: Connection, partner_id: str) -> None:
    """:raises UnknownPartnerError: no partner has this ID."""
    if conn.execute(select(partners.c.id).where(partners.c.id == partner_id)).first() is None:
        raise UnknownPartnerError(f"no partner with ID {partner_id!r}")


def _check_delivery(deliver: str, as2_url: str | None, as2_ids: Iterable[str], emails: Iterable[str],
                    sftp_url: str | None = None, sftp_host_key: str | None = None) -> None:
    ids.delivery_mode(deliver)
    if deliver == "sftp" and not sftp_url:
        raise InvalidValueError("--deliver sftp needs --sftp-url sftp://user@host:port/dir")
    if deliver == "sftp" and not sftp_host_key:
        raise InvalidValueError("--deliver sftp needs the server's pinned --sftp-host-key")
    if deliver == "as2" and not as2_url:
        raise InvalidValueError("--deliver as2 needs --as2-url https://…")
    if deliver == "as2" and not list(as2_ids):
        raise InvalidValueError("--deliver as2 needs the partner's --as2-id")
    if deliver == "email" and not list(emails):
        raise InvalidValueError("--deliver email needs at least one --email address")


def add_partner(conn: Connection, new: NewPartner, now: datetime) -> None:
    """Register a partner with its identifiers, allowlist, certificates and SSH keys."""
    ids.partner_id(new.id)
    name = ids.display_name(new.name)
    given = (
        ("AS2 ID", new.as2_ids),
        ("participant ID", [ids.participant_id(v) for v in new.participant_ids]),
        ("email address", [ids.email(v) for v in new.emails]),
        ("network", new.networks),
        ("SSH key", [k.fingerprint for k in new.ssh_keys]),
        ("", [f"{usage} certificate {certs_x509.fingerprint(c)}" for usage, c in new.certificates]),
    )
    for label, values in given:
        seen = set()
        for value in values:
            if value in seen:
                raise InvalidValueError(f"{label} {value} is given twice".lstrip())
            seen.add(value)
    if conn.execute(select(partners.c.id).where(partners.c.id == new.id)).first() is not None:
        raise DuplicateError(f"partner {new.id!r} already exists")
    if new.as2_url is not None:
        ids.https_url(new.as2_url)
    sftp_url = ids.sftp_url(new.sftp_url).url if new.sftp_url else None
    sftp_host_key = ids.sftp_host_key(new.sftp_host_key).openssh if new.sftp_host_key else None
    _check_delivery(new.deliver, new.as2_url, new.as2_ids, new.emails, sftp_url, sftp_host_key)
    conn.execute(
        insert(partners).values(
            id=new.id,
            name=name,
            status="active",
            deliver=new.deliver,
            as2_url=new.as2_url,
            sftp_url=sftp_url,
            sftp_host_key=sftp_host_key,
            policy=new.policy.to_json(),
            created_at=now,
            updated_at=now,
        )
    )
    for kind, values in (("as2", new.as2_ids), ("participant", new.participant_ids), ("email", new.emails)):
        for value in values:
            add_identifier(conn, new.id, kind, value, now)
    for network in new.networks:
        allow_ip(conn, new.id, network, now)
    for usage, cert in new.certificates:
        add_certificate(conn, new.id, usage, cert, now)
    for key in new.ssh_keys:
        add_ssh_key(conn, new.id, key, now)
    bump_version(conn, now)


def add_identifier(conn: Connection, partner_id: str, kind: str, value: str, now: datetime) -> str:
    """Register an AS2 ID, participant ID or email address; each names one partner only."""
    require_partner(conn, partner_id)
    if kind not in _IDENTIFIER_LABEL:
        raise InvalidValueError(f"identifier kind {kind!r} must be one of {', '.join(_IDENTIFIER_LABEL)}")
    normal = {"as2": ids.as2_id, "participant": ids.participant_id, "email": ids.email}[kind](value)
    owner = conn.execute(
        select(identifiers.c.partner_id).where(identifiers.c.kind == kind, identifiers.c.value == normal)
    ).scalar()
    if owner is not None:
        raise DuplicateError(f"{_IDENTIFIER_LABEL[kind]} {normal!r} is already registered to partner {owner!r}")
    conn.execute(insert(identifiers).values(partner_id=partner_id, kind=kind, value=normal))
    _touch(conn, partner_id, now)
    return normal


def set_status(conn: Connection, partner_id: str, status: str, now: datetime) -> None:
    """Enable (``active``) or disable a partner; a disabled partner is refused at every door."""
    require_partner(conn, partner_id)
    if status not in STATUSES:
        raise InvalidValueError(f"status {status!r} must be one of {', '.join(STATUSES)}")
    conn.execute(update(partners).where(partners.c.id == partner_id).values(status=status))
    _touch(conn, partner_id, now)


def set_policy(conn: Connection, partner_id: str, policy: Policy, now: datetime) -> None:
    """Replace a partner's policy."""
    require_partner(conn, partner_id)
    conn.execute(update(partners).where(partners.c.id == partner_id).values(policy=policy.to_json()))
    _touch(conn, partner_id, now)


def set_delivery(conn: Connection, partner_id: str, now: datetime, *, deliver: str | None = None,
                 as2_url: str | None = None, name: str | None = None, sftp_url: str | None = None,
                 sftp_host_key: str | None = None) -> dict[str, Any]:
    """Change a partner's display name, delivery mode, AS2 URL, SFTP URL or pinned SFTP host key (only what is
    given; an empty string removes a URL or key); what it is now."""
    require_partner(conn, partner_id)
    row = conn.execute(select(partners).where(partners.c.id == partner_id)).one()
    mine = {kind: list(conn.scalars(select(identifiers.c.value).where(
        identifiers.c.partner_id == partner_id, identifiers.c.kind == kind))) for kind in ("as2", "email")}
    new = {"name": ids.display_name(name) if name is not None else row.name,
           "deliver": deliver if deliver is not None else row.deliver,
           "as2_url": ids.https_url(as2_url) if as2_url else (None if as2_url == "" else row.as2_url),
           "sftp_url": ids.sftp_url(sftp_url).url if sftp_url else (None if sftp_url == "" else row.sftp_url),
           "sftp_host_key": (ids.sftp_host_key(sftp_host_key).openssh if sftp_host_key
                             else (None if sftp_host_key == "" else row.sftp_host_key))}
    _check_delivery(new["deliver"], new["as2_url"], mine["as2"], mine["email"], new["sftp_url"], new["sftp_host_key"])
    conn.execute(update(partners).where(partners.c.id == partner_id).values(**new))
    _touch(conn, partner_id, now)
    return new


def set_as2_options(conn: Connection, partner_id: str, options: dict[str, Any], now: datetime) -> None:
    """Replace how messages to a partner are wrapped (checked by the caller, which knows the algorithms)."""
    require_partner(conn, partner_id)
    conn.execute(update(partners).where(partners.c.id == partner_id).values(as2_options=options or None))
    _touch(conn, partner_id, now)


def get_as2_options(conn: Connection, partner_id: str) -> dict[str, Any]:
    """The stored AS2 sending options (only what was set; the rest are defaults)."""
    require_partner(conn, partner_id)
    return dict(conn.execute(select(partners.c.as2_options).where(partners.c.id == partner_id)).scalar_one() or {})


def get_policy(conn: Connection, partner_id: str) -> Policy:
    """A partner's current policy."""
    require_partner(conn, partner_id)
    return Policy.from_json(conn.execute(select(partners.c.policy).where(partners.c.id == partner_id)).scalar_one())


def remove_partner(conn: Connection, partner_id: str, now: datetime) -> None:
    """Delete a partner and everything registered to it."""
    require_partner(conn, partner_id)
    for table in (identifiers, certificates, ssh_keys, allowlist):
        conn.execute(delete(table).where(table.c.partner_id == partner_id))
    conn.execute(delete(partners).where(partners.c.id == partner_id))
    bump_version(conn, now)


def allow_ip(conn: Connection, partner_id: str, network: IPNetwork, now: datetime) -> bool:
    """Add a network to a partner's allowlist; returns False when it was already there."""
    require_partner(conn, partner_id)
    exists = conn.execute(
        select(allowlist.c.id).where(allowlist.c.partner_id == partner_id, allowlist.c.network == str(network))
    ).first()
    if exists:
        return False
    conn.execute(insert(allowlist).values(partner_id=partner_id, network=str(network)))
    _touch(conn, partner_id, now)
    return True


def deny_ip(conn: Connection, partner_id: str, network: IPNetwork, now: datetime) -> None:
    """Remove a network from a partner's allowlist."""
    require_partner(conn, partner_id)
    result = conn.execute(
        delete(allowlist).where(allowlist.c.partner_id == partner_id, allowlist.c.network == str(network))
    )
    if result.rowcount == 0:
        raise NotFoundError(f"{network} is not in the allowlist of partner {partner_id!r}")
    _touch(conn, partner_id, now)


def add_certificate(conn: Connection, partner_id: str, usage: str, cert: certs_x509.Certificate,
                    now: datetime) -> str:
    """Register a certificate for ``usage``; a CA certificate makes every certificate it issues count.

    Expired certificates are refused; one not yet valid is accepted (a planned rollover).

    :returns: its fingerprint.
    """
    require_partner(conn, partner_id)
    if usage not in CERT_USAGES:
        raise InvalidValueError(f"usage {usage!r} must be one of {', '.join(CERT_USAGES)}")
    subject = cert.subject.rfc4514_string() or "certificate"
    if now > cert.not_valid_after_utc:
        raise InvalidValueError(
            f"certificate {subject} expired on {cert.not_valid_after_utc:%Y-%m-%d}; register a current one"
        )
    fp = certs_x509.fingerprint(cert)
    registered = conn.execute(
        select(certificates.c.partner_id, certificates.c.usage).where(certificates.c.fingerprint == fp)
    ).all()
    for owner, owner_usage in registered:
        # A certificate is one partner's identity, whatever the usage; the owner may reuse it.
        if owner != partner_id or owner_usage == usage:
            raise DuplicateError(f"{owner_usage} certificate {fp} is already registered to partner {owner!r}")
    facts = certs_x509.describe(cert)
    conn.execute(
        insert(certificates).values(
            partner_id=partner_id,
            usage=usage,
            is_ca=facts["ca"],
            fingerprint=fp,
            subject=facts["subject"],
            issuer=facts["issuer"],
            serial=facts["serial"],
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            pem=certs_x509.to_pem(cert).decode("ascii"),
            created_at=now,
        )
    )
    _touch(conn, partner_id, now)
    return fp


def remove_certificate(conn: Connection, partner_id: str, fingerprint: str, now: datetime) -> None:
    """Unregister a certificate (every usage it was registered for) by fingerprint."""
    require_partner(conn, partner_id)
    fp = certs_x509.normalize_fingerprint(fingerprint)
    result = conn.execute(
        delete(certificates).where(certificates.c.partner_id == partner_id, certificates.c.fingerprint == fp)
    )
    if result.rowcount == 0:
        raise NotFoundError(f"no certificate {fp} is registered to partner {partner_id!r}")
    _touch(conn, partner_id, now)


def add_ssh_key(conn: Connection, partner_id: str, key: SSHPublicKey, now: datetime, *, ca: bool = False) -> str:
    """Register an SSH public key for SFTP logins (``ca``: a CA whose user certificates for the partner's ID
    log in); returns its fingerprint."""
    require_partner(conn, partner_id)
    owner = conn.execute(select(ssh_keys.c.partner_id).where(ssh_keys.c.fingerprint == key.fingerprint)).scalar()
    if owner is not None:
        raise DuplicateError(f"SSH key {key.fingerprint} is already registered to partner {owner!r}")
    conn.execute(
        insert(ssh_keys).values(
            partner_id=partner_id,
            fingerprint=key.fingerprint,
            key_type=key.key_type,
            public_key=key.openssh,
            comment=key.comment[:200],
            created_at=now,
            is_ca=ca,
        )
    )
    _touch(conn, partner_id, now)
    return key.fingerprint


def remove_ssh_key(conn: Connection, partner_id: str, fingerprint: str, now: datetime) -> None:
    """Unregister an SSH key by its ``SHA256:`` fingerprint."""
    require_partner(conn, partner_id)
    fp = normalize_ssh_fingerprint(fingerprint)
    result = conn.execute(delete(ssh_keys).where(ssh_keys.c.partner_id == partner_id, ssh_keys.c.fingerprint == fp))
    if result.rowcount == 0:
        raise NotFoundError(f"no SSH key {fp} is registered to partner {partner_id!r}")
    _touch(conn, partner_id, now)


# -- reading, for the CLI ----------------------------------------------------------------------


def _certificate_row(row) -> dict:
    return {
        "id": row.fingerprint,
        "fingerprint": row.fingerprint,
        "usage": row.usage,
        "ca": row.is_ca,
        "subject": row.subject,
        "issuer": row.issuer,
        "serial": row.serial,
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
    }


def list_certificates(conn: Connection, partner_id: str) -> list[dict]:
    """A partner's certificates, JSON-ready, ordered by usage then expiry."""
    require_partner(conn, partner_id)
    rows = conn.execute(
        select(certificates)
        .where(certificates.c.partner_id == partner_id)
        .order_by(certificates.c.usage, certificates.c.not_after)
    )
    return [_certificate_row(r) for r in rows]


def list_partners(conn: Connection) -> list[dict]:
    """Every partner with its identifiers and allowlist, JSON-ready, ordered by ID."""
    idents: dict[str, dict[str, list[str]]] = {}
    for row in conn.execute(select(identifiers).order_by(identifiers.c.id)):
        idents.setdefault(row.partner_id, {}).setdefault(row.kind, []).append(row.value)
    nets: dict[str, list[str]] = {}
    for row in conn.execute(select(allowlist).order_by(allowlist.c.id)):
        nets.setdefault(row.partner_id, []).append(row.network)
    counts = dict(
        conn.execute(select(certificates.c.partner_id, func.count()).group_by(certificates.c.partner_id)).all()
    )
    keys = dict(conn.execute(select(ssh_keys.c.partner_id, func.count()).group_by(ssh_keys.c.partner_id)).all())
    result = []
    for row in conn.execute(select(partners).order_by(partners.c.id)):
        mine = idents.get(row.id, {})
        result.append(
            {
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "deliver": row.deliver,
                "as2_ids": mine.get("as2", []),
                "participant_ids": mine.get("participant", []),
                "emails": mine.get("email", []),
                "allow_ips": nets.get(row.id, []),
                "certificates": counts.get(row.id, 0),
                "ssh_keys": keys.get(row.id, 0),
            }
        )
    return result


def show_partner(conn: Connection, partner_id: str) -> dict:
    """One partner in full: identifiers, allowlist, certificates, SSH keys, delivery and policy."""
    require_partner(conn, partner_id)
    summary = next(p for p in list_partners(conn) if p["id"] == partner_id)
    row = conn.execute(select(partners).where(partners.c.id == partner_id)).one()
    keys = conn.execute(select(ssh_keys).where(ssh_keys.c.partner_id == partner_id).order_by(ssh_keys.c.id))
    return summary | {
        "as2_url": row.as2_url,
        "sftp_url": row.sftp_url,
        "sftp_host_key": row.sftp_host_key,
        "sftp_host_key_fingerprint": parse_public_key(row.sftp_host_key).fingerprint if row.sftp_host_key else None,
        "policy": Policy.from_json(row.policy).to_json(),
        "certificates": list_certificates(conn, partner_id),
        "ssh_keys": [
            {"fingerprint": k.fingerprint, "type": k.key_type, "comment": k.comment, "ca": k.is_ca} for k in keys
        ],
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }
