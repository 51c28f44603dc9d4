# -*- test-case-name: tests.spool.test_blobs -*-
"""The content-addressed blob store: payloads staged in ``tmp/``, published under their SHA-256.

Layout under ``root``::

    tmp/<node>~<uuid4 hex>           staged, not yet published (deleted when that node starts again)
    blobs/ab/cd/<sha256 hex>         published; the name is the SHA-256 of the content

This is STYLE §2.4 steps 1-3: stream into ``tmp/`` (``O_EXCL``, 0600, hashed and size-checked as the
bytes arrive), ``fsync`` + checked ``close``, then :meth:`BlobStore.publish` renames a whole batch
and fsyncs each touched directory once (group commit). A blob is durable only when ``publish``
returns, and it is invisible to the rest of Postroom until a database row names it (step 4).

Why content addressing: a replay publishes identical bytes under the same name, so ``publish`` is
idempotent and nothing half-written can ever sit under a final name (the rename happens only after
the data is fsynced). Blob names are validated as 64 lowercase hex digits, so no caller-supplied
string can walk out of ``blobs/``.

Plain blocking code for a thread pool; every syscall goes through :mod:`spool.fs` so tests can fail
or crash at any step (``tests/spool/test_blobs_crash.py``). A store may be shared by threads; each
:class:`BlobWriter` belongs to one.
"""

import hashlib
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import attrs

from spool.fs import OSFileSystem

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FANOUT = re.compile(r"[0-9a-f]{2}")
_CHUNK = 1 << 20
#: Scratch bytes kept in memory before they go to a file: the size of a typical invoice message, and the
#: order of twisted.web's own choice for request bodies (100,000 bytes), so that memory stays bounded by
#: the number of requests in flight.
SCRATCH_IN_MEMORY = 1 << 16


class SpoolError(Exception):
    """Base of every error the spool raises on purpose."""


class SpoolWriteError(SpoolError):
    """The spool could not make data durable; nothing was accepted, answer 4xx so the sender retries.

    After a failed fsync the data is gone for good (the kernel may have dropped the dirty pages and
    cleared the error), so the file is removed and the step is never retried; the sender's retry
    starts again from :meth:`BlobStore.stage`.
    """


class PayloadTooLarge(SpoolError):
    """A payload passed the configured size limit; its temporary file has already been removed.

    :ivar limit: the limit in bytes.
    :ivar seen: the bytes received when the limit was passed (at least ``limit + 1``).
    """

    def __init__(self, limit: int, seen: int) -> None:
        super().__init__(f"payload exceeds {limit} bytes (got at least {seen})")
        self.limit = limit
        self.seen = seen


class InvalidBlobName(SpoolError, ValueError):
    """A string is not a blob name (64 lowercase hex digits); refused before it touches a path."""


class BlobNotFound(SpoolError, LookupError):
    """No published blob has this name."""


def check_sha256(sha: str) -> str:
    """Return ``sha`` if it is 64 lowercase hex digits, else raise :class:`InvalidBlobName`.

    The only gate between a caller's string and a path: with it, no name can contain ``/``, ``..``
    or a NUL byte.
    """
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        raise InvalidBlobName(f"not a SHA-256 hex digest: {sha!r}")
    return sha


@attrs.frozen
class StagedBlob:
    """A payload fsynced and closed in ``tmp/``, ready for :meth:`BlobStore.publish`; not yet durable."""

    #: The temporary file.
    path: Path
    #: SHA-256 of the content, lowercase hex; the blob's final name.
    sha256: str
    #: Length of the content in bytes.
    size: int


