# -*- test-case-name: tests.gateway.test_committer -*-
"""Group commit, the reactor half: one writer thread, batches formed by whoever is waiting.

While a batch is being made durable, new commits queue up; when it finishes, everything queued (up
to ``max_batch``) becomes the next batch. Under light load a commit runs alone and at once; under
heavy load the fsyncs and the transaction are shared by up to ``max_batch`` callers (the classic
natural batching of Postfix's queue manager and database WALs) without any timer adding latency.
"""

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from spool.blobs import BlobStore, StagedBlob
from spool.commit import Work, commit_batch


class CommitterStopped(Exception):
    """A commit was asked for after the daemon began to stop; nothing was committed."""


class GroupCommitter(Service):
    """Commits :class:`spool.commit.Work` in batches on one dedicated writer thread."""

    name = "committer"

    def __init__(self, reactor, store: BlobStore, engine: Engine, max_batch: int = 64,
                 on_batch: Callable[[int], None] = lambda size: None):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = max_batch
        self._reactor = reactor
        self._store = store
        self._engine = engine
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="postroom-commit")
        self._queue: list[tuple[Work, Deferred]] = []
        self._busy = False
        self._drained: Deferred | None = None
        self._on_batch = on_batch
        #: Sizes of the most recent batches (tests and benchmarks; bounded for a long-running daemon).
        self.batch_sizes: deque[int] = deque(maxlen=4096)

    def startService(self) -> None:
        """Start the writer thread."""
        super().startService()
        self._pool.start()

    def stopService(self) -> Deferred | None:
        """Commit everything already queued, then stop the thread: every caller gets its answer."""
        super().stopService()
        if self._pool.joined:
            return None
        if not self._busy:
            self._pool.stop()
            return None
        self._drained = Deferred()
        return self._drained.addCallback(lambda _: self._pool.stop())

    def commit(self, blobs: Sequence[StagedBlob], record: Callable[[Connection], Any]) -> Deferred:
        """Publish ``blobs`` and run ``record(conn)`` in the next batch; fires with its return value.

        Fails with the exception ``record`` raised (only this commit is affected), or with the
        batch's error when the blobs or the transaction could not be made durable.
        """
        if not self.running and not self._busy:
            return fail(CommitterStopped("the gateway is shutting down; nothing was committed"))
        d: Deferred = Deferred()
        self._queue.append((Work(tuple(blobs), record), d))
        if not self._busy:
            self._next_batch()
        return d

    def _next_batch(self) -> None:
        if not self._queue:
            self._busy = False
            if self._drained is not None:
                drained, self._drained = self._drained, None
                drained.callback(None)
            return
        self._busy = True
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        self.batch_sizes.append(len(batch))
        self._on_batch(len(batch))
        works = [work for work, _ in batch]
        d = deferToThreadPool(self._reactor, self._pool, commit_batch, self._store, self._engine, works)
        d.addCallbacks(self._settle, self._fail_all, callbackArgs=(batch,), errbackArgs=(batch,))

    def _settle(self, outcomes, batch) -> None:
        self._next_batch()
        for (_, waiter), outcome in zip(batch, outcomes, strict=True):
            if outcome.error is None:
                waiter.callback(outcome.value)
            else:
                waiter.errback(Failure(outcome.error))

    def _fail_all(self, failure: Failure, batch) -> None:
        self._next_batch()
        for _, waiter in batch:
            waiter.errback(failure)
