"""Tests for :mod:`spool.blobs` and :mod:`spool.fs` on a real directory: content addressing, limits,
cleanup on every failure path, and one fsync per directory per published batch."""

import errno
import hashlib
import itertools
import os
import stat
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spool.blobs import (
    SCRATCH_IN_MEMORY,
    BlobNotFound,
    BlobStore,
    InvalidBlobName,
    PayloadTooLarge,
    SpoolError,
    SpoolWriteError,
    StagedBlob,
)
from spool.fs import OSFileSystem


def sha(data: bytes) -> str:
    """The SHA-256 of ``data`` in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def stage(store: BlobStore, *chunks: bytes) -> StagedBlob:
    """Stream ``chunks`` into a new staged blob."""
    with store.stage() as writer:
        for chunk in chunks:
            writer.write(chunk)
        return writer.finish()


def put(store: BlobStore, data: bytes) -> str:
    """Stage and publish one payload; return its name."""
    staged = stage(store, data)
    store.publish([staged])
    return staged.sha256


def tmp_names(store: BlobStore) -> list[str]:
    """What is left in the store's ``tmp/``."""
    return sorted(os.listdir(store.root / "tmp"))


def files_under(path: Path) -> list[Path]:
    """Every regular file below ``path``."""
    return sorted(p for p in path.rglob("*") if p.is_file())


class RecordingFileSystem(OSFileSystem):
    """The real filesystem, remembering every directory fsync."""

    def __init__(self) -> None:
        self.dir_syncs: list[Path] = []

    def fsync_dir(self, path: Path) -> None:
        """Record, then fsync for real."""
        self.dir_syncs.append(Path(path))
        super().fsync_dir(path)


class FailingFileSystem(OSFileSystem):
    """The real filesystem, except that the named methods raise ``OSError(errno)`` after ``after`` calls."""

    def __init__(self, *methods: str, code: int = errno.EIO, after: int = 0) -> None:
        self.failing = set(methods)
        self.code = code
        self.after = after
        self.calls: Counter[str] = Counter()

    def _maybe_fail(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.failing and self.calls[name] > self.after:
            raise OSError(self.code, os.strerror(self.code))

    def write(self, fd: int, data: bytes) -> None:
        """Maybe fail, else write."""
        self._maybe_fail("write")
        super().write(fd, data)

    def write_at(self, fd: int, data: bytes, offset: int) -> None:
        """Maybe fail, else write at ``offset``."""
        self._maybe_fail("write_at")
        super().write_at(fd, data, offset)

    def fsync(self, fd: int) -> None:
        """Maybe fail, else fsync."""
        self._maybe_fail("fsync")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        """Close for real, then maybe report an error (as NFS does)."""
        super().close(fd)
        self._maybe_fail("close")

    def rename(self, src: Path, dst: Path) -> None:
        """Maybe fail, else rename."""
        self._maybe_fail("rename")
        super().rename(src, dst)

    def fsync_dir(self, path: Path) -> None:
        """Maybe fail, else fsync the directory."""
        self._maybe_fail("fsync_dir")
        super().fsync_dir(path)


@pytest.fixture
def store(tmp_path) -> BlobStore:
    """A blob store in an empty spool directory."""
    return BlobStore(tmp_path / "spool")


def test_layout_created_private(tmp_path):
    """A new store creates ``tmp/`` and ``blobs/`` with mode 0700 (umask permitting)."""
    store = BlobStore(tmp_path / "spool")
    for name in ("tmp", "blobs"):
        path = store.root / name
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_content_addressed(store):
    """A published payload lives at ``blobs/ab/cd/<sha256>`` and reads back unchanged."""
    data = b"<Invoice>42</Invoice>"
    name = put(store, data)
    assert name == sha(data)
    assert store.path(name) == store.root / "blobs" / name[:2] / name[2:4] / name
    assert store.path(name).read_bytes() == data
    assert store.exists(name)
    with store.open(name) as f:
        assert f.read() == data
    assert tmp_names(store) == []


def test_empty_payload(store):
    """An empty payload is a blob like any other."""
    name = put(store, b"")
    assert name == sha(b"")
    assert store.verify(name)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=2048), cuts=st.lists(st.integers(min_value=0, max_value=2048), max_size=20))
