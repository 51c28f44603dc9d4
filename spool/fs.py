# -*- test-case-name: tests.spool.test_blobs_crash -*-
"""The spool's one filesystem seam: every syscall the blob store makes goes through here.

Why a seam: durability bugs hide between syscalls (a rename that reached the disk before the data, a
directory entry never fsynced). With every call behind one small object, tests can make any single
step fail (a subclass that raises ``OSError``) or replay a power cut after any step (the in-memory
model in ``tests/spool/test_blobs_crash.py``). The model is Twisted maildir's ``osopen``/``osrename``
staticmethods, gathered into one class so a fake replaces all of them at once.

Keep it minimal: a method exists only because :mod:`spool.blobs` needs it. Plain blocking calls, meant
for a thread pool, never the reactor thread.
"""

import os
from pathlib import Path
from typing import BinaryIO


class OSFileSystem:
    """The real filesystem, one thin method per syscall; errors surface as :class:`OSError`."""

    def open_exclusive(self, path: Path, mode: int = 0o600) -> int:
        """Create ``path`` for writing and return its descriptor; fail if it exists.

        ``O_EXCL`` means we never write into a file someone else (or an earlier crash) left behind,
        and ``mode`` applies from the first byte (the umask may narrow it, never widen it).
        """
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)

    def write(self, fd: int, data: bytes) -> None:
        """Write all of ``data``, looping over short writes."""
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def write_at(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset``, looping over short writes (the file position is not used)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def fsync(self, fd: int) -> None:
        """Make a file's contents durable. Never retry a failure: the kernel may have dropped the pages."""
        os.fsync(fd)

    def close(self, fd: int) -> None:
        """Close a descriptor; the caller checks the error (NFS reports write failures here)."""
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically give ``src`` the name ``dst`` (replacing ``dst``); durable only after :meth:`fsync_dir`."""
        os.rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        """Make a directory's entries (creations, renames, unlinks) durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        """Remove a file's name."""
        os.unlink(path)

    def makedirs(self, path: Path, mode: int = 0o700) -> list[Path]:
        """Create ``path`` and any missing parents; return the directories created, outermost first.

        The caller needs the list because each new directory is an entry in its parent, which must be
        fsynced for the directory to survive a power cut. A directory another thread creates at the same
        moment is not counted as ours and is not an error.
        """
        path = Path(path)
        missing: list[Path] = []
        while not os.path.isdir(path):
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        created = []
        for directory in reversed(missing):
            try:
                os.mkdir(directory, mode)
            except FileExistsError:
                if not os.path.isdir(directory):
                    raise
            else:
                created.append(directory)
        return created

    def listdir(self, path: Path) -> list[str]:
        """The names in a directory, in no particular order."""
        return os.listdir(path)

    def exists(self, path: Path) -> bool:
        """Whether ``path`` names anything (a dangling symlink counts: a rename would replace it)."""
        return os.path.lexists(path)

    def open_read(self, path: Path) -> BinaryIO:
        """Open a file for reading in binary mode."""
        return open(path, "rb")  # the caller owns and closes it
