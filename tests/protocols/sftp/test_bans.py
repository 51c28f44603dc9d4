"""The SFTP ban table, on a fake clock."""

from twisted.internet.task import Clock

from protocols.sftp.bans import BanPolicy, Bans


def bans(**policy) -> tuple[Clock, Bans]:
    clock = Clock()
    return clock, Bans(clock.seconds, BanPolicy(**policy))


def test_threshold_failures_within_the_window_ban_the_source_for_the_ban_time():
    clock, table = bans(threshold=3, window=60, ban=300)
    assert not table.failed("192.0.2.1", "acme")
    assert not table.failed("192.0.2.1", "acme")
    assert table.banned_for("192.0.2.1") == 0
    assert table.failed("192.0.2.1", "acme")  # the third: banned now
    assert table.banned_for("192.0.2.1") == 300
    assert table.banned_for("192.0.2.2") == 0  # another source is not
    clock.advance(299)
    assert table.banned_for("192.0.2.1") == 1
    clock.advance(1)
    assert table.banned_for("192.0.2.1") == 0


def test_failures_older_than_the_window_do_not_count():
    clock, table = bans(threshold=3, window=60, ban=300)
    table.failed("192.0.2.1", None)
    table.failed("192.0.2.1", None)
    clock.advance(61)
    assert not table.failed("192.0.2.1", None)
    assert table.banned_for("192.0.2.1") == 0


def test_a_partner_attacked_from_many_sources_is_counted_but_never_banned():
    clock, table = bans(threshold=3, window=60, ban=300)
    for n in range(5):
        assert not table.failed(f"198.51.100.{n}", "acme")
    assert table.failures_for_partner("acme") == 5
    clock.advance(61)
    assert table.failures_for_partner("acme") == 0
    assert table.failures_for_partner("globex") == 0
