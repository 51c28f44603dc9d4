"""Crash tests for :mod:`spool.blobs`: a power cut after any filesystem call loses nothing that was published.

:class:`SimulatedFileSystem` implements the :mod:`spool.fs` seam in memory with two views of the disk:

- *volatile*, what the running process sees;
- *durable*, what survives a power cut. A file's contents become durable at ``fsync(fd)``; a
  directory's entries (files created, renamed in or out, unlinked; sub-directories created) become
  durable at ``fsync_dir`` of that directory. A rename is an entry change in both directories.

It can be told to crash (raise :class:`Crash`) at its N-th call; :meth:`SimulatedFileSystem.recover`
then returns a new filesystem holding the durable state only, optionally with some of the
not-yet-synced state written back too (the kernel may flush any dirty page or directory on its own).
A file whose entry survived but whose data never reached the disk comes back empty, as on ext4.

The invariants, checked after every recovery and :meth:`BlobStore.clean_tmp`:

(a) every blob whose ``publish`` returned before the crash is present with exactly its content;
(b) every file under ``blobs/`` holds content whose SHA-256 is its name, in the right fan-out directory;
(c) ``tmp/`` is empty.

Deliberately broken variants (no directory fsync, a disk that ignores fsync) show the model is not
vacuous: it catches their loss.
"""

import hashlib
import io
import itertools
import posixpath
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from spool.blobs import BlobStore, StagedBlob

ROOT = Path("/srv/spool")
_DIR = "dir"  # a directory entry's target; a file entry's target is its inode number


class Crash(BaseException):
    """The simulated power cut; a BaseException so no ``except Exception`` in the code under test eats it."""


