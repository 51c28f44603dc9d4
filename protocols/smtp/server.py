# -*- test-case-name: tests.protocols.smtp.test_server -*-
"""The email door's ESMTP adapter on ``twisted.mail``: who may send, to whom, and when a mail is taken.

The allowlist runs before the greeting (:class:`~protocols.listen.AllowlistFactory` wraps the factory).
Then ``STARTTLS`` is required before ``MAIL FROM`` (530 otherwise); ``MAIL FROM`` must be an address a
partner registered, sent from that partner's allowlist; ``RCPT TO`` is ``invoices@HOST`` or
``PARTNER-ID@HOST``; ``SIZE`` is advertised and enforced while DATA arrives, into a spool scratch file.

Two traps of ``twisted.mail`` are closed here (STYLE.md §1.1): it calls ``eomReceived`` once per
recipient, so every recipient of one transaction shares one :class:`_Transaction` and the mail is
taken once; and it answers 550 to any failure after DATA, so :meth:`DoorESMTP._messageHandled`
turns a :class:`Reply` refusal into its own code and anything else (disk full, database down) into
451 — never 250, never 5xx, for a mail that was not durably taken.
"""

import re
from collections.abc import Callable
from typing import IO, Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.mail import smtp

_log = Logger()

MAX_RECIPIENTS = 20
MAX_ERRORS = 20  #: 4xx/5xx replies before the connection is closed (Postfix: smtpd_hard_error_limit)
MAX_JUNK = 100  #: NOOP, VRFY, RSET and EHLO before the connection is closed (Postfix: smtpd_junk_command_limit)
MAX_REPLY = 400  #: characters of reply text (RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets)
MAX_LINE = 4096  #: RFC 5321 says 1000 octets; a little slack for careless mailers, never unbounded
IDLE_TIMEOUT = 300  #: seconds between lines before the connection is closed (RFC 5321 §4.5.3.2 minimums)
_SIZE = re.compile(rb"(?:^|\s)SIZE=(\d{1,20})(?:\s|$)", re.I)
_ENHANCED = re.compile(rb"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")


@attrs.frozen
class Reply:
    """An SMTP reply: ``code``, enhanced ``status`` (RFC 3463) and a one-line ASCII text."""

    code: int
    status: str
    text: str

    def line(self) -> bytes:
        """The reply's text as sent after the code."""
        clean = self.text[:MAX_REPLY].encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        return f"{self.status} ".encode("ascii") + clean


class Refused(Exception):
    """The door refuses the mail for the reason in ``reply`` (a 4xx or 5xx :class:`Reply`)."""

    def __init__(self, reply: Reply):
        super().__init__(reply.text)
        self.reply = reply


@attrs.frozen
class Received:
    """One mail as the door took it: the raw message (headers + body, CRLF, dot-unstuffed) and its envelope."""

    file: IO[bytes]
    size: int
    envelope_from: str
    recipients: tuple[str, ...]
    door_recipient: str | None  #: the partner mailbox the recipient address names, if any
    source: str


@attrs.frozen
class Backend:
    """What the door needs from the gateway."""

    hostname: str  #: the domain we accept mail for
    sender_allowed: Callable[[str, str], Reply | None]  #: ``(address, source) -> None`` or the refusal
    mailbox: Callable[[str], bool]  #: ``partner_id -> whether it is an active partner``
    take: Callable[[Received], Deferred]  #: fires with the 250 :class:`Reply`, or fails (:class:`Refused`)
    scratch: Callable[[], IO[bytes]]  #: a spool temporary file for the message
    max_bytes: int


class _Transaction:
    """The message of one SMTP transaction, shared by its recipients (``twisted.mail``'s ``IMessage``)."""

    def __init__(self, protocol: "DoorESMTP", envelope_from: str):
        self._protocol = protocol
        self.envelope_from = envelope_from
        self.recipients: list[str] = []
        self.door_recipient: str | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._result: Deferred | None = None

    def lineReceived(self, line: bytes) -> None:
        """Append one line, counting it against the size cap; a spool fault is a temporary failure."""
        self._size += len(line) + 2
        if self._size > self._protocol.backend.max_bytes:
            raise smtp.SMTPServerError(552, Reply(552, "5.3.4", f"message too big: this gateway accepts at most "
                                                              f"{self._protocol.backend.max_bytes} bytes").line())
        try:
            if self._file is None:
                self._file = self._protocol.backend.scratch()
            self._file.write(line + b"\r\n")
        except OSError as e:
            _log.error("smtp: cannot spool a mail from {source}: {error}", source=self._protocol.source, error=e)
            raise smtp.SMTPServerError(451, Reply(451, "4.3.0", "temporary failure, try again later").line()) from e

    def eomReceived(self) -> Deferred:
        """The end of DATA: hand the mail to the gateway (a spool fault here is a failure, so a 451)."""
        self._protocol.hold()
        return maybeDeferred(self._take)

    def _take(self) -> Deferred:
        file, self._file = self._file, None
        try:
            if file is None:
                file = self._protocol.backend.scratch()
            file.flush()
        except BaseException:
            if file is not None:
                file.close()
            raise
        received = Received(file, self._size, self.envelope_from, tuple(self.recipients), self.door_recipient,
                            self._protocol.source)
        return maybeDeferred(self._protocol.backend.take, received).addBoth(self._closed, file)

    @staticmethod
    def _closed(outcome: Any, file: IO[bytes]) -> Any:
        file.close()
        return outcome

    def connectionLost(self) -> None:
        """The transaction broke off (or DATA was refused): drop what arrived."""
        if self._file is not None:
            self._file.close()
            self._file = None


