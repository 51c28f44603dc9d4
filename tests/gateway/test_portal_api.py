"""Tests for :mod:`gateway.portal_api` over real HTTP: a twisted.web Site on loopback, driven with curl.

The database is a migrated SQLite file behind a real :class:`DatabaseService` thread pool, the blobs a
real :class:`BlobStore`, the receipts are signed with a key from the dev CA and checked with openssl.
curl runs in a thread so the reactor keeps serving while it waits.
"""

import json
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import Site

from gateway import portal_api
from gateway.database_service import DatabaseService
from gateway.openapi import DOCUMENT
from gateway.portal_api import build_api, content_disposition
from gateway.receipts import ReceiptSigner
from partners import store, tokens
from partners.schema import partners
from partners.store import NewPartner
from protocols.mdn import ReceiptEntity
from spool import audit, records
from spool.blobs import BlobStore
from spool.database import create_engine, upgrade
from spool.records import Message
from spool.schema import receipts
from tests.spool.stored import put_blob

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def invoice(number: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Invoice xmlns="urn:oasis:names:specification:ubl:schema:'
            f'xsd:Invoice-2"><ID>{number}</ID></Invoice>\n').encode()


def deliver(conn, blobs, sender: str, recipient: str, received_at: datetime, content: bytes, **fields) -> Message:
    """Record an accepted message and file it in the recipient's mailbox, as the delivery worker would."""
    sha = put_blob(blobs, content)
    message = Message(id=records.new_id(received_at), received_at=received_at, sender_id=sender,
                      recipient_id=recipient, channel="as2", sha256=sha, size=len(content), kind="ubl-invoice",
                      signed=False, route="mailbox", state="delivered", updated_at=received_at, **fields)
    records.insert_message(conn, message, [(recipient, "mailbox")])
    records.put_in_mailbox(conn, message.id, recipient, received_at)
    return message


@pytest.fixture(scope="module")
def gateway_sign(dev_ca):
    """The gateway's receipt-signing key and certificate."""
    return dev_ca.build("gateway sign", "sign")


@pytest.fixture
def world(engine, tmp_path, dev_ca, gateway_sign):
    """Partners with tokens, and their messages stored and filed, as delivery leaves them.

    acme's mailbox holds five invoices from globex (inbox[0] oldest … inbox[4] newest; inbox[0] is 3 MiB,
    so its download takes many chunks); globex's holds one from acme (``theirs``).
    """
    blobs = BlobStore(tmp_path / "spool")
    with engine.begin() as conn:
        for partner_id in ("acme", "globex", "initech"):
            store.add_partner(conn, NewPartner(id=partner_id, name=partner_id.title()), T0)
        secrets = {p: tokens.create_token(conn, p, "test", T0)[1] for p in ("acme", "globex", "initech")}
        contents = [os.urandom(3 << 20)] + [invoice(f"INV-{i}") for i in range(1, 5)]
        inbox = [deliver(conn, blobs, "globex", "acme", T0 + timedelta(minutes=i), content,
                         number=f"INV-{i}", filename=f"INV-{i}.xml", external_id=f"<{i}@globex.example>")
                 for i, content in enumerate(contents)]
        theirs = deliver(conn, blobs, "acme", "globex", T0 + timedelta(minutes=9), invoice("ACME-1"))
    key, certificate = gateway_sign
    return SimpleNamespace(engine=engine, blobs=blobs, tmp=tmp_path, ca=dev_ca, secrets=secrets, inbox=inbox,
                           contents=contents, theirs=theirs,
                           signer=ReceiptSigner(key, certificate, (), "Postroom; test", "POSTROOM"))


@asynccontextmanager
async def serving(world):
    """The API on a loopback port over ``world``, with a running database pool; all stopped on the way out.

    Started and stopped inside the test (as tests/gateway/test_app.py does) so nothing outlives it.
    """
    db = DatabaseService(world.engine, reactor)
    db.startService()
    root = Resource()
    root.putChild(b"api", build_api(db, world.blobs, world.signer, lambda: datetime.now(UTC)))
    connections = WrappingFactory(Site(root))
    port = reactor.listenTCP(0, connections, interface="127.0.0.1")
    try:
        yield SimpleNamespace(**vars(world), base=f"http://127.0.0.1:{port.getHost().port}/api/v1")
    finally:
        await port.stopListening()
        for protocol in list(connections.protocols):
            protocol.transport.abortConnection()
        while connections.protocols:
            await deferLater(reactor, 0.01, lambda: None)
        db.stopService()


