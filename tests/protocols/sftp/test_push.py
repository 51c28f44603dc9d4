"""Tests for :mod:`protocols.sftp.push`: names and algorithms, then the failure paths against an in-process
asyncssh server that fails on request (the e2e test pushes into OpenSSH's sshd)."""

import asyncio
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import formatEvent, globalLogPublisher

from certs.ssh import generate_keypair
from protocols.as2.mime import Region
from protocols.envelope import DeliveryFailed, Pushed
from protocols.sftp.push import _CIPHERS, _KEX, _MACS, CHUNK, SFTPPush, remote_name
from tests.protocols.sftp.sftp_stub import Faults, StubSFTPServer, without_extension


@pytest.mark.parametrize("filename, expected", [
    ("invoice-1.xml", "invoice-1.xml"),
    ("../../etc/passwd", "passwd"),
    ("C:\\\\upload\\\\inv 7.xml", "inv_7.xml"),
    (".hidden.xml", "hidden.xml"),
    ("fa\u00e7ture;rm -rf.xml", "fa_ture_rm_-rf.xml"),
    ("", "m-1_2.xml"),
    (None, "m-1_2.xml"),
    ("..", "m-1_2.xml"),
])
def test_remote_name_is_one_safe_file_name(filename, expected):
    """The final name is the message's filename (its last part, ``[A-Za-z0-9._-]`` only) or its ID + .xml."""
    assert remote_name(SimpleNamespace(filename=filename, id="m-1/2")) == expected


def test_only_modern_algorithms_are_offered(tmp_path):
    """No SHA-1 kex or MAC, no CBC, no arcfour: what is offered is a subset of the modern lists."""
    generate_keypair(tmp_path / "key", "test")
    push = SFTPPush(str(tmp_path / "key"), lambda m: None, lambda *a: None, loop=None)
    offered = push._algorithms
    assert offered["kex_algs"] and set(offered["kex_algs"]) <= set(_KEX)
    assert offered["encryption_algs"] and set(offered["encryption_algs"]) <= set(_CIPHERS)
    assert offered["mac_algs"] and set(offered["mac_algs"]) <= set(_MACS)
    assert not any("sha1" in a or "cbc" in a for names in offered.values() for a in names)


# --- failure paths, against a real asyncssh SFTP server in this process (tests/protocols/sftp/sftp_stub.py) ---

