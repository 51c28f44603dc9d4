"""Tests for :mod:`protocols.smtp.server`: the ESMTP state machine over a StringTransport.

TLS itself is exercised end to end (tests/e2e/test_smtp_door.py, smtplib with STARTTLS); here
``startedTLS`` is set by hand where a test is about what comes after it.
"""

import io

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from protocols.smtp.server import (
    IDLE_TIMEOUT,
    MAX_ERRORS,
    MAX_JUNK,
    MAX_LINE,
    MAX_RECIPIENTS,
    Backend,
    DoorESMTP,
    Refused,
    Reply,
)

ACCEPTED = Reply(250, "2.6.0", "accepted 1 invoice(s)")


class Gateway:
    """A backend that records what it was handed and answers what the test says."""

    def __init__(self, answer=lambda received: succeed(ACCEPTED), max_bytes: int = 10_000):
        self.taken = []
        self.scratch_files = []
        self.answer = answer
        self.backend = Backend(hostname="gw.example", sender_allowed=self.sender_allowed, mailbox=self.mailbox,
                               take=self.take, scratch=self.scratch, max_bytes=max_bytes)

    @staticmethod
    def sender_allowed(address: str, source: str) -> Reply | None:
        return None if address == "ap@acme.example" else Reply(550, "5.7.1", f"{address} is not registered")

    @staticmethod
    def mailbox(partner_id: str) -> bool:
        return partner_id in ("globex", "initech")

    def take(self, received) -> Deferred:
        self.taken.append((received, received.file.getvalue()))
        return self.answer(received)

    def scratch(self):
        f = _KeepOnClose()
        self.scratch_files.append(f)
        return f


class _KeepOnClose(io.BytesIO):
    """A scratch file whose bytes stay readable after close (so a test can look)."""

    def close(self) -> None:
        self.was_closed = True


def connect(gateway: Gateway, *, tls: bool = True, clock: Clock | None = None) -> tuple[DoorESMTP, StringTransport]:
    proto = DoorESMTP(gateway.backend, tls_creator=None)
    proto.callLater = (clock or Clock()).callLater  # the idle timeout
    transport = StringTransport(peerAddress=_Peer("192.0.2.7"))
    proto.makeConnection(transport)
    proto.startedTLS = tls
    return proto, transport


class _Peer:
    def __init__(self, host: str):
        self.host = host


def say(proto: DoorESMTP, transport: StringTransport, *lines: bytes) -> list[bytes]:
    transport.clear()
    for line in lines:
        proto.dataReceived(line + b"\r\n")
    return transport.value().splitlines()


def test_the_greeting_names_no_product_and_ehlo_offers_size_but_never_auth():
    gateway = Gateway()
    proto, transport = connect(gateway, tls=False)
    assert transport.value() == b"220 gw.example ESMTP\r\n"
    reply = say(proto, transport, b"EHLO client.example")
    assert b"250-SIZE 10000" in reply
    assert {b"250-ENHANCEDSTATUSCODES", b"250 ENHANCEDSTATUSCODES"} & set(reply)
    assert not any(b"AUTH" in line for line in reply)


def test_mail_from_before_starttls_is_refused_and_helo_is_not_offered():
    proto, transport = connect(Gateway(), tls=False)
    assert say(proto, transport, b"EHLO c", b"MAIL FROM:<ap@acme.example>")[-1].startswith(b"530 5.7.0")
    assert say(proto, transport, b"HELO c")[-1].startswith(b"502 5.5.1")


def test_an_unregistered_sender_and_foreign_recipients_are_refused():
    proto, transport = connect(Gateway())
    reply = say(proto, transport, b"EHLO c", b"MAIL FROM:<x@evil.example>")
    assert reply[-1].startswith(b"550") and b"5.7.1 x@evil.example is not registered" in reply[-1]
    say(proto, transport, b"MAIL FROM:<ap@acme.example>")
    assert say(proto, transport, b"RCPT TO:<invoices@other.example>")[-1].startswith(b"550 5.1.1")
    assert say(proto, transport, b"RCPT TO:<nobody@gw.example>")[-1].startswith(b"550 5.1.1")
    assert say(proto, transport, b"RCPT TO:<Invoices@GW.example>")[-1].startswith(b"250")
    assert say(proto, transport, b"RCPT TO:<globex@gw.example>")[-1].startswith(b"250")
    assert say(proto, transport, b"RCPT TO:<initech@gw.example>")[-1].startswith(b"452 4.5.3")


