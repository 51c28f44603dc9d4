# -*- test-case-name: tests.gateway.test_app -*-
"""The recipients' portal listener (server-only TLS).

The portal's API and HTML arrive with the portal work; this listener already has its final TLS and
allowlist wrapping, and answers ``/`` with a page saying so.
"""

import html

from twisted.web import resource
from twisted.web.iweb import IRequest


class PortalHome(resource.Resource):
    """``GET /``: the portal's landing page."""

    isLeaf = True

    def __init__(self, gateway_name: str):
        super().__init__()
        self._name = gateway_name

    def render_GET(self, request: IRequest) -> bytes:
        """A minimal page naming the gateway."""
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'")
        name = html.escape(self._name)
        return (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>{name}</title>"
            f"<h1>{name}</h1><p>The recipient portal is not open yet.</p></html>\n"
        ).encode()