async def curl(api, path: str, *, who: str | None = "acme", method: str = "GET", query=None):
    """Request ``/api/v1{path}`` with curl; returns (status, headers with lowercase names, body bytes).

    ``who`` names a partner whose token to send, or is a raw Authorization value when it contains a space.
    """
    url = api.base + path + (f"?{urlencode(query)}" if query else "")
    args = ["curl", "-sS", "--max-time", "30", "-i", "-X", method, url]
    if who is not None:
        args += ["-H", f"Authorization: {who}" if " " in who else f"Authorization: Bearer {api.secrets[who]}"]
    done = await deferToThread(subprocess.run, args, capture_output=True)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in fields.items()}, body


async def ok_json(api, path: str, **options):
    status, headers, body = await curl(api, path, **options)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def assert_error(status, headers, body, expected_status: int, code: str) -> str:
    assert status == expected_status, body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"
    error = json.loads(body)
    assert list(error) == ["error"] and set(error["error"]) == {"code", "message"}
    assert error["error"]["code"] == code
    return error["error"]["message"]


def ids(items) -> list[str]:
    return [item["id"] for item in items]


def return_receipts(api, message_id: str):
    with api.engine.connect() as conn:
        return records.receipts_for(conn, message_id, ("return",))


def events(api, message_id: str):
    with api.engine.connect() as conn:
        return list(audit.events(conn, message_id=message_id))


# -- authentication -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_endpoint_but_the_document_needs_a_token(world):
    """Without Authorization, or with another scheme, each endpoint answers 401 with a Bearer challenge."""
    async with serving(world) as api:
        mine = api.inbox[1].id
        for method, path in (("GET", "/invoices"), ("GET", f"/invoices/{mine}"), ("GET", f"/invoices/{mine}/content"),
                             ("POST", f"/invoices/{mine}/ack")):
            for token in (None, "Basic YWNtZTpzZWNyZXQ="):
                status, headers, body = await curl(api, path, method=method, who=token)
                assert assert_error(status, headers, body, 401, "unauthorized").startswith("send Authorization: Bearer")
                assert headers["www-authenticate"] == 'Bearer realm="postroom"'
        assert events(api, mine) == [] and return_receipts(api, mine) == []


@pytest_twisted.ensureDeferred
async def test_wrong_revoked_and_disabled_tokens_are_refused(world):
    """A made-up or near-miss token, a revoked one and a disabled partner's all get 401 invalid_token."""
    async with serving(world) as api:
        acme = api.secrets["acme"]
        with api.engine.begin() as conn:
            tokens.revoke_token(conn, tokens.authenticate(conn, api.secrets["globex"], T0).id, T0)
            store.set_status(conn, "initech", "disabled", T0)
        near_miss = acme[:-1] + ("x" if acme[-1] != "x" else "y")
        for token in ("Bearer nonsense", f"Bearer {near_miss}", "Bearer ", f"Bearer {api.secrets['globex']}",
                      f"Bearer {api.secrets['initech']}"):
            status, headers, body = await curl(api, "/invoices", who=token)
            assert_error(status, headers, body, 401, "invalid_token")
            assert headers["www-authenticate"] == 'Bearer realm="postroom", error="invalid_token"'
        assert (await ok_json(api, "/invoices", who=f"bearer   {acme}"))["items"]


# -- listing --------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listing_pages_through_the_mailbox_newest_first(world):
    """limit and cursor walk the whole mailbox once; the last page's next is null; the default takes all."""
    async with serving(world) as api:
        newest_first = [m.id for m in reversed(api.inbox)]
        seen, query = [], {"limit": 2}
        while True:
            page = await ok_json(api, "/invoices", query=query)
            assert len(page["items"]) <= 2
            seen += ids(page["items"])
            if page["next"] is None:
                break
            assert page["next"] == seen[-1]
            query = {"limit": 2, "cursor": page["next"]}
        assert seen == newest_first
        whole = await ok_json(api, "/invoices")
        assert ids(whole["items"]) == newest_first and whole["next"] is None
        exact = await ok_json(api, "/invoices", query={"limit": 5})
        assert ids(exact["items"]) == newest_first and exact["next"] is None