def sha(data: bytes) -> str:
    """The SHA-256 of ``data`` in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


class SimulatedFileSystem:
    """The :mod:`spool.fs` seam in memory, with a volatile and a durable view, and a crash switch.

    :ivar calls: seam calls made so far.
    :ivar crash_at: the number of the call (counting from 0) that raises :class:`Crash`; every later
        call raises too, as the process is gone.
    :ivar crash_on: or the name of the method whose next call raises :class:`Crash`.
    """

    def __init__(self) -> None:
        self.volatile: dict[str, dict[str, int | str]] = {"/": {}}
        self.durable: dict[str, dict[str, int | str]] = {"/": {}}
        self.data: dict[int, bytearray] = {}
        self.synced: dict[int, bytes] = {}
        self.modes: dict[int, int] = {}
        self.fds: dict[int, int] = {}
        self._numbers = itertools.count(3)
        self.calls = 0
        self.crash_at: int | None = None
        self.crash_on: str | None = None
        self.crashed = False

    # -- the seam --------------------------------------------------------------------------------

    def _call(self, what: str) -> None:
        if self.crashed or self.calls == self.crash_at or what == self.crash_on:
            self.crashed = True
            raise Crash(f"power cut at call {self.calls} ({what})")
        self.calls += 1

    def open_exclusive(self, path: Path, mode: int = 0o600) -> int:
        """Create a file; ``FileExistsError`` if the name is taken."""
        self._call("open_exclusive")
        parent, name = self._entries(path)
        if name in parent:
            raise FileExistsError(str(path))
        inode = next(self._numbers)
        parent[name] = inode
        self.data[inode] = bytearray()
        self.modes[inode] = mode
        fd = next(self._numbers)
        self.fds[fd] = inode
        return fd

    def write(self, fd: int, data: bytes) -> None:
        """Append to an open file (volatile only)."""
        self._call("write")
        self.data[self._inode(fd)] += data

    def fsync(self, fd: int) -> None:
        """Make the file's current contents durable."""
        self._call("fsync")
        inode = self._inode(fd)
        self.synced[inode] = bytes(self.data[inode])

    def close(self, fd: int) -> None:
        """Forget a descriptor."""
        self._call("close")
        self._inode(fd)
        del self.fds[fd]

    def rename(self, src: Path, dst: Path) -> None:
        """Move an entry between directories, replacing a file at ``dst`` (volatile only)."""
        self._call("rename")
        src_parent, src_name = self._entries(src)
        dst_parent, dst_name = self._entries(dst)
        if src_name not in src_parent:
            raise FileNotFoundError(str(src))
        if dst_parent.get(dst_name) == _DIR:
            raise IsADirectoryError(str(dst))
        dst_parent[dst_name] = src_parent.pop(src_name)

    def fsync_dir(self, path: Path) -> None:
        """Make a directory's entries durable, exactly as the process sees them now."""
        self._call("fsync_dir")
        key = self._key(path)
        if key not in self.volatile:
            raise FileNotFoundError(key)
        self.durable[key] = dict(self.volatile[key])

    def unlink(self, path: Path) -> None:
        """Remove a file's entry (volatile only)."""
        self._call("unlink")
        parent, name = self._entries(path)
        if name not in parent:
            raise FileNotFoundError(str(path))
        if parent[name] == _DIR:
            raise IsADirectoryError(str(path))
        del parent[name]

    def makedirs(self, path: Path, mode: int = 0o700) -> list[Path]:
        """Create missing directories, outermost first, and return them."""
        self._call("makedirs")
        missing = []
        key = self._key(path)
        while key not in self.volatile:
            missing.append(key)
            key = posixpath.dirname(key)
        created = []
        for key in reversed(missing):
            parent, name = self._entries(key)
            if name in parent:
                raise FileExistsError(key)
            parent[name] = _DIR
            self.volatile[key] = {}
            created.append(Path(key))
        return created

    def listdir(self, path: Path) -> list[str]:
        """The names in a directory."""
        self._call("listdir")
        key = self._key(path)
        if key in self.volatile:
            return list(self.volatile[key])
        parent, name = self._entries(key)
        raise NotADirectoryError(key) if name in parent else FileNotFoundError(key)

    def exists(self, path: Path) -> bool:
        """Whether the name exists."""
        self._call("exists")
        key = self._key(path)
        parent = self.volatile.get(posixpath.dirname(key))
        return key == "/" or (parent is not None and posixpath.basename(key) in parent)

    def open_read(self, path: Path) -> io.BytesIO:
        """A reader over a file's current contents."""
        self._call("open_read")
        content = self.peek(path)
        if content is None:
            raise FileNotFoundError(str(path))
        return io.BytesIO(content)

    # -- plumbing and inspection (not seam calls: never crash, never counted) --------------------

    @staticmethod
    def _key(path: Path | str) -> str:
        return posixpath.normpath(str(path))

    def _entries(self, path: Path | str) -> tuple[dict[str, int | str], str]:
        key = self._key(path)
        parent = posixpath.dirname(key)
        if parent not in self.volatile:
            raise FileNotFoundError(parent)
        return self.volatile[parent], posixpath.basename(key)

    def _inode(self, fd: int) -> int:
        if fd not in self.fds:
            raise OSError(9, "Bad file descriptor")
        return self.fds[fd]

    def peek(self, path: Path | str) -> bytes | None:
        """A file's current contents, or ``None`` if there is no such file."""
        key = self._key(path)
        parent = self.volatile.get(posixpath.dirname(key), {})
        inode = parent.get(posixpath.basename(key))
        return None if inode is None or inode == _DIR else bytes(self.data[inode])

    def files_under(self, path: Path | str) -> Iterator[tuple[Path, bytes]]:
        """Every file below a directory, with its current contents."""
        top = self._key(path)
        for name, target in sorted(self.volatile.get(top, {}).items()):
            child = posixpath.join(top, name)
            if target == _DIR:
                yield from self.files_under(child)
            else:
                yield Path(child), bytes(self.data[target])

    def restart(self) -> "SimulatedFileSystem":
        """The filesystem as a new process finds it after the old one died but the machine stayed up.

        Everything the kernel holds survives, synced or not; only the open descriptors are gone.
        """
        after = type(self)()
        after.volatile = {key: dict(entries) for key, entries in self.volatile.items()}
        after.durable = {key: dict(entries) for key, entries in self.durable.items()}
        after.data = {inode: bytearray(content) for inode, content in self.data.items()}
        after.synced = dict(self.synced)
        after.modes = dict(self.modes)
        after._numbers = itertools.count(next(self._numbers))
        return after

    def recover(self, written_back: Callable[[str], bool] = lambda _: False) -> "SimulatedFileSystem":
        """The filesystem as found after the power cut: only what reached the disk, nothing open.

        :param written_back: asked about each directory and file with unsynced changes (``"dir
            /x"``, ``"file 7"``); ``True`` means the kernel happened to write it back before the cut.
        """
        durable = {key: dict(entries) for key, entries in self.durable.items()}
        synced = dict(self.synced)
        for key, entries in sorted(self.volatile.items()):
            if durable.get(key) != entries and written_back(f"dir {key}"):
                durable[key] = dict(entries)
        for inode, content in sorted(self.data.items()):
            if synced.get(inode) != bytes(content) and written_back(f"file {inode}"):
                synced[inode] = bytes(content)
        after = SimulatedFileSystem()
        after.volatile = {}
        todo = ["/"]
        while todo:  # only what is reachable from / through durable entries survives
            key = todo.pop()
            entries = durable.get(key, {})  # a directory created but never synced comes back empty
            after.volatile[key] = dict(entries)
            for name, target in entries.items():
                if target == _DIR:
                    todo.append(posixpath.join(key, name))
                else:
                    after.data[target] = bytearray(synced.get(target, b""))
                    after.modes[target] = self.modes[target]
        after.durable = {key: dict(entries) for key, entries in after.volatile.items()}
        after.synced = {inode: bytes(content) for inode, content in after.data.items()}
        after._numbers = itertools.count(next(self._numbers))
        return after


