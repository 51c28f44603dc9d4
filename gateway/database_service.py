# -*- test-case-name: tests.gateway.test_directory_service -*-
"""Run blocking database work on a named thread pool, never on the reactor thread.

Functions handed to :meth:`DatabaseService.run` are named ``thd_*`` by convention (Buildbot's
``db/pool.py``): a reminder that they block and must never be called from reactor code directly.
"""

from typing import Any, Callable

from sqlalchemy.engine import Engine
from twisted.internet.defer import Deferred

from gateway.pools import ThreadPoolService


class DatabaseService(ThreadPoolService):
    """Owns the engine and its thread pool; stopping waits for work in flight to finish."""

    def __init__(self, engine: Engine, reactor, threads: int = 4):
        super().__init__(reactor, "db", threads)
        self.engine = engine

    def stopService(self) -> None:
        """Finish queued work, then release the threads and the connections."""
        super().stopService()
        self.engine.dispose()

    def run(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        """Call ``fn(engine, *args)`` in the pool."""
        return super().run(fn, self.engine, *args)
