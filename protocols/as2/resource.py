# -*- test-case-name: tests.protocols.test_as2_resource -*-
"""The ``/as2`` resource on the mutual-TLS listener.

It authenticates the partner (client certificate ∧ that partner's allowlist) on every request.
Message handling — S/MIME, MDNs, the intake — arrives with the AS2 door; until then an authenticated
partner gets ``501 Not Implemented`` and nothing is stored.
"""

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.iweb import IRequest

from protocols.partner_auth import DirectorySource, Now, PartnerAuthError, authenticate


def plain(request: IRequest, code: int, text: str) -> bytes:
    """A short ``text/plain`` answer with ``code``."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return (text + "\n").encode("utf-8")


class AS2Resource(resource.Resource):
    """``/as2``: inbound AS2 messages."""

    isLeaf = True
    _log = Logger()

    def __init__(self, directory: DirectorySource, now: Now):
        super().__init__()
        self._directory = directory
        self._now = now

    def render(self, request: IRequest) -> bytes:
        """Authenticate, then refuse methods other than POST, then answer 501 for now."""
        try:
            partner = authenticate(request, self._directory(), self._now())
        except PartnerAuthError as e:
            self._log.info("as2: refused request: {reason}", reason=e.reason)
            return plain(request, 403, f"Forbidden: {e.reason}")
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return plain(request, 405, "AS2 messages are sent with POST")
        self._log.info("as2: request from partner {partner}", partner=partner.id)
        return plain(request, 501, f"AS2 message handling is not available yet (partner {partner.id} authenticated)")
