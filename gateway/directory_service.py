# -*- test-case-name: tests.gateway.test_directory_service -*-
"""Keep a current :class:`~partners.directory.PartnerDirectory` in memory for the doors.

Every ``reload_seconds`` the service reads one integer, ``directory_state.version``; only when it
changed does it load the whole directory (in a thread) and swap the snapshot in. A CLI change thus
reaches a running daemon within seconds, and works the same with several daemons on one PostgreSQL.
"""

from sqlalchemy.engine import Engine
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.database_service import DatabaseService
from gateway.metrics import Metrics
from gateway.milestone import Milestone
from partners.directory import PartnerDirectory, load_directory
from partners.store import directory_version
from spool.database import reading


def thd_poll(engine: Engine, known_version: int) -> PartnerDirectory | None:
    """A new snapshot when the directory changed since ``known_version``, else None."""
    with reading(engine) as conn, conn.begin():
        if directory_version(conn) == known_version:
            return None
        return load_directory(conn)


class DirectoryService(Service):
    """Polls for directory changes and exposes the current snapshot as :attr:`current`."""

    name = "directory"
    _log = Logger()

    def __init__(self, db: DatabaseService, clock, interval: float, metrics: Metrics):
        self.current = PartnerDirectory.empty()
        self._db = db
        self._clock = clock
        self._interval = interval
        self._metrics = metrics
        self._loaded_once = Milestone()
        self.last_success: float | None = None
        self._loop = LoopingCall(self._poll)
        self._loop.clock = clock

    def when_ready(self) -> Deferred:
        """A Deferred that fires once the first snapshot is loaded."""
        return self._loaded_once.wait()

    def startService(self) -> None:
        """Load now, then poll every interval."""
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> Deferred | None:
        """Stop polling."""
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return None

    def get(self) -> PartnerDirectory:
        """The current snapshot (a cheap attribute read, safe from any door)."""
        return self.current

    def health(self) -> tuple[bool, dict]:
        """Healthy while the last successful poll is recent (the database answers)."""
        if self.last_success is None:
            return False, {"directory": "not loaded yet"}
        age = self._clock.seconds() - self.last_success
        details = {"directory_version": self.current.version, "directory_age_seconds": round(age, 1)}
        if age > 3 * self._interval + 5:
            return False, details | {"reason": f"the database has not answered for {age:.0f} s"}
        return True, details

    def _poll(self) -> Deferred:
        d = self._db.run(thd_poll, self.current.version)
        d.addCallbacks(self._loaded, self._failed)
        return d

    def _loaded(self, snapshot: PartnerDirectory | None) -> None:
        self.last_success = self._clock.seconds()
        if snapshot is not None:
            old = self.current.version
            self.current = snapshot
            self._metrics.directory_reloads.inc()
            self._metrics.directory_version.set(snapshot.version)
            for status in ("active", "disabled"):
                count = sum(1 for p in snapshot.partners.values() if p.active == (status == "active"))
                self._metrics.partners.labels(status=status).set(count)
            self._log.info("partner directory version {version} loaded (was {old}): {n} partners",
                           version=snapshot.version, old=old, n=len(snapshot.partners))
        self._loaded_once.reach()

    def _failed(self, failure) -> None:
        self._metrics.directory_errors.inc()
        self._log.failure("partner directory poll failed; keeping version {version}", failure,
                          version=self.current.version)