def violations(fs: SimulatedFileSystem, store: BlobStore, published: dict[str, bytes]) -> list[str]:
    """Which of the invariants (a), (b), (c) the filesystem breaks, as readable sentences."""
    found = []
    for name, content in sorted(published.items()):
        stored = fs.peek(store.path(name))
        if stored is None:
            found.append(f"(a) published blob {name[:12]} lost")
        elif stored != content:
            found.append(f"(a) published blob {name[:12]} changed")
    for path, content in fs.files_under(ROOT / "blobs"):
        if sha(content) != path.name or store.path(path.name) != path:
            found.append(f"(b) {path} holds {len(content)} bytes that do not match its name")
    leftovers = [path for path, _ in fs.files_under(ROOT / "tmp")]
    if leftovers:
        found.append(f"(c) tmp/ not empty after clean_tmp: {leftovers}")
    return found


def stage(store: BlobStore, payload: bytes, chunk: int) -> StagedBlob:
    """Stream ``payload`` into a staged blob in chunks of ``chunk`` bytes."""
    with store.stage() as writer:
        for i in range(0, len(payload), chunk):
            writer.write(payload[i : i + chunk])
        return writer.finish()


class NoDirSyncStore(BlobStore):
    """Broken on purpose: publishes without fsyncing any directory."""

    def _sync_directories(self, directories) -> None:
        """Skip the directory fsyncs."""


class TrustingStore(BlobStore):
    """Broken on purpose: trusts directories an earlier process left, fsyncing parents only of the ones it creates."""

    def publish(self, staged) -> None:
        """Mark existing destination directories (and their parents) durable, then publish."""
        for blob in staged:
            directory = self.path(blob.sha256).parent
            if self._fs.exists(directory):
                self._durable_dirs.update([directory, directory.parent, directory.parent.parent])
        super().publish(staged)


class LyingDiskFileSystem(SimulatedFileSystem):
    """Broken on purpose: a disk that acknowledges a file fsync without writing anything."""

    def fsync(self, fd: int) -> None:
        """Count the call, persist nothing."""
        self._call("fsync")

    def recover(self, written_back: Callable[[str], bool] = lambda _: False) -> "SimulatedFileSystem":
        """Recover, still lying."""
        after = super().recover(written_back)
        lying = LyingDiskFileSystem()
        lying.__dict__.update(after.__dict__)
        return lying


PAYLOADS = st.sampled_from([b"", b"<Invoice/>", b"x" * 40]) | st.binary(max_size=48)
BATCH = st.lists(st.tuples(PAYLOADS, st.integers(min_value=1, max_value=16)), min_size=1, max_size=4)
#: Where the power fails: none, or after so many calls from the start of staging or of publish.
CRASH = st.one_of(
    st.none(),
    st.tuples(st.just("stage"), st.integers(min_value=0, max_value=40)),
    st.tuples(st.just("publish"), st.integers(min_value=0, max_value=16)),
)
WRITE_BACK = st.tuples(st.sampled_from([0.0, 0.5, 1.0]), st.randoms(use_true_random=False))