def test_chunking_does_not_change_hash(tmp_path_factory, data, cuts):
    """Streaming a payload in any chunking (empty chunks included) gives the same name and size as one write."""
    store = BlobStore(tmp_path_factory.mktemp("spool"))
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)] + [b""]
    staged = stage(store, *chunks)
    assert (staged.sha256, staged.size) == (sha(data), len(data))
    assert staged.path.read_bytes() == data


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=1, max_size=2048), cuts=st.lists(st.integers(min_value=0, max_value=2048), max_size=12),
       order=st.randoms(use_true_random=False))
def test_positioned_writes_in_any_order_give_the_content_hash(tmp_path_factory, data, cuts, order):
    """write_at() pieces in any order, rewrites included, stage the same bytes, name and size as one write."""
    store = BlobStore(tmp_path_factory.mktemp("spool"))
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = [(a, data[a:b]) for a, b in itertools.pairwise(bounds)]
    order.shuffle(pieces)
    with store.stage() as writer:
        for offset, chunk in [*pieces, pieces[0]]:
            writer.write_at(offset, chunk)
        staged = writer.finish()
    assert (staged.sha256, staged.size) == (sha(data), len(data))
    assert staged.path.read_bytes() == data


def test_positioned_write_limit_and_failure(tmp_path):
    """write_at() refuses to end past ``max_bytes`` and removes the file; a failing write does too."""
    store = BlobStore(tmp_path, max_bytes=10)
    writer = store.stage()
    writer.write_at(0, b"12345")
    with pytest.raises(PayloadTooLarge) as caught:
        writer.write_at(8, b"abc")
    assert (caught.value.limit, caught.value.seen) == (10, 11)
    assert tmp_names(store) == []
    failing = BlobStore(tmp_path / "f", fs=FailingFileSystem("write_at", code=errno.ENOSPC))
    with pytest.raises(SpoolWriteError, match="No space left"), failing.stage() as writer:
        writer.write_at(0, b"data")
    assert tmp_names(failing) == []


def test_staged_file_mode_0600(store):
    """A staged file is created 0600 in ``tmp/`` from the first byte, and the published blob keeps it."""
    with store.stage() as writer:
        assert writer.path.parent == store.root / "tmp"
        assert stat.S_IMODE(os.stat(writer.path).st_mode) == 0o600
        writer.write(b"secret invoice")
        staged = writer.finish()
    store.publish([staged])
    assert stat.S_IMODE(store.path(staged.sha256).stat().st_mode) == 0o600


def test_exact_limit_accepted(tmp_path):
    """A payload of exactly ``max_bytes`` is accepted."""
    store = BlobStore(tmp_path, max_bytes=10)
    assert stage(store, b"12345", b"67890").size == 10


def test_limit_raised_at_first_byte_over(tmp_path):
    """The byte that passes ``max_bytes`` raises PayloadTooLarge, the chunk is not written, the file is gone."""
    store = BlobStore(tmp_path, max_bytes=10)
    writer = store.stage()
    writer.write(b"1234567")
    with pytest.raises(PayloadTooLarge) as caught:
        writer.write(b"8901")
    assert (caught.value.limit, caught.value.seen) == (10, 11)
    assert isinstance(caught.value, SpoolError)
    assert tmp_names(store) == []
    with pytest.raises(ValueError, match="already finished or aborted"):
        writer.write(b"x")


def test_limit_inside_context_manager(tmp_path):
    """PayloadTooLarge inside ``with`` propagates and leaves nothing behind."""
    store = BlobStore(tmp_path, max_bytes=3)
    with pytest.raises(PayloadTooLarge), store.stage() as writer:
        writer.write(b"ab")
        writer.write(b"cd")
    assert tmp_names(store) == []


def test_abort_removes_temp(store):
    """abort() closes and removes the temporary file, and a second abort is harmless."""
    writer = store.stage()
    writer.write(b"half an invoice")
    writer.abort()
    writer.abort()
    assert tmp_names(store) == []
    with pytest.raises(ValueError, match="already finished or aborted"):
        writer.finish()