def test_a_declared_size_over_the_limit_is_refused_at_mail_from():
    proto, transport = connect(Gateway(max_bytes=100))
    assert say(proto, transport, b"EHLO c", b"MAIL FROM:<ap@acme.example> SIZE=101")[-1].startswith(b"552 5.3.4")
    assert say(proto, transport, b"MAIL FROM:<ap@acme.example> SIZE=100")[-1].startswith(b"250")


def test_too_many_recipients():
    proto, transport = connect(Gateway())
    say(proto, transport, b"EHLO c", b"MAIL FROM:<ap@acme.example>")
    replies = say(proto, transport, *[b"RCPT TO:<globex@gw.example>"] * (MAX_RECIPIENTS + 1))
    assert replies[-1].startswith(b"452 4.5.3") and all(r.startswith(b"250") for r in replies[:-1])


def send_mail(proto, transport, body: list[bytes], recipients=(b"invoices@gw.example",)) -> list[bytes]:
    say(proto, transport, b"EHLO c", b"MAIL FROM:<ap@acme.example>", *[b"RCPT TO:<%s>" % r for r in recipients],
        b"DATA")
    return say(proto, transport, *body, b".")


def test_a_mail_to_several_recipients_is_taken_once_with_its_lines_unstuffed():
    gateway = Gateway()
    proto, transport = connect(gateway)
    reply = send_mail(proto, transport, [b"Subject: x", b"", b"..leading dot", b"end"],
                      recipients=(b"invoices@gw.example", b"globex@gw.example", b"globex@gw.example"))
    assert reply == [b"250 2.6.0 accepted 1 invoice(s)"]
    [(received, data)] = gateway.taken
    assert data == b"Subject: x\r\n\r\n.leading dot\r\nend\r\n"
    assert (received.envelope_from, received.door_recipient, received.source) == (
        "ap@acme.example", "globex", "192.0.2.7")
    assert received.recipients == ("invoices@gw.example", "globex@gw.example", "globex@gw.example")
    assert gateway.scratch_files[0].was_closed


@pytest.mark.parametrize(("answer", "expected"), [
    (lambda r: fail(Refused(Reply(550, "5.7.1", "unsigned mail is refused"))), b"550 5.7.1 unsigned mail is refused"),
    (lambda r: fail(OSError(28, "No space left on device")), b"451 4.3.0 temporary failure, try again later"),
    (lambda r: 1 / 0, b"451 4.3.0 temporary failure, try again later"),
])
def test_a_refusal_keeps_its_code_and_any_other_failure_is_a_451_never_a_550(answer, expected):
    proto, transport = connect(Gateway(answer=answer))
    assert send_mail(proto, transport, [b"Subject: x", b"", b"body"]) == [expected]


def test_the_reply_waits_for_the_decision():
    decision = Deferred()
    proto, transport = connect(Gateway(answer=lambda r: decision))
    assert send_mail(proto, transport, [b"Subject: x", b"", b"body"]) == []
    decision.callback(ACCEPTED)
    assert transport.value() == b"250 2.6.0 accepted 1 invoice(s)\r\n"


def test_data_over_the_size_cap_is_refused_and_nothing_is_taken():
    gateway = Gateway(max_bytes=50)
    proto, transport = connect(gateway)
    reply = send_mail(proto, transport, [b"Subject: x", b"", b"y" * 60])
    assert reply[-1].startswith(b"552") and b"5.3.4" in reply[-1]
    assert gateway.taken == [] and gateway.scratch_files[0].was_closed
    assert send_mail(proto, transport, [b"Subject: x", b"", b"ok"])[-1].startswith(b"250")  # the session goes on


def test_an_idle_client_is_told_and_dropped():
    clock = Clock()
    proto, transport = connect(Gateway(), clock=clock)
    say(proto, transport, b"EHLO c")
    transport.clear()
    clock.advance(IDLE_TIMEOUT - 1)
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(1)
    assert transport.value().startswith(b"421") and transport.disconnecting


def test_a_spool_that_cannot_take_the_lines_is_a_451():
    gateway = Gateway()

    def broken():
        raise OSError(28, "No space left on device")

    gateway.backend = attrs.evolve(gateway.backend, scratch=broken)
    proto, transport = connect(gateway)
    assert send_mail(proto, transport, [b"Subject: x", b"", b"body"]) == [
        b"451 4.3.0 temporary failure, try again later"]
    assert gateway.taken == []


