"""Waiting for a push delivery of a real daemon to settle, as the push tests (SFTP, AS2 peers) all do."""

from tests.e2e.https import query
from tests.e2e.test_mtls_door import wait_until

DELIVERY_TIMEOUT = 30.0


def push_delivery(daemon, message_id: str, target: str) -> tuple | None:
    """(state, remote_id, attempts, last_error) of the message's delivery to ``target``."""
    rows = query(daemon, "SELECT state, remote_id, attempts, last_error FROM deliveries "
                         "WHERE message_id = :id AND target = :target", id=message_id, target=target)
    return rows[0] if rows else None


def wait_push(daemon, message_id: str, target: str, settled, timeout: float = DELIVERY_TIMEOUT,
              explain=lambda: "") -> tuple:
    """Poll until ``settled(row)`` holds for :func:`push_delivery`'s row; on failure print the last rows seen,
    the daemon's log and ``explain()`` (the peer's side)."""
    seen = []

    def reached() -> bool:
        row = push_delivery(daemon, message_id, target)
        seen.append(row)
        return row is not None and settled(row)

    try:
        wait_until(reached, timeout=timeout)
    except BaseException:
        print(f"delivery rows seen: {seen[-3:]}\n{explain()}\n"
              f"daemon log {daemon.log}:\n{daemon.log.read_text()[-6000:]}")
        raise
    return push_delivery(daemon, message_id, target)
