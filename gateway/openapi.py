# -*- test-case-name: tests.gateway.test_portal_api -*-
"""The portal API's contract: its limits, and the OpenAPI 3.1 document served at ``/api/v1/openapi.json``.

Written by hand next to the code rather than generated from it, so the contract changes only when
someone means to change it; the tests check that every path here is served and nothing else is.
"""

from typing import Any

from partners.routes import CHANNELS
from spool.schema import MAILBOX_STATES

#: Mailbox item states a listing can be filtered by.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

_TIME = {"type": "string", "format": "date-time"}
_OPTIONAL_TIME = {"type": ["string", "null"], "format": "date-time"}
_OPTIONAL_TEXT = {"type": ["string", "null"]}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    }},
}

_INVOICE = {
    "type": "object",
    "description": "A document in the caller's mailbox: what was received, and what the caller did with it.",
    "required": ["id", "received_at", "sender_id", "recipient_id", "size", "sha256", "kind", "state",
                 "delivered_at", "downloaded_at", "acknowledged_at"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "Postroom message ID; sorts by time."},
        "received_at": _TIME,
        "sender_id": {"type": "string", "description": "The partner that sent it."},
        "recipient_id": {"type": "string"},
        "channel": {"type": "string", "enum": list(CHANNELS)},
        "external_id": {**_OPTIONAL_TEXT, "description": "The sender's message ID or idempotency key."},
        "filename": _OPTIONAL_TEXT,
        "content_type": _OPTIONAL_TEXT,
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the content."},
        "kind": {"type": "string", "description": "e.g. ubl-invoice, ubl-creditnote, cii-invoice, opaque."},
        "signed": {"type": "boolean", "description": "It carried an XML-DSig that verified."},
        "number": _OPTIONAL_TEXT,
        "issue_date": _OPTIONAL_TEXT,
        "type_code": _OPTIONAL_TEXT,
        "currency": _OPTIONAL_TEXT,
        "amount": _OPTIONAL_TEXT,
        "supplier_id": _OPTIONAL_TEXT,
        "customer_id": _OPTIONAL_TEXT,
        "supplier_name": _OPTIONAL_TEXT,
        "customer_name": _OPTIONAL_TEXT,
        "state": {"type": "string", "enum": list(MAILBOX_STATES)},
        "delivered_at": _TIME,
        "downloaded_at": _OPTIONAL_TIME,
        "acknowledged_at": _OPTIONAL_TIME,
    },
}

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
       "description": "The invoice's ID; IDs outside the caller's mailbox answer 404."}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    """The shared error responses for ``statuses``, and a default for the rest (405, 500)."""
    return {s: {"$ref": f"#/components/responses/E{s}"} for s in statuses} | {
        "default": {"$ref": "#/components/responses/Error"}}


DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Postroom portal API",
        "version": "1",
        "description": "A partner's mailbox: list the invoices routed to it, fetch their exact bytes, "
                       "acknowledge them. Downloading and acknowledging each send the original sender a "
                       "signed return receipt, once. Every response carries Cache-Control: no-store.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "paths": {
        "/invoices": {"get": {
            "operationId": "listInvoices",
            "summary": "The caller's mailbox, newest first, one page at a time.",
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                                            "default": DEFAULT_LIMIT}},
                {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                 "description": "The previous page's `next`: continue after that invoice."},
                {"name": "state", "in": "query", "schema": {"type": "string", "enum": list(MAILBOX_STATES)}},
                {"name": "since", "in": "query", "schema": {"type": "string"},
                 "description": "Only invoices received at or after this ISO 8601 date or time (UTC if no offset)."},
            ],
            "responses": {"200": _json("One page.", {
                "type": "object",
                "required": ["items", "next"],
                "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Invoice"}},
                               "next": {"type": ["string", "null"],
                                        "description": "Cursor of the next page; null on the last one."}},
            })} | _errors("400", "401"),
        }},
        "/invoices/{id}": {"get": {
            "operationId": "getInvoice",
            "summary": "One invoice's metadata.",
            "parameters": [_ID],
            "responses": {"200": _json("The invoice.", {"$ref": "#/components/schemas/Invoice"})}
            | _errors("401", "404"),
        }},
        "/invoices/{id}/content": {"get": {
            "operationId": "getInvoiceContent",
            "summary": "The exact bytes received; the first complete download is recorded and receipted.",
            "parameters": [_ID],
            "responses": {"200": {
                "description": "The document, with the sender's content type (application/xml if none) "
                               "and a Content-Disposition filename.",
                "content": {"*/*": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}},
            }} | _errors("401", "404"),
        }},
        "/invoices/{id}/ack": {"post": {
            "operationId": "acknowledgeInvoice",
            "summary": "Acknowledge an invoice; repeating it changes nothing.",
            "parameters": [_ID],
            "responses": {"200": _json("The invoice, acknowledged.", {"$ref": "#/components/schemas/Invoice"})}
            | _errors("401", "404"),
        }},
        "/openapi.json": {"get": {
            "operationId": "getOpenAPI",
            "summary": "This document.",
            "security": [],
            "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
        }},
    },
    "components": {
        "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from `postroom token create --partner ID`: prt_<prefix>_<secret>.",
        }},
        "schemas": {"Invoice": _INVOICE, "Error": _ERROR},
        "responses": {name: _json(text, {"$ref": "#/components/schemas/Error"}) for name, text in (
            ("E400", "A query parameter is malformed; the message names it."),
            ("E401", "No valid bearer token (see the WWW-Authenticate header)."),
            ("E404", "No such invoice in the caller's mailbox."),
            ("Error", "Any other error (405 wrong method, 500)."),
        )},
    },
}


