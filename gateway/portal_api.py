# -*- test-case-name: tests.gateway.test_portal_api -*-
"""The portal's JSON API (``/api/v1``): a partner's programs list, fetch and acknowledge their mailbox.

Every request but the OpenAPI document needs ``Authorization: Bearer TOKEN`` (:mod:`partners.tokens`),
and a token sees its own partner's mailbox only: an invoice anywhere else answers 404, exactly like one
that does not exist, so IDs never tell one partner about another's traffic.

The first complete download and the first acknowledgement are each recorded in one transaction with
an audit event and a signed return receipt for the sender (``spool.records.mark_item`` says which
time is the first); the receipt is signed in the database thread before that transaction opens, so
the write lock is never held for RSA work. Database and file work run in threads; the reactor only
parses, routes and writes.
"""

import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import quote

import attrs
from sqlalchemy.engine import Engine
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from gateway.database_service import DatabaseService
from gateway.openapi import DEFAULT_LIMIT, DOCUMENT, MAX_LIMIT
from gateway.receipts import ReceiptSigner
from partners import tokens
from partners.tokens import TokenInfo
from spool import audit, records
from spool.blobs import BlobNotFound, BlobStore
from spool.records import MailboxItem, Message, UnknownMessage
from spool.schema import MAILBOX_STATES

_log = Logger()

_MESSAGE_ID = re.compile(r"[0-9a-f]{32}")
_LIMIT = re.compile(r"[0-9]{1,4}")
_CHUNK = 256 * 1024  # one thread hop per chunk: large enough to be cheap, small enough to pace slow clients
#: Message fields that are the gateway's own business, not the recipient's.
_INTERNAL = ("state", "route", "updated_at")


class ApiError(Exception):
    """An answer other than success: its status, a stable code for programs and a sentence for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[bytes, bytes] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such invoice in your mailbox")


@attrs.frozen
class Page:
    """One listing request's parameters, checked."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    state: str | None = None
    since: datetime | None = None


def parse_page(args: dict[bytes, list[bytes]]) -> Page:
    """Check ``?limit=&cursor=&state=&since=``.

    :raises ApiError: 400 naming the first parameter that is unknown, repeated or malformed.
    """
    values: dict[str, Any] = {}
    for raw, given in args.items():
        name = raw.decode("utf-8", "replace")
        if name not in ("limit", "cursor", "state", "since"):
            raise _bad(name, "is not a parameter of this listing (limit, cursor, state, since)")
        if len(given) != 1:
            raise _bad(name, "is given more than once")
        try:
            value = given[0].decode("ascii")
        except UnicodeDecodeError:
            raise _bad(name, "must be ASCII") from None
        values[name] = _PARSERS[name](name, value)
    return Page(**values)


def _bad(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"parameter {name!r} {problem}")


