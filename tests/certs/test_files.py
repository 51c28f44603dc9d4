"""Tests for :mod:`certs.files`: atomic writes with the right permissions, and no debris on failure."""

import errno
import os
import stat
from pathlib import Path

import pytest

from certs.files import write_atomically, write_secret


def mode(path: Path) -> int:
    """The permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    """Every entry of a directory, hidden temporary files included."""
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.fixture
def old_file(tmp_path) -> Path:
    """An existing file with known content and mode, to be replaced."""
    path = tmp_path / "tls.key"
    path.write_bytes(b"old key")
    path.chmod(0o600)
    return path


def test_write_atomically_writes_content_with_default_mode(tmp_path, umask):
    """A public file gets exactly the bytes given and mode 0644, whatever the umask."""
    for mask in (0o022, 0o077, 0o000):
        umask(mask)
        path = tmp_path / f"ca-{mask:o}.crt"
        write_atomically(path, b"-----BEGIN CERTIFICATE-----\n\x00\xff")
        assert path.read_bytes() == b"-----BEGIN CERTIFICATE-----\n\x00\xff"
        assert mode(path) == 0o644


def test_write_atomically_honours_the_mode_argument(tmp_path):
    """The mode argument is the file's final mode (config files are written 0640)."""
    path = tmp_path / "postroom.toml"
    write_atomically(path, b"[listen]\n", 0o640)
    assert mode(path) == 0o640


def test_write_secret_is_0600_even_with_a_permissive_umask(tmp_path, umask):
    """A secret is owner-only although the umask would let everybody read it."""
    umask(0o000)
    path = tmp_path / "tls.key"
    write_secret(path, b"private")
    assert path.read_bytes() == b"private"
    assert mode(path) == 0o600
    assert names(tmp_path) == ["tls.key"]


def test_replacing_a_file_leaves_no_temporary_files(old_file, umask):
    """Replacing a file swaps in the new content and mode and leaves only the file behind."""
    umask(0o000)
    old_file.chmod(0o666)
    old_inode = old_file.stat().st_ino
    write_secret(old_file, b"new key")
    assert old_file.read_bytes() == b"new key"
    assert mode(old_file) == 0o600
    assert old_file.stat().st_ino != old_inode  # a new file was renamed in, not the old one rewritten
    assert names(old_file.parent) == ["tls.key"]


def test_failed_rename_keeps_the_old_file_and_no_temporary(old_file, monkeypatch):
    """When the final rename fails, readers still see the old file and no temporary is left over."""

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "refused", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_secret(old_file, b"new key")
    assert old_file.read_bytes() == b"old key"
    assert mode(old_file) == 0o600
    assert names(old_file.parent) == ["tls.key"]


def test_failed_write_keeps_the_old_file_and_no_temporary(old_file, monkeypatch):
    """A full disk during the write (seen at fsync) leaves the old file intact and nothing half-written."""

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(old_file, b"x" * 100_000)
    assert old_file.read_bytes() == b"old key"
    assert names(old_file.parent) == ["tls.key"]


def test_interrupted_write_is_not_the_target(old_file, monkeypatch):
    """A write interrupted by Ctrl-C (KeyboardInterrupt) also cleans up and keeps the old file."""

    def interrupt(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(old_file, b"new")
    assert old_file.read_bytes() == b"old key"
    assert names(old_file.parent) == ["tls.key"]


def test_leftover_temporary_of_a_killed_writer_does_not_block_writes(old_file, monkeypatch):
    """A temporary file left by a writer killed mid-way (same PID after a container restart) is no obstacle."""
    # Simulate SIGKILL between creating the temporary file and renaming it: the rename never happens
    # and the clean-up code never runs.
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(SystemExit(137)))
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(SystemExit):
        write_secret(old_file, b"half")
    monkeypatch.undo()
    leftovers = [n for n in names(old_file.parent) if n != "tls.key"]
    assert len(leftovers) == 1

    write_secret(old_file, b"new key")
    assert old_file.read_bytes() == b"new key"
    assert mode(old_file) == 0o600
