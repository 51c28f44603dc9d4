# -*- test-case-name: tests.gateway.test_app -*-
"""The recipients' portal listener (server-only TLS).

The JSON API lives under ``/api`` (:mod:`gateway.portal_api`, mounted by the app); the HTML portal
arrives with the portal work, and until then ``/`` is a page saying so.
"""

import html

from twisted.web import resource
from twisted.web.iweb import IRequest


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found\n"


class PortalHome(resource.Resource):
    """``GET /``: the portal's landing page; children (``/api``) are mounted on it."""

    def __init__(self, gateway_name: str):
        super().__init__()
        self._name = gateway_name

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        """``/`` is this page; anything not mounted is a plain 404."""
        return self if path == b"" and not request.postpath else _NotFound()

    def render_GET(self, request: IRequest) -> bytes:
        """A minimal page naming the gateway."""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'")
        name = html.escape(self._name)
        return (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>{name}</title>"
            f"<h1>{name}</h1><p>The recipient portal is not open yet.</p></html>\n"
        ).encode()
