# -*- test-case-name: tests.protocols.test_partner_auth -*-
"""The ``/as2`` resource on the mutual-TLS listener.

It authenticates the partner (client certificate ∧ that partner's allowlist) on every request.
Message handling — S/MIME, MDNs, the intake — arrives with the AS2 door; until then an authenticated
partner gets ``501 Not Implemented`` and nothing is stored.
"""

from twisted.web.iweb import IRequest

from protocols.partner_auth import PartnerResource


class AS2Resource(PartnerResource):
    """``/as2``: inbound AS2 messages."""

    door = "as2"

    def handle_POST(self, request: IRequest, partner) -> bytes:
        """501 until the AS2 door lands."""
        self._log.info("as2: request from partner {partner}", partner=partner.id)
        return self.answer(request, 501, "not_implemented",
                           f"AS2 message handling is not available yet (partner {partner.id} authenticated)")
