"""The intake in-process, with every real part: blob store on disk, SQLite, group committer, thread pools.

Signature cases use the signed samples and their public test certificate; faults are injected at the
filesystem seam and by taking the database away, and must give :class:`IntakeUnavailable`, never a
receipt.
"""

import errno
import shutil
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from sqlalchemy import func, select
from twisted.internet import defer

from certs.x509 import load_certificate, read_file
from gateway.committer import GroupCommitter
from gateway.config import load
from gateway.intake import Intake
from gateway.pools import PoolStopped, ThreadPoolService
from gateway.receipts import ReceiptSigner
from partners.directory import PartnerDirectory, load_directory
from partners.policy import Policy
from protocols.envelope import Envelope, IntakeUnavailable
from spool.blobs import BlobStore
from spool.database import create_engine
from spool.schema import audit_log, deliveries, mailbox_items, messages, quarantine
from tests.spool.test_blobs import FailingFileSystem

FIXTURES = Path(__file__).parents[1] / "fixtures" / "invoices"
SIGNED = FIXTURES / "signed"
BASE = (FIXTURES / "peppol-bis3" / "base-example.xml").read_bytes()


class Gateway:
    """An intake wired like the daemon's, over one demo home; :meth:`stop` releases every thread."""

    def __init__(self, home, fs=None):
        from twisted.internet import reactor

        config = load(home)
        self.engine = create_engine(config.database_url)
        with self.engine.connect() as conn:
            self.directory = load_directory(conn)
        BlobStore(home.resolve(config.storage.spool_dir))  # the layout exists before any fault is injected
        self.store = BlobStore(home.resolve(config.storage.spool_dir), fs=fs, max_bytes=1 << 20)
        self.io = ThreadPoolService(reactor, "io", 8)
        self.cpu = ThreadPoolService(reactor, "cpu", 2)
        self.committer = GroupCommitter(reactor, self.store, self.engine, max_batch=16)
        self.services = [self.io, self.cpu, self.committer]
        for service in self.services:
            service.startService()
        self.intake = Intake(self.store, self.io.run, self.cpu.run, self.committer.commit, lambda: self.directory,
                             ReceiptSigner.from_config(config), lambda: datetime.now(UTC))

    def partner(self, partner_id: str, **changes):
        """Replace a partner in the snapshot (policy, certificates) and return it."""
        partner = attrs.evolve(self.directory.get(partner_id), **changes)
        others = [p for p in self.directory.partners.values() if p.id != partner_id]
        self.directory = PartnerDirectory.build(self.directory.version, [*others, partner], self.directory.routes)
        return partner

    def count(self, table) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(table))

    def stop(self):
        for service in reversed(self.services):
            service.stopService()
        self.engine.dispose()


@pytest.fixture
def gateway(demo_home):
    """An intake over a private demo home, stopped after the test."""
    g = Gateway(demo_home)
    yield g
    g.stop()


def _signer_cert(name: str):
    return load_certificate(read_file(SIGNED / name), name)


@pytest.mark.parametrize("sample", ["signed-xmldsig-signxml-exc-c14n.xml", "signed-xmldsig-xmlsec1.xml",
                                    "signed-xades-bes-signxml-c14n11.xml"])
@pytest_twisted.ensureDeferred
async def test_signed_invoice_from_its_registered_signer_is_accepted(gateway, sample):
    """With require_xmldsig and the test certificate registered, each signed sample is accepted as signed."""
    acme = gateway.partner("acme", policy=Policy(require_xmldsig=True),
                           certificates={"sign": (_signer_cert("test-signing-cert.pem"),)})
    decision = await gateway.intake.accept(Envelope(acme, "https"), (SIGNED / sample).read_bytes())
    assert decision.outcome == "accepted", decision.findings
    with gateway.engine.connect() as conn:
        assert conn.execute(select(messages.c.signed, messages.c.recipient_id)).one() == (True, "globex")