class _Copy:
    """What every recipient after the first gets: the lines and the outcome are the first one's."""

    def lineReceived(self, line: bytes) -> None:
        """Written once, by the transaction."""

    def eomReceived(self) -> Deferred:
        """Taken once, by the transaction (:meth:`DoorESMTP._messageHandled` reads its outcome only)."""
        return succeed(None)

    def connectionLost(self) -> None:
        """The transaction cleans up."""


class DoorESMTP(smtp.ESMTP):
    """One SMTP connection of the email door."""

    MAX_LENGTH = MAX_LINE
    timeout = IDLE_TIMEOUT
    noisy = False

    def __init__(self, backend: Backend, tls_creator: Any):
        super().__init__(chal={}, contextFactory=tls_creator)
        self.backend = backend
        self.host = backend.hostname.encode("idna")
        self.source = ""
        self._transaction: _Transaction | None = None
        self._held = False  # a mail is being taken: no command is read until its reply is out
        self._tls_begun = False  # STARTTLS accepted: what the client sent after it in the clear is dropped
        self._errors = 0
        self._junk = 0

    def connectionMade(self) -> None:
        """Greet (the allowlist has let the source in already)."""
        self.source = getattr(self.transport.getPeer(), "host", "")
        super().connectionMade()
        self._plain_reply = False

    def greeting(self) -> bytes:
        """No product name or version in the banner."""
        return self.host + b" ESMTP"

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """Every 2xx/4xx/5xx reply but the greeting and EHLO's carries an enhanced status code, as
        advertised (RFC 2034 §4); ``twisted.mail``'s own replies get the class's generic one. A client
        that keeps failing is told so and dropped."""
        if code // 100 in (2, 4, 5) and not self._plain_reply and not _ENHANCED.match(message):
            message = f"{code // 100}.0.0 ".encode() + message
        super().sendCode(code, message)
        if code >= 400 and code != 421:
            self._errors += 1
            if self._errors >= MAX_ERRORS:
                self._close(Reply(421, "4.7.0", "too many errors; closing the connection"))

    def _close(self, reply: Reply) -> None:
        self.sendCode(reply.code, reply.line())
        self._buffer = b""
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Lines one by one, like ``LineOnlyReceiver``, except: nothing sent in the clear after STARTTLS is
        read (RFC 3207 §4.2: it could be an attacker's), and nothing after the end of DATA until that mail's
        reply is out (a pipelined QUIT must not be answered first)."""
        self._buffer += data
        while not self._held and not self.transport.disconnecting:
            line, found, rest = self._buffer.partition(self.delimiter)
            if not found:
                break
            self._buffer = rest
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)
            if self._tls_begun:
                self._tls_begun, self._buffer = False, b""
                return
        if len(self._buffer) > self.MAX_LENGTH and not self._held:
            self.lineLengthExceeded(self._buffer)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line longer than :data:`MAX_LINE` ends the connection: reading on could take a body for commands."""
        self._close(Reply(500, "5.5.2", f"line too long (at most {MAX_LINE} bytes); closing the connection"))

    def hold(self) -> None:
        """Stop reading commands (and the idle clock) while a mail is taken."""
        self._held = True
        self.setTimeout(None)
        self.transport.pauseProducing()

    def _release(self) -> None:
        self._held = False
        self.setTimeout(self.timeout)
        self.transport.resumeProducing()
        if self._buffer and not self.transport.disconnecting:
            self.dataReceived(b"")

    def _junk_command(self) -> bool:
        """Count a command that moves no mail; True (and the connection closing) past :data:`MAX_JUNK`."""
        self._junk += 1
        if self._junk > MAX_JUNK:
            self._close(Reply(421, "4.7.0", "too many commands without mail; closing the connection"))
            return True
        return False

    def do_RSET(self, rest: bytes) -> None:
        """Forget the transaction (counted: it moves no mail)."""
        if not self._junk_command():
            super().do_RSET(rest)

    _plain_reply = True  # until the greeting is out

    def do_EHLO(self, rest: bytes) -> None:
        """Greet; the reply lists extensions, without an enhanced code."""
        if self._junk_command():
            return
        self._plain_reply = True
        try:
            super().do_EHLO(rest)
        finally:
            self._plain_reply = False

    def extensions(self) -> dict:
        """STARTTLS until it is done, then SIZE, 8BITMIME and ENHANCEDSTATUSCODES; never AUTH."""
        ext = {b"SIZE": [str(self.backend.max_bytes).encode()], b"8BITMIME": None, b"ENHANCEDSTATUSCODES": None}
        if self.canStartTLS and not self.startedTLS:
            ext[b"STARTTLS"] = None
        return ext

    def ext_STARTTLS(self, rest: bytes) -> None:
        """Start TLS and forget the session so far (RFC 3207 §4.2): the client greets again."""
        super().ext_STARTTLS(rest)
        if self.startedTLS:
            self._helo, self._from, self._to = None, None, []
            self._tls_begun = True

    def _reply(self, reply: Reply) -> None:
        self.sendCode(reply.code, reply.line())

    def do_MAIL(self, rest: bytes) -> None:
        """Only after STARTTLS and a greeting, and never over the declared ``SIZE`` limit."""
        if not self.startedTLS:
            self._reply(Reply(530, "5.7.0", "Must issue a STARTTLS command first"))
            return
        if self._helo is None:
            self._reply(Reply(503, "5.5.1", "Send EHLO again after STARTTLS"))
            return
        declared = _SIZE.search(rest.partition(b">")[2] or b"")
        if declared and int(declared.group(1)) > self.backend.max_bytes:
            self._reply(Reply(552, "5.3.4", f"message too big: this gateway accepts at most "
                                            f"{self.backend.max_bytes} bytes"))
            return
        super().do_MAIL(rest)

    def do_RCPT(self, rest: bytes) -> None:
        """At most :data:`MAX_RECIPIENTS` per transaction."""
        if self._from and len(self._to) >= MAX_RECIPIENTS:
            self._reply(Reply(452, "4.5.3", f"too many recipients (at most {MAX_RECIPIENTS} per message)"))
            return
        super().do_RCPT(rest)

    def do_HELO(self, rest: bytes) -> None:
        """Plain HELO cannot STARTTLS: EHLO is required."""
        self._reply(Reply(502, "5.5.1", "Use EHLO: this server requires STARTTLS"))

    def do_NOOP(self, rest: bytes) -> None:
        """RFC 5321 §4.1.1.9 (``twisted.mail`` has none)."""
        if not self._junk_command():
            self._reply(Reply(250, "2.0.0", "OK"))

    def do_VRFY(self, rest: bytes) -> None:
        """Required by RFC 5321 §3.5.2, and never telling which mailboxes exist."""
        if not self._junk_command():
            self._reply(Reply(252, "2.5.0", "Cannot VRFY; send some mail and the reply will say"))

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        """The envelope sender must be an address a partner registered, sent from that partner's allowlist."""
        address = str(origin)
        refusal = self.backend.sender_allowed(address, self.source)
        if refusal is not None:
            raise smtp.SMTPServerError(refusal.code, refusal.line().decode("ascii"))
        self._transaction = _Transaction(self, address)
        return origin

    def validateTo(self, user: smtp.User) -> Callable[[], _Transaction]:
        """``invoices@HOST`` or ``PARTNER-ID@HOST``; one partner mailbox per transaction."""
        local, domain = user.dest.local.decode("utf-8", "replace"), user.dest.domain.decode("utf-8", "replace")
        if domain.lower() != self.backend.hostname.lower():
            raise smtp.SMTPBadRcpt(user, 550, Reply(550, "5.1.1", f"no such mailbox here: {local}@{domain}")
                                   .line().decode("ascii"))
        transaction = self._transaction
        mailbox = None if local.lower() == "invoices" else local.lower()
        if mailbox is not None and not self.backend.mailbox(mailbox):
            raise smtp.SMTPBadRcpt(user, 550, Reply(550, "5.1.1", f"no such mailbox here: {local}@{domain}")
                                   .line().decode("ascii"))
        if mailbox is not None and transaction.door_recipient not in (None, mailbox):
            raise smtp.SMTPBadRcpt(user, 452, Reply(452, "4.5.3", "one partner mailbox per message; send this "
                                                                  "recipient in another transaction").line().decode())
        transaction.door_recipient = transaction.door_recipient or mailbox
        transaction.recipients.append(f"{local}@{domain}")

        first = not transaction.recipients[:-1]
        return lambda: transaction if first else _Copy()

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> None:
        """No ``Received:`` line: the mail is read as the sender signed it (the source is logged instead)."""
        return None

    def _messageHandled(self, resultList: list) -> None:
        """250 only when the mail was taken; a refusal's own code; 451 for anything else. Then read on."""
        success, result = resultList[0] if isinstance(resultList, list) and resultList else (False, None)
        if success:
            self._reply(result)
        elif result is not None and result.check(Refused):
            self._reply(result.value.reply)
        else:
            if result is not None:
                _log.failure("smtp: could not take a mail from {source}", result, source=self.source)
            self._reply(Reply(451, "4.3.0", "temporary failure, try again later"))
        self._release()
