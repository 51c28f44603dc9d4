# -*- test-case-name: tests.e2e.test_upload -*-
"""HTTPS upload on the mutual-TLS listener (DESIGN §4 "Doors"): the simplest door to the intake.

``POST /api/v1/documents`` with the invoice as the body (optional ``Idempotency-Key``; a file name in
``Content-Disposition: attachment; filename=…``) answers only after the durable commit:

* ``201`` + JSON + ``Location: /api/v1/receipts/{id}`` — accepted;
* ``200`` — a repeat of an accepted message (same key or same invoice): the original receipt;
* ``422`` (``413`` for size) — refused, with the typed findings; the bytes are in quarantine;
* ``503`` + ``Retry-After`` — the gateway could not make the data durable; nothing was accepted.

``GET /api/v1/receipts/{id}`` returns a receipt's exact signed bytes, to the partner it was for only.
The partner is authenticated on every request (client certificate ∧ its own allowlist).
"""

import io
import json
import re
from collections.abc import Callable
from email.message import Message as _HeaderParser
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from protocols.envelope import GW_SIZE, Decision, Envelope, IntakeUnavailable
from protocols.partner_auth import DirectorySource, Now, PartnerResource
from spool.records import StoredReceipt

Accept = Callable[[Envelope, Any], Deferred]
ReceiptLookup = Callable[[str], Deferred]  #: fires with a StoredReceipt or None

_RECEIPT_ID = re.compile(r"[0-9a-f]{32}")
_MAX_KEY = 200


