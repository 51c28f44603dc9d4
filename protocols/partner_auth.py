# -*- test-case-name: tests.protocols.test_partner_auth -*-
"""Who is calling on the mutual-TLS listener: client certificate and source address, checked together.

The TLS handshake already refused certificates no active partner registered. Each *request* is
checked again against the current directory — the partner may have been disabled, or the certificate
removed, while a keep-alive connection stayed open — and the source address must be in *that*
partner's own allowlist, not merely in someone's.
"""

from datetime import datetime
from typing import Callable

from twisted.logger import Logger
from twisted.web import resource
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


class PartnerResource(resource.Resource):
    """A leaf resource only partners reach: authenticate every request, then ``handle_<METHOD>(request, partner)``.

    Subclasses define the handlers and may override :meth:`answer` to change how refusals look.
    """

    isLeaf = True
    door = "mtls"
    _log = Logger()

    def __init__(self, directory: DirectorySource, now: Now):
        super().__init__()
        self._directory = directory
        self._now = now

    def render(self, request: IRequest):
        """403 with the reason, or 405 naming the allowed methods, or the handler's answer."""
        try:
            partner = authenticate(request, self._directory(), self._now())
        except PartnerAuthError as e:
            self._log.info("{door}: refused request: {reason}", door=self.door, reason=e.reason)
            return self.answer(request, 403, "forbidden", f"Forbidden: {e.reason}")
        handler = getattr(self, f"handle_{request.method.decode('ascii', 'replace')}", None)
        if handler is None:
            allowed = sorted(m.removeprefix("handle_") for m in dir(self) if m.startswith("handle_"))
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return self.answer(request, 405, "method_not_allowed", f"Use {' or '.join(allowed)}.")
        return handler(request, partner)

    def finish(self, request: IRequest, body: bytes) -> None:
        """Send ``body`` and finish a deferred answer, unless the client has gone."""
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()

    def answer(self, request: IRequest, code: int, error_code: str, text: str) -> bytes:
        """A short ``text/plain`` answer."""
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (text + "\n").encode("utf-8")
