"""``postroom message list|show|retry|export`` and ``postroom spool check`` through the CLI, on messages
recorded the way the intake records them (blob published, then rows) in a demo home."""

import getpass
import json
import stat
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from gateway.config import load
from spool import records
from spool.blobs import BlobStore
from spool.database import create_engine
from spool.records import StoredReceipt
from tests.admin.conftest import ERROR_PREFIX
from tests.spool.stored import finish_deliveries, kill_deliveries, put_blob, store_message, store_quarantined

ACTOR = f"cli:{getpass.getuser()}"
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
#: Bytes a text-mode or re-encoding copy would alter: a BOM, CRLF, a NUL, Latin-1 and UTF-8.
AWKWARD = b"\xef\xbb\xbf<?xml version='1.0'?>\r\n<Invoice>\x00caf\xe9 \xe2\x82\xac</Invoice>\r\n"


@pytest.fixture
def spool(postroom):
    """The demo home's database and blob store, for recording messages behind the CLI's back."""
    config = load(postroom.home)
    engine = create_engine(config.database_url)

    def add(data: bytes, seconds: int = 0, **fields) -> records.Message:
        with engine.begin() as conn:
            return store_message(conn, blobs, data, T0 + timedelta(seconds=seconds), **fields)

    blobs = BlobStore(config.home.resolve(config.storage.spool_dir))
    yield SimpleNamespace(engine=engine, blobs=blobs, add=add)
    engine.dispose()


def failed(result, message: str) -> str:
    """Assert exit 1 with exactly one error line on stderr containing ``message``; return stdout."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith(ERROR_PREFIX) and message in line, line
    return result.stdout


def new_events(postroom, before: list[dict]) -> list[dict]:
    """The audit events added since ``before`` was listed."""
    return postroom.json("audit", "list", "--limit", "100000")[len(before):]


# -- message list ---------------------------------------------------------------------------------------


def test_list_is_newest_first_and_filters(postroom, spool):
    """Newest first; --partner matches sender or recipient, --state and --limit narrow further."""
    first = spool.add(b"<Invoice>1</Invoice>", 0, number="INV-1")
    second = spool.add(b"<Invoice>2</Invoice>", 1, number="INV-2", sender_id="globex", recipient_id="acme")
    third = spool.add(b"<Invoice>3</Invoice>", 2, number="INV-3", sender_id="initech", recipient_id="acme",
                      kind="cii-invoice")
    with spool.engine.begin() as conn:
        kill_deliveries(conn, second, T0 + timedelta(minutes=1))

    listed = postroom.json("message", "list")
    assert [m["id"] for m in listed] == [third.id, second.id, first.id]
    assert listed[2] == first.to_json()
    assert [m["id"] for m in postroom.json("message", "list", "--partner", "globex")] == [second.id, first.id]
    assert [m["id"] for m in postroom.json("message", "list", "--partner", "initech")] == [third.id]
    assert [m["id"] for m in postroom.json("message", "list", "--state", "failed")] == [second.id]
    assert [m["id"] for m in postroom.json("message", "list", "--limit", "1")] == [third.id]
    assert postroom.json("message", "list", "--partner", "nobody") == []

    table = postroom.ok("message", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "RECEIVED_AT", "SENDER_ID", "RECIPIENT_ID", "KIND", "NUMBER", "STATE"]
    assert table[1].split() == [third.id, third.received_at.isoformat(), "initech", "acme", "cii-invoice", "INV-3",
                                "accepted"]


def test_an_empty_spool_lists_nothing(postroom):
    """No messages: an empty JSON array, and a note for people."""
    assert postroom.json("message", "list") == []
    assert postroom.ok("message", "list").stdout == "(none)\n"


@pytest.mark.parametrize("args", [["--state", "lost"], ["--limit", "0"], ["--limit", "many"], ["--bogus"]])
def test_list_usage_errors_exit_2(postroom, args):
    """A state outside the machine's, a limit below 1 or an unknown option is a usage error."""
    assert postroom("message", "list", *args).exit_code == 2


# -- message show ---------------------------------------------------------------------------------------


