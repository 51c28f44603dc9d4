# -*- test-case-name: tests.spool.test_commit -*-
"""Group commit, the blocking half: make a whole batch durable with one rename pass and one transaction.

Each :class:`Work` brings the blobs it staged (already fsynced by :meth:`spool.blobs.BlobWriter.finish`)
and a ``record`` function that writes its rows. :func:`commit_batch` publishes every blob of the batch
(renames, then each touched directory fsynced once), then runs every ``record`` in **one** database
transaction, each inside its own savepoint so that one work's conflict (say, a duplicate that raced
past its pre-check) fails that work alone. Only when the transaction has committed do the callers
learn their outcome: no reply before its batch is durable (STYLE §2.4 steps 3-5).

The order blob-before-row is what makes a crash harmless: a blob without a row is garbage that no one
was told about; a row always names a blob that was durable before the row existed.
"""

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from sqlalchemy.engine import Connection, Engine

from spool import audit, crashpoints
from spool.blobs import BlobStore, StagedBlob


@attrs.frozen
class Work:
    """One caller's share of a batch: blobs to publish and the rows that make them count."""

    blobs: Sequence[StagedBlob]
    record: Callable[[Connection], Any]


@attrs.frozen
class Outcome:
    """What ``record`` returned, or the exception it raised (its savepoint was rolled back)."""

    value: Any = None
    error: BaseException | None = None


def commit_batch(store: BlobStore, engine: Engine, works: Sequence[Work]) -> list[Outcome]:
    """Publish every blob, then record every work in one transaction; one outcome per work, in order.

    :raises spool.blobs.SpoolWriteError: the blobs could not be made durable; nothing was recorded.
    :raises sqlalchemy.exc.SQLAlchemyError: the transaction failed as a whole; nothing was recorded.
    """
    store.publish([blob for work in works for blob in work.blobs])
    crashpoints.reached("after-publish")
    outcomes = []
    with engine.begin() as conn:
        with audit.batched(conn):  # the batch's events chained at the end: the head is locked only from there
            for work in works:
                savepoint = conn.begin_nested()
                try:
                    value = work.record(conn)
                except Exception as e:  # one work's failure must not sink its batch-mates
                    savepoint.rollback()
                    outcomes.append(Outcome(error=e))
                else:
                    savepoint.commit()
                    outcomes.append(Outcome(value=value))
        crashpoints.reached("before-commit")
    crashpoints.reached("after-commit")
    return outcomes
