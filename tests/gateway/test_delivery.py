"""Tests for :mod:`gateway.delivery`: mailbox filing, push attempts with backoff, dead letters, shutdown.

A real :class:`~gateway.database_service.DatabaseService` (one thread) over the ``engine`` fixture's
SQLite and real records; the polling loop runs on a :class:`~twisted.internet.task.Clock` and the
service's idea of "now" is a controllable callable, so backoff times are exact. Push targets are the
only fakes: they fail as told, or hold their answer until the test releases it.

A round is run by starting the service (which runs one at once) and stopping it, which waits for the
round in flight: both are the service's documented behaviour, so no test needs to peek inside it.
"""

import random
from datetime import UTC, datetime, timedelta

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from gateway.delivery import DeliveryService
from gateway.rounds import MAX_DELAY, RoundsService, retry_delay
from gateway.router import targets_for
from partners.directory import Partner, PartnerDirectory
from protocols.envelope import DeliveryFailed
from spool import audit, records
from spool.records import Message

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
SEED = 20261123
BACKOFF = 60
INTERVAL = 5.0

GLOBEX = Partner("globex", "Globex", True)  # collects from its mailbox
INITECH = Partner("initech", "Initech", True, deliver="as2", as2_url="https://as2.initech.example/",
                  as2_ids=("INITECH",))  # wants AS2 pushes
DIRECTORY = PartnerDirectory.build(1, [GLOBEX, INITECH])


class Now:
    """The service's clock for timestamps: a datetime the test moves by hand."""

    def __init__(self, at: datetime = T0):
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class FlakyTarget:
    """A push target that fails its first ``failures`` pushes (permanently, if told), then succeeds."""

    def __init__(self, failures: int = 0, permanent: bool = False, crash: bool = False):
        self.failures = failures
        self.permanent = permanent
        self.crash = crash
        self.pushed: list[tuple[str, int, str]] = []  # (message ID, delivery ID, recipient ID)

    def push(self, message: Message, delivery: records.Delivery, recipient: Partner) -> defer.Deferred:
        self.pushed.append((message.id, delivery.id, recipient.id))
        if len(self.pushed) > self.failures:
            return defer.succeed(None)
        if self.crash:
            return defer.fail(KeyError("bug in the target"))
        return defer.fail(DeliveryFailed(f"connection refused ({len(self.pushed)})", permanent=self.permanent))


class HeldTarget:
    """A push target whose pushes wait until the test fires them; ``called`` fires at each push."""

    def __init__(self):
        self.held: list[defer.Deferred] = []
        self._called: list[defer.Deferred] = []

    def called(self) -> defer.Deferred:
        """Fires at the next push."""
        d: defer.Deferred = defer.Deferred()
        self._called.append(d)
        return d

    def push(self, message, delivery, recipient) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.held.append(d)
        waiting, self._called = self._called, []
        for w in waiting:
            w.callback(message.id)
        return d


pytestmark = pytest.mark.usefixtures("logged_failures")


@pytest.fixture
def logged_failures():
    """Failures the code under test logged; a test that expects some removes them, any left fail the test."""
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)
    assert [f["log_failure"].getTraceback() for f in failures] == []


@pytest.fixture
def clock() -> Clock:
    """Drives the polling loop."""
    return Clock()


@pytest.fixture
def now() -> Now:
    """What the service thinks the time is; starts at T0."""
    return Now()


@pytest.fixture
def make_service(db, clock, now):
    """Build delivery services for worker node-1 (seeded jitter); any still running are stopped after the test."""
    made = []

    def make(targets=None, *, max_attempts: int = 3, ready=None, batch: int = 64, directory=DIRECTORY):
        options = {"ready": ready} if ready is not None else {}
        service = DeliveryService(db, clock, now, lambda: directory, targets or {}, max_attempts=max_attempts,
                                  backoff=BACKOFF, interval=INTERVAL, batch=batch, worker="node-1",
                                  rng=random.Random(SEED), **options)
        made.append(service)
        return service

    yield make
    for service in made:
        if service.running:
            service.stopService()


async def run_round(service: DeliveryService) -> None:
    """Start the service, which runs a round at once, and stop it, which waits for that round."""
    service.startService()
    await service.stopService()