def test_context_manager_aborts_on_exception(store):
    """An exception inside ``with stage()`` removes the temporary file."""
    with pytest.raises(RuntimeError), store.stage() as writer:
        writer.write(b"data")
        raise RuntimeError("peer went away")
    assert tmp_names(store) == []


def test_context_manager_aborts_unfinished(store):
    """Leaving ``with stage()`` without finish() removes the temporary file."""
    with store.stage() as writer:
        writer.write(b"forgotten")
    assert tmp_names(store) == []


def test_context_manager_keeps_finished(store):
    """A writer finished inside ``with`` keeps its staged file for publish."""
    staged = stage(store, b"kept")
    assert tmp_names(store) == [staged.path.name]


def test_discard(store):
    """discard() removes a staged blob that will not be published."""
    staged = stage(store, b"refused")
    store.discard(staged)
    store.discard(staged)
    assert tmp_names(store) == []


def test_republish_is_idempotent(store):
    """Publishing the same content again (or twice in one batch) keeps one blob and leaves no temp file."""
    name = put(store, b"same")
    first = store.path(name).stat().st_ino
    store.publish([stage(store, b"same"), stage(store, b"sa", b"me")])
    assert store.path(name).stat().st_ino == first  # the existing blob was kept, not replaced
    assert list(store.iter_blobs()) == [name]
    assert tmp_names(store) == []
    assert store.verify(name)


def test_publish_empty_batch(store):
    """An empty batch publishes nothing and fsyncs nothing."""
    fs = RecordingFileSystem()
    store = BlobStore(store.root, fs=fs)
    store.publish([])
    assert fs.dir_syncs == []


def test_publish_fsyncs_each_directory_once(tmp_path):
    """A batch fsyncs each touched directory exactly once, parents of new directories only until known durable."""
    fs = RecordingFileSystem()
    store = BlobStore(tmp_path / "spool", fs=fs)
    blobs = store.root / "blobs"
    assert sorted(fs.dir_syncs) == sorted([tmp_path, store.root])  # created spool/, then tmp/ and blobs/ in it
    # Two payloads whose names share the first fan-out level, one duplicate, one elsewhere.
    payloads, by_prefix = [], {}
    for i in range(10_000):
        data = b"%d" % i
        by_prefix.setdefault(sha(data)[:2], []).append(data)
        if len(by_prefix[sha(data)[:2]]) == 2:
            payloads = by_prefix[sha(data)[:2]]
            break
    other = next(d for k, v in by_prefix.items() if k != sha(payloads[0])[:2] for d in v)
    batch = [stage(store, p) for p in [*payloads, payloads[0], other]]

    fs.dir_syncs.clear()
    store.publish(batch)
    finals = {store.path(b.sha256).parent for b in batch}
    fanouts = {d.parent for d in finals}
    assert len(finals) == 3 and len(fanouts) == 2
    # blobs/ itself was created (and its entry in spool/ fsynced) by this store, so spool/ is not fsynced again.
    assert Counter(fs.dir_syncs) == Counter([*finals, *fanouts, blobs])
    assert fs.dir_syncs.index(blobs) > max(fs.dir_syncs.index(d) for d in fanouts)  # deepest first

    # A later batch into directories already known durable fsyncs only those directories.
    again = [stage(store, p) for p in payloads]
    fs.dir_syncs.clear()
    store.publish(again)
    assert Counter(fs.dir_syncs) == Counter(store.path(sha(p)).parent for p in payloads)


def test_restart_resyncs_parents_once(tmp_path):
    """A new process does not trust directories it did not sync: the first batch fsyncs their parents again."""
    earlier = BlobStore(tmp_path)
    earlier.publish([stage(earlier, b"before restart")])
    fs = RecordingFileSystem()
    store = BlobStore(tmp_path, fs=fs)
    assert fs.dir_syncs == []
    store.publish([stage(store, b"before restart")])  # a replay after the restart
    final = store.path(sha(b"before restart")).parent
    assert Counter(fs.dir_syncs) == Counter([final, final.parent, tmp_path / "blobs", tmp_path])


