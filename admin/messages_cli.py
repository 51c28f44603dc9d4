# -*- test-case-name: tests.admin.test_messages_cli -*-
"""``postroom message …`` and ``postroom spool check``: the spool as operators see it."""

import hashlib
import os
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import Connection

from admin.context import ACTOR, Context, UserError, json_option, now, pass_ctx
from admin.output import emit_json, emit_record, emit_table
from certs.files import write_atomically
from spool import audit, records
from spool.blobs import BlobNotFound, BlobStore
from spool.check import Damage, check_spool, mark_corrupt, mark_repaired
from spool.schema import MESSAGE_STATES, RECEIPT_KINDS


@click.group("message")
def message() -> None:
    """Accepted messages, their deliveries and receipts."""


@message.command("list")
@click.option("--partner", "partner_id", metavar="ID", help="Only messages from or to this partner.")
@click.option("--state", type=click.Choice(MESSAGE_STATES), help="Only messages in this state.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100000))
@json_option
@pass_ctx
def message_list(c: Context, partner_id: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """Messages, newest first."""
    with c.reading() as conn:
        rows = [m.to_json() for m in records.list_messages(conn, partner_id=partner_id, state=state, limit=limit)]
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, ["id", "received_at", "sender_id", "recipient_id", "kind", "number", "state"])


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _mailbox(conn: Connection, message: records.Message) -> dict[str, Any] | None:
    """Where the message stands in its recipient's mailbox; ``None`` until it is delivered there."""
    try:
        item = records.mailbox_item(conn, message.recipient_id, message.id)
    except records.UnknownMessage:
        return None
    return {"state": item.state, "delivered_at": _iso(item.delivered_at), "downloaded_at": _iso(item.downloaded_at),
            "acknowledged_at": _iso(item.acknowledged_at)}


def _show(conn: Connection, message_id: str) -> dict[str, Any]:
    """One message with its deliveries, receipts, mailbox state and audit events, JSON-ready."""
    message = records.get_message(conn, message_id)
    receipts = [{"id": r.id, "kind": r.kind, "disposition": r.disposition, "created_at": r.created_at.isoformat(),
                 "state": r.state} for r in records.receipts_for(conn, message_id, RECEIPT_KINDS)]
    events = [{"id": e.seq, "at": e.at.isoformat(), "actor": e.actor, "event": e.event, "details": e.details}
              for e in audit.events(conn, message_id=message_id)]
    return message.to_json() | {
        "deliveries": [d.to_json() for d in records.deliveries_of(conn, message_id)],
        "receipts": receipts,
        "mailbox": _mailbox(conn, message),
        "events": events,
    }


@message.command("show")
@click.argument("message_id", metavar="MSG")
@json_option
@pass_ctx
def message_show(c: Context, message_id: str, as_json: bool) -> None:
    """One message: its fields, deliveries, receipts, mailbox state and audit events."""
    with c.reading() as conn:
        record = _show(conn, message_id)
    emit_json(record) if as_json else emit_record(record)


@message.command("retry")
@click.argument("message_id", metavar="MSG")
@pass_ctx
def message_retry(c: Context, message_id: str) -> None:
    """Make a message's dead or waiting deliveries due now."""
    with c.change("message.retried", None, message_id=message_id) as (conn, facts):
        recipient_id = records.get_message(conn, message_id).recipient_id
        due = [d.id for d in records.retry(conn, message_id, now()) if d.state == "pending"]
        facts.update(partner=recipient_id, deliveries=due)
    click.echo(f"message {message_id}: {len(due)} {'delivery' if len(due) == 1 else 'deliveries'} due now")


def _stored_bytes(blobs: BlobStore, message: records.Message) -> bytes:
    """The message's bytes exactly as received, checked against their SHA-256 on the way out."""
    where = f"message {message.id}: its stored bytes (blob {message.sha256})"
    try:
        with blobs.open(message.sha256) as f:
            data = f.read()
    except BlobNotFound:
        raise UserError(f"{where} are missing from the spool; run `postroom spool check`") from None
    except OSError as e:
        raise UserError(f"{where} cannot be read: {e}") from e
    if hashlib.sha256(data).hexdigest() != message.sha256:
        raise UserError(f"{where} have changed since they were accepted; run `postroom spool check`")
    return data


@message.command("export")
@click.argument("message_id", metavar="MSG")
@click.option("--out", required=True, metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the document.")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_ctx
def message_export(c: Context, message_id: str, out: Path, force: bool) -> None:
    """Write a message's document to FILE, byte for byte as it was received."""
    with c.reading() as conn:
        stored = records.get_message(conn, message_id)
    if os.path.lexists(out) and not force:
        raise UserError(f"{out} already exists; pass --force to replace it")
    data = _stored_bytes(c.blobs, stored)
    try:
        write_atomically(out, data, 0o600)  # an invoice is business-confidential, like the spool it came from
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from e
    click.echo(f"message {message_id}: {len(data)} bytes written to {out}")


def _note(damage: Damage, marked: set[str]) -> str:
    """What the check did about a damaged row."""
    if damage.kind != "message" or not damage.corrupt:
        return ""  # quarantine rows have no state; an unreadable blob may read fine next time
    return " (marked corrupt)" if damage.id in marked else " (already marked corrupt)"


@click.group("spool")
def spool() -> None:
    """The durable spool's blobs."""


@spool.command("check")
@json_option
@pass_ctx
def spool_check(c: Context, as_json: bool) -> None:
    """Re-hash every stored blob; mark messages whose bytes are missing or changed corrupt (exit 1).

    Messages marked corrupt whose bytes are back (restored from a backup) get their state back.
    Blobs no row names are counted, never deleted.
    """
    blobs = c.blobs
    # Hashing can take long: it reads in its own read-only transaction, so the gateway keeps committing.
    with c.reading() as conn:
        report = check_spool(conn, blobs)
    with c.transaction() as conn:
        at = now()
        marked = {d.id for d in report.damaged
                  if d.kind == "message" and d.corrupt and mark_corrupt(conn, d, at, ACTOR)}
        repaired = {message_id: mark_repaired(conn, message_id, at, ACTOR) for message_id in report.repaired}
    if as_json:
        emit_json({
            "messages": report.messages,
            "quarantined": report.quarantined,
            "damaged": [d.to_json() | {"marked": d.kind == "message" and d.id in marked} for d in report.damaged],
            "repaired": [{"id": m, "state": s} for m, s in repaired.items()],
            "unreferenced": list(report.unreferenced),
        })
    else:
        click.echo(f"spool check: {report.messages} messages, {report.quarantined} quarantined, "
                   f"{len(report.damaged)} damaged, {len(report.unreferenced)} unreferenced blobs")
        for d in report.damaged:
            click.echo(f"{d.kind} {d.id}: blob {d.sha256} {d.problem}{_note(d, marked)}")
        for message_id, state in repaired.items():
            click.echo(f"message {message_id}: blob intact again, back to {state}")
    if report.damaged:
        raise UserError(f"{len(report.damaged)} damaged: restore missing or changed blobs from a backup, "
                        "then run `postroom spool check` again")
