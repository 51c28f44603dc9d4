# -*- test-case-name: tests.protocols.test_partner_auth -*-
"""Who is calling on the mutual-TLS listener: client certificate and source address, checked together.

The TLS handshake already refused certificates no active partner registered. Each *request* is
checked again against the current directory — the partner may have been disabled, or the certificate
removed, while a keep-alive connection stayed open — and the source address must be in *that*
partner's own allowlist, not merely in someone's.
"""

from datetime import datetime
from typing import Callable

from twisted.web.iweb import IRequest

from partners.directory import Partner, PartnerDirectory


class PartnerAuthError(Exception):
    """The request cannot be attributed to an allowed partner; ``reason`` is safe to send back."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def authenticate(request: IRequest, directory: PartnerDirectory, now: datetime) -> Partner:
    """Return the partner behind ``request`` or raise :class:`PartnerAuthError`."""
    transport = request.channel.transport if request.channel else None
    peer = transport.getPeerCertificate() if hasattr(transport, "getPeerCertificate") else None
    if peer is None:
        raise PartnerAuthError("a TLS client certificate is required")
    partner = directory.by_certificate("tls", peer.to_cryptography(), now)
    if partner is None:
        raise PartnerAuthError("the client certificate is not registered to an active partner")
    host = request.getClientAddress().host
    if not partner.allows(host):
        raise PartnerAuthError(f"source address {host} is not in the allowlist of partner {partner.id}")
    return partner


DirectorySource = Callable[[], PartnerDirectory]
Now = Callable[[], datetime]
