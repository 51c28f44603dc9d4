"""Tests for :mod:`protocols.sftp.push` that need no server (the e2e test pushes into OpenSSH's sshd)."""

from types import SimpleNamespace

import pytest

from protocols.sftp.push import _CIPHERS, _KEX, _MACS, SFTPPush, remote_name


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
    from certs.ssh import generate_keypair

    generate_keypair(tmp_path / "key", "test")
    push = SFTPPush(str(tmp_path / "key"), lambda m: None, lambda *a: None, loop=None)
    offered = push._algorithms
    assert offered["kex_algs"] and set(offered["kex_algs"]) <= set(_KEX)
    assert offered["encryption_algs"] and set(offered["encryption_algs"]) <= set(_CIPHERS)
    assert offered["mac_algs"] and set(offered["mac_algs"]) <= set(_MACS)
    assert not any("sha1" in a or "cbc" in a for names in offered.values() for a in names)