@pytest_twisted.ensureDeferred
async def test_an_item_carries_the_message_fields_and_the_mailbox_state(world):
    """Metadata is the message as received plus the item's state and times, without the gateway's internals."""
    async with serving(world) as api:
        message = api.inbox[2]
        item = await ok_json(api, f"/invoices/{message.id}")
        assert item == (await ok_json(api, "/invoices", query={"limit": 3}))["items"][-1]
        assert item["id"] == message.id and item["sender_id"] == "globex" and item["recipient_id"] == "acme"
        assert (item["number"], item["sha256"], item["size"]) == ("INV-2", message.sha256, message.size)
        assert (item["state"], item["downloaded_at"], item["acknowledged_at"]) == ("new", None, None)
        assert datetime.fromisoformat(item["received_at"]) == message.received_at
        assert datetime.fromisoformat(item["delivered_at"]) == message.received_at
        assert not {"route", "updated_at"} & set(item)
        schema = DOCUMENT["components"]["schemas"]["Invoice"]
        assert set(item) == set(schema["properties"]) and set(schema["required"]) <= set(item)


@pytest_twisted.ensureDeferred
async def test_listing_filters_by_state_and_time(world):
    """state= takes the item's state; since= the reception time, with or without an offset."""
    async with serving(world) as api:
        newest, second = api.inbox[4], api.inbox[3]
        await ok_json(api, f"/invoices/{newest.id}/ack", method="POST")
        await curl(api, f"/invoices/{second.id}/content")
        assert ids((await ok_json(api, "/invoices", query={"state": "acknowledged"}))["items"]) == [newest.id]
        assert ids((await ok_json(api, "/invoices", query={"state": "downloaded"}))["items"]) == [second.id]
        fresh = (await ok_json(api, "/invoices", query={"state": "new"}))["items"]
        assert ids(fresh) == [m.id for m in api.inbox[2::-1]]
        since = (T0 + timedelta(minutes=3)).isoformat()
        assert ids((await ok_json(api, "/invoices", query={"since": since}))["items"]) == [newest.id, second.id]
        naive = (T0 + timedelta(minutes=4)).replace(tzinfo=None).isoformat()
        assert ids((await ok_json(api, "/invoices", query={"since": naive}))["items"]) == [newest.id]
        assert (await ok_json(api, "/invoices", query={"since": "2030-01-01"}))["items"] == []
        both = {"state": "new", "since": (T0 + timedelta(minutes=1)).isoformat(), "limit": 1}
        page = await ok_json(api, "/invoices", query=both)
        assert ids(page["items"]) == [api.inbox[2].id] and page["next"] == api.inbox[2].id