def test_show_has_deliveries_receipts_mailbox_and_events(postroom, spool):
    """Everything known about one message, as JSON and as key: value lines."""
    message = spool.add(AWKWARD, targets=("mailbox", "as2"))
    later = T0 + timedelta(minutes=1)
    with spool.engine.begin() as conn:
        for receipt_id, kind in (("r1", "acceptance"), ("r2", "return")):
            records.insert_receipt(conn, StoredReceipt(
                id=receipt_id, kind=kind, partner_id="acme", disposition="automatic-action/MDN-sent-automatically; "
                "processed", content_type="multipart/report", body=b"...", created_at=later, state="sent",
                message_id=message.id))
        records.put_in_mailbox(conn, message.id, "globex", later)
        records.mark_item(conn, "globex", message.id, "downloaded", later)
    postroom.ok("message", "retry", message.id)

    shown = postroom.json("message", "show", message.id)
    assert {k: shown[k] for k in message.to_json()} == message.to_json() | {
        "updated_at": shown["updated_at"]}  # the retry stamped it
    assert [(d["recipient_id"], d["target"], d["state"]) for d in shown["deliveries"]] == [
        ("globex", "mailbox", "pending"), ("globex", "as2", "pending")]
    assert shown["receipts"] == [
        {"id": "r1", "kind": "acceptance", "disposition": "automatic-action/MDN-sent-automatically; processed",
         "created_at": later.isoformat(), "state": "sent"},
        {"id": "r2", "kind": "return", "disposition": "automatic-action/MDN-sent-automatically; processed",
         "created_at": later.isoformat(), "state": "sent"},
    ]
    assert shown["mailbox"] == {"state": "downloaded", "delivered_at": later.isoformat(),
                                "downloaded_at": later.isoformat(), "acknowledged_at": None}
    [event] = shown["events"]
    assert (event["event"], event["actor"], event["details"]["partner"]) == ("message.retried", ACTOR, "globex")

    text = postroom.ok("message", "show", message.id).stdout.splitlines()
    assert f"id: {message.id}" in text
    assert "mailbox: state=downloaded, delivered_at=" + later.isoformat() in "\n".join(text)
    assert "deliveries:" in text and "receipts:" in text and "events:" in text


def test_show_before_delivery_has_no_mailbox_item(postroom, spool):
    """A message not yet filed in a mailbox shows ``mailbox: null``, and no receipts or events."""
    message = spool.add(b"<Invoice/>")
    shown = postroom.json("message", "show", message.id)
    assert (shown["mailbox"], shown["receipts"], shown["events"]) == (None, [], [])
    assert "mailbox: -" in postroom.ok("message", "show", message.id).stdout.splitlines()


@pytest.mark.parametrize("command", ["show", "retry", "export"])
def test_an_unknown_message_is_refused(postroom, tmp_path, command):
    """Every command about one message says when there is no such message."""
    out = ["--out", tmp_path / "x.xml"] if command == "export" else []
    assert postroom.refused("message", command, "0" * 32, *out) == f"no message {'0' * 32!r}"
    assert not (tmp_path / "x.xml").exists()


# -- message retry --------------------------------------------------------------------------------------


def test_retry_revives_a_dead_delivery_and_is_audited(postroom, spool):
    """A dead delivery is due again, the message accepted again, in one change with a message.retried event."""
    message = spool.add(b"<Invoice/>", targets=("as2",))
    with spool.engine.begin() as conn:
        kill_deliveries(conn, message, T0)
    [dead] = postroom.json("message", "show", message.id)["deliveries"]
    assert (dead["state"], dead["attempts"], dead["last_error"]) == ("dead", 1, "connection refused")
    assert postroom.json("message", "show", message.id)["state"] == "failed"
    before = postroom.json("audit", "list", "--limit", "100000")

    assert postroom.ok("message", "retry", message.id).stdout == f"message {message.id}: 1 delivery due now\n"

    shown = postroom.json("message", "show", message.id)
    assert shown["state"] == "accepted"
    [delivery] = shown["deliveries"]
    assert (delivery["id"], delivery["state"], delivery["attempts"]) == (dead["id"], "pending", 1)
    [event] = new_events(postroom, before)
    assert (event["event"], event["actor"], event["message_id"]) == ("message.retried", ACTOR, message.id)
    assert event["details"] == {"partner": "globex", "deliveries": [dead["id"]]}
    assert postroom.json("audit", "verify")["ok"] is True


def test_retry_with_nothing_to_retry_is_refused(postroom, spool):
    """A delivered message has nothing to retry: exit 1, no audit event."""
    message = spool.add(b"<Invoice/>")
    with spool.engine.begin() as conn:
        finish_deliveries(conn, message, T0)
    before = postroom.json("audit", "list", "--limit", "100000")
    assert postroom.refused("message", "retry", message.id) == (
        f"message {message.id} has no failed or waiting delivery to retry")
    assert new_events(postroom, before) == []