def accept(engine, recipient: Partner, at: datetime = T0, number: str = "INV-1") -> Message:
    """Record an accepted message for ``recipient`` with the deliveries the router plans."""
    msg = Message(id=records.new_id(at), received_at=at, sender_id="acme", recipient_id=recipient.id, channel="as2",
                  sha256="ab" * 32, size=100, kind="ubl-invoice", signed=False, route="receiver", state="accepted",
                  updated_at=at, number=number)
    with engine.begin() as conn:
        records.insert_message(conn, msg, targets_for(recipient))
    return msg


def deliveries(engine, msg: Message) -> dict[str, records.Delivery]:
    """A message's deliveries by target."""
    with engine.connect() as conn:
        return {d.target: d for d in records.deliveries_of(conn, msg.id)}


def state(engine, msg: Message) -> str:
    """A message's state."""
    with engine.connect() as conn:
        return records.get_message(conn, msg.id).state


def events(engine, msg: Message) -> list[tuple[str, dict]]:
    """(event, details) of a message's audit trail."""
    with engine.connect() as conn:
        return [(e.event, e.details) for e in audit.events(conn, message_id=msg.id)]


# ---------------------------------------------------------------------------------------------------------------
# Mailboxes
# ---------------------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_mailbox_deliveries_are_filed_once_and_the_message_is_delivered(make_service, engine, now):
    """One round files each message once and completes it; later rounds change nothing."""
    msgs = [accept(engine, GLOBEX, T0 + timedelta(seconds=i), number=f"INV-{i}") for i in range(3)]
    service = make_service()
    now.at = T0 + timedelta(minutes=1)
    await run_round(service)
    for _ in range(2):
        now.at += timedelta(minutes=30)
        await run_round(service)
    with engine.connect() as conn:
        assert [records.mailbox_count(conn, m.id) for m in msgs] == [1, 1, 1]
        assert [i.message.id for i in records.mailbox(conn, "globex", limit=10)] == [m.id for m in reversed(msgs)]
        assert {i.delivered_at for i in records.mailbox(conn, "globex", limit=10)} == {T0 + timedelta(minutes=1)}
    for msg in msgs:
        assert state(engine, msg) == "delivered"
        [mailbox] = deliveries(engine, msg).values()
        assert (mailbox.state, mailbox.attempts) == ("done", 1)
        assert [e for e, _ in events(engine, msg)] == ["delivery.done"]


@pytest_twisted.ensureDeferred
async def test_a_notification_that_cannot_be_queued_never_undoes_the_filing(db, clock, now, engine):
    """``on_filed`` raising for one message (say, an address the mailer cannot use): every message is filed
    and delivered all the same, what the hook wrote for it is rolled back alone, and the failure is audited."""
    msgs = [accept(engine, GLOBEX, number=f"INV-{i}") for i in range(2)]
    queued = []

    def on_filed(conn, message_id, recipient_id, at):
        queued.append(message_id)
        if message_id == msgs[0].id:
            audit.append(conn, "test", "half.written", at, message_id=message_id)
            raise ValueError("not one plain mailbox")

    service = DeliveryService(db, clock, now, lambda: DIRECTORY, {}, max_attempts=3, backoff=BACKOFF,
                              interval=INTERVAL, worker="node-1", on_filed=on_filed)
    await run_round(service)
    assert sorted(queued) == sorted(m.id for m in msgs)
    assert [state(engine, m) for m in msgs] == ["delivered", "delivered"]
    assert [e for e, _ in events(engine, msgs[0])] == ["delivery.done", "mail.failed"]
    assert [e for e, _ in events(engine, msgs[1])] == ["delivery.done"]


@pytest_twisted.ensureDeferred
async def test_a_repeated_mailbox_delivery_is_completed_without_a_second_item(make_service, engine):
    """An attempt repeated after its item was filed (say, by a node that lost its claim) files nothing new."""
    msg = accept(engine, GLOBEX)
    with engine.begin() as conn:
        assert records.put_in_mailbox(conn, msg.id, "globex", T0)
    await run_round(make_service())
    with engine.connect() as conn:
        assert records.mailbox_count(conn, msg.id) == 1
        assert records.mailbox_item(conn, "globex", msg.id).delivered_at == T0
    assert state(engine, msg) == "delivered"