def test_every_reply_after_the_greeting_but_ehlo_carries_an_enhanced_status_code():
    """ENHANCEDSTATUSCODES is advertised, so twisted.mail's own replies get one too (RFC 2034 §4)."""
    proto, transport = connect(Gateway())
    assert b"2.0.0" not in transport.value()  # the greeting
    assert all(b" 2." not in line for line in say(proto, transport, b"EHLO c"))
    replies = say(proto, transport, b"MAIL FROM:<ap@acme.example>", b"RCPT TO:<invoices@gw.example>", b"RSET",
                  b"RCPT TO:<invoices@gw.example>", b"NOOP", b"QUIT")
    assert [r[:9] for r in replies] == [b"250 2.0.0", b"250 2.0.0", b"250 2.0.0", b"503 5.0.0", b"250 2.0.0",
                                        b"221 2.0.0"]


@implementer(ITLSTransport)
class _TLSCapable(StringTransport):
    """A transport that can STARTTLS (it only records it)."""

    tls = None

    def startTLS(self, contextFactory, normal=True):
        self.tls = contextFactory


def test_commands_sent_in_the_clear_after_starttls_are_dropped():
    """RFC 3207 §4.2: ``STARTTLS`` then ``EHLO``/``MAIL`` in the same packet — an attacker's injection — are
    never read; the client must greet again inside TLS."""
    gateway = Gateway()
    proto = DoorESMTP(gateway.backend, tls_creator=object())
    proto.callLater = Clock().callLater
    transport = _TLSCapable(peerAddress=_Peer("192.0.2.7"))
    proto.makeConnection(transport)
    say(proto, transport, b"EHLO c")
    transport.clear()
    proto.dataReceived(b"STARTTLS\r\nEHLO evil\r\nMAIL FROM:<ap@acme.example>\r\nRCPT TO:<glo")
    assert transport.value() == b"220 2.0.0 Begin TLS negotiation now\r\n" and transport.tls is not None
    assert say(proto, transport, b"MAIL FROM:<ap@acme.example>")[-1].startswith(b"503 5.5.1")  # EHLO first
    assert say(proto, transport, b"EHLO c")[0].startswith(b"250")


def test_a_line_too_long_closes_the_connection_in_commands_and_in_data():
    for before in ([], [b"EHLO c", b"MAIL FROM:<ap@acme.example>", b"RCPT TO:<invoices@gw.example>", b"DATA"]):
        gateway = Gateway()
        proto, transport = connect(gateway)
        say(proto, transport, *before)
        transport.clear()
        proto.dataReceived(b"x" * (MAX_LINE + 1))  # not even a complete line
        assert transport.value().startswith(b"500 5.5.2 line too long") and transport.disconnecting
        assert gateway.taken == []


def test_commands_pipelined_after_the_end_of_data_wait_for_its_reply():
    """``.`` then ``QUIT`` in one packet: the mail's 451 (or 250) comes first, then 221."""
    decision = Deferred()
    proto, transport = connect(Gateway(answer=lambda r: decision))
    say(proto, transport, b"EHLO c", b"MAIL FROM:<ap@acme.example>", b"RCPT TO:<invoices@gw.example>", b"DATA")
    transport.clear()
    proto.dataReceived(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert transport.value() == b"" and not transport.disconnecting
    decision.errback(OSError(5, "I/O error"))
    assert transport.value().splitlines() == [b"451 4.3.0 temporary failure, try again later",
                                              b"221 2.0.0 See you later"]


def test_a_client_that_keeps_failing_or_idling_with_junk_is_dropped():
    proto, transport = connect(Gateway(), tls=False)
    replies = say(proto, transport, b"EHLO c", *[b"MAIL FROM:<ap@acme.example>"] * MAX_ERRORS)
    assert replies[-1].startswith(b"421 4.7.0 too many errors") and transport.disconnecting
    proto, transport = connect(Gateway())
    replies = say(proto, transport, *[b"NOOP"] * MAX_JUNK, b"VRFY x")
    assert replies[-1].startswith(b"421 4.7.0 too many commands") and transport.disconnecting


def test_a_spool_fault_when_data_ends_is_a_451_not_a_dropped_connection():
    class Unflushable(_KeepOnClose):
        def flush(self):
            raise OSError(28, "No space left on device")

    gateway = Gateway()
    gateway.backend = attrs.evolve(gateway.backend, scratch=Unflushable)
    proto, transport = connect(gateway)
    assert send_mail(proto, transport, [b"Subject: x", b"", b"body"]) == [
        b"451 4.3.0 temporary failure, try again later"]
    assert not transport.disconnecting
