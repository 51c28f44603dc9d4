"""Tests for :mod:`protocols.sftp.pace`: a connection averages its rate after a one-second burst."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.sftp.pace import BURST, Pace


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_full_speed_then_the_rate_holds():
    """At 1000 B/s, the first second's worth passes at once; after that each 500 B waits half a second."""
    clock = Clock()
    pace = Pace(1000, clock)
    assert [pace.delay(500), pace.delay(500)] == [0.0, 0.0]
    assert pace.delay(500) == pytest.approx(0.5)
    clock.now += 0.5  # the client waited
    assert pace.delay(500) == pytest.approx(0.5)


def test_an_idle_connection_does_not_save_up_more_than_the_burst():
    """Ten idle seconds do not buy ten seconds of full speed."""
    clock = Clock()
    pace = Pace(1000, clock)
    clock.now += 10
    assert pace.delay(1000) == 0.0
    assert pace.delay(1000) == pytest.approx(1.0)


@given(st.lists(st.tuples(st.integers(1, 1 << 20), st.floats(0, 2)), min_size=1, max_size=50))
def test_waiting_as_told_never_beats_the_rate_by_more_than_the_burst(chunks):
    """Whatever the chunk sizes and pauses: bytes moved <= rate * (elapsed + BURST)."""
    clock = Clock()
    start, moved, rate = clock.now, 0, 4096
    pace = Pace(rate, clock)
    for size, pause in chunks:
        clock.now += pause
        clock.now += pace.delay(size)
        moved += size
        assert moved <= rate * (clock.now - start + BURST) + 1  # one byte for float rounding


def test_the_rate_must_be_positive():
    """Zero or negative is a configuration mistake, named."""
    with pytest.raises(ValueError, match="positive"):
        Pace(0, Clock())
