# -*- test-case-name: tests.peers.test_postroom_outbound -*-
"""``postroom send --to ID FILE``: one AS2 message to a partner now, with its MDN judged and shown.

For operators: test a new partner's settings, or send a document by hand. It uses exactly the
daemon's outbound path (same options, TLS, signing and MDN checks) but waits for a sync MDN
in the foreground; nothing is stored in the spool, and the attempt is in the audit trail.
"""

import mimetypes
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import attrs
import click
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import react

from admin.context import Context, UserError, json_option, pass_ctx
from admin.output import emit_json, emit_record
from certs.x509 import load_key_and_certificate, read_file
from partners.directory import load_directory
from protocols.as2.client import Poster
from protocols.as2.mime import Region
from protocols.as2.outbound import SendOptions
from protocols.as2.push import AS2Push, Identity
from protocols.envelope import DeliveryFailed
from spool.records import Delivery, Message, new_id


@click.command("send")
@click.option("--to", "partner_id", required=True, metavar="ID", help="The partner (its AS2 URL and options).")
@click.option("--content-type", help="The payload's MIME type (default: guessed from the file name).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@pass_ctx
def send(c: Context, partner_id: str, content_type: str | None, file: Path, as_json: bool) -> None:
    """Send FILE to partner ID over AS2 and wait for its MDN (an async MDN setting is sent as sync here)."""
    config = c.config
    with c.reading() as conn:
        partner = load_directory(conn).get(partner_id)
    if partner is None:
        raise UserError(f"no partner {partner_id}")
    options = SendOptions.from_stored(partner.as2_options)
    if options.mdn == "async":
        partner = attrs.evolve(partner, as2_options={**options.changes(), "mdn": "sync"})
    home = config.home
    tls = load_key_and_certificate(read_file(home.resolve(config.tls.private_key)),
                                   read_file(home.resolve(config.tls.certificate)))
    sign = load_key_and_certificate(read_file(home.resolve(config.identity.sign_private_key)),
                                    read_file(home.resolve(config.identity.sign_certificate)))
    size = file.stat().st_size
    now = datetime.now(UTC)
    message = Message(id=new_id(now), received_at=now, sender_id="-", recipient_id=partner_id, channel="as2",
                      sha256="", size=size, kind="opaque", signed=False, route="cli", state="accepted",
                      updated_at=now, filename=file.name,
                      content_type=content_type or mimetypes.guess_type(file.name)[0] or "application/octet-stream")
    delivery = Delivery(id=0, message_id=message.id, recipient_id=partner_id, target="as2", state="claimed",
                        attempts=0, next_attempt_at=now, last_error=None)
    outcome: dict = {}

    async def main(reactor) -> None:
        poster = Poster(reactor, tls)
        identity = Identity(config.gateway.as2_id, config.gateway.hostname, sign.key, sign.certificate, lambda: None)
        pusher = AS2Push(poster, identity, lambda m: succeed(Region.of_file(file.open("rb"))), maybeDeferred,
                         lambda: datetime.now(UTC), tempfile.TemporaryFile)
        try:
            pushed = await pusher.push(message, delivery, partner)
            outcome.update(outcome="sent", message_id=pushed.remote_id, mic=pushed.mic, mdn=pushed.detail)
        except DeliveryFailed as e:
            outcome.update(outcome="failed", error=str(e))
        finally:
            await poster.close()

    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    # the AS2 Message-ID goes in the details: the audit's message_id column names spooled messages only
    details = {("as2_message_id" if k == "message_id" else k): v for k, v in outcome.items()}
    with c.change("as2.sent", partner_id, file=file.name, size=size, **details):
        pass
    emit_json(outcome) if as_json else emit_record(outcome)
    if outcome.get("outcome") != "sent":
        raise SystemExit(1)