@pytest_twisted.ensureDeferred
async def test_a_round_keeps_claiming_until_the_queue_is_drained(make_service, engine, now):
    """With a batch of 2, one round claims four times: the push due last is reached with the rest all filed."""
    target = HeldTarget()
    msgs = [accept(engine, GLOBEX, number=f"INV-{i}") for i in range(5)]
    last = accept(engine, INITECH, at=T0 + timedelta(seconds=1), number="INV-LAST")  # claimed in the fourth batch
    now.at = T0 + timedelta(minutes=1)
    service = make_service({"as2": target}, batch=2)
    pushed = target.called()
    service.startService()
    assert await pushed == last.id
    assert [state(engine, m) for m in msgs] == ["delivered"] * 5
    stopped = service.stopService()
    target.held[0].callback(None)
    await stopped
    assert state(engine, last) == "delivered"


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_claim_is_delivered_once_its_lease_runs_out(make_service, engine, now):
    """A delivery claimed by a node that died is left alone for the lease, then delivered by this one."""
    msg = accept(engine, GLOBEX)
    with engine.begin() as conn:
        records.claim_due(conn, T0, "node-2", 10, timedelta(minutes=10))
    service = make_service()
    now.at = T0 + timedelta(minutes=9)
    await run_round(service)
    assert deliveries(engine, msg)["mailbox"].claimed_by == "node-2"
    now.at = T0 + timedelta(minutes=10)
    await run_round(service)
    assert state(engine, msg) == "delivered"


@pytest_twisted.ensureDeferred
async def test_a_corrupt_message_is_not_delivered(make_service, engine):
    """A message whose bytes are gone is not filed in a mailbox: its recipient could never download it."""
    msg = accept(engine, GLOBEX)
    with engine.begin() as conn:
        records.set_message_state(conn, msg.id, "corrupt", T0)
    await run_round(make_service())
    with engine.connect() as conn:
        assert records.mailbox_count(conn, msg.id) == 0


# ---------------------------------------------------------------------------------------------------------------
# Polling and shutdown
# ---------------------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_no_round_runs_before_ready_fires(make_service, engine, clock, db):
    """Until recovery says so, polling does not even start; then a round runs at once."""
    msg = accept(engine, GLOBEX)
    recovered: defer.Deferred = defer.Deferred()
    service = make_service(ready=lambda: recovered)
    service.startService()
    clock.advance(INTERVAL * 10)
    await db.run(lambda engine: None)  # the one database thread is idle: nothing was queued before this
    assert state(engine, msg) == "accepted"
    recovered.callback(None)
    await service.stopService()
    assert state(engine, msg) == "delivered"


@pytest_twisted.ensureDeferred
async def test_the_loop_polls_every_interval(make_service, engine, clock, now, db):
    """A message that falls due between polls is delivered by the next tick of the clock, not before."""
    msg = accept(engine, GLOBEX, at=T0 + timedelta(seconds=10))
    service = make_service()
    service.startService()
    await db.run(lambda engine: None)  # the first round claimed nothing and is over
    now.at = T0 + timedelta(seconds=10)
    clock.advance(INTERVAL - 0.5)
    await db.run(lambda engine: None)
    assert state(engine, msg) == "accepted"
    clock.advance(0.5)
    await service.stopService()
    assert state(engine, msg) == "delivered"


@pytest_twisted.ensureDeferred
async def test_stop_waits_for_the_round_in_flight(make_service, engine):
    """stopService's Deferred fires only after the push in flight has been answered and recorded."""
    target = HeldTarget()
    msg = accept(engine, INITECH)
    service = make_service({"as2": target})
    pushed = target.called()
    service.startService()
    await pushed
    stopped = service.stopService()
    assert not stopped.called
    target.held[0].callback(None)
    await stopped
    assert deliveries(engine, msg)["as2"].state == "done"
    assert state(engine, msg) == "delivered"


@pytest_twisted.ensureDeferred
async def test_a_wake_during_a_round_runs_another_right_after(make_service, engine):
    """Rounds never overlap: a message accepted mid-round is delivered by a second round once the first ends."""
    target = HeldTarget()
    first = accept(engine, INITECH, number="INV-1")
    service = make_service({"as2": target})
    pushed = target.called()
    service.startService()
    assert await pushed == first.id
    second = accept(engine, INITECH, number="INV-2")
    service.wake()
    assert len(target.held) == 1  # no second round while the first is in flight
    pushed = target.called()
    target.held[0].callback(None)
    assert await pushed == second.id
    target.held[1].callback(None)
    await service.stopService()
    assert (state(engine, first), state(engine, second)) == ("delivered", "delivered")