@pytest_twisted.ensureDeferred
async def test_tampered_or_foreign_signatures_are_refused_and_quarantined(gateway):
    """A changed amount gives GW-SIG-INVALID; a valid signature by an unregistered key GW-SIG-UNTRUSTED."""
    acme = gateway.partner("acme", certificates={"sign": (_signer_cert("test-signing-cert.pem"),)})
    tampered = await gateway.intake.accept(
        Envelope(acme, "https"), (SIGNED / "signed-xmldsig-TAMPERED.xml").read_bytes())
    assert [f.code for f in tampered.findings] == ["GW-SIG-INVALID"]
    assert b"integrity-check-failed" in tampered.receipt.body
    acme = gateway.partner("acme", certificates={"sign": (_signer_cert("unrelated-cert.pem"),)})
    foreign = await gateway.intake.accept(
        Envelope(acme, "https"), (SIGNED / "signed-xmldsig-signxml-exc-c14n.xml").read_bytes())
    assert [f.code for f in foreign.findings] == ["GW-SIG-UNTRUSTED"]
    assert gateway.count(messages) == 0 and gateway.count(quarantine) == 2
    assert all(gateway.store.verify(sha) for sha in gateway.store.iter_blobs())


@pytest_twisted.ensureDeferred
async def test_opaque_documents_need_the_policy_and_a_recipient_named_by_the_door(gateway):
    """A PDF is GW-XML by default; with allow_opaque it is accepted for the recipient the door names."""
    pdf = b"%PDF-1.7\n" + b"\0binary" * 100
    acme = gateway.directory.get("acme")
    refused = await gateway.intake.accept(Envelope(acme, "sftp", door_recipient="globex"), pdf)
    assert [f.code for f in refused.findings] == ["GW-XML"]
    acme = gateway.partner("acme", policy=Policy(allow_opaque=True))
    nowhere = await gateway.intake.accept(Envelope(acme, "sftp"), pdf)
    assert [f.code for f in nowhere.findings] == ["GW-ROUTE-UNKNOWN"]
    accepted = await gateway.intake.accept(Envelope(acme, "sftp", door_recipient="globex", filename="a.pdf"), pdf)
    assert accepted.outcome == "accepted"
    with gateway.engine.connect() as conn:
        assert conn.execute(select(messages.c.kind, messages.c.route, messages.c.filename)).one() == (
            "opaque", "door", "a.pdf")


@pytest_twisted.ensureDeferred
async def test_concurrent_repeats_are_accepted_once(gateway):
    """Twelve identical submissions in flight together: one accepted, eleven duplicates, one receipt."""
    acme = gateway.directory.get("acme")
    decisions = await defer.gatherResults(
        [gateway.intake.accept(Envelope(acme, "https", external_id="same"), BASE) for _ in range(12)])
    assert sorted(d.outcome for d in decisions) == ["accepted"] + ["duplicate"] * 11
    assert len({d.receipt.id for d in decisions}) == 1
    assert gateway.count(messages) == 1
    assert max(gateway.committer.batch_sizes) > 1  # they really were committed together


@pytest.mark.parametrize("method", ["fsync", "write", "rename", "fsync_dir"])
@pytest_twisted.ensureDeferred
async def test_a_disk_fault_is_a_temporary_failure_never_a_receipt(demo_home, method):
    """ENOSPC/EIO at any write step: IntakeUnavailable, nothing recorded, nothing left in tmp/."""
    gateway = Gateway(demo_home, fs=FailingFileSystem(method, code=errno.ENOSPC))
    try:
        with pytest.raises(IntakeUnavailable):
            await gateway.intake.accept(Envelope(gateway.directory.get("acme"), "https"), BASE)
        assert gateway.count(messages) == 0 and gateway.count(quarantine) == 0
        assert list((gateway.store.root / "tmp").iterdir()) == []
    finally:
        gateway.stop()


@pytest_twisted.ensureDeferred
async def test_a_database_outage_is_a_temporary_failure_never_a_receipt(gateway, demo_home):
    """With the database file gone the commit fails: IntakeUnavailable; once it is back, the retry is accepted."""
    db = demo_home.path / "postroom.db"
    aside = demo_home.path / "aside"
    aside.mkdir()
    for f in demo_home.path.glob("postroom.db*"):
        shutil.move(f, aside / f.name)
    db.mkdir()  # "unable to open database file"
    gateway.engine.dispose()
    acme = gateway.directory.get("acme")
    with pytest.raises(IntakeUnavailable):
        await gateway.intake.accept(Envelope(acme, "https", external_id="x"), BASE)
    db.rmdir()
    for f in aside.iterdir():
        shutil.move(f, demo_home.path / f.name)
    gateway.engine.dispose()
    decision = await gateway.intake.accept(Envelope(acme, "https", external_id="x"), BASE)
    assert decision.outcome == "accepted"


