# -*- test-case-name: tests.e2e.test_sftp_push -*-
"""The ``sftp`` push target: upload a message to a partner's SFTP server, atomically, with asyncssh.

One connection per push, on the reactor's own asyncio loop (D31): log in with the gateway's SSH key,
accept **only** the host key pinned for the partner (``partner set --sftp-host-key``), write the
payload streamed from the spool to ``<dir>/.<name>.part``, fsync it when the server offers
``fsync@openssh.com``, close it, and rename it to ``<dir>/<name>`` (``posix-rename@openssh.com``,
which replaces a file a crashed earlier attempt left, or a plain rename). Any error on the way — at
write, fsync, close or rename — fails the attempt, naming the request, so the delivery queue retries it;
the ``.part`` is removed while the connection lasts, and a retry writes the same names again, so a
receiver never sees a partial file under the final name.

asyncssh coroutines start from Twisted through ``Deferred.fromFuture(asyncio.ensure_future(…))``; the
spool is read on the gateway's I/O pool through ``Deferred.asFuture(loop)``.
"""

import asyncio
import posixpath
import re
from collections.abc import Callable
from typing import Any

import asyncssh
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from certs.ssh import parse_public_key
from partners.directory import Partner
from partners.errors import InvalidValueError
from partners.identifiers import SFTPURL, sftp_url
from protocols.as2.mime import Region
from protocols.envelope import DeliveryFailed, Pushed
from spool.records import Delivery, Message

#: Bytes read from the spool and written per SFTP request round.
CHUNK = 256 * 1024
#: Seconds to connect and finish the SSH handshake and login.
CONNECT_TIMEOUT = 30
#: A server that stops answering mid-upload is given up after KEEPALIVE * KEEPALIVE_MISSES seconds.
KEEPALIVE, KEEPALIVE_MISSES = 15, 4

#: Modern algorithms only (no SHA-1, no CBC, no plain ``diffie-hellman-group1/14-sha1``); filtered by what the
#: installed asyncssh offers. Host key algorithms are left to asyncssh, which offers those of the pinned key only.
_KEX = ("mlkem768x25519-sha256", "sntrup761x25519-sha512", "sntrup761x25519-sha512@openssh.com",
        "curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp521", "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512")
_CIPHERS = ("chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com", "aes128-gcm@openssh.com",
            "aes256-ctr", "aes192-ctr", "aes128-ctr")
_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _offered(wanted: tuple[str, ...], available: list[bytes]) -> list[str]:
    names = {a.decode("ascii") for a in available}
    return [w for w in wanted if w in names]


def remote_name(message: Message) -> str:
    """The final file name: the message's filename (or ID + ``.xml``), reduced to ``[A-Za-z0-9._-]``."""
    base = posixpath.basename((message.filename or "").replace("\\", "/"))
    name = _UNSAFE.sub("_", base).lstrip(".")[:200]
    return name or _UNSAFE.sub("_", f"{message.id}.xml").lstrip(".")


class _Pinned(asyncssh.SSHClient):
    """Remembers the host key a server presented when it is not the pinned one (for the error message)."""

    def __init__(self):
        self.presented: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key
        return False


