# -*- test-case-name: tests.e2e.test_sftp_door -*-
"""The SFTP door's asyncssh adapter: who may connect, and what each SFTP request does to the tree.

:class:`DoorSSHServer` (one per connection) drops a source no active partner allowlists in
``connection_made``, before any SSH byte is sent; then the username is the partner ID and only a
public key registered to that active partner, or an OpenSSH user certificate for the principal
``ID`` signed by a CA registered to it, from a source in that partner's own allowlist, logs in
(asyncssh checks the certificate's validity period, principals and ``source-address``). Three
failed attempts disconnect. :class:`DoorSFTPServer` (one per session) serves the virtual tree of
:mod:`protocols.sftp.tree` — nothing on disk per partner:

- ``/inbox/NAME``: an upload is written straight into a spool staging file (hashed as it arrives, so
  the bytes are written once); a *clean* close fsyncs it and hands it to the intake, and replies
  only once the decision is durable (a refusal is an SFTP failure carrying the first finding). A
  close that asyncssh makes while tearing a dead channel down ingests nothing. Temporary names
  (:func:`~protocols.sftp.tree.is_held`) are taken on rename to a final name.
- ``/outbox/``: the mailbox; the first complete read of a file records the download, ``remove``
  acknowledges it (both with the sender's return receipt, as the portal does).
- ``/receipts/``: ``NAME.mdn``, the signed receipt for each upload, as a MIME entity.

Names are looked up one at a time through the backend; only ``ls`` asks for a whole folder.

asyncssh runs on the reactor's asyncio loop: Twisted Deferreds are awaited through
``Deferred.asFuture(loop)``, never directly. The clean-close test reads the channel's private
``_recv_state`` (asyncssh 2.24.1 is pinned; ``tests/protocols/sftp/test_server.py`` catches a change).
"""

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import IO, Any

import asyncssh
import attrs
from asyncssh.sftp import FXF_APPEND, FXF_CREAT, FXF_READ, FXF_WRITE, SFTPAttrs, SFTPName
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from protocols.envelope import Envelope, IntakeUnavailable
from protocols.sftp.bans import Bans
from protocols.sftp.pace import Pace
from protocols.sftp.tree import INBOX, OUTBOX, RECEIPTS, PathRefused, VPath, is_held, resolve
from spool.blobs import BlobWriter, PayloadTooLarge, SpoolError, StagedBlob

_log = Logger()

MAX_AUTH_FAILURES = 3
#: Modern algorithms only (ML-KEM/curve25519 key exchange, AES-GCM or AES-CTR with encrypt-then-MAC).
#: No chacha20-poly1305: asyncssh builds its cipher objects for every packet in Python, which cut a single
#: upload from 165 to 125 MB/s here, while AES runs in hardware (D35).
KEX_ALGS = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org"]
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr"]
MAC_ALGS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com"]
_DIR_MODE, _FILE_MODE = 0o040500, 0o100400
#: In-order writes are gathered into pieces this large before a thread writes them: one hop per piece,
#: not per SFTP packet (at most this much per open upload handle is held in memory).
BUFFER = 256 * 1024


@attrs.frozen
class OutboxFile:
    """A mailbox item as ``/outbox/`` shows it."""

    name: str
    message_id: str
    size: int
    sha256: str
    mtime: int


@attrs.frozen
class ReceiptFile:
    """A receipt as ``/receipts/`` shows it; ``data`` (the whole MIME entity) only when looked up by name."""

    name: str
    size: int
    mtime: int
    receipt_id: str
    data: bytes | None = None