_FINDING = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string", "description": "e.g. GW-SIG-INVALID, GW-DUP, GW-SIZE."},
                   "message": {"type": "string", "description": "What is wrong and how to fix it."},
                   "field": _OPTIONAL_TEXT},
}

_DECISION = {
    "type": "object",
    "description": "The intake's durable decision about one document.",
    "required": ["outcome", "message", "quarantine", "receipt", "disposition", "findings"],
    "properties": {
        "outcome": {"type": "string", "enum": ["accepted", "duplicate", "rejected"]},
        "message": {"type": ["string", "null"], "description": "Postroom message ID (accepted or duplicate)."},
        "quarantine": {"type": ["string", "null"], "description": "Quarantine ID (rejected)."},
        "receipt": {"type": "string", "description": "Path of the signed receipt (GET it)."},
        "disposition": {"type": "string", "description": "The receipt's RFC 8098 Disposition value."},
        "findings": {"type": "array", "items": {"$ref": "#/components/schemas/Finding"}},
    },
}

#: The partners' API on the mutual-TLS listener (next to ``/as2``), served at ``/api/v1/openapi.json`` there.
PARTNER_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Postroom partner upload API",
        "version": "1",
        "description": "For ERPs that cannot speak AS2 but can POST a file. The caller is the partner whose "
                       "registered TLS client certificate it presents, from an address in that partner's "
                       "allowlist; every answer comes after the document is durably stored (or refused).",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"mutualTLS": []}],
    "paths": {
        "/documents": {"post": {
            "operationId": "uploadDocument",
            "summary": "Hand in one document (typically an XML-DSig-signed UBL or CII invoice).",
            "parameters": [
                {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200},
                 "description": "Repeat a request with the same key and get the original answer (200)."},
                {"name": "Content-Disposition", "in": "header", "schema": {"type": "string"},
                 "description": "attachment; filename=… — kept as the document's file name."},
            ],
            "requestBody": {"required": True, "content": {"*/*": {"schema": {
                "type": "string", "contentMediaType": "application/octet-stream"}}}},
            "responses": {
                "201": {**_json("Accepted and durable; Location names the signed receipt.",
                                {"$ref": "#/components/schemas/Decision"}),
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                "200": _json("A repeat (same key, or the same document): the original decision.",
                             {"$ref": "#/components/schemas/Decision"}),
                "413": _json("Larger than the gateway accepts (GW-SIZE); nothing kept.",
                             {"$ref": "#/components/schemas/Decision"}),
                "422": _json("Refused with typed findings; the bytes are in quarantine and a signed negative "
                             "receipt was made.", {"$ref": "#/components/schemas/Decision"}),
                "503": _json("The gateway could not store it; nothing was accepted. Retry after Retry-After.",
                             {"$ref": "#/components/schemas/Error"}),
            } | _errors("400", "403"),
        }},
        "/receipts/{id}": {"get": {
            "operationId": "getReceipt",
            "summary": "A signed receipt (RFC 8098 MDN in S/MIME multipart/signed), exactly as stored.",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                            "description": "Receipt ID; another partner's receipt answers 404."}],
            "responses": {"200": {"description": "The receipt.", "content": {"multipart/signed": {
                "schema": {"type": "string"}}}}} | _errors("403", "404"),
        }},
        "/openapi.json": {"get": {
            "operationId": "getOpenAPI",
            "summary": "This document.",
            "responses": {"200": _json("OpenAPI 3.1.", {"type": "object"})},
        }},
    },
    "components": {
        "securitySchemes": {"mutualTLS": {
            "type": "mutualTLS", "description": "The partner's registered TLS client certificate."}},
        "schemas": {"Decision": _DECISION, "Finding": _FINDING, "Error": _ERROR},
        "responses": {name: _json(text, {"$ref": "#/components/schemas/Error"}) for name, text in (
            ("E400", "A header is malformed (e.g. Idempotency-Key); the message names it."),
            ("E403", "Not a registered partner from an allowed address; the message says which check failed."),
            ("E404", "No such receipt for the caller."),
            ("Error", "Any other error (405 wrong method, 500)."),
        )},
    },
}