def test_retry_of_a_corrupt_message_is_refused(postroom, spool):
    """Retrying cannot help a message whose bytes are gone; the message says how to recover."""
    message = spool.add(b"<Invoice/>")
    with spool.engine.begin() as conn:
        records.set_message_state(conn, message.id, "corrupt", T0)
    assert "is corrupt" in postroom.refused("message", "retry", message.id)


# -- message export -------------------------------------------------------------------------------------


def test_export_writes_the_exact_bytes_privately(postroom, spool, tmp_path):
    """The file holds the stored bytes unchanged (BOM, CRLF, NUL and all), readable by the owner only."""
    message = spool.add(AWKWARD)
    out = tmp_path / "invoice.xml"
    result = postroom.ok("message", "export", message.id, "--out", out)
    assert result.stdout == f"message {message.id}: {len(AWKWARD)} bytes written to {out}\n"
    assert out.read_bytes() == AWKWARD
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_export_does_not_overwrite_without_force(postroom, spool, tmp_path):
    """An existing file is kept unless --force says to replace it."""
    message = spool.add(AWKWARD)
    out = tmp_path / "invoice.xml"
    out.write_bytes(b"keep me")
    assert postroom.refused("message", "export", message.id, "--out", out) == (
        f"{out} already exists; pass --force to replace it")
    assert out.read_bytes() == b"keep me"
    postroom.ok("message", "export", message.id, "--out", out, "--force")
    assert out.read_bytes() == AWKWARD


def test_export_refuses_a_dangling_symlink_too(postroom, spool, tmp_path):
    """A symlink pointing nowhere is still something in the way: refused without --force."""
    message = spool.add(AWKWARD)
    out = tmp_path / "link.xml"
    out.symlink_to(tmp_path / "nowhere")
    assert "already exists" in postroom.refused("message", "export", message.id, "--out", out)


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.unlink(), "are missing from the spool; run `postroom spool check`"),
    (lambda path: path.write_bytes(b"<Invoice>edited</Invoice>"),
     "have changed since they were accepted; run `postroom spool check`"),
])
def test_export_refuses_damaged_bytes(postroom, spool, tmp_path, damage, message):
    """A missing or changed blob is never passed off as the document: exit 1 and no file."""
    stored = spool.add(AWKWARD)
    damage(spool.blobs.path(stored.sha256))
    out = tmp_path / "invoice.xml"
    assert postroom.refused("message", "export", stored.id, "--out", out) == (
        f"message {stored.id}: its stored bytes (blob {stored.sha256}) {message}")
    assert not out.exists()


def test_export_to_a_missing_directory_is_refused(postroom, spool, tmp_path):
    """An unwritable destination is a user error with the reason, not a traceback."""
    message = spool.add(AWKWARD)
    out = tmp_path / "no" / "such" / "dir" / "invoice.xml"
    assert postroom.refused("message", "export", message.id, "--out", out) == (
        f"cannot write {out}: No such file or directory")


@pytest.mark.parametrize("args", [[], ["--out"], ["--force"]])
def test_export_usage_errors_exit_2(postroom, spool, args):
    """--out is required and takes a value."""
    message = spool.add(AWKWARD)
    assert postroom("message", "export", message.id, *args).exit_code == 2


def test_export_to_a_directory_is_a_usage_error(postroom, spool, tmp_path):
    """FILE must be a file."""
    message = spool.add(AWKWARD)
    assert postroom("message", "export", message.id, "--out", tmp_path).exit_code == 2


# -- spool check ----------------------------------------------------------------------------------------


def test_check_of_an_intact_spool_passes(postroom, spool):
    """Exit 0 with the summary line only."""
    spool.add(b"<Invoice>1</Invoice>", 0)
    spool.add(b"<Invoice>2</Invoice>", 1)
    with spool.engine.begin() as conn:
        store_quarantined(conn, spool.blobs, b"not xml", T0)
    assert postroom.ok("spool", "check").stdout == (
        "spool check: 2 messages, 1 quarantined, 0 damaged, 0 unreferenced blobs\n")
    assert postroom.json("spool", "check") == {
        "messages": 2, "quarantined": 1, "damaged": [], "repaired": [], "unreferenced": []}


