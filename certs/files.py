# -*- test-case-name: tests.certs.test_files -*-
"""Write secrets and public files atomically, with the right permissions from the first byte."""

import os
import secrets
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename.

    The temporary file is created ``O_EXCL`` with ``mode`` so a secret is never readable by others,
    not even for an instant. Readers see the old file or the new one, never half of either.
    """
    path = Path(path)
    # Unpredictable, not PID-based: a writer killed mid-way leaves its temporary file behind, and a
    # restarted daemon (same PID in a container) or a second thread must not collide with it.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widens beyond mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_secret(path: Path, data: bytes) -> None:
    """Write a private key or other secret: mode 0600, atomically."""
    write_atomically(path, data, 0o600)