@pytest.mark.parametrize("query, name", [
    ("limit=0", "limit"), ("limit=201", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"), ("limit=", "limit"),
    ("cursor=zz", "cursor"), ("cursor=" + "A" * 32, "cursor"), ("state=read", "state"), ("since=yesterday", "since"),
    ("limit=1&limit=2", "limit"), ("sort=asc", "sort"), ("state=%ff", "state"),
])
@pytest_twisted.ensureDeferred
async def test_bad_parameters_answer_400_naming_them(world, query, name):
    """Each malformed, repeated or unknown parameter is refused with its name in the message."""
    async with serving(world) as api:
        status, headers, body = await curl(api, f"/invoices?{query}")
        assert f"parameter {name!r}" in assert_error(status, headers, body, 400, "invalid_parameter")


@pytest_twisted.ensureDeferred
async def test_the_largest_page_is_200(world):
    """limit=200 is accepted."""
    async with serving(world) as api:
        assert len((await ok_json(api, "/invoices", query={"limit": 200}))["items"]) == 5


# -- isolation ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_another_partners_invoice_is_not_found_like_a_missing_one(world):
    """acme sent `theirs` to globex: acme's token gets the same 404 as for an ID that does not exist."""
    async with serving(world) as api:
        answers = set()
        for message_id in (api.theirs.id, records.new_id(T0), "not-an-id", "..%2f..%2fetc"):
            for method, suffix in (("GET", ""), ("GET", "/content"), ("POST", "/ack")):
                status, headers, body = await curl(api, f"/invoices/{message_id}{suffix}", method=method)
                answers.add(assert_error(status, headers, body, 404, "not_found"))
        assert answers == {"no such invoice in your mailbox"}
        assert api.theirs.id not in ids((await ok_json(api, "/invoices"))["items"])
        assert ids((await ok_json(api, "/invoices", who="globex"))["items"]) == [api.theirs.id]
        assert return_receipts(api, api.theirs.id) == [] and events(api, api.theirs.id) == []
        with api.engine.connect() as conn:
            assert records.mailbox_item(conn, "globex", api.theirs.id).state == "new"


# -- content, acknowledgement, receipts ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_content_is_the_exact_stored_bytes(world):
    """A 3 MiB payload comes back byte for byte, with its length, type and file name."""
    async with serving(world) as api:
        for message, content in ((api.inbox[0], api.contents[0]), (api.inbox[1], api.contents[1])):
            status, headers, body = await curl(api, f"/invoices/{message.id}/content")
            assert status == 200 and body == content
            assert headers["content-length"] == str(len(content))
            assert headers["content-type"] == "application/xml"
            assert headers["content-disposition"] == f'attachment; filename="{message.filename}"'
            assert headers["cache-control"] == "no-store" and headers["x-content-type-options"] == "nosniff"


@pytest_twisted.ensureDeferred
async def test_downloading_twice_records_one_event_and_one_receipt(world):
    """The first download is on record when the body has arrived; the second changes nothing."""
    async with serving(world) as api:
        message = api.inbox[1]
        for _ in range(2):
            status, _, body = await curl(api, f"/invoices/{message.id}/content")
            assert status == 200 and body == api.contents[1]
        item = await ok_json(api, f"/invoices/{message.id}")
        assert item["state"] == "downloaded" and item["downloaded_at"] is not None and item["acknowledged_at"] is None
        prefix = api.secrets["acme"].split("_")[1]
        [event] = events(api, message.id)
        assert (event.actor, event.event) == (f"token:{prefix}", "mailbox.downloaded")
        assert event.details == {"partner": "acme"}
        [receipt] = return_receipts(api, message.id)
        assert (receipt.partner_id, receipt.state, receipt.disposition) == (
            "globex", "pending", "manual-action/MDN-sent-automatically; displayed")


@pytest_twisted.ensureDeferred
async def test_acknowledging_twice_records_one_event_and_one_receipt(world):
    """ack answers the acknowledged item every time; only the first is recorded and receipted."""
    async with serving(world) as api:
        message = api.inbox[2]
        first = await ok_json(api, f"/invoices/{message.id}/ack", method="POST")
        again = await ok_json(api, f"/invoices/{message.id}/ack", method="POST")
        assert first == again and first["state"] == "acknowledged" and first["acknowledged_at"] is not None
        await curl(api, f"/invoices/{message.id}/content")
        assert (await ok_json(api, f"/invoices/{message.id}"))["state"] == "acknowledged"
        assert [e.event for e in events(api, message.id)] == ["mailbox.acknowledged", "mailbox.downloaded"]
        kinds = [r.disposition.rsplit("; ", 1)[1] for r in return_receipts(api, message.id)]
        assert kinds == ["processed", "displayed"]
        with api.engine.connect() as conn:
            assert audit.verify(conn).ok


@pytest_twisted.ensureDeferred
async def test_concurrent_acknowledgements_record_once(world):
    """Ten acks in parallel: every one answers 200, one receipt and one event are recorded."""
    async with serving(world) as api:
        message = api.inbox[3]
        answers = await gatherResults([ensureDeferred(curl(api, f"/invoices/{message.id}/ack", method="POST"))
                                       for _ in range(10)])
        assert {status for status, _, _ in answers} == {200}
        assert len(return_receipts(api, message.id)) == 1 and len(events(api, message.id)) == 1


@pytest_twisted.ensureDeferred
async def test_the_return_receipt_verifies_with_openssl(world):
    """The stored receipt is a signed MDN that openssl accepts, naming the message and the download."""
    async with serving(world) as api:
        message = api.inbox[1]
        await curl(api, f"/invoices/{message.id}/content")
        [receipt] = return_receipts(api, message.id)
        (api.tmp / "receipt.eml").write_bytes(ReceiptEntity(receipt.content_type, receipt.body).as_mime())
        (api.tmp / "ca.crt").write_bytes(api.ca.certificate.public_bytes(Encoding.PEM))
        for trust in (["-noverify"], ["-CAfile", str(api.tmp / "ca.crt"), "-purpose", "any"]):
            done = subprocess.run(["openssl", "cms", "-verify", *trust, "-inform", "SMIME",
                                   "-in", str(api.tmp / "receipt.eml")], capture_output=True)
            assert done.returncode == 0, done.stderr
            assert b"Original-Message-ID: <1@globex.example>" in done.stdout
            assert b"; displayed" in done.stdout and message.id.encode() in done.stdout


@pytest_twisted.ensureDeferred
async def test_changed_stored_bytes_are_never_served_nor_recorded(world):
    """If the blob no longer matches its SHA-256, the client gets an error, not the bytes, and nothing is recorded."""
    async with serving(world) as api:
        message = api.inbox[4]
        path = api.blobs.path(message.sha256)
        path.write_bytes(path.read_bytes().replace(b"INV-4", b"INV-5"))
        status, headers, body = await curl(api, f"/invoices/{message.id}/content")
        assert_error(status, headers, body, 500, "internal_error")
        path.unlink()
        status, headers, body = await curl(api, f"/invoices/{message.id}/content")
        assert_error(status, headers, body, 500, "content_unavailable")
        assert return_receipts(api, message.id) == [] and events(api, message.id) == []
        assert (await ok_json(api, f"/invoices/{message.id}"))["state"] == "new"


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_mid_download_is_not_counted(world):
    """curl stopping after the first bytes of the 3 MiB payload leaves the item new and unreceipted."""
    async with serving(world) as api:
        message = api.inbox[0]
        args = ["curl", "-sS", "--max-time", "30", "--max-filesize", "1", "--limit-rate", "64k", "-o", os.devnull,
                "-H", f"Authorization: Bearer {api.secrets['acme']}", f"{api.base}/invoices/{message.id}/content"]
        done = await deferToThread(subprocess.run, args, capture_output=True)
        assert done.returncode != 0
        await deferLater(reactor, 0.2, lambda: None)
        assert (await ok_json(api, f"/invoices/{message.id}"))["state"] == "new"
        with api.engine.connect() as conn:
            assert conn.execute(select(receipts).where(receipts.c.message_id == message.id)).first() is None


@pytest_twisted.ensureDeferred
async def test_a_slow_download_is_paced_and_does_not_hold_up_other_requests(world, monkeypatch):
    """A client reading at 2 MB/s gets every byte; the copy waits for it, and other requests are served meanwhile."""
    async with serving(world) as api:
        pauses = []
        original = portal_api._Pacer.pauseProducing
        monkeypatch.setattr(portal_api._Pacer, "pauseProducing", lambda self: (pauses.append(1), original(self)))
        message = api.inbox[0]
        args = ["curl", "-sS", "--max-time", "30", "--limit-rate", "2M",
                "-H", f"Authorization: Bearer {api.secrets['acme']}", f"{api.base}/invoices/{message.id}/content"]
        slow = deferToThread(subprocess.run, args, capture_output=True)
        await deferLater(reactor, 0.3, lambda: None)
        assert (await ok_json(api, "/invoices"))["items"]
        done = await slow
        print(done.returncode, len(done.stdout), done.stderr)
        assert done.returncode == 0 and done.stdout == api.contents[0]
        assert pauses
        assert (await ok_json(api, f"/invoices/{message.id}"))["state"] == "downloaded"


# -- shape of the API -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_openapi_document_is_public_and_lists_every_path(world):
    """The document needs no token, parses as OpenAPI 3.1, and each path it lists answers its method."""
    async with serving(world) as api:
        status, headers, body = await curl(api, "/openapi.json", who=None)
        assert status == 200 and headers["cache-control"] == "no-store"
        document = json.loads(body)
        assert document == DOCUMENT and document["openapi"].startswith("3.1")
        assert document["components"]["securitySchemes"]["bearer"] == {
            **document["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
        assert set(document["paths"]) == {"/invoices", "/invoices/{id}", "/invoices/{id}/content",
                                          "/invoices/{id}/ack", "/openapi.json"}
        for path, operations in document["paths"].items():
            for method in operations:
                status, _, body = await curl(api, path.replace("{id}", api.inbox[1].id), method=method.upper())
                assert status == 200, (path, body)


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "", 404, "not_found"),
    ("GET", "/", 404, "not_found"),
    ("GET", "/invoice", 404, "not_found"),
    ("GET", "/openapi.json/x", 404, "not_found"),
    ("GET", "/invoices/{id}/content/x", 404, "not_found"),
    ("GET", "/invoices/{id}/disputes", 404, "not_found"),
    ("DELETE", "/invoices", 405, "method_not_allowed"),
    ("POST", "/invoices/{id}", 405, "method_not_allowed"),
    ("POST", "/invoices/{id}/content", 405, "method_not_allowed"),
    ("GET", "/invoices/{id}/ack", 405, "method_not_allowed"),
    ("PUT", "/openapi.json", 405, "method_not_allowed"),
])
@pytest_twisted.ensureDeferred
async def test_unknown_paths_404_and_wrong_methods_405(world, method, path, status, code):
    """Both answer JSON errors; a 405 names the allowed method."""
    async with serving(world) as api:
        got, headers, body = await curl(api, path.replace("{id}", api.inbox[1].id), method=method)
        assert_error(got, headers, body, status, code)
        if status == 405:
            assert headers["allow"] == ("POST" if path.endswith("/ack") else "GET")