def test_write_failure(tmp_path):
    """A failing write raises SpoolWriteError and removes the temporary file."""
    store = BlobStore(tmp_path, fs=FailingFileSystem("write", code=errno.ENOSPC))
    with pytest.raises(SpoolWriteError, match="No space left"), store.stage() as writer:
        writer.write(b"data")
    assert tmp_names(store) == []


def test_fsync_failure(tmp_path):
    """A failing fsync raises SpoolWriteError, is not retried, and leaves no temporary file."""
    fs = FailingFileSystem("fsync")
    store = BlobStore(tmp_path, fs=fs)
    writer = store.stage()
    writer.write(b"data")
    with pytest.raises(SpoolWriteError, match="cannot fsync"):
        writer.finish()
    assert fs.calls["fsync"] == 1
    assert tmp_names(store) == []
    writer.abort()  # harmless afterwards
    assert fs.calls["close"] == 1


def test_close_failure(tmp_path):
    """A close that reports an error (NFS) raises SpoolWriteError and leaves no temporary file."""
    store = BlobStore(tmp_path, fs=FailingFileSystem("close"))
    with pytest.raises(SpoolWriteError, match="cannot close"), store.stage() as writer:
        writer.write(b"data")
        writer.finish()
    assert tmp_names(store) == []


def test_stage_failure(tmp_path):
    """A temporary file that cannot be created raises SpoolWriteError."""
    store = BlobStore(tmp_path)
    os.rmdir(tmp_path / "tmp")
    with pytest.raises(SpoolWriteError, match="cannot create"):
        store.stage()


def test_rename_failure(tmp_path):
    """A failing rename raises SpoolWriteError: earlier blobs are whole, later temp files are gone, no half state."""
    fs = FailingFileSystem("rename", after=1)
    store = BlobStore(tmp_path, fs=fs)
    batch = [stage(store, b"first"), stage(store, b"second"), stage(store, b"third")]
    with pytest.raises(SpoolWriteError, match="cannot publish 3 blob"):
        store.publish(batch)
    assert tmp_names(store) == []
    assert list(store.iter_blobs()) == [sha(b"first")]
    for path in files_under(tmp_path / "blobs"):
        assert sha(path.read_bytes()) == path.name


def test_fsync_dir_failure(tmp_path):
    """A failing directory fsync raises SpoolWriteError and is not retried."""
    BlobStore(tmp_path)
    store = BlobStore(tmp_path, fs=FailingFileSystem("fsync_dir"))
    staged = stage(store, b"x")
    with pytest.raises(SpoolWriteError):
        store.publish([staged])
    assert store._fs.calls["fsync_dir"] == 1
    assert tmp_names(store) == []


def test_layout_failure(tmp_path):
    """A spool that cannot be laid out raises SpoolWriteError at construction."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SpoolWriteError, match="spool layout"):
        BlobStore(tmp_path / "file" / "spool")


def test_publish_refuses_foreign_paths(store, tmp_path):
    """publish() and discard() refuse files that were not staged in this store's ``tmp/``."""
    outsider = tmp_path / "elsewhere"
    outsider.write_bytes(b"x")
    fake = StagedBlob(outsider, sha(b"x"), 1)
    with pytest.raises(ValueError, match="not staged by this store"):
        store.publish([fake])
    with pytest.raises(ValueError, match="not staged by this store"):
        store.discard(fake)
    assert outsider.exists()


def test_verify_detects_corruption(store):
    """verify() is True for an intact blob and False once its bytes change or it disappears."""
    name = put(store, b"x" * 100_000)
    assert store.verify(name)
    path = store.path(name)
    path.chmod(0o600)
    with open(path, "r+b") as f:
        f.seek(50_000)
        f.write(b"y")
    assert not store.verify(name)
    path.unlink()
    assert not store.verify(name)