@attrs.frozen
class Backend:
    """What the door needs from the gateway; every ``Deferred`` fires on the reactor."""

    directory: Callable[[], Any]  #: the partner directory snapshot
    accept: Callable[[Envelope, StagedBlob], Deferred]  #: the intake
    outbox: Callable[[str], Deferred]  #: ``partner_id -> list[OutboxFile]``
    outbox_file: Callable[[str, str], Deferred]  #: ``(partner_id, name) -> OutboxFile | None``
    receipts: Callable[[str], Deferred]  #: ``partner_id -> list[ReceiptFile]`` (without data)
    receipt_file: Callable[[str, str], Deferred]  #: ``(partner_id, name) -> ReceiptFile | None`` (with data)
    mark: Callable[[str, str, str], Deferred]  #: ``(partner_id, message_id, "downloaded"|"acknowledged")``
    open_blob: Callable[[str], Deferred]  #: ``sha256 -> binary file`` (opened in a thread)
    run_io: Callable[..., Deferred]  #: run a blocking function on the I/O pool
    stage: Callable[[], BlobWriter]  #: a new spool staging file (blocking: call it through ``run_io``)
    discard: Callable[[StagedBlob], None]  #: remove a staged file never handed to the intake (blocking)
    transferred: Callable[[dict], None]  #: one transfer record (logged as JSON and counted)
    bans: Bans  #: failed logins per source and partner; banned sources are dropped like strangers
    banned: Callable[[str, str, int], None]  #: ``(source, username, seconds)``: a source was just banned
    max_bytes: int
    max_handles: int = 64
    max_sessions: int = 4
    max_connections: int = 8  #: logged-in connections per partner at once
    max_rate: int = 0  #: bytes per second per connection, uploads and downloads together (0: no limit)
    #: partner ID → its logged-in connections now (shared by every connection of this door)
    logged_in: dict[str, int] = attrs.field(factory=dict, eq=False)


