# -*- test-case-name: tests.e2e.test_sftp_door -*-
"""The SFTP door wired into the daemon: the asyncssh listener on the reactor's loop, and its backend.

:class:`SFTPDoor` gives :class:`~gateway.listeners.ListenerService` a ``listen(endpoint)`` for a
``tcp:PORT[:interface=ADDR]`` endpoint; the listening object it returns reports its bound port (for
``ports.json``) and, on ``stopListening``, closes the acceptor *and* every open connection (asyncssh's
``close()`` leaves established connections running). asyncssh coroutines start from Twisted through
``Deferred.fromFuture(asyncio.ensure_future(…))``; everything the door asks the gateway — the intake,
mailbox listings, the download and acknowledgement records — runs in threads through Deferreds.
"""

import asyncio
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import asyncssh
import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway import sftp_files as files
from gateway.database_service import DatabaseService
from gateway.metrics import Metrics
from gateway.portal_api import thd_mark_as
from gateway.receipts import ReceiptSigner
from protocols.sftp import server as door
from protocols.sftp.bans import BanPolicy, Bans
from spool import audit
from spool.blobs import BlobStore

_log = Logger()


def parse_endpoint(endpoint: str) -> tuple[str | None, int]:
    """``(interface, port)`` of a Twisted ``tcp:`` endpoint string (``tcp:2222:interface=127.0.0.1``).

    :raises ValueError: not a ``tcp:`` endpoint with a port.
    """
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    if parts[0] != "tcp":
        raise ValueError(f"the SFTP door listens on tcp: endpoints only, not {endpoint!r}")
    options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    positional = [p for p in parts[1:] if "=" not in p]
    port = options.get("port") or (positional[0] if positional else None)
    if port is None or not port.isdigit():
        raise ValueError(f"no port in {endpoint!r}")
    return options.get("interface") or None, int(port)


@attrs.define
class SFTPPort:
    """The running listener, as :class:`~gateway.listeners.ListenerService` sees a port."""

    acceptor: asyncssh.SSHAcceptor
    connections: set
    loop: asyncio.AbstractEventLoop
    bound: int

    def getHost(self):
        """An object with the bound ``port``."""
        return attrs.make_class("Host", ["port"])(self.bound)

    def stopListening(self) -> Deferred:
        """Stop accepting, then close every open connection and wait for them (bounded)."""
        return Deferred.fromFuture(asyncio.ensure_future(self._stop(), loop=self.loop))

    async def _stop(self) -> None:
        self.acceptor.close()
        for conn in list(self.connections):
            conn.close()
        waits = [c.wait_closed() for c in list(self.connections)] + [self.acceptor.wait_closed()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
        except TimeoutError:
            for conn in list(self.connections):
                conn.abort()
        self.connections.clear()


def thd_audit_ban(engine, source: str, username: str, seconds: int, now: datetime) -> None:
    """The ban in the audit trail (the username is what the client claimed, not an authenticated partner)."""
    with engine.begin() as conn:
        audit.append(conn, "gateway", "sftp.banned", now, details={"source": source, "username": username[:100],
                                                                   "seconds": seconds})


class SFTPDoor:
    """The door's composition: host keys, the backend over the gateway's services, and ``listen``."""

    def __init__(self, reactor, host_keys: list[Path], db: DatabaseService, blobs: BlobStore, signer: ReceiptSigner,
                 directory: Callable, accept: Callable, run_io: Callable[..., Deferred], now: Callable[[], datetime],
                 metrics: Metrics, max_bytes: int, ban_policy: BanPolicy, max_connections: int,
                 max_rate: int = 0):
        self._loop = getattr(reactor, "_asyncioEventloop", None) or asyncio.get_event_loop()
        self._host_keys = host_keys
        self._db, self._signer, self._now, self._metrics = db, signer, now, metrics
        self.connections: set = set()
        self.backend = door.Backend(
            directory=directory, accept=accept, outbox=lambda p: db.run(files.thd_outbox, p),
            outbox_file=lambda p, name: db.run(files.thd_outbox_file, p, name),
            receipts=lambda p: db.run(files.thd_receipts, p),
            receipt_file=lambda p, name: db.run(files.thd_receipt_file, p, name), mark=self._mark,
            open_blob=lambda sha256: run_io(blobs.open, sha256), run_io=run_io, stage=blobs.stage,
            discard=blobs.discard,
            transferred=self._transferred, bans=Bans(reactor.seconds, ban_policy), banned=self._banned,
            max_bytes=max_bytes, max_connections=max_connections, max_rate=max_rate)

    def _banned(self, source: str, username: str, seconds: int) -> None:
        self._metrics.sftp_bans.inc()
        _log.warn("sftp: banned {source} for {seconds} s after repeated failed logins (last as {user!r})",
                  source=source, seconds=seconds, user=username)
        d = self._db.run(thd_audit_ban, source, username, seconds, self._now())
        d.addErrback(lambda f: _log.failure("sftp: cannot audit a ban", f))

    def _mark(self, partner_id: str, message_id: str, event: str) -> Deferred:
        return self._db.run(thd_mark_as, self._signer, partner_id, f"sftp:{partner_id}", message_id, event,
                            self._now())

    def _transferred(self, record: dict) -> None:
        self._metrics.sftp_transfers.labels(result=record["result"]).inc()
        _log.info("sftp transfer {transfer}", transfer=door.transfer_line(record))

    def listen(self, endpoint: str) -> Deferred:
        """Start listening on ``endpoint``; fires with an :class:`SFTPPort`."""
        return Deferred.fromFuture(asyncio.ensure_future(self._listen(endpoint), loop=self._loop))

    async def _listen(self, endpoint: str) -> SFTPPort:
        host, port = parse_endpoint(endpoint)
        keys = [asyncssh.read_private_key(str(p)) for p in self._host_keys]
        acceptor = await door.listen(host, port, keys, self.backend, self.connections, self._loop)
        return SFTPPort(acceptor, self.connections, self._loop, acceptor.get_port())