# ---------------------------------------------------------------------------------------------------------------
# Pushes, backoff and dead letters
# ---------------------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_push_that_fails_twice_then_succeeds(make_service, engine, now):
    """Attempts 1 and 2 back off by retry_delay (same seeded jitter); attempt 3 is done and the message delivered."""
    target = FlakyTarget(failures=2)
    msg = accept(engine, INITECH)
    service = make_service({"as2": target}, max_attempts=3)
    jitter = random.Random(SEED)
    await run_round(service)
    first = deliveries(engine, msg)
    assert first["mailbox"].state == "done"
    assert (first["as2"].state, first["as2"].attempts, first["as2"].last_error) == (
        "pending", 1, "connection refused (1)")
    assert first["as2"].next_attempt_at == T0 + retry_delay(1, BACKOFF, jitter)
    assert state(engine, msg) == "accepted"

    now.at = first["as2"].next_attempt_at - timedelta(seconds=1)
    await run_round(service)
    assert len(target.pushed) == 1  # not due yet

    now.at = first["as2"].next_attempt_at
    await run_round(service)
    second = deliveries(engine, msg)["as2"]
    assert (second.state, second.attempts) == ("pending", 2)
    assert second.next_attempt_at == now.at + retry_delay(2, BACKOFF, jitter)

    now.at = second.next_attempt_at
    await run_round(service)
    done = deliveries(engine, msg)["as2"]
    assert (done.state, done.attempts, done.last_error) == ("done", 3, None)
    assert state(engine, msg) == "delivered"
    assert target.pushed == [(msg.id, done.id, "initech")] * 3
    trail = events(engine, msg)
    assert [e for e, _ in trail] == ["delivery.done", "delivery.retrying", "delivery.retrying", "delivery.done"]
    assert trail[1][1] == {"delivery": done.id, "target": "as2", "recipient": "initech", "attempt": 1,
                           "error": "connection refused (1)", "retry_at": first["as2"].next_attempt_at.isoformat()}


@pytest_twisted.ensureDeferred
async def test_the_last_allowed_attempt_dead_letters_and_fails_the_message(make_service, engine, now):
    """After max_attempts failures the delivery is dead, the message failed, and the trail says so."""
    target = FlakyTarget(failures=99)
    msg = accept(engine, INITECH)
    service = make_service({"as2": target}, max_attempts=3)
    for _ in range(3):
        await run_round(service)
        now.at = deliveries(engine, msg)["as2"].next_attempt_at
    dead = deliveries(engine, msg)["as2"]
    assert (dead.state, dead.attempts, dead.last_error) == ("dead", 3, "connection refused (3)")
    assert state(engine, msg) == "failed"
    trail = events(engine, msg)
    assert [e for e, _ in trail] == ["delivery.done", "delivery.retrying", "delivery.retrying", "delivery.dead"]
    assert (trail[-1][1]["attempt"], trail[-1][1]["retry_at"]) == (3, None)
    now.at += timedelta(days=1)
    await run_round(service)
    assert len(target.pushed) == 3  # the dead letter waits for `postroom message retry`


@pytest_twisted.ensureDeferred
async def test_a_permanent_failure_dead_letters_at_once(make_service, engine):
    """A peer that refuses the content is not asked again: dead after one attempt."""
    msg = accept(engine, INITECH)
    await run_round(make_service({"as2": FlakyTarget(failures=1, permanent=True)}, max_attempts=10))
    dead = deliveries(engine, msg)["as2"]
    assert (dead.state, dead.attempts) == ("dead", 1)
    assert state(engine, msg) == "failed"


@pytest_twisted.ensureDeferred
async def test_a_delivery_without_a_push_client_waits_with_a_clear_error(make_service, engine):
    """No as2 client on this gateway: the delivery stays pending and last_error says why."""
    msg = accept(engine, INITECH)
    await run_round(make_service({}))
    waiting = deliveries(engine, msg)["as2"]
    assert waiting.state == "pending" and waiting.next_attempt_at > T0
    assert "no as2 push client" in waiting.last_error
    assert state(engine, msg) == "accepted"


@pytest_twisted.ensureDeferred
async def test_a_delivery_without_a_push_client_is_never_dead_lettered(make_service, engine, now):
    """However long there is no client for its target, the delivery waits and the message is not failed."""
    msg = accept(engine, INITECH)
    service = make_service({}, max_attempts=3)
    for _ in range(4):
        await run_round(service)
        now.at = deliveries(engine, msg)["as2"].next_attempt_at
    assert deliveries(engine, msg)["as2"].state == "pending"
    assert state(engine, msg) == "accepted"