def test_check_finds_deleted_and_modified_blobs_and_marks_them_corrupt(postroom, spool):
    """Exit 1, one line per damage; the messages become corrupt with message.corrupt events, once."""
    gone = spool.add(b"<Invoice>gone</Invoice>", 0)
    fine = spool.add(b"<Invoice>fine</Invoice>", 1)
    edited = spool.add(b"<Invoice>100.00</Invoice>", 2)
    spool.blobs.path(gone.sha256).unlink()
    spool.blobs.path(edited.sha256).write_bytes(b"<Invoice>999.00</Invoice>")
    before = postroom.json("audit", "list", "--limit", "100000")

    result = postroom("spool", "check")
    assert failed(result, "2 damaged: restore missing or changed blobs from a backup").splitlines() == [
        "spool check: 3 messages, 0 quarantined, 2 damaged, 0 unreferenced blobs",
        f"message {gone.id}: blob {gone.sha256} missing (marked corrupt)",
        f"message {edited.id}: blob {edited.sha256} changed (marked corrupt)",
    ]
    assert [m["id"] for m in postroom.json("message", "list", "--state", "corrupt")] == [edited.id, gone.id]
    assert postroom.json("message", "show", fine.id)["state"] == "accepted"
    events = new_events(postroom, before)
    assert [(e["event"], e["actor"], e["message_id"], e["details"]) for e in events] == [
        ("message.corrupt", ACTOR, gone.id, {"sha256": gone.sha256, "problem": "missing"}),
        ("message.corrupt", ACTOR, edited.id, {"sha256": edited.sha256, "problem": "changed"}),
    ]
    assert postroom.json("message", "show", gone.id)["events"][0]["event"] == "message.corrupt"
    assert postroom.json("audit", "verify")["ok"] is True

    again = postroom("spool", "check")
    assert failed(again, "2 damaged").splitlines()[1:] == [
        f"message {gone.id}: blob {gone.sha256} missing (already marked corrupt)",
        f"message {edited.id}: blob {edited.sha256} changed (already marked corrupt)",
    ]
    assert len(new_events(postroom, before)) == 2


def test_check_json_reports_damage_quarantine_and_unreferenced_blobs(postroom, spool):
    """--json prints the whole report (and still exits 1); quarantined payloads are reported, not marked."""
    message = spool.add(b"<Invoice/>")
    with spool.engine.begin() as conn:
        item = store_quarantined(conn, spool.blobs, b"<refused/>", T0)
    spool.blobs.path(message.sha256).unlink()
    spool.blobs.path(item.sha256).unlink()
    loose = put_blob(spool.blobs, b"published, never committed")

    result = postroom("spool", "check", "--json")
    assert json.loads(failed(result, "2 damaged")) == {
        "messages": 1,
        "quarantined": 1,
        "damaged": [
            {"kind": "message", "id": message.id, "sha256": message.sha256, "problem": "missing", "marked": True},
            {"kind": "quarantine", "id": item.id, "sha256": item.sha256, "problem": "missing", "marked": False},
        ],
        "repaired": [],
        "unreferenced": [loose],
    }
    assert postroom.json("message", "show", message.id)["state"] == "corrupt"


def test_unreferenced_blobs_alone_do_not_fail_the_check(postroom, spool):
    """A blob no row names is counted, kept, and not an error."""
    loose = put_blob(spool.blobs, b"orphan")
    assert postroom.ok("spool", "check").stdout == (
        "spool check: 0 messages, 0 quarantined, 0 damaged, 1 unreferenced blobs\n")
    assert spool.blobs.exists(loose)


def test_check_after_a_restore_repairs_the_message(postroom, spool):
    """Once the blob is back, the next check gives the message its state back and retry works again."""
    data = b"<Invoice>restore me</Invoice>"
    message = spool.add(data, targets=("as2",))
    with spool.engine.begin() as conn:
        kill_deliveries(conn, message, T0)
    spool.blobs.path(message.sha256).unlink()
    failed(postroom("spool", "check"), "1 damaged")
    assert "is corrupt" in postroom.refused("message", "retry", message.id)

    put_blob(spool.blobs, data)
    assert postroom.ok("spool", "check").stdout.splitlines() == [
        "spool check: 1 messages, 0 quarantined, 0 damaged, 0 unreferenced blobs",
        f"message {message.id}: blob intact again, back to failed",
    ]
    assert [e["event"] for e in postroom.json("message", "show", message.id)["events"]] == [
        "message.corrupt", "message.repaired"]
    postroom.ok("message", "retry", message.id)
    assert postroom.json("message", "show", message.id)["state"] == "accepted"