def json_response(request: IRequest, code: int, body: dict) -> bytes:
    """Set ``code`` and JSON headers; the encoded body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=2).encode("utf-8") + b"\n"


def error(request: IRequest, code: int, error_code: str, message: str) -> bytes:
    """A JSON error body ``{"error": {"code", "message"}}``."""
    return json_response(request, code, {"error": {"code": error_code, "message": message}})


def _header(request: IRequest, name: bytes) -> str | None:
    raw = request.getHeader(name)
    return raw.decode("latin-1") if raw is not None else None


def _filename(request: IRequest) -> str | None:
    raw = _header(request, b"content-disposition")
    if not raw:
        return None
    parser = _HeaderParser()
    parser["content-disposition"] = raw
    name = parser.get_filename()
    return name.replace("/", "_").replace("\\", "_")[:255] if name else None


def _decision_body(decision: Decision) -> dict:
    return {
        "outcome": decision.outcome,
        "message": decision.message_id,
        "quarantine": decision.quarantine_id,
        "receipt": f"/api/v1/receipts/{decision.receipt.id}",
        "disposition": decision.receipt.disposition,
        "findings": [{"code": f.code, "message": f.message, "field": f.field} for f in decision.findings],
    }


class _Authenticated(PartnerResource):
    door = "upload"

    def answer(self, request: IRequest, code: int, error_code: str, text: str) -> bytes:
        """Refusals as JSON, like every answer of this API."""
        return error(request, code, error_code, text)


class DocumentsResource(_Authenticated):
    """``/api/v1/documents``: hand a document to the intake."""

    def __init__(self, directory: DirectorySource, now: Now, accept: Accept):
        super().__init__(directory, now)
        self._accept = accept

    def handle_POST(self, request: IRequest, partner) -> int:
        """Build the envelope and wait for the intake's durable decision."""
        key = _header(request, b"idempotency-key")
        if key is not None and (not key.strip() or len(key) > _MAX_KEY or not key.isprintable()):
            return error(request, 400, "bad_idempotency_key",
                         f"Idempotency-Key must be 1-{_MAX_KEY} printable characters")
        envelope = Envelope(sender=partner, channel="https", external_id=key.strip() if key else None,
                            filename=_filename(request), content_type=_header(request, b"content-type"))
        request.content.seek(0)
        d = self._accept(envelope, request.content)
        d.addCallbacks(self._decided, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _decided(self, decision: Decision, request: IRequest) -> None:
        body = _decision_body(decision)
        if decision.outcome == "accepted":
            request.setHeader(b"location", body["receipt"].encode("ascii"))
            code = 201
        elif decision.outcome == "duplicate":
            code = 200
        else:
            code = 413 if any(f.code == GW_SIZE for f in decision.findings) else 422
        self.finish(request, json_response(request, code, body))

    def _failed(self, failure, request: IRequest) -> None:
        if failure.check(IntakeUnavailable):
            self._log.warn("upload: temporary failure: {error}", error=failure.getErrorMessage())
            request.setHeader(b"retry-after", b"30")
            body = error(request, 503, "temporarily_unavailable",
                         "The gateway cannot store documents right now; nothing was accepted. Retry later.")
        else:
            self._log.failure("upload: internal error", failure)
            body = error(request, 500, "internal_error", "Internal error; nothing was accepted. Retry later.")
        self.finish(request, body)


class ReceiptsResource(resource.Resource):
    """``/api/v1/receipts/{id}``."""

    def __init__(self, directory: DirectorySource, now: Now, lookup: ReceiptLookup):
        super().__init__()
        self._directory = directory
        self._now = now
        self._lookup = lookup

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        """One receipt per ID."""
        return _Receipt(self._directory, self._now, self._lookup, path.decode("ascii", "replace"))


class _Receipt(_Authenticated):
    def __init__(self, directory: DirectorySource, now: Now, lookup: ReceiptLookup, receipt_id: str):
        super().__init__(directory, now)
        self._lookup = lookup
        self._id = receipt_id

    def handle_GET(self, request: IRequest, partner):
        """The signed receipt, if it was for this partner; 404 otherwise (whether or not it exists)."""
        if not _RECEIPT_ID.fullmatch(self._id):
            return error(request, 404, "not_found", "no such receipt")
        d = self._lookup(self._id)
        d.addCallback(self._found, request, partner.id)
        d.addErrback(lambda f: (self._log.failure("receipt lookup failed", f),
                                self.finish(request, error(request, 503, "temporarily_unavailable", "retry later"))))
        return server.NOT_DONE_YET

    def _found(self, receipt: StoredReceipt | None, request: IRequest, partner_id: str) -> None:
        if receipt is None or receipt.partner_id != partner_id:
            self.finish(request, error(request, 404, "not_found", "no such receipt"))
            return
        request.setHeader(b"content-type", receipt.content_type.encode("ascii"))
        request.setHeader(b"mime-version", b"1.0")
        request.setHeader(b"cache-control", b"no-store")
        self.finish(request, receipt.body)


def bounded_request(max_body: int, scratch: Callable[[], IO[bytes]] | None = None) -> type[server.Request]:
    """A request class that refuses a body above ``max_body`` bytes while it is still arriving.

    twisted.web buffers a whole body (to a temporary file) before any resource sees it, so without
    this a partner with a valid certificate could fill the disk with one endless chunked request.
    A declared ``Content-Length`` over the cap is refused before a byte of the body is read; a
    chunked body as soon as it passes the cap. The answer is a bare ``413`` and the connection closes.
    Bodies that twisted.web would put in a temporary file (large or of unknown length) go to
    ``scratch()`` instead — the spool's own temporary area, on the disk sized for payloads.
    """

    class BoundedRequest(server.Request):
        _seen = 0
        _refused = False

        def gotLength(self, length: int | None) -> None:
            if length is not None and length > max_body:
                self._refuse()
                return
            super().gotLength(length)
            if scratch is not None and not isinstance(self.content, io.BytesIO):
                self.content.close()
                self.content = scratch()

        def handleContentChunk(self, data: bytes) -> None:
            if self._refused:
                return
            self._seen += len(data)
            if self._seen > max_body:
                self._refuse()
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if not self._refused:  # a refused body that arrived whole anyway is never processed
                super().requestReceived(command, path, version)

        def _refuse(self) -> None:
            self._refused = True
            old, self.content = getattr(self, "content", None), io.BytesIO()
            if old is not None:
                old.close()
            body = json.dumps({"error": {"code": GW_SIZE, "message": f"request bodies are limited to {max_body} "
                                         "bytes on this listener"}}).encode()
            self.channel.transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.channel.loseConnection()

    return BoundedRequest


class OpenAPIResource(_Authenticated):
    """``/api/v1/openapi.json``: this API's contract, for its partners."""

    def __init__(self, directory: DirectorySource, now: Now, document: dict):
        super().__init__(directory, now)
        self._body = json.dumps(document, indent=2).encode("utf-8") + b"\n"

    def handle_GET(self, request: IRequest, partner) -> bytes:
        """The document."""
        request.setHeader(b"content-type", b"application/json")
        return self._body


def api_root(directory: DirectorySource, now: Now, accept: Accept, lookup: ReceiptLookup,
             document: dict) -> resource.Resource:
    """The ``/api`` tree of the mutual-TLS listener: ``/api/v1/documents``, ``/api/v1/receipts/{id}`` and
    ``/api/v1/openapi.json`` (``document``)."""
    v1 = resource.Resource()
    v1.putChild(b"documents", DocumentsResource(directory, now, accept))
    v1.putChild(b"receipts", ReceiptsResource(directory, now, lookup))
    v1.putChild(b"openapi.json", OpenAPIResource(directory, now, document))
    api = resource.Resource()
    api.putChild(b"v1", v1)
    return api