class BlobStoreCrashMachine(RuleBasedStateMachine):
    """Random batches, random power cuts anywhere, recovery, and the invariants after every recovery."""

    store_class: type[BlobStore] = BlobStore
    fs_class: type[SimulatedFileSystem] = SimulatedFileSystem

    def __init__(self) -> None:
        super().__init__()
        self.fs = self.fs_class()
        self.store = self.store_class(ROOT, fs=self.fs)
        self.published: dict[str, bytes] = {}

    @rule(batch=BATCH, crash=CRASH, power=st.booleans(), write_back=WRITE_BACK)
    def publish_batch(self, batch, crash, power, write_back) -> None:
        """Stage and publish a batch; the power may fail, or the process die, at any call on the way."""
        phase, after = crash or (None, 0)
        if phase == "stage":
            self.fs.crash_at = self.fs.calls + after
        try:
            staged = [stage(self.store, payload, chunk) for payload, chunk in batch]
            if phase == "publish":
                self.fs.crash_at = self.fs.calls + after
            self.store.publish(staged)
        except Crash:
            if power:
                self.recover(write_back)
            else:
                self.restart()
            return
        self.fs.crash_at = None
        self.published.update((sha(payload), payload) for payload, _ in batch)

    @rule(payload=PAYLOADS, finish=st.booleans())
    def leave_staged(self, payload, finish) -> None:
        """Leave a payload in ``tmp/``, finished or mid-stream, as a dropped connection would."""
        writer = self.store.stage()
        writer.write(payload)
        if finish:
            writer.finish()

    @rule(payload=PAYLOADS)
    def abort(self, payload) -> None:
        """Stage a payload and abort it."""
        with self.store.stage() as writer:
            writer.write(payload)

    @rule(write_back=WRITE_BACK, crash_in_recovery=st.none() | st.integers(min_value=0, max_value=12))
    def power_cut(self, write_back, crash_in_recovery) -> None:
        """Cut the power between operations, perhaps again during the recovery."""
        self.recover(write_back, crash_in_recovery)

    @rule()
    def restart(self) -> None:
        """The process dies between operations and starts again; the kernel (and its unsynced state) survives."""
        self.fs = self.fs.restart()
        self.store = self.store_class(ROOT, fs=self.fs)
        self.store.clean_tmp()
        assert violations(self.fs, self.store, self.published) == []

    def recover(self, write_back, crash_in_recovery: int | None = None) -> None:
        """Restart on what survived, clean ``tmp/``, and check (a), (b) and (c)."""
        probability, rnd = write_back
        written_back = lambda _: rnd.random() < probability  # noqa: E731
        fs = self.fs.recover(written_back)
        if crash_in_recovery is not None:
            fs.crash_at = crash_in_recovery
            try:
                self.store_class(ROOT, fs=fs).clean_tmp()
            except Crash:
                fs = fs.recover(written_back)
            fs.crash_at = None
        self.fs = fs
        self.store = self.store_class(ROOT, fs=fs)
        self.store.clean_tmp()
        assert violations(self.fs, self.store, self.published) == []
        for name in self.published:
            assert self.store.verify(name)
        assert set(self.published) <= set(self.store.iter_blobs())

    @invariant()
    def final_names_hold_their_content(self) -> None:
        """Even before any crash, nothing under ``blobs/`` ever holds bytes that do not match its name."""
        for path, content in self.fs.files_under(ROOT / "blobs"):
            assert sha(content) == path.name