@pytest_twisted.ensureDeferred
async def test_a_recipient_gone_from_the_directory_dead_letters(make_service, engine):
    """A push to a partner that no longer exists cannot succeed later: dead at once, with the reason."""
    target = FlakyTarget()
    msg = accept(engine, INITECH)
    await run_round(make_service({"as2": target}, directory=PartnerDirectory.build(2, [GLOBEX])))
    dead = deliveries(engine, msg)["as2"]
    assert dead.state == "dead" and "initech no longer exists" in dead.last_error
    assert target.pushed == []


@pytest_twisted.ensureDeferred
async def test_a_crashing_target_is_recorded_and_the_queue_goes_on(make_service, engine, logged_failures):
    """A bug in a target is logged, recorded as an internal error to retry, and the next delivery still runs."""
    target = FlakyTarget(failures=1, crash=True)
    first, second = accept(engine, INITECH, number="INV-1"), accept(engine, INITECH, number="INV-2")
    await run_round(make_service({"as2": target}))
    crashed = deliveries(engine, first)["as2"]
    assert (crashed.state, crashed.last_error) == ("pending", "internal error: 'bug in the target'")
    assert deliveries(engine, second)["as2"].state == "done"
    assert [f["log_failure"].type for f in logged_failures] == [KeyError]
    logged_failures.clear()


# ---------------------------------------------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------------------------------------------

@given(attempt=st.integers(min_value=1, max_value=1000),
       backoff=st.one_of(st.integers(min_value=0, max_value=86_400), st.floats(min_value=0, max_value=86_400)),
       seed=st.integers(min_value=0, max_value=2**32))
def test_retry_delay_is_equal_jitter_on_a_capped_exponential(attempt, backoff, seed):
    """The wait lies between half and all of min(backoff * 2^(attempt-1), 6 h), never more than six hours."""
    ceiling = min(backoff * 2 ** (attempt - 1), MAX_DELAY.total_seconds())
    delay = retry_delay(attempt, backoff, random.Random(seed)).total_seconds()
    slack = 1e-6  # timedelta keeps microseconds
    assert ceiling / 2 - slack <= delay <= ceiling + slack
    assert delay <= MAX_DELAY.total_seconds()


def test_retry_delay_grows_then_stays_capped():
    """Early attempts double the base; from some attempt on every delay is within the last 3 h of the cap."""
    assert retry_delay(1, 60, random.Random(1)) <= timedelta(seconds=60)
    assert timedelta(seconds=240) <= retry_delay(4, 60, random.Random(1)) <= timedelta(seconds=480)
    late = [retry_delay(n, 60, random.Random(n)) for n in range(10, 40)]
    assert all(MAX_DELAY / 2 <= d <= MAX_DELAY for d in late)
    assert len(set(late)) > 1  # jitter: a burst of failures does not come back in lockstep


@pytest_twisted.ensureDeferred
async def test_wakes_close_together_are_gathered_into_one_round(make_service, engine, clock):
    """``wake_soon`` three times within the delay: one round after it, delivering all three messages."""
    target = HeldTarget()
    service = make_service({"as2": target}, ready=defer.Deferred)  # never ready: no polling, only the wakes run rounds
    service.startService()
    messages = [accept(engine, INITECH, number=f"INV-{n}") for n in (1, 2, 3)]
    for _ in messages:
        service.wake_soon(0.05)
    clock.advance(0.04)
    assert target.held == []
    pushed = target.called()
    clock.advance(0.01)
    assert await pushed == messages[0].id
    assert len(target.held) == 1  # the three are in one round: its pushes go one after another
    for n in range(3):
        if n:
            pushed = target.called()
            target.held[n - 1].callback(None)
            assert await pushed == messages[n].id
    target.held[2].callback(None)
    await service.stopService()
    assert [state(engine, m) for m in messages] == ["delivered"] * 3


def test_wake_soon_runs_one_round_for_the_wakes_within_its_delay(clock, now):
    """Three ``wake_soon`` calls 10 ms apart: one round, 50 ms after the first; the next wake gets its own."""
    class Counting(RoundsService):
        name = "counting"
        rounds: list = []

        async def _round(self) -> None:
            self.rounds.append(clock.seconds())

    service = Counting(clock, 60, defer.Deferred, now=now, max_attempts=1, backoff=1)  # never ready: no polling
    service.startService()
    for _ in range(3):
        service.wake_soon(0.05)
        clock.advance(0.01)
    clock.advance(0.02)
    assert service.rounds == [0.05]
    service.wake_soon(0.05)
    clock.advance(0.05)
    assert service.rounds == [0.05, 0.1]
    service.stopService()