class BlobWriter:
    """Streams one payload into its temporary file, hashing and counting as the bytes arrive.

    Use it as a context manager: leaving the block without :meth:`finish` (or with an exception)
    removes the temporary file. Not thread-safe; one writer per payload.
    """

    def __init__(self, fs: OSFileSystem, path: Path, fd: int, max_bytes: int | None) -> None:
        self._fs = fs
        self._fd = fd
        self._max_bytes = max_bytes
        self._hash: Any = hashlib.sha256()  # None once writes stop arriving in order: then hashed at finish
        self._done = False
        #: The temporary file being written.
        self.path = path
        #: Bytes written so far.
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the payload.

        :raises PayloadTooLarge: the chunk would take the payload past ``max_bytes``; the chunk is
            not written and the temporary file is removed.
        :raises SpoolWriteError: the write failed (disk full, I/O error); the file is removed.
        """
        self._check_open()
        seen = self.size + len(chunk)
        if self._max_bytes is not None and seen > self._max_bytes:
            self.abort()
            raise PayloadTooLarge(self._max_bytes, seen)
        try:
            self._fs.write(self._fd, chunk)
        except OSError as exc:
            self.abort()
            raise SpoolWriteError(f"cannot write {self.path}: {exc}") from exc
        self._hash.update(chunk)
        self.size = seen

    def write_at(self, offset: int, chunk: bytes) -> None:
        """Write ``chunk`` at ``offset``, for clients that place their own writes (SFTP); do not mix with
        :meth:`write`. In-order writes are hashed as they come; after any other, :meth:`finish` reads the
        file back to hash it.

        :raises PayloadTooLarge: the chunk would end past ``max_bytes``; the file is removed.
        :raises SpoolWriteError: the write failed; the file is removed.
        """
        self._check_open()
        end = offset + len(chunk)
        if self._max_bytes is not None and end > self._max_bytes:
            self.abort()
            raise PayloadTooLarge(self._max_bytes, end)
        try:
            self._fs.write_at(self._fd, chunk, offset)
        except OSError as exc:
            self.abort()
            raise SpoolWriteError(f"cannot write {self.path}: {exc}") from exc
        if self._hash is not None and offset == self.size:
            self._hash.update(chunk)
        else:
            self._hash = None
        self.size = max(self.size, end)

    def finish(self) -> StagedBlob:
        """Fsync and close the file, checking both, and return it as a :class:`StagedBlob`.

        :raises SpoolWriteError: fsync or close failed; the file is removed and the payload is lost
            (never retry an fsync: a second call can succeed without the data being on disk).
        """
        self._check_open()
        self._done = True
        try:
            self._fs.fsync(self._fd)
        except OSError as exc:
            with suppress(OSError):
                self._fs.close(self._fd)
            self._remove()
            raise SpoolWriteError(f"cannot fsync {self.path}: {exc}") from exc
        try:
            self._fs.close(self._fd)  # the descriptor is released even when close reports an error
        except OSError as exc:
            self._remove()
            raise SpoolWriteError(f"cannot close {self.path}: {exc}") from exc
        return StagedBlob(self.path, self._hash.hexdigest() if self._hash is not None else self._rehash(), self.size)

    def _rehash(self) -> str:
        digest = hashlib.sha256()
        try:
            with self._fs.open_read(self.path) as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            self._remove()
            raise SpoolWriteError(f"cannot read {self.path} back: {exc}") from exc
        return digest.hexdigest()

    def abort(self) -> None:
        """Close and remove the temporary file; a no-op once finished or aborted.

        Errors are swallowed: a file that cannot be removed now is removed by
        :meth:`BlobStore.clean_tmp` at the next start.
        """
        if self._done:
            return
        self._done = True
        with suppress(OSError):
            self._fs.close(self._fd)
        self._remove()

    def _remove(self) -> None:
        with suppress(OSError):
            self._fs.unlink(self.path)

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"blob writer for {self.path} is already finished or aborted")

    def __enter__(self) -> "BlobWriter":
        """Return the writer itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Abort unless :meth:`finish` succeeded; never suppresses the exception."""
        self.abort()


class BlobStore:
    """Content-addressed, durable storage of payloads under ``root``.

    :param root: the spool directory; ``tmp/`` and ``blobs/`` are created in it (0700) if missing.
    :param fs: the filesystem seam; tests pass a failing or simulated one.
    :param max_bytes: refuse payloads longer than this (``None``: no limit).
    :param node: the daemon's node name, prefixed to its staging files so that when several daemons share
        the spool, each one's start-up cleaning removes only its own (``""``: unprefixed names).
    :raises SpoolWriteError: the layout cannot be created.
    """

    def __init__(self, root: Path, fs: OSFileSystem | None = None, max_bytes: int | None = None,
                 node: str = "") -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._prefix = f"{node}~" if node else ""
        self._fs = fs if fs is not None else OSFileSystem()
        self._tmp = self.root / "tmp"
        self._blobs = self.root / "blobs"
        # Directories whose entry in their parent this process has made durable, up to ``root``. A
        # directory not in here (new, or left by a process that died before its fsync) gets its
        # parents fsynced the first time a blob lands in it.
        self._durable_dirs: set[Path] = set()
        try:
            created = self._fs.makedirs(self._tmp) + self._fs.makedirs(self._blobs)
            self._sync_directories({d.parent for d in created})
        except OSError as exc:
            raise SpoolWriteError(f"cannot create the spool layout in {self.root}: {exc}") from exc
        self._durable_dirs.update(created)

    def scratch(self) -> BinaryIO:
        """A temporary file for raw bytes that arrive before anyone knows whether they will be kept.

        Its first :data:`SCRATCH_IN_MEMORY` bytes stay in memory (creating a file for each S/MIME layer of
        every small message cost a tenth of the AS2 door's CPU); past that it becomes an anonymous file in
        ``tmp/`` (0600, gone when closed or when the process dies).
        """
        return tempfile.SpooledTemporaryFile(max_size=SCRATCH_IN_MEMORY, dir=self._tmp)

    def stage(self) -> BlobWriter:
        """Start a payload: a new ``tmp/<node>~<uuid4 hex>`` file, ``O_EXCL``, mode 0600.

        :raises SpoolWriteError: the file cannot be created.
        """
        path = self._tmp / f"{self._prefix}{uuid.uuid4().hex}"
        try:
            fd = self._fs.open_exclusive(path, 0o600)
        except OSError as exc:
            raise SpoolWriteError(f"cannot create {path}: {exc}") from exc
        return BlobWriter(self._fs, path, fd, self.max_bytes)

    def publish(self, staged: Sequence[StagedBlob]) -> None:
        """Give each staged blob its content address, then make the whole batch durable.

        Each file is renamed to ``blobs/ab/cd/<sha256>``; if that name already exists (same bytes, by
        construction) the temporary file is removed instead, so replays are idempotent. Then every
        touched directory is fsynced exactly once for the batch: each destination directory, and
        the parents (up to ``root``) of any directory not yet known durable in this process, such as
        the ones just created. ``tmp/`` is not fsynced: an entry it regains after a crash is a stale
        name that :meth:`clean_tmp` removes.

        :raises SpoolWriteError: a rename, mkdir or directory fsync failed. The temporary files not
            yet published are removed; blobs already renamed stay under their (correct) names but
            must be treated as not durable: answer 4xx for the whole batch.
        :raises ValueError: a staged blob does not belong to this store's ``tmp/``.
        """
        for blob in staged:
            check_sha256(blob.sha256)
            if blob.path.parent != self._tmp:
                raise ValueError(f"{blob.path} was not staged by this store")
        targets: dict[Path, None] = {}  # destination directories, in order, without repeats
        done = 0
        try:
            for blob in staged:
                final = self.path(blob.sha256)
                if final.parent not in targets and final.parent not in self._durable_dirs:
                    self._fs.makedirs(final.parent)
                if self._fs.exists(final):
                    self._fs.unlink(blob.path)
                else:
                    self._fs.rename(blob.path, final)
                done += 1
                targets[final.parent] = None
            newly_durable: set[Path] = set()
            sync = set(targets)
            for directory in targets:
                while directory != self.root and directory not in self._durable_dirs:
                    newly_durable.add(directory)
                    directory = directory.parent
                    sync.add(directory)
            self._sync_directories(sync)
        except OSError as exc:
            for blob in staged[done:]:
                with suppress(OSError):
                    self._fs.unlink(blob.path)
            raise SpoolWriteError(f"cannot publish {len(staged)} blob(s): {exc}") from exc
        self._durable_dirs.update(newly_durable)

    def discard(self, staged: StagedBlob) -> None:
        """Remove a staged blob that will not be published (say, its message was refused)."""
        if staged.path.parent != self._tmp:
            raise ValueError(f"{staged.path} was not staged by this store")
        with suppress(FileNotFoundError):
            self._fs.unlink(staged.path)

    def _sync_directories(self, directories: Iterable[Path]) -> None:
        """Fsync each directory once, deepest first (a child's entries before its name in the parent)."""
        for directory in sorted(set(directories), key=lambda d: (-len(d.parts), d)):
            self._fs.fsync_dir(directory)

    def path(self, sha: str) -> Path:
        """The final path of blob ``sha`` (whether or not it exists).

        :raises InvalidBlobName: ``sha`` is not 64 lowercase hex digits.
        """
        check_sha256(sha)
        return self._blobs / sha[:2] / sha[2:4] / sha

    def exists(self, sha: str) -> bool:
        """Whether blob ``sha`` is published (durable only if its ``publish`` returned)."""
        return self._fs.exists(self.path(sha))

    def open(self, sha: str) -> BinaryIO:
        """Open blob ``sha`` for reading; the caller closes it.

        :raises BlobNotFound: no such blob.
        """
        path = self.path(sha)
        try:
            return self._fs.open_read(path)
        except FileNotFoundError as exc:
            raise BlobNotFound(sha) from exc

    def verify(self, sha: str) -> bool:
        """Re-hash blob ``sha`` in chunks: ``False`` if it is missing or its content has changed.

        Other read errors (``EIO``, ``EMFILE``) propagate as :class:`OSError`: the caller decides
        whether a blob it could not read is corrupt or the check should be retried.
        """
        try:
            f = self.open(sha)
        except BlobNotFound:
            return False
        digest = hashlib.sha256()
        with f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest() == sha

    def iter_blobs(self) -> Iterator[str]:
        """Yield the name of every published blob, sorted; stray names in ``blobs/`` are skipped."""
        for ab in sorted(self._fs.listdir(self._blobs)):
            if not _FANOUT.fullmatch(ab):
                continue
            for cd in sorted(self._listdir_or_empty(self._blobs / ab)):
                if not _FANOUT.fullmatch(cd):
                    continue
                for name in sorted(self._listdir_or_empty(self._blobs / ab / cd)):
                    if _SHA256_HEX.fullmatch(name) and name[:2] == ab and name[2:4] == cd:
                        yield name

    def _listdir_or_empty(self, path: Path) -> list[str]:
        try:
            return self._fs.listdir(path)
        except NotADirectoryError:
            return []

    def clean_tmp(self) -> int:
        """Remove this node's files in ``tmp/`` (and unprefixed ones) and return how many there were.

        Start-up recovery (STYLE §2.4 step 6, Tahoe's ``_clean_incomplete``): whatever is in ``tmp/``
        was never published, so no one was told it was accepted. Call it before the first
        :meth:`stage`; it would delete the files of writers still running. Files of other nodes
        sharing the spool are theirs to clean: they may be writing them now.
        """
        names = [name for name in self._fs.listdir(self._tmp)
                 if "~" not in name or (self._prefix and name.startswith(self._prefix))]
        for name in names:
            self._fs.unlink(self._tmp / name)
        return len(names)
