# -*- test-case-name: tests.protocols.sftp.test_bans -*-
"""Banning sources that keep failing to log in: sans-IO, the clock is passed in.

Failures are counted per source address and per partner ID in a sliding window. Only the *source* is
banned — banning a partner ID would let anyone lock a partner out by guessing at its name — but the
per-partner count is kept and logged with every refusal, so an attack on one partner from many
addresses shows in the log.
"""

from collections import deque
from collections.abc import Callable

import attrs


@attrs.frozen
class BanPolicy:
    """``threshold`` failures from one source within ``window`` seconds ban it for ``ban`` seconds."""

    threshold: int = 10
    window: float = 600.0
    ban: float = 900.0


class Bans:
    """The ban table of one node (each node of a cluster keeps its own)."""

    def __init__(self, clock: Callable[[], float], policy: BanPolicy):
        self._clock = clock
        self._policy = policy
        self._by_source: dict[str, deque[float]] = {}
        self._by_partner: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}

    def banned_for(self, source: str) -> float:
        """Seconds ``source`` stays banned (0 when it is not)."""
        until = self._until.get(source)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._until[source]
            return 0.0
        return left

    def failed(self, source: str, partner_id: str | None) -> bool:
        """Count one failed login; True when it has just banned ``source``."""
        now = self._clock()
        recent = self._count(self._by_source, source, now)
        if partner_id:
            self._count(self._by_partner, partner_id, now)
        if len(recent) >= self._policy.threshold and not self.banned_for(source):
            self._until[source] = now + self._policy.ban
            recent.clear()
            return True
        return False

    def failures_for_partner(self, partner_id: str) -> int:
        """Failed logins as ``partner_id`` within the window, from anywhere."""
        return len(self._count(self._by_partner, partner_id, self._clock(), add=False))

    def _count(self, table: dict[str, deque[float]], key: str, now: float, add: bool = True) -> deque[float]:
        times = table.setdefault(key, deque())
        while times and times[0] <= now - self._policy.window:
            times.popleft()
        if add:
            times.append(now)
        if not times:
            del table[key]
        return times
