"""Guards for what :mod:`protocols.sftp.server` relies on inside asyncssh, and its sans-IO helpers."""

import inspect

import asyncssh
import asyncssh.channel

from gateway.sftp_service import parse_endpoint
from protocols.sftp.server import _Download


def test_the_clean_close_check_still_has_its_private_state():
    """The clean-close test reads ``SSHChannel._recv_state``; a new asyncssh must be re-checked by hand
    (and tests/e2e/test_sftp_door.py's kill test re-run) before the pin moves."""
    assert asyncssh.__version__ == "2.24.1"
    source = inspect.getsource(asyncssh.channel.SSHChannel)
    assert "self._recv_state = 'open'" in source and "'close_pending'" in source


def test_a_download_is_complete_only_when_every_byte_was_read():
    """Out-of-order and overlapping reads count; a gap does not."""
    d = _Download(10)
    d.ranges.update({4: 6, 0: 3})
    assert not d.complete()
    d.ranges[2] = 4
    assert d.complete()
    assert _Download(0).complete()


def test_endpoints_parse_like_twisted_tcp_strings():
    """``tcp:PORT`` with an optional interface, including escaped IPv6 colons."""
    assert parse_endpoint("tcp:2222:interface=127.0.0.1") == ("127.0.0.1", 2222)
    assert parse_endpoint("tcp:0") == (None, 0)
    assert parse_endpoint(r"tcp:port=22:interface=\:\:1") == ("::1", 22)