def test_open_missing(store):
    """Opening a blob that does not exist raises BlobNotFound."""
    with pytest.raises(BlobNotFound):
        store.open(sha(b"never stored"))
    assert not store.exists(sha(b"never stored"))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "0" * 63,
        "0" * 65,
        "A" * 64,
        "../" + "0" * 61,
        "0" * 62 + "/x",
        "0" * 63 + "\n",
        "0" * 63 + "\x00",
        "g" * 64,
        b"0" * 64,
        None,
    ],
)
def test_bad_names_refused(store, bad):
    """Anything but 64 lowercase hex digits is refused before it becomes a path."""
    for method in (store.path, store.exists, store.open, store.verify):
        with pytest.raises(InvalidBlobName):
            method(bad)
    with pytest.raises(InvalidBlobName):
        store.publish([StagedBlob(store.root / "tmp" / "x", bad, 0)])


def test_iter_blobs_skips_strays(store):
    """iter_blobs() lists published blobs in order and ignores names that are not blobs where they lie."""
    names = sorted(put(store, b"%d" % i) for i in range(5))
    blobs = store.root / "blobs"
    (blobs / "README").write_bytes(b"")
    (blobs / "zz").mkdir()
    (blobs / "ab").write_bytes(b"")  # a file where a fan-out directory would be
    misplaced = blobs / names[0][:2] / names[0][2:4] / names[1]
    misplaced.write_bytes(b"")
    assert list(store.iter_blobs()) == names


def test_clean_tmp(store):
    """clean_tmp() removes every leftover temporary file and counts them; published blobs stay."""
    name = put(store, b"published")
    stage(store, b"staged, never published")
    store.stage()  # a writer that died mid-stream
    assert store.clean_tmp() == 2
    assert tmp_names(store) == []
    assert store.clean_tmp() == 0
    assert store.verify(name)


def test_clean_tmp_leaves_other_nodes_files(tmp_path):
    """Daemons sharing a spool: one's start-up cleaning must not delete what another is writing now."""
    ours, theirs = BlobStore(tmp_path, node="gw-1"), BlobStore(tmp_path, node="gw-2")
    mine, other = ours.stage(), theirs.stage()
    (tmp_path / "tmp" / "0123abcd").write_bytes(b"left by a version without node names")
    assert ours.clean_tmp() == 2
    assert tmp_names(ours) == [other.path.name]
    assert other.path.name.startswith("gw-2~") and not mine.path.exists()
    other.write(b"still writing")
    assert theirs.publish([other.finish()]) is None
    assert theirs.clean_tmp() == 0


def test_makedirs_reports_created(tmp_path):
    """OSFileSystem.makedirs() returns exactly the directories it created, outermost first."""
    fs = OSFileSystem()
    assert fs.makedirs(tmp_path / "a" / "b" / "c") == [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    assert fs.makedirs(tmp_path / "a" / "b") == []
    assert fs.makedirs(tmp_path / "a" / "d") == [tmp_path / "a" / "d"]


def test_os_write_loops_short_writes(tmp_path, monkeypatch):
    """OSFileSystem.write() keeps writing after a short write until every byte is out."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    fs = OSFileSystem()
    fd = fs.open_exclusive(tmp_path / "f")
    fs.write(fd, b"0123456789")
    fs.close(fd)
    monkeypatch.undo()
    assert (tmp_path / "f").read_bytes() == b"0123456789"


def test_open_exclusive_refuses_existing(tmp_path):
    """OSFileSystem.open_exclusive() never opens a file that already exists."""
    (tmp_path / "f").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        OSFileSystem().open_exclusive(tmp_path / "f")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_small_scratch_stays_in_memory(store):
    before = _open_fds()
    with store.scratch() as f:
        f.write(b"x" * SCRATCH_IN_MEMORY)
        assert _open_fds() == before  # no file made for a typical message's layers
        f.seek(0)
        assert f.read() == b"x" * SCRATCH_IN_MEMORY


def test_large_scratch_goes_to_an_anonymous_file_on_the_spool_disk(store):
    data = os.urandom(SCRATCH_IN_MEMORY) + b"tail"
    with store.scratch() as f:
        f.write(data[:100])
        f.write(data[100:])
        info = os.fstat(f.fileno())
        assert info.st_dev == os.stat(store.root / "tmp").st_dev
        assert info.st_nlink == 0  # nothing left behind if the process dies
        assert stat.S_IMODE(info.st_mode) == 0o600
        f.seek(0)
        assert f.read() == data
    assert tmp_names(store) == []
