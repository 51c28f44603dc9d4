"""An in-process asyncssh SFTP server on 127.0.0.1 that records what a client asks for and fails on request.

It serves ``root`` (chrooted) to one authorized client key, on an ephemeral port, and logs every request
it gets in ``calls`` (``("write", offset, length)``, ``("close", path)``, …) so a test can check their order.
:class:`Faults` says which request to fail and with which reason. Start and stop it on the asyncio loop
(``await stub.start()`` … ``await stub.stop()``); ``stop`` also ends the connections still open, which
asyncssh's acceptor leaves alone.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncssh
import asyncssh.sftp
import attrs


@attrs.frozen
class Faults:
    """What the server does wrong: fail the ``write_fails_at``-th WRITE, the CLOSE, the rename (both kinds),
    or drop the connection on the ``drop_at_write``-th WRITE; refuse fsync with OP_UNSUPPORTED though it
    is offered (``fsync_refused``)."""

    write_fails_at: int | None = None
    write_reason: str = "disk full"
    close_reason: str | None = None
    rename_reason: str | None = None
    drop_at_write: int | None = None
    fsync_refused: bool = False


class _Recorder(asyncssh.SSHServer):
    def __init__(self, stub: "StubSFTPServer"):
        self._stub = stub

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._stub.connections.append(conn)


class _FaultySFTP(asyncssh.SFTPServer):
    """asyncssh's own file-backed server, with every request the push makes recorded and maybe failed."""

    def __init__(self, chan: asyncssh.SSHServerChannel, stub: "StubSFTPServer"):
        super().__init__(chan, chroot=str(stub.root).encode())
        self._stub = stub
        self._paths: dict[int, str] = {}

    def _record(self, *call) -> None:
        self._stub.calls.append(call)

    def open(self, path, pflags, attrs):
        file = super().open(path, pflags, attrs)
        self._paths[id(file)] = path.decode()
        self._record("open", path.decode())
        return file

    def write(self, file_obj, offset, data):
        self._record("write", offset, len(data))
        writes = sum(1 for call in self._stub.calls if call[0] == "write")
        faults = self._stub.faults
        if writes == faults.drop_at_write:
            self.connection.abort()  # the TCP connection goes, no reply is sent
            raise asyncssh.SFTPConnectionLost("dropped by the test server")
        if writes == faults.write_fails_at:
            raise asyncssh.SFTPFailure(faults.write_reason)
        return super().write(file_obj, offset, data)

    def fsync(self, file_obj):
        self._record("fsync", self._paths.get(id(file_obj)))
        if self._stub.faults.fsync_refused:
            raise asyncssh.SFTPOpUnsupported("fsync not implemented here")
        return super().fsync(file_obj)

    def close(self, file_obj):
        self._record("close", self._paths.pop(id(file_obj), None))
        super().close(file_obj)  # the real file is closed either way, as a server would
        if self._stub.faults.close_reason:
            raise asyncssh.SFTPFailure(self._stub.faults.close_reason)

    def posix_rename(self, oldpath, newpath):
        self._record("posix_rename", oldpath.decode(), newpath.decode())
        if self._stub.faults.rename_reason:
            raise asyncssh.SFTPFailure(self._stub.faults.rename_reason)
        return super().posix_rename(oldpath, newpath)

    def rename(self, oldpath, newpath):
        self._record("rename", oldpath.decode(), newpath.decode())
        if self._stub.faults.rename_reason:
            raise asyncssh.SFTPFailure(self._stub.faults.rename_reason)
        return super().rename(oldpath, newpath)

    def remove(self, path):
        self._record("remove", path.decode())
        return super().remove(path)


class StubSFTPServer:
    """One listener on 127.0.0.1 (ephemeral port) serving ``root`` to the holder of ``client_public_key``."""

    def __init__(self, root: Path, host_key_path: Path, client_public_key_path: Path, faults: Faults = Faults()):
        self.root = root
        self.host_key_path = host_key_path
        self.client_public_key_path = client_public_key_path
        self.faults = faults
        self.calls: list[tuple] = []
        self.connections: list[asyncssh.SSHServerConnection] = []
        self.port = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None

    async def start(self) -> "StubSFTPServer":
        self._acceptor = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=[str(self.host_key_path)],
            authorized_client_keys=str(self.client_public_key_path),
            server_factory=lambda: _Recorder(self), sftp_factory=lambda chan: _FaultySFTP(chan, self),
            allow_scp=False, login_timeout=10)
        self.port = self._acceptor.get_port()
        return self

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for conn in self.connections:
            conn.abort()
        for conn in self.connections:
            await conn.wait_closed()

    def names(self, directory: str) -> list[str]:
        """What is in ``directory`` (as the client names it, under the root), sorted."""
        return sorted(os.listdir(self.root / directory.lstrip("/")))

    def ops(self) -> list[str]:
        """The request kinds received, in order, with runs of writes folded into one ``write``."""
        folded: list[str] = []
        for call in self.calls:
            if not (call[0] == "write" and folded and folded[-1] == "write"):
                folded.append(call[0])
        return folded


@contextmanager
def without_extension(name: bytes) -> Iterator[None]:
    """asyncssh's SFTP server advertises a fixed list of extensions (``SFTPServerHandler._extensions``, a class
    attribute, 2.24.1): drop ``name`` from it for the duration, so its clients see a server without it."""
    handler = asyncssh.sftp.SFTPServerHandler
    saved = handler._extensions
    assert any(n == name for n, _ in saved), f"asyncssh no longer advertises {name!r} this way"
    handler._extensions = [(n, data) for n, data in saved if n != name]
    try:
        yield
    finally:
        handler._extensions = saved