class DoorSSHServer(asyncssh.SSHServer):
    """One connection: the allowlist before any byte, then public-key login as a partner."""

    def __init__(self, backend: Backend, connections: set):
        self._backend = backend
        self._connections = connections
        self._conn: asyncssh.SSHServerConnection | None = None
        self.host = ""
        self.partner = None
        self.failures = 0
        self.sessions = 0
        self._counted = False
        self._certified = None  # the partner whose CAs may certify this login
        self.pace: Pace | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Drop a source no active partner allowlists: it never sees a banner."""
        self._conn = conn
        self.host = (conn.get_extra_info("peername") or ("",))[0]
        if self._backend.max_rate:
            self.pace = Pace(self._backend.max_rate, time.monotonic)
        if not self._backend.directory().allows_anyone(self.host):
            _log.info("sftp: refused {host}: not in any partner's allowlist", host=self.host)
            conn.abort()
            return
        if left := self._backend.bans.banned_for(self.host):
            _log.info("sftp: refused {host}: banned for {left:.0f} s more", host=self.host, left=left)
            conn.abort()
            return
        self._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self._connections.discard(self._conn)
        if self._counted:
            left = self._backend.logged_in[self.partner.id] - 1
            if left:
                self._backend.logged_in[self.partner.id] = left
            else:
                del self._backend.logged_in[self.partner.id]

    def auth_completed(self) -> None:
        """At most ``max_connections`` logged-in connections per partner."""
        self.partner = self.partner or self._certified
        logged_in = self._backend.logged_in
        if logged_in.get(self.partner.id, 0) >= self._backend.max_connections:
            _log.info("sftp: refused {partner} from {host}: {n} connections already", partner=self.partner.id,
                      host=self.host, n=logged_in[self.partner.id])
            self._conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS,
                                  f"at most {self._backend.max_connections} connections per partner")
            return
        logged_in[self.partner.id] = logged_in.get(self.partner.id, 0) + 1
        self._counted = True

    def begin_auth(self, username: str) -> bool:
        """Every login needs a key; certificates count only from CAs of the active partner ``username``."""
        partner = self._backend.directory().get(username)
        if partner is not None and partner.ssh_cas and partner.active and partner.allows(self.host):
            self._certified = partner
            self._conn.set_authorized_keys(asyncssh.import_authorized_keys("".join(
                f'cert-authority,principals="{partner.id}" {line}\n' for line in partner.ssh_cas)))
        return True

    def password_auth_supported(self) -> bool:
        """Passwords are off."""
        return False

    def kbdint_auth_supported(self) -> bool:
        """Keyboard-interactive is off."""
        return False

    def public_key_auth_supported(self) -> bool:
        """Public keys are the only way in."""
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """True only for a key registered to the active partner ``username``, from its own allowlist."""
        partner = self._backend.directory().by_ssh_fingerprint(key.get_fingerprint("sha256"))
        if (partner is not None and partner.id == username and partner.active and partner.allows(self.host)):
            self.partner = partner
            return True
        self._failed(username)
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """A certificate no registered CA of ``username`` signed for it (or out of date, or for another
        principal): a failed attempt like a wrong key."""
        self._failed(username)
        return False

    def _failed(self, username: str) -> None:
        """Count a failed login; ban the source, or disconnect, when it has failed too often."""
        self.failures += 1
        bans = self._backend.bans
        just_banned = bans.failed(self.host, username)
        _log.info("sftp: login refused for {user!r} from {host} ({n} on this connection, {m} for this username "
                  "from anywhere recently)", user=username, host=self.host, n=self.failures,
                  m=bans.failures_for_partner(username))
        if just_banned:
            self._backend.banned(self.host, username, round(bans.banned_for(self.host)))
            if self._conn is not None:
                self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many failed logins")
            return
        if self.failures >= MAX_AUTH_FAILURES and self._conn is not None:
            self._conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures")

    def session_requested(self) -> bool:
        """At most ``max_sessions`` SFTP sessions at once on one connection."""
        return self.sessions < self._backend.max_sessions


class _Upload:
    """A write handle in ``/inbox``: its staging file while open, the staged blob once closed."""

    def __init__(self, name: str, writer: BlobWriter):
        self.name = name
        self.writer: BlobWriter | None = writer
        self.staged: StagedBlob | None = None
        self.failed: str | None = None
        self.started = time.monotonic()
        self.pending = bytearray()  # in-order bytes not yet handed to the writer
        self.pending_at = 0  # their offset

    @property
    def size(self) -> int:
        """Bytes received so far."""
        if self.staged is not None:
            return self.staged.size
        written = self.writer.size if self.writer is not None else 0
        return max(written, self.pending_at + len(self.pending)) if self.pending else written


class _Download:
    """An open read handle in ``/outbox`` (a blob) or ``/receipts`` (bytes)."""

    def __init__(self, size: int, blob: IO[bytes] | None = None, data: bytes = b"", item: OutboxFile | None = None):
        self.size = size
        self.blob = blob
        self.data = data
        self.item = item
        self.ranges: dict[int, int] = {}

    def complete(self) -> bool:
        covered = 0
        for offset in sorted(self.ranges):
            if offset > covered:
                return False
            covered = max(covered, offset + self.ranges[offset])
        return covered >= self.size


def _denied(reason: str = "not allowed here") -> asyncssh.SFTPError:
    return asyncssh.SFTPPermissionDenied(reason)


def _thd_read(f: IO[bytes], offset: int, size: int) -> bytes:
    return os.pread(f.fileno(), size, offset)


class DoorSFTPServer(asyncssh.SFTPServer):
    """One SFTP session of one partner, over the virtual tree."""

    def __init__(self, chan: asyncssh.SSHServerChannel, backend: Backend, loop: asyncio.AbstractEventLoop):
        super().__init__(chan)
        self._backend = backend
        self._loop = loop
        self._owner: DoorSSHServer = chan.get_connection().get_owner()
        self._owner.sessions += 1
        self._partner = self._owner.partner
        self._handles = 0
        self._held: dict[str, _Upload] = {}  # closed uploads under a temporary name, waiting for a rename
        self._taken: dict[str, int] = {}  # final names taken this session (clients stat them after a put)

    # -- helpers -----------------------------------------------------------------------------------------

    async def _wait(self, d: Deferred) -> Any:
        return await d.asFuture(self._loop)

    async def _paced(self, size: int) -> None:
        """Hold the connection to ``[sftp] max_rate``, when there is one."""
        if self._owner.pace is not None and (delay := self._owner.pace.delay(size)):
            await asyncio.sleep(delay)

    def _where(self, path: bytes) -> VPath:
        try:
            return resolve(path)
        except PathRefused as e:
            raise (asyncssh.SFTPNoSuchFile(str(e)) if e.missing else _denied(str(e))) from None

    async def _outbox_file(self, name: str) -> OutboxFile:
        item = await self._wait(self._backend.outbox_file(self._partner.id, name))
        if item is None:
            raise asyncssh.SFTPNoSuchFile("no such document in your outbox")
        return item

    async def _receipt_file(self, name: str) -> ReceiptFile:
        receipt = await self._wait(self._backend.receipt_file(self._partner.id, name))
        if receipt is None:
            raise asyncssh.SFTPNoSuchFile("no such receipt")
        return receipt

    def _clean(self) -> bool:
        """True while the client itself sends the request (not asyncssh tearing a dead channel down)."""
        chan = self.channel
        return not chan.is_closing() and getattr(chan, "_recv_state", None) == "open"

    def _record(self, upload: _Upload, result: str) -> None:
        self._backend.transferred({
            "partner": self._partner.id, "ip": self._owner.host, "name": upload.name, "size": upload.size,
            "sha256": upload.staged.sha256 if upload.staged is not None else None,
            "duration": round(time.monotonic() - upload.started, 3), "result": result})

    # -- files -------------------------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        """Writes create uploads in ``/inbox``; reads open outbox documents and receipts."""
        where = self._where(path)
        if self._handles >= self._backend.max_handles:
            raise asyncssh.SFTPFailure(f"too many open files (at most {self._backend.max_handles})")
        if pflags & (FXF_WRITE | FXF_APPEND | FXF_CREAT):
            if where.folder != INBOX or not where.name:
                raise _denied("uploads go into /inbox")
            try:
                writer = await self._wait(self._backend.run_io(self._backend.stage))
            except SpoolError:
                raise asyncssh.SFTPFailure("temporary failure, retry") from None
            handle: object = _Upload(where.name, writer)
        elif pflags & FXF_READ and where.name and where.folder == OUTBOX:
            item = await self._outbox_file(where.name)
            handle = _Download(item.size, blob=await self._wait(self._backend.open_blob(item.sha256)), item=item)
        elif pflags & FXF_READ and where.name and where.folder == RECEIPTS:
            receipt = await self._receipt_file(where.name)
            handle = _Download(receipt.size, data=receipt.data or b"")
        else:
            raise _denied()
        self._handles += 1
        return handle

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        """Write into the staging file; past the size cap or on a spool fault, fail now and at close."""
        if not isinstance(file_obj, _Upload) or file_obj.writer is None:
            raise _denied("read-only")
        upload = file_obj
        if upload.failed:
            raise asyncssh.SFTPFailure(upload.failed)
        if offset + len(data) > self._backend.max_bytes:
            upload.failed = f"file too large: this gateway accepts at most {self._backend.max_bytes} bytes"
        else:
            await self._paced(len(data))
            try:
                await self._gather(upload, offset, data)
                return len(data)
            except PayloadTooLarge as e:
                upload.failed = f"file too large: this gateway accepts at most {e.limit} bytes"
            except SpoolError:
                upload.failed = "temporary failure, retry"
        raise asyncssh.SFTPFailure(upload.failed)

    async def _gather(self, upload: _Upload, offset: int, data: bytes) -> None:
        """Add ``data`` to the upload's in-order piece, writing the piece out when it is full or when the
        client writes somewhere else."""
        if upload.pending and offset != upload.pending_at + len(upload.pending):
            await self._flush(upload)
        if not upload.pending:
            upload.pending_at = offset
        upload.pending += data
        if len(upload.pending) >= BUFFER:
            await self._flush(upload)

    async def _flush(self, upload: _Upload) -> None:
        if upload.pending:
            data, at = bytes(upload.pending), upload.pending_at
            upload.pending.clear()
            await self._wait(self._backend.run_io(upload.writer.write_at, at, data))

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """Bytes of a document or receipt; every range read is remembered to spot a complete download."""
        if not isinstance(file_obj, _Download):
            raise _denied("write-only")
        if file_obj.blob is not None:
            data = await self._wait(self._backend.run_io(_thd_read, file_obj.blob, offset, size))
        else:
            data = file_obj.data[offset:offset + size]
        if data:
            file_obj.ranges[offset] = max(len(data), file_obj.ranges.get(offset, 0))
            await self._paced(len(data))
        return data

    async def close(self, file_obj: object) -> None:
        """A clean close of an upload is its commit: reply only once the intake's decision is durable."""
        self._handles -= 1
        clean = self._clean()
        if isinstance(file_obj, _Download):
            if file_obj.blob is not None:
                await self._wait(self._backend.run_io(file_obj.blob.close))
            if clean and file_obj.item is not None and file_obj.complete():
                await self._wait(self._backend.mark(self._partner.id, file_obj.item.message_id, "downloaded"))
            return
        upload: _Upload = file_obj  # type: ignore[assignment]
        if not clean or upload.failed:
            await self._discard(upload, "interrupted" if not clean else "refused")
            if clean:
                raise asyncssh.SFTPFailure(upload.failed)
            return
        try:
            await self._flush(upload)
            upload.staged = await self._wait(self._backend.run_io(upload.writer.finish))
        except SpoolError:
            upload.writer = None
            self._record(upload, "unavailable")
            raise asyncssh.SFTPFailure("temporary failure, retry") from None
        upload.writer = None
        if is_held(upload.name):
            old = self._held.pop(upload.name, None)
            if old is not None:
                await self._discard(old, "replaced")
            self._held[upload.name] = upload
            return
        await self._ingest(upload, upload.name)

    async def _discard(self, upload: _Upload, result: str) -> None:
        """Drop an upload the intake will never see: its staging file goes, its transfer is recorded."""
        upload.pending.clear()
        if upload.writer is not None:
            await self._wait(self._backend.run_io(upload.writer.abort))
        elif upload.staged is not None:
            await self._wait(self._backend.run_io(self._backend.discard, upload.staged))
        self._record(upload, result)

    async def _ingest(self, upload: _Upload, name: str) -> None:
        """Hand a staged upload to the intake (which owns the staged file from here on)."""
        upload.name = name
        envelope = Envelope(sender=self._partner, channel="sftp", filename=name)
        try:
            decision = await self._wait(self._backend.accept(envelope, upload.staged))
        except IntakeUnavailable:
            self._record(upload, "unavailable")
            raise asyncssh.SFTPFailure("temporary failure, retry") from None
        if not decision.accepted:
            self._record(upload, "rejected")
            reason = decision.findings[0].message if decision.findings else "refused"
            raise asyncssh.SFTPFailure(f"refused: {reason}")
        self._record(upload, decision.outcome)
        self._taken[name] = upload.size

    def exit(self) -> None:
        """The session ended: open uploads and held ones never renamed are dropped."""
        self._owner.sessions -= 1
        for upload in self._held.values():
            self._backend.run_io(self._backend.discard, upload.staged).addErrback(
                lambda f: _log.failure("sftp: cannot drop a held upload", f))
            self._record(upload, "abandoned")
        self._held.clear()

    # -- names -------------------------------------------------------------------------------------------

    def realpath(self, path: bytes) -> bytes:
        """The canonical absolute path inside the tree."""
        return self._where(path).as_bytes()

    async def stat(self, path: bytes) -> SFTPAttrs:
        """Folders, outbox documents, receipts, and this session's own uploads."""
        where = self._where(path)
        if not where.name:
            return SFTPAttrs(permissions=_DIR_MODE | (0o200 if where.folder == INBOX else 0), size=0)
        if where.folder == INBOX:
            held = self._held.get(where.name)
            size = held.size if held is not None else self._taken.get(where.name)
            if size is None:
                raise asyncssh.SFTPNoSuchFile("no such file")
            return SFTPAttrs(permissions=0o100200, size=size)
        if where.folder == OUTBOX:
            item = await self._outbox_file(where.name)
            return SFTPAttrs(permissions=_FILE_MODE, size=item.size, mtime=item.mtime, atime=item.mtime)
        receipt = await self._receipt_file(where.name)
        return SFTPAttrs(permissions=_FILE_MODE, size=receipt.size, mtime=receipt.mtime, atime=receipt.mtime)

    lstat = stat

    async def fstat(self, file_obj: object) -> SFTPAttrs:
        """The size of an open handle."""
        size = file_obj.size if isinstance(file_obj, _Upload | _Download) else 0
        return SFTPAttrs(permissions=_FILE_MODE, size=size)

    async def scandir(self, path: bytes):
        """``/`` lists the three folders; each folder lists what this partner may see in it."""
        where = self._where(path)
        if where.name:
            raise asyncssh.SFTPNoSuchFile("not a folder")
        for dot in (b".", b".."):
            yield SFTPName(dot, attrs=SFTPAttrs(permissions=_DIR_MODE, size=0))
        if where.is_root:
            for folder in (INBOX, OUTBOX, RECEIPTS):
                yield SFTPName(folder.encode(), attrs=SFTPAttrs(permissions=_DIR_MODE, size=0))
        elif where.folder == INBOX:
            for name, upload in self._held.items():
                yield SFTPName(name.encode(), attrs=SFTPAttrs(permissions=0o100200, size=upload.size))
        elif where.folder == OUTBOX:
            for item in await self._wait(self._backend.outbox(self._partner.id)):
                yield SFTPName(item.name.encode(), attrs=SFTPAttrs(permissions=_FILE_MODE, size=item.size,
                                                                   mtime=item.mtime, atime=item.mtime))
        else:
            for receipt in await self._wait(self._backend.receipts(self._partner.id)):
                yield SFTPName(receipt.name.encode(), attrs=SFTPAttrs(
                    permissions=_FILE_MODE, size=receipt.size, mtime=receipt.mtime, atime=receipt.mtime))

    async def remove(self, path: bytes) -> None:
        """Removing an outbox document acknowledges it; a held upload may be dropped."""
        where = self._where(path)
        if where.folder == OUTBOX and where.name:
            item = await self._outbox_file(where.name)
            await self._wait(self._backend.mark(self._partner.id, item.message_id, "acknowledged"))
            return
        if where.folder == INBOX and where.name in self._held:
            await self._discard(self._held.pop(where.name), "removed")
            return
        raise _denied()

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """Renaming a held upload to a final name in ``/inbox`` takes it (the reply waits for the intake)."""
        old, new = self._where(oldpath), self._where(newpath)
        if old.folder != INBOX or new.folder != INBOX or old.name not in self._held or not new.name:
            raise _denied("only a temporary upload in /inbox may be renamed, to its final name")
        if is_held(new.name):
            self._held[new.name] = self._held.pop(old.name)
            return
        await self._ingest(self._held.pop(old.name), new.name)

    posix_rename = rename

    def fsync(self, file_obj: object) -> None:
        """Accepted; an upload is made durable by the intake at its close."""

    def _refuse(self, *args: Any) -> None:
        raise _denied()

    mkdir = rmdir = setstat = lsetstat = fsetstat = symlink = link = readlink = _refuse

    def statvfs(self, path: bytes) -> None:
        """Not offered."""
        raise asyncssh.SFTPOpUnsupported("statvfs is not offered")

    fstatvfs = statvfs


def transfer_line(record: dict) -> str:
    """A transfer record as one JSON log line."""
    return json.dumps(record, sort_keys=True)


async def listen(host: str | None, port: int, host_keys: list, backend: Backend, connections: set,
                 loop: asyncio.AbstractEventLoop) -> asyncssh.SSHAcceptor:
    """Start the door's asyncssh listener on ``loop`` (the reactor's)."""
    return await asyncssh.listen(
        host, port, server_host_keys=host_keys, server_factory=lambda: DoorSSHServer(backend, connections),
        sftp_factory=lambda chan: DoorSFTPServer(chan, backend, loop), allow_scp=False, login_timeout=30,
        keepalive_interval=30, keepalive_count_max=4, kex_algs=KEX_ALGS, encryption_algs=ENCRYPTION_ALGS,
        mac_algs=MAC_ALGS, reuse_address=True)