@pytest_twisted.ensureDeferred
async def test_a_staged_file_is_removed_when_the_commit_cannot_happen(gateway):
    """The committer stopped (daemon shutting down): IntakeUnavailable and nothing left in tmp/."""
    gateway.committer.stopService()
    with pytest.raises(IntakeUnavailable):
        await gateway.intake.accept(Envelope(gateway.directory.get("acme"), "https"), BASE)
    assert list((gateway.store.root / "tmp").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_stopped_pool_refuses_work_instead_of_never_answering(gateway):
    """Work handed to a stopped pool fails at once with PoolStopped (a dead Deferred would hang shutdown)."""
    gateway.cpu.stopService()
    with pytest.raises(PoolStopped):
        await gateway.cpu.run(len, b"x")


def _intake_with_hooks(gateway, calls: list, pushable=None) -> Intake:
    """The gateway's intake, with every hook recording what it was called with (on_filed inside the transaction)."""
    def on_filed(conn, message_id, recipient_id, now):
        filed = conn.execute(select(mailbox_items.c.recipient_id).where(mailbox_items.c.message_id == message_id))
        calls.append(("on_filed", recipient_id, [r for (r,) in filed]))  # the item is there, in this transaction

    return Intake(gateway.store, gateway.io.run, gateway.cpu.run, gateway.committer.commit, lambda: gateway.directory,
                  gateway.intake._signer, lambda: datetime.now(UTC), pushable=pushable, on_filed=on_filed,
                  on_accepted=lambda: calls.append(("on_accepted",)), after_filing=lambda: calls.append(("filed",)))


@pytest_twisted.ensureDeferred
async def test_an_accepted_document_is_filed_in_the_same_transaction(gateway):
    """No delivery round between acceptance and the mailbox: the item, the done delivery, the notification hook
    and the audit events are committed with the message; nothing wakes the delivery worker."""
    calls: list = []
    intake = _intake_with_hooks(gateway, calls)
    decision = await intake.accept(Envelope(gateway.directory.get("acme"), "https"), BASE)
    assert decision.outcome == "accepted"
    with gateway.engine.connect() as conn:
        assert conn.execute(select(messages.c.state)).scalar_one() == "delivered"
        assert conn.execute(select(deliveries.c.target, deliveries.c.state, deliveries.c.attempts)).all() == [
            ("mailbox", "done", 1)]
        assert conn.execute(select(mailbox_items.c.recipient_id, mailbox_items.c.state)).all() == [("globex", "new")]
        events = [e for (e,) in conn.execute(select(audit_log.c.event).order_by(audit_log.c.seq))]
    assert events[-2:] == ["message.accepted", "delivery.done"]
    assert calls == [("on_filed", "globex", ["globex"]), ("filed",)]


@pytest_twisted.ensureDeferred
async def test_a_push_is_left_to_the_delivery_worker(gateway):
    """A recipient that asked for push gets its mailbox item at once and a pending push, and delivery is woken."""
    gateway.partner("globex", deliver="sftp")
    calls: list = []
    intake = _intake_with_hooks(gateway, calls, pushable=frozenset({"sftp"}))
    decision = await intake.accept(Envelope(gateway.directory.get("acme"), "https"), BASE)
    assert decision.outcome == "accepted"
    with gateway.engine.connect() as conn:
        assert conn.execute(select(messages.c.state)).scalar_one() == "accepted"
        assert sorted(conn.execute(select(deliveries.c.target, deliveries.c.state))) == [
            ("mailbox", "done"), ("sftp", "pending")]
    assert gateway.count(mailbox_items) == 1
    assert calls == [("on_filed", "globex", ["globex"]), ("filed",), ("on_accepted",)]


@pytest_twisted.ensureDeferred
async def test_a_duplicate_is_not_filed_again(gateway):
    """The same document twice: one mailbox item, one notification."""
    calls: list = []
    intake = _intake_with_hooks(gateway, calls)
    acme = gateway.directory.get("acme")
    first = await intake.accept(Envelope(acme, "https", external_id="one"), BASE)
    again = await intake.accept(Envelope(acme, "https", external_id="one"), BASE)
    assert (first.outcome, again.outcome) == ("accepted", "duplicate")
    assert gateway.count(mailbox_items) == 1
    assert [c[0] for c in calls] == ["on_filed", "filed"]