CRASH_SETTINGS = settings(
    max_examples=300,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_crash_machine():
    """No power cut at any call, with any write-back, loses a published blob or exposes a partial one."""
    run_state_machine_as_test(BlobStoreCrashMachine, settings=CRASH_SETTINGS)


FIND_BUG = settings(
    max_examples=300,
    stateful_step_count=12,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def test_machine_catches_missing_directory_fsync():
    """The machine is not vacuous: a store that skips the directory fsyncs loses published blobs."""

    class Broken(BlobStoreCrashMachine):
        store_class = NoDirSyncStore

    with pytest.raises(AssertionError, match=r"\(a\) published blob .* lost"):
        run_state_machine_as_test(Broken, settings=FIND_BUG)


def test_machine_catches_lying_disk():
    """The machine is not vacuous: with file fsyncs that persist nothing, blobs come back empty under their names."""

    class Broken(BlobStoreCrashMachine):
        fs_class = LyingDiskFileSystem

    with pytest.raises(AssertionError, match=r"\(a\) published blob .* changed|\(b\) .* do not match its name"):
        run_state_machine_as_test(Broken, settings=FIND_BUG)


SCENARIO = [
    [b"first invoice", b"second invoice", b"first invoice"],
    [b"second invoice", b"third invoice", b""],
]


def run_scenario(store_class: type[BlobStore], crash_at: int | None, written_back: bool) -> tuple[list[str], int]:
    """Run :data:`SCENARIO` with a power cut at call ``crash_at``; return the violations and the calls made."""
    fs = SimulatedFileSystem()
    fs.crash_at = crash_at
    published: dict[str, bytes] = {}
    try:
        store = store_class(ROOT, fs=fs)
        store.clean_tmp()
        for batch in SCENARIO:
            store.publish([stage(store, payload, 5) for payload in batch])
            published.update((sha(payload), payload) for payload in batch)
    except Crash:
        pass
    recovered = fs.recover(lambda _: written_back)
    store = store_class(ROOT, fs=recovered)
    store.clean_tmp()
    return violations(recovered, store, published), fs.calls


def test_every_crash_point_of_a_scenario():
    """A power cut at each call of a fixed two-batch scenario, with or without write-back, breaks no invariant."""
    _, total = run_scenario(BlobStore, None, False)
    assert total > 40
    for crash_at in range(total + 1):
        for written_back in (False, True):
            assert run_scenario(BlobStore, crash_at, written_back)[0] == [], (crash_at, written_back)


def test_every_crash_point_catches_missing_directory_fsync():
    """Without directory fsyncs, some crash point of the same scenario loses a blob whose publish returned."""
    _, total = run_scenario(NoDirSyncStore, None, False)
    found = [v for crash_at in range(total + 1) for v in run_scenario(NoDirSyncStore, crash_at, False)[0]]
    assert any(v.startswith("(a)") and v.endswith("lost") for v in found)


def test_recover_keeps_only_durable_state():
    """The model itself: unsynced data and entries vanish, synced ones survive, write-back keeps both."""
    fs = SimulatedFileSystem()
    fs.makedirs(Path("/d"))
    fs.fsync_dir(Path("/"))
    fd = fs.open_exclusive(Path("/d/synced"))
    fs.write(fd, b"abc")
    fs.fsync(fd)
    fs.write(fd, b"def")
    fs.close(fd)
    fs.fsync_dir(Path("/d"))
    fd = fs.open_exclusive(Path("/d/unsynced-entry"))
    fs.write(fd, b"xyz")
    fs.fsync(fd)
    after = fs.recover()
    assert sorted(after.files_under("/")) == [(Path("/d/synced"), b"abc")]
    everything = fs.recover(lambda _: True)
    assert sorted(everything.files_under("/")) == [
        (Path("/d/synced"), b"abcdef"),
        (Path("/d/unsynced-entry"), b"xyz"),
    ]


def test_rename_is_an_entry_in_both_directories():
    """The model itself: a rename survives only where the directory was synced (here: the target only)."""
    fs = SimulatedFileSystem()
    fs.makedirs(Path("/a"))
    fs.makedirs(Path("/b"))
    fs.fsync_dir(Path("/"))
    fd = fs.open_exclusive(Path("/a/f"))
    fs.fsync(fd)
    fs.close(fd)
    fs.fsync_dir(Path("/a"))
    fs.rename(Path("/a/f"), Path("/b/f"))
    fs.fsync_dir(Path("/b"))
    after = fs.recover()
    assert [p for p, _ in after.files_under("/")] == [Path("/a/f"), Path("/b/f")]  # two names, one inode


def test_crash_stops_the_process():
    """The model itself: the N-th call raises Crash, and so does every call after it."""
    fs = SimulatedFileSystem()
    fs.crash_at = 1
    fs.makedirs(Path("/a"))
    with pytest.raises(Crash):
        fs.listdir(Path("/"))
    with pytest.raises(Crash):
        fs.exists(Path("/a"))


def replay_after_process_death(store_class: type[BlobStore]) -> list[str]:
    """A process dies just before its directory fsyncs; the next one replays the blob; then the power fails."""
    payload = b"invoice replayed after a restart"
    fs = SimulatedFileSystem()
    first = store_class(ROOT, fs=fs)
    staged = stage(first, payload, 64)
    fs.crash_on = "fsync_dir"  # after the rename, before any directory fsync
    with pytest.raises(Crash, match="fsync_dir"):
        first.publish([staged])
    fs = fs.restart()
    second = store_class(ROOT, fs=fs)
    second.clean_tmp()
    second.publish([stage(second, payload, 64)])  # returns: the sender is told it is accepted
    recovered = fs.recover()
    return violations(recovered, store_class(ROOT, fs=recovered), {sha(payload): payload})


def test_replay_after_process_death_is_durable():
    """A replay into directories a dead process created fsyncs their parents too, so a later power cut loses nothing."""
    assert replay_after_process_death(BlobStore) == []


def test_replay_after_process_death_catches_trusting_store():
    """Fsyncing only the parents of directories created by this process would lose the replayed blob."""
    assert [v for v in replay_after_process_death(TrustingStore) if v.endswith("lost")]