DIRECTORY = "/inbound"
PAYLOAD = bytes(range(256)) * (3 * CHUNK // 256) + b"tail"  # four writes of up to CHUNK bytes


def on_loop(coroutine) -> Deferred:
    """Run an asyncio coroutine on the reactor's loop, as the gateway does (Deferred.fromFuture)."""
    return Deferred.fromFuture(asyncio.ensure_future(coroutine, loop=_loop()))


def _loop() -> asyncio.AbstractEventLoop:
    from twisted.internet import reactor

    return reactor._asyncioEventloop


@pytest.fixture
def keys(tmp_path):
    """The gateway's client key, the server's host key, and another key the server does not hold."""
    folder = tmp_path / "keys"
    folder.mkdir()
    return SimpleNamespace(client=folder / "gateway", client_pub=folder / "gateway.pub",
                           client_public=generate_keypair(folder / "gateway", "gateway"),
                           host=folder / "host", host_public=generate_keypair(folder / "host", "stub@test"),
                           other_public=generate_keypair(folder / "other", "not-the-server"))


@pytest.fixture
def root(tmp_path):
    """The server's root, with the partner's upload directory in it."""
    (tmp_path / "root" / DIRECTORY.lstrip("/")).mkdir(parents=True)
    return tmp_path / "root"


async def attempt(root, keys, faults: Faults | None = None, pinned: str | None = None, filename="invoice-7.xml"):
    """One push to a stub server that is started for it and stopped after it: (outcome, server), where the
    outcome is the :class:`Pushed` or the :class:`DeliveryFailed` it failed with."""
    server = await StubSFTPServer(root, keys.host, keys.client_pub, faults or Faults()).start()
    try:
        push = SFTPPush(str(keys.client), lambda m: succeed(Region.of_bytes(PAYLOAD)), maybeDeferred, _loop())
        partner = SimpleNamespace(id="files", sftp_url=f"sftp://gw@127.0.0.1:{server.port}{DIRECTORY}",
                                  sftp_host_key=pinned or keys.host_public.openssh)
        message = SimpleNamespace(id="m-7", filename=filename)
        try:
            outcome = await asyncio.wait_for(push.push(message, None, partner).asFuture(_loop()), 30)
        except DeliveryFailed as e:
            outcome = e
        return outcome, server
    finally:
        await server.stop()


def failed(outcome) -> str:
    """The reason of a retryable failure (anything else fails the test)."""
    assert isinstance(outcome, DeliveryFailed), outcome
    assert not outcome.permanent, outcome
    return str(outcome)


@pytest_twisted.ensureDeferred
async def test_a_clean_push_fsyncs_before_the_close_and_renames_last(root, keys):
    """The baseline the failure tests differ from: .part opened, written, fsync'd, closed, then posix-renamed."""
    outcome, server = await on_loop(attempt(root, keys))
    assert isinstance(outcome, Pushed), outcome
    assert (root / "inbound" / "invoice-7.xml").read_bytes() == PAYLOAD
    assert server.names(DIRECTORY) == ["invoice-7.xml"]
    assert server.ops() == ["open", "write", "fsync", "close", "posix_rename"]
    part = f"{DIRECTORY}/.invoice-7.xml.part"
    assert [c for c in server.calls if c[0] != "write"] == [
        ("open", part), ("fsync", part), ("close", part), ("posix_rename", part, f"{DIRECTORY}/invoice-7.xml")]
    assert [c[1:] for c in server.calls if c[0] == "write"] == [
        (0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK), (3 * CHUNK, 4)]
    assert outcome.remote_id == f"{DIRECTORY}/invoice-7.xml"
    assert outcome.detail == f"uploaded {len(PAYLOAD)} bytes to 127.0.0.1:{server.port}:{DIRECTORY}/invoice-7.xml"


@pytest_twisted.ensureDeferred
async def test_a_failed_close_fails_the_push_and_nothing_gets_the_final_name(root, keys):
    """The server may not have the bytes when CLOSE fails: the attempt fails (to be retried), naming the close."""
    outcome, server = await on_loop(attempt(root, keys, Faults(close_reason="quota exceeded")))
    assert failed(outcome) == (f"SFTP upload to 127.0.0.1:{server.port}:{DIRECTORY}/invoice-7.xml failed at the "
                               f"close of {DIRECTORY}/.invoice-7.xml.part: quota exceeded")
    assert server.ops() == ["open", "write", "fsync", "close", "remove"]  # no rename
    assert server.names(DIRECTORY) == [], "the .part is removed once the close failed"


@pytest_twisted.ensureDeferred
async def test_a_failed_rename_fails_the_push_and_nothing_gets_the_final_name(root, keys):
    """The bytes are on the server but not under the final name: the attempt fails, naming the rename."""
    outcome, server = await on_loop(attempt(root, keys, Faults(rename_reason="permission denied on the inbox")))
    assert failed(outcome) == (f"SFTP upload to 127.0.0.1:{server.port}:{DIRECTORY}/invoice-7.xml failed at the "
                               f"rename of {DIRECTORY}/.invoice-7.xml.part: permission denied on the inbox")
    assert server.ops() == ["open", "write", "fsync", "close", "posix_rename", "remove"]
    assert server.names(DIRECTORY) == [], "the .part is removed once the rename failed"


@pytest_twisted.ensureDeferred
async def test_a_write_failing_mid_stream_fails_the_push_with_the_servers_reason(root, keys):
    """The second WRITE fails (disk full): no more writes, no fsync, no rename, the .part is removed."""
    outcome, server = await on_loop(attempt(root, keys, Faults(write_fails_at=2, write_reason="disk full")))
    assert failed(outcome) == (f"SFTP upload to 127.0.0.1:{server.port}:{DIRECTORY}/invoice-7.xml failed at the "
                               f"write of {DIRECTORY}/.invoice-7.xml.part: disk full")
    assert [c[1:] for c in server.calls if c[0] == "write"] == [(0, CHUNK), (CHUNK, CHUNK)]
    assert server.ops() == ["open", "write", "close", "remove"]
    assert server.names(DIRECTORY) == []


@pytest.mark.parametrize("how, requests", [
    ("not offered", ["open", "write", "close", "posix_rename"]),  # the client does not even ask
    ("offered but refused", ["open", "write", "fsync", "close", "posix_rename"]),  # OP_UNSUPPORTED
])
@pytest_twisted.ensureDeferred
async def test_a_server_without_fsync_still_gets_the_whole_file(root, keys, how, requests):
    """fsync@openssh.com is optional: without it the file is closed and renamed as usual (and a debug line
    says so)."""
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        if how == "not offered":
            with without_extension(b"fsync@openssh.com"):
                outcome, server = await on_loop(attempt(root, keys))
        else:
            outcome, server = await on_loop(attempt(root, keys, Faults(fsync_refused=True)))
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert isinstance(outcome, Pushed), outcome
    assert (root / "inbound" / "invoice-7.xml").read_bytes() == PAYLOAD
    assert server.names(DIRECTORY) == ["invoice-7.xml"]
    assert server.ops() == requests
    assert any("no fsync@openssh.com" in formatEvent(e) for e in seen), [formatEvent(e) for e in seen]


@pytest_twisted.ensureDeferred
async def test_a_server_with_another_host_key_is_refused_naming_both_fingerprints(root, keys):
    """Pinned to another key: retryable, both SHA256 fingerprints in the reason, no SFTP session at all."""
    outcome, server = await on_loop(attempt(root, keys, pinned=keys.other_public.openssh))
    reason = failed(outcome)
    assert "host key mismatch" in reason, reason
    assert keys.host_public.fingerprint in reason and keys.other_public.fingerprint in reason, reason
    assert reason.index(keys.host_public.fingerprint) < reason.index(keys.other_public.fingerprint), reason
    assert "nothing was sent" in reason, reason
    assert server.calls == [] and server.names(DIRECTORY) == []


@pytest_twisted.ensureDeferred
async def test_a_connection_dropped_mid_upload_fails_the_push_and_nothing_gets_the_final_name(root, keys):
    """The server goes away at the second WRITE: the attempt fails (no hang), and the final name never appears."""
    outcome, server = await on_loop(attempt(root, keys, Faults(drop_at_write=2)))
    reason = failed(outcome)
    assert reason.startswith(f"SFTP upload to 127.0.0.1:{server.port}:{DIRECTORY}/invoice-7.xml "), reason
    assert reason.endswith(": Connection lost"), reason
    assert "posix_rename" not in server.ops() and "fsync" not in server.ops()
    assert "invoice-7.xml" not in server.names(DIRECTORY)
    # the client cannot remove the .part over a dead connection; a retry overwrites it ("wb" truncates)
    assert server.names(DIRECTORY) == [".invoice-7.xml.part"]