def _limit(name: str, value: str) -> int:
    if not _LIMIT.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise _bad(name, f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def _cursor(name: str, value: str) -> str:
    if not _MESSAGE_ID.fullmatch(value):
        raise _bad(name, "must be the `next` value of a previous page")
    return value


def _state(name: str, value: str) -> str:
    if value not in MAILBOX_STATES:
        raise _bad(name, f"must be one of {', '.join(MAILBOX_STATES)}")
    return value


def _since(name: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(name, "must be an ISO 8601 date or time, e.g. 2026-11-23T10:00:00Z") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


_PARSERS: dict[str, Callable[[str, str], Any]] = {"limit": _limit, "cursor": _cursor, "state": _state,
                                                  "since": _since}


def item_json(item: MailboxItem) -> dict[str, Any]:
    """An invoice as the API shows it (``Invoice`` in the OpenAPI document)."""
    data = {k: v for k, v in item.message.to_json().items() if k not in _INTERNAL}
    stamps = {"delivered_at": item.delivered_at, "downloaded_at": item.downloaded_at,
              "acknowledged_at": item.acknowledged_at}
    return data | {"state": item.state} | {k: v.isoformat() if v else None for k, v in stamps.items()}


# -- database work (thread pool) -------------------------------------------------------------------------


def thd_authenticate(engine: Engine, presented: str, now: datetime) -> TokenInfo | None:
    """The live token ``presented`` is, if any."""
    with engine.connect() as conn:
        return tokens.authenticate(conn, presented, now)


def thd_mailbox(engine: Engine, partner_id: str, page: Page) -> list[MailboxItem]:
    """One page of the mailbox and one item more, which tells whether there is a next page."""
    with engine.connect() as conn:
        return records.mailbox(conn, partner_id, limit=page.limit + 1, before=page.cursor, state=page.state,
                               since=page.since)


def thd_item(engine: Engine, partner_id: str, message_id: str) -> MailboxItem:
    """:raises UnknownMessage: not in this partner's mailbox."""
    with engine.connect() as conn:
        return records.mailbox_item(conn, partner_id, message_id)


def thd_mark(engine: Engine, signer: ReceiptSigner, token: TokenInfo, message_id: str, event: str,
             now: datetime) -> MailboxItem:
    """Record ``downloaded`` or ``acknowledged``; the first time also the audit event and the return receipt.

    :raises UnknownMessage: not in the token's partner's mailbox.
    """
    return thd_mark_as(engine, signer, token.partner_id, f"token:{token.prefix}", message_id, event, now)


def thd_mark_as(engine: Engine, signer: ReceiptSigner, partner_id: str, actor: str, message_id: str, event: str,
                now: datetime) -> MailboxItem:
    """:func:`thd_mark` for any door: ``actor`` is who the audit event names (``token:…``, ``sftp:…``).

    :raises UnknownMessage: not in ``partner_id``'s mailbox.
    """
    item = thd_item(engine, partner_id, message_id)
    if getattr(item, f"{event}_at") is not None:
        return item  # already on record: nothing to sign, nothing to write
    receipt = signer.returned(item.message, event, now)
    with engine.begin() as conn:
        if records.mark_item(conn, partner_id, message_id, event, now):  # False: a concurrent request won
            audit.append(conn, actor, f"mailbox.{event}", now, message_id=message_id,
                         details={"partner": partner_id})
            records.insert_receipt(conn, receipt)
        return records.mailbox_item(conn, partner_id, message_id)


# -- HTTP ------------------------------------------------------------------------------------------------


@attrs.frozen
class _Deps:
    """What every endpoint works with, handed down the resource tree."""

    db: DatabaseService
    blobs: BlobStore
    signer: ReceiptSigner
    clock: Callable[[], datetime]


def _json_body(request: IRequest, status: int, value: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _protect(request: IRequest) -> None:
    """Headers every answer carries: mailbox data is never cached, and never content-sniffed into HTML."""
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")


def _error_body(request: IRequest, error: ApiError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name, value)
    return _json_body(request, error.status, {"error": {"code": error.code, "message": error.message}})


class _NotFound(resource.Resource):
    """Any path the API does not have, with any method: 404."""

    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        _protect(request)
        return _error_body(request, ApiError(404, "not_found", "no such path in the portal API"))


class _Directory(_NotFound):
    """An inner path: its named children, 404 for itself and anything else."""

    isLeaf = False

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        return _NotFound()


class _Endpoint(_Directory):
    """A path that answers one method; any other is 405."""

    method = b"GET"

    def render(self, request: IRequest) -> bytes | int:
        _protect(request)
        if request.method != self.method:
            return _error_body(request, ApiError(405, "method_not_allowed", f"use {self.method.decode()} here",
                                                 {b"allow": self.method}))
        return self.respond(request)

    def respond(self, request: IRequest) -> bytes | int:
        raise NotImplementedError


class _OpenAPI(_Endpoint):
    """``GET /api/v1/openapi.json``: the contract, open to anyone."""

    _body = json.dumps(DOCUMENT, indent=1).encode("utf-8")

    def respond(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return self._body


def _bearer(request: IRequest) -> str | None:
    """The credentials of an ``Authorization: Bearer`` header; ``None`` when there is no such header."""
    scheme, _, credentials = (request.getHeader(b"authorization") or b"").strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip().decode("ascii", "replace")


class _Authenticated(_Endpoint):
    """An endpoint for token holders: authenticates, then answers asynchronously in :meth:`answer`."""

    def __init__(self, deps: _Deps, message_id: str | None = None):
        super().__init__()
        self._deps = deps
        self._message_id = message_id

    def respond(self, request: IRequest) -> int:
        Deferred.fromCoroutine(self._respond(request))
        return NOT_DONE_YET

    async def _respond(self, request: IRequest) -> None:
        try:
            token = await self._authenticate(request)
            await self.answer(request, token)
        except ApiError as e:
            _finish(request, _error_body(request, e))
        except Exception:
            _log.failure("portal API: {method} {path} failed", method=request.method, path=request.path)
            if not request.startedWriting:
                _finish(request, _error_body(request, ApiError(500, "internal_error", "the gateway failed to "
                                                               "answer; it is logged, try again later")))
            elif not request.finished and request.channel is not None:
                request.channel.transport.abortConnection()

    async def _authenticate(self, request: IRequest) -> TokenInfo:
        presented = _bearer(request)
        if presented is None:
            raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN (see `postroom token create`)",
                           {b"www-authenticate": b'Bearer realm="postroom"'})
        token = await self._deps.db.run(thd_authenticate, presented, self._deps.clock())
        if token is None:
            raise ApiError(401, "invalid_token", "the token is unknown or revoked, or its partner is disabled",
                           {b"www-authenticate": b'Bearer realm="postroom", error="invalid_token"'})
        return token

    def _checked_id(self) -> str:
        """The invoice ID of this path; one that cannot be a message ID is not in any mailbox."""
        if self._message_id is None or not _MESSAGE_ID.fullmatch(self._message_id):
            raise _not_found()
        return self._message_id

    async def _item(self, token: TokenInfo) -> MailboxItem:
        try:
            return await self._deps.db.run(thd_item, token.partner_id, self._checked_id())
        except UnknownMessage:
            raise _not_found() from None

    async def _mark(self, token: TokenInfo, event: str) -> MailboxItem:
        try:
            return await self._deps.db.run(thd_mark, self._deps.signer, token, self._checked_id(), event,
                                           self._deps.clock())
        except UnknownMessage:
            raise _not_found() from None

    async def answer(self, request: IRequest, token: TokenInfo) -> None:
        raise NotImplementedError


def _finish(request: IRequest, body: bytes) -> None:
    """Write a whole answer, unless the client has gone."""
    if request.channel is None:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


class _Invoices(_Authenticated):
    """``GET /invoices``: the mailbox, newest first; ``/invoices/{id}`` below it."""

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        return _Invoice(self._deps, path.decode("utf-8", "replace"))

    async def answer(self, request: IRequest, token: TokenInfo) -> None:
        page = parse_page(request.args)
        items = await self._deps.db.run(thd_mailbox, token.partner_id, page)
        more, items = len(items) > page.limit, items[:page.limit]
        _finish(request, _json_body(request, 200, {"items": [item_json(i) for i in items],
                                                   "next": items[-1].message.id if more else None}))


class _Invoice(_Authenticated):
    """``GET /invoices/{id}``: one invoice's metadata; ``content`` and ``ack`` below it."""

    def getChild(self, path: bytes, request: IRequest) -> resource.Resource:
        child = {b"content": _Content, b"ack": _Ack}.get(path)
        return child(self._deps, self._message_id) if child else _NotFound()

    async def answer(self, request: IRequest, token: TokenInfo) -> None:
        _finish(request, _json_body(request, 200, item_json(await self._item(token))))


class _Ack(_Authenticated):
    """``POST /invoices/{id}/ack``: acknowledge; the first time sends the sender a return receipt."""

    method = b"POST"

    async def answer(self, request: IRequest, token: TokenInfo) -> None:
        _finish(request, _json_body(request, 200, item_json(await self._mark(token, "acknowledged"))))


class ContentChanged(Exception):
    """A stored blob's bytes no longer match the message's SHA-256 or size: the download is cut off."""


@implementer(IPushProducer)
class _Pacer:
    """Lets the copy loop wait while the connection's send buffer is full, and stop if the client goes."""

    def __init__(self) -> None:
        self.stopped = False
        self._waiting: Deferred | None = None
        self._paused = False

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self, _: Any = None) -> None:
        self.stopped = True
        self.resumeProducing()

    def ready(self) -> Deferred:
        """Fires when more may be written (or the client is gone: check :attr:`stopped`)."""
        if not self._paused or self.stopped:
            return succeed(None)
        self._waiting = Deferred()
        return self._waiting


class _Content(_Authenticated):
    """``GET /invoices/{id}/content``: the exact bytes received.

    The last chunk is held back until the download is recorded, so a client that received the whole
    body knows its download (and the sender's return receipt) is on record; a client cut off before
    that is not counted. The bytes are hashed on the way out: if they no longer match the message's
    SHA-256 the connection is cut before the last chunk, so no client ever takes changed bytes for
    the invoice.
    """

    async def answer(self, request: IRequest, token: TokenInfo) -> None:
        message = (await self._item(token)).message
        try:
            blob = await deferToThread(self._deps.blobs.open, message.sha256)
        except BlobNotFound:
            _log.error("portal API: the content of message {id} is missing from the spool", id=message.id)
            raise ApiError(500, "content_unavailable", "the stored content of this invoice cannot be read; "
                                                       "the operator has been alerted") from None
        content_type = message.content_type or "application/xml"
        if not (content_type.isascii() and content_type.isprintable()):
            content_type = "application/xml"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"content-disposition", content_disposition(message.filename, message.id, content_type))
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        request.setHeader(b"content-length", b"%d" % message.size)
        try:
            last = await self._send_all_but_last(request, blob, message)
        finally:
            await deferToThread(blob.close)
        if last is None:
            return
        await self._mark(token, "downloaded")
        if request.channel is not None:
            request.write(last)
            request.finish()

    async def _send_all_but_last(self, request: IRequest, blob: BinaryIO, message: Message) -> bytes | None:
        """Write every chunk but the last, checking size and hash; ``None`` if the client went away."""
        if request.channel is None:
            return None
        pacer = _Pacer()
        request.notifyFinish().addErrback(pacer.stopProducing)
        request.registerProducer(pacer, True)
        try:
            digest, sent, held = hashlib.sha256(), 0, b""
            while not pacer.stopped and (chunk := await deferToThread(_read_hashed, blob, digest)):
                sent += len(chunk)
                if sent > message.size:
                    raise ContentChanged(f"message {message.id}: its stored blob is longer than {message.size} bytes")
                if held:
                    request.write(held)
                    await pacer.ready()
                held = chunk
        finally:
            if request.channel is not None:
                request.unregisterProducer()
        if pacer.stopped:
            return None
        if digest.hexdigest() != message.sha256:
            raise ContentChanged(f"message {message.id}: its stored bytes no longer match their SHA-256")
        return held


def _read_hashed(blob: BinaryIO, digest) -> bytes:
    """The next chunk, already added to ``digest``: reading and hashing both stay off the reactor thread."""
    chunk = blob.read(_CHUNK)
    digest.update(chunk)
    return chunk


def content_disposition(filename: str | None, message_id: str, content_type: str) -> bytes:
    """``attachment`` with the sender's file name (its last path part), or one made from the message ID.

    ``attachment`` also keeps a browser from rendering a sender's HTML on the portal's origin.
    """
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name:
        name = f"{message_id}.xml" if "xml" in content_type else message_id
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    value = f'attachment; filename="{plain}"'
    if plain != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value.encode("ascii")


def build_api(db: DatabaseService, blobs: BlobStore, signer: ReceiptSigner,
              clock: Callable[[], datetime]) -> resource.Resource:
    """The resource to mount at ``/api`` of the portal site."""
    deps = _Deps(db, blobs, signer, clock)
    v1 = _Directory()
    v1.putChild(b"openapi.json", _OpenAPI())
    v1.putChild(b"invoices", _Invoices(deps))
    root = _Directory()
    root.putChild(b"v1", v1)
    return root