@pytest.mark.parametrize("filename, content_type, expected", [
    ("INV-1.xml", "application/xml", 'attachment; filename="INV-1.xml"'),
    (None, "application/xml", 'attachment; filename="0123.xml"'),
    (None, "application/pdf", 'attachment; filename="0123"'),
    ("../../etc/passwd", "text/plain", 'attachment; filename="passwd"'),
    ("C:\\Users\\x\\Faktura ÆØÅ.xml", "application/xml",
     "attachment; filename=\"Faktura____.xml\"; filename*=UTF-8''Faktura%20%C3%86%C3%98%C3%85.xml"),
    ('a"b\r\n.xml', "application/xml", "attachment; filename=\"a_b__.xml\"; filename*=UTF-8''a%22b%0D%0A.xml"),
])
def test_content_disposition_is_safe(filename, content_type, expected):
    """The file name keeps only its last path part, and anything outside a safe ASCII set is encoded."""
    assert content_disposition(filename, "0123", content_type) == expected.encode()


# -- concurrency on PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_engine(postgres_server):
    """A PostgreSQL database of this module's own, at the newest schema."""
    engine = create_engine(postgres_server.new_database("portal_api"))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("event", ["acknowledged", "downloaded"])
def test_racing_marks_record_once_on_postgres(pg_engine, tmp_path, gateway_sign, event):
    """Eight threads mark one item at the same instant: one audit event, one receipt, eight answers alike.

    Under READ COMMITTED each would read "not yet" and record, unless the item is locked before the read.
    """
    blobs = BlobStore(tmp_path / "spool")
    with pg_engine.begin() as conn:
        for partner_id in ("acme", "globex"):
            if conn.execute(select(partners.c.id).where(partners.c.id == partner_id)).first() is None:
                store.add_partner(conn, NewPartner(id=partner_id, name=partner_id.title()), T0)
        info, _ = tokens.create_token(conn, "acme", "race", T0)
        message = deliver(conn, blobs, "globex", "acme", datetime.now(UTC), invoice(event))
    signer = ReceiptSigner(*gateway_sign, (), "Postroom; test", "POSTROOM")
    start = threading.Barrier(8)

    def mark(_):
        start.wait()
        return portal_api.thd_mark(pg_engine, signer, info, message.id, event, datetime.now(UTC))

    with ThreadPoolExecutor(8) as pool:
        items = list(pool.map(mark, range(8)))
    assert len({getattr(item, f"{event}_at") for item in items}) == 1
    with pg_engine.connect() as conn:
        assert len(records.receipts_for(conn, message.id, ("return",))) == 1
        assert len(list(audit.events(conn, message_id=message.id))) == 1
