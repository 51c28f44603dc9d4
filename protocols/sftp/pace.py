# -*- test-case-name: tests.protocols.sftp.test_pace -*-
"""Holding one connection to a transfer rate: sans-IO, the clock is passed in.

Each chunk, written or read, books ``size / rate`` seconds on the connection's timeline; the door waits
out whatever is booked beyond one second of head start, so a short burst goes at full speed and a long
transfer averages ``rate`` bytes per second.
"""

from collections.abc import Callable

BURST = 1.0  #: seconds of transfer a connection may run ahead of its rate


class Pace:
    """The rate of one connection (shared by its sessions and handles)."""

    def __init__(self, rate: int, clock: Callable[[], float]):
        if rate <= 0:
            raise ValueError(f"a transfer rate is a positive number of bytes per second, not {rate}")
        self._rate = rate
        self._clock = clock
        self._booked_until = clock()

    def delay(self, size: int) -> float:
        """Book ``size`` bytes now; the seconds to wait before moving them."""
        now = self._clock()
        self._booked_until = max(self._booked_until, now) + size / self._rate
        return max(0.0, self._booked_until - now - BURST)