class SFTPPush:
    """``push(message, delivery, recipient)`` for the delivery queue's ``sftp`` target."""

    _log = Logger()

    def __init__(self, client_key_path: str, read_payload: Callable[[Message], Deferred],
                 run_io: Callable[..., Deferred], loop: asyncio.AbstractEventLoop):
        """``client_key_path`` is the OpenSSH private key the gateway logs in with (read once, here);
        ``read_payload(message)`` fires with a :class:`Region` of the stored payload; ``run_io`` runs
        blocking reads on the I/O pool."""
        self._client_key = asyncssh.read_private_key(client_key_path)
        self._read_payload = read_payload
        self._run_io = run_io
        self._loop = loop
        self._algorithms: dict[str, Any] = {
            "kex_algs": _offered(_KEX, asyncssh.kex.get_kex_algs()),
            "encryption_algs": _offered(_CIPHERS, asyncssh.encryption.get_encryption_algs()),
            "mac_algs": _offered(_MACS, asyncssh.mac.get_mac_algs()),
        }

    def push(self, message: Message, delivery: Delivery, recipient: Partner) -> Deferred:
        """Upload and rename; fires with :class:`Pushed`, fails with :class:`DeliveryFailed`."""
        return Deferred.fromFuture(asyncio.ensure_future(self._push(message, recipient), loop=self._loop))

    async def _push(self, message: Message, recipient: Partner) -> Pushed:
        if not recipient.sftp_url or not recipient.sftp_host_key:
            raise DeliveryFailed(f"partner {recipient.id} has no SFTP URL or pinned host key registered",
                                 permanent=True)
        try:
            target = sftp_url(recipient.sftp_url)
            pinned = asyncssh.import_public_key(parse_public_key(recipient.sftp_host_key).openssh)
        except (InvalidValueError, asyncssh.KeyImportError, ValueError) as e:
            raise DeliveryFailed(f"partner {recipient.id}'s SFTP registration is unusable: {e}",
                                 permanent=True) from e
        payload = await Deferred.asFuture(self._read_payload(message), self._loop)
        name = remote_name(message)
        final = posixpath.join(target.directory, name)
        part = posixpath.join(target.directory, f".{name}.part")
        where = f"{target.host}:{target.port}"
        pinned_fp = pinned.get_fingerprint("sha256")
        client = _Pinned()
        try:
            connection = await asyncio.wait_for(self._connect(target, pinned, client), CONNECT_TIMEOUT)
        except asyncssh.HostKeyNotVerifiable as e:
            got = client.presented.get_fingerprint("sha256") if client.presented is not None else "another key"
            raise DeliveryFailed(f"host key mismatch at {where}: the server presented {got}, but partner "
                                 f"{recipient.id} is pinned to {pinned_fp}; nothing was sent") from e
        except asyncssh.KeyExchangeFailed as e:
            raise DeliveryFailed(f"cannot agree on keys with {where} (pinned host key {pinned_fp}): {e.reason}; "
                                 "nothing was sent") from e
        except asyncssh.PermissionDenied as e:
            raise DeliveryFailed(f"{where} refused the gateway's SSH key for user {target.user!r}") from e
        except (OSError, asyncssh.Error) as e:  # TimeoutError is an OSError
            raise DeliveryFailed(f"cannot connect to {where}: {_describe(e)}") from e
        try:
            async with connection:
                size = await self._upload(connection, payload, part, final)
        except _RequestFailed as e:
            raise DeliveryFailed(f"SFTP upload to {where}:{final} failed at the {e.request} of {part}: "
                                 f"{_describe(e.error)}") from e.error
        except asyncssh.SFTPError as e:
            raise DeliveryFailed(f"SFTP upload to {where}:{final} failed: {_describe(e)}") from e
        except (OSError, asyncssh.Error) as e:
            raise DeliveryFailed(f"SFTP upload to {where}:{final} broke off: {_describe(e)}") from e
        return Pushed(remote_id=final, mic=None, detail=f"uploaded {size} bytes to {where}:{final}")

    async def _connect(self, target: SFTPURL, pinned: asyncssh.SSHKey, client: _Pinned) -> asyncssh.SSHClientConnection:
        connection, _ = await asyncssh.create_connection(
            lambda: client, target.host, target.port, username=target.user,
            known_hosts=([pinned], [], []), x509_trusted_certs=None, config=[],
            client_keys=[self._client_key], agent_path=None, agent_forwarding=False, ignore_encrypted=True,
            preferred_auth="publickey", password=None, kbdint_auth=False, gss_host=None,
            keepalive_interval=KEEPALIVE, keepalive_count_max=KEEPALIVE_MISSES, **self._algorithms)
        return connection

    async def _upload(self, connection: asyncssh.SSHClientConnection, payload: Region, part: str,
                      final: str) -> int:
        reader = payload.reader()
        size = 0
        async with connection.start_sftp_client() as sftp:
            remote = await _request("open", sftp.open(part, "wb"))
            try:
                while True:
                    chunk = await Deferred.asFuture(self._run_io(reader.read, CHUNK), self._loop)
                    if not chunk:
                        break
                    await _request("write", remote.write(chunk, size))
                    size += len(chunk)
                try:
                    await _request("fsync", remote.fsync())
                except asyncssh.SFTPOpUnsupported:
                    self._log.debug("sftp push: {part}: the server has no fsync@openssh.com", part=part)
                await _request("close", remote.close())  # errors here fail the push: the server may not have the bytes
                try:
                    await _request("rename", sftp.posix_rename(part, final))
                except asyncssh.SFTPOpUnsupported:
                    await _request("rename", sftp.rename(part, final))
            except BaseException:  # the .part is ours: take it away rather than leave it in the partner's inbox
                await _quietly(remote.close())
                await _quietly(sftp.remove(part))
                raise
        return size


class _RequestFailed(Exception):
    """The server failed one SFTP request of the upload; ``request`` names it, as servers' reasons are often
    a bare "Failure"."""

    def __init__(self, request: str, error: asyncssh.SFTPError):
        super().__init__(f"{request}: {error}")
        self.request = request
        self.error = error


async def _request(name: str, awaitable):
    """Await one SFTP request, naming it in the error; "unsupported" passes through for the fallbacks."""
    try:
        return await awaitable
    except asyncssh.SFTPOpUnsupported:
        raise
    except asyncssh.SFTPError as e:
        raise _RequestFailed(name, e) from e


def _describe(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or str(error) or type(error).__name__
    return reason.strip()


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except (OSError, asyncssh.Error):
        pass
