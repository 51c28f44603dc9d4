# -*- test-case-name: tests.protocols.smtp.test_relay -*-
"""Submitting one message to the configured mail relay: Twisted's ESMTP client, STARTTLS required and verified.

Receipts, notifications, invitations and documents leave through one relay (``[smtp_relay]``). With
``starttls`` (the default) the client insists on STARTTLS before MAIL FROM: a relay that does not offer
it, or whose certificate is not valid for the configured host under the configured trust, gets nothing
but a QUIT — there is no fallback to plain text. AUTH (PLAIN or LOGIN, the mechanisms submission relays
offer) runs only over that TLS session, so a username needs ``starttls``.

Twisted's client has traps this module closes: its session log records the AUTH exchange (we turn it
off so the password can reach no error text); its DATA encoder turns every LF into CRLF — which
doubles the CR of a message that already has CRLF line ends — and dot-stuffs each 16 KiB chunk on its
own, missing a line that starts with a dot at a chunk boundary; and it sends DATA when only some
recipients were accepted. Here the message goes with CRLF line ends and every line-leading dot doubled
across chunks, and one refused recipient stops the transaction: the whole message is retried, never
delivered twice to the recipients that were accepted.
"""

import re
from collections.abc import Sequence
from io import BytesIO

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.mail.smtp import SUCCESS, ESMTPClient, LOGINAuthenticator, PLAINAuthenticator

from certs.x509 import Certificate, to_pem
from partners.errors import InvalidValueError
from protocols.as2.mime import Region
from protocols.envelope import DeliveryFailed

#: Envelope addresses we hand to a relay: ASCII dot-atom local part at a host name (no SMTPUTF8, no quoting).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = re.compile(rf"{_ATOM}(\.{_ATOM})*@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
_LINE_END = re.compile(rb"\r\n|\r|\n")


@attrs.frozen
class RelaySettings:
    """Where outbound mail goes, and how we prove ourselves there.

    :ivar trust: CA (or self-signed) certificates the relay's certificate must chain to; ``None`` means
        the platform's trust store.
    :ivar timeout: seconds the SMTP conversation may take once connected (greeting to final reply).
    :ivar connect_timeout: seconds to wait for the TCP connection.
    """

    host: str = attrs.field(validator=attrs.validators.matches_re(_HOSTNAME))
    port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    helo: str = attrs.field(default="postroom.local", validator=attrs.validators.matches_re(_HOSTNAME))
    timeout: float = 60
    connect_timeout: float = 30
    trust: tuple[Certificate, ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(tuple), repr=False)

    def __attrs_post_init__(self) -> None:
        if self.username and not self.starttls:
            raise InvalidValueError("[smtp_relay] username needs starttls = true: Postroom sends a password only "
                                    "inside TLS")
        if self.username and not self.password:
            raise InvalidValueError("[smtp_relay] username is set but the password is empty; check password_file")

    @property
    def name(self) -> str:
        """``relay host:port`` as errors name it."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"relay {host}:{self.port}"


class RelayRefused(DeliveryFailed):
    """The relay did not take the message; ``text`` says what it answered or what went wrong.

    ``permanent`` only when the relay refused *this message* with a 5xx reply (to MAIL FROM, a RCPT TO or
    the data), or when an address can never be sent; greeting, TLS, AUTH, 4xx, connection and timeout
    failures pass with a retry or a configuration fix. ``code`` is the relay's reply code, when it sent one.
    """

    def __init__(self, text: str, *, permanent: bool = False, code: int | None = None):
        super().__init__(text, permanent)
        self.text = text
        self.code = code


class Relay:
    """``send(sender, recipients, message)`` over one new connection per message."""

    def __init__(self, reactor, settings: RelaySettings):
        self._reactor = reactor
        self._settings = settings
        self._endpoint = HostnameEndpoint(reactor, settings.host.strip("[]"), settings.port,
                                          timeout=settings.connect_timeout)
        self._tls = _client_tls(settings) if settings.starttls else None

    def send(self, sender: str, recipients: Sequence[str], message: bytes | Region) -> Deferred:
        """Submit ``message`` (RFC 5322 bytes, CRLF line ends; a region is streamed) for ``recipients``.
        ``sender`` may be ``""``: the null reverse-path (``MAIL FROM:<>``) of receipts, which must never
        cause a reply of their own.

        Fires with the relay's final reply (``250 …``) once the connection is closed, or fails with
        :class:`RelayRefused`.
        """
        return Deferred.fromCoroutine(self._send(sender, list(recipients), message))

    async def _send(self, sender: str, recipients: list[str], message: bytes | Region) -> str:
        name = self._settings.name
        if not recipients:
            raise RelayRefused(f"{name}: the message has no recipients", permanent=True)
        for address in ((sender,) if sender else ()) + tuple(recipients):
            if not _ADDRESS.fullmatch(address):
                raise RelayRefused(f"{name}: {address!r} is not an address Postroom sends with (plain ASCII "
                                   f"local@domain, no display name or brackets)", permanent=True)
        data = message.reader() if isinstance(message, Region) else BytesIO(message)
        submission = _Submission(self._settings, self._tls, sender, recipients, data, self._reactor)
        try:
            await connectProtocol(self._endpoint, submission)
        except Exception as e:
            raise RelayRefused(f"{name}: could not connect: {_reason(e)}") from e
        return await submission.finished


def _client_tls(settings: RelaySettings):
    """TLS 1.2 or later, the relay's certificate verified against ``trust`` and checked for ``host``."""
    if settings.trust:
        trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(to_pem(c)) for c in settings.trust])
    else:
        trust = ssl.platformTrust()
    return ssl.optionsForClientTLS(settings.host.strip("[]"), trustRoot=trust,
                                   extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


def _reason(error: BaseException) -> str:
    """What a connection or TLS failure says, in words (OpenSSL's error stack reduced to its reasons)."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        reasons = [str(entry[-1]) for entry in error.args[0] if isinstance(entry, tuple) and entry]
        return "; ".join(reasons) or "TLS handshake error"
    if isinstance(error, VerificationError):
        return "the certificate is not issued for this host name"
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(_reason(r.value) for r in reasons)
    return str(error) or type(error).__name__


class _DataEncoder:
    """The message as SMTP DATA, chunk by chunk: CRLF line ends, line-leading dots doubled across chunks."""

    def __init__(self):
        self._carry = b""  # a CR at the end of a chunk: its LF may start the next one
        self._line_start = True

    def encode(self, chunk: bytes) -> bytes:
        """One chunk, encoded (possibly a byte shorter: a trailing CR waits for the next chunk)."""
        data = self._carry + chunk
        self._carry = b"\r" if data.endswith(b"\r") else b""
        data = _LINE_END.sub(b"\r\n", data[:len(data) - len(self._carry)]).replace(b"\r\n.", b"\r\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        if data:
            self._line_start = data.endswith(b"\r\n")
        return data

    def terminator(self) -> bytes:
        """The line that ends DATA (without its CRLF), after ending an unfinished last line."""
        return b"\r\n." if self._carry or not self._line_start else b"."


class _Submission(ESMTPClient):
    """One message over one connection; :attr:`finished` fires once the connection is gone."""

    debug = False  # Twisted's session log would hold the AUTH exchange, i.e. the password in base64
    heloFallback = False

    def __init__(self, settings: RelaySettings, tls, sender: str, recipients: list[str], data, clock):
        super().__init__(settings.password.encode("utf-8") or None, tls, settings.helo)
        self.requireTransportSecurity = settings.starttls
        self.requireAuthentication = bool(settings.username)
        if settings.username:  # PLAIN first: one round trip; both only ever inside TLS (RelaySettings)
            self.registerAuthenticator(PLAINAuthenticator(settings.username.encode("utf-8")))
            self.registerAuthenticator(LOGINAuthenticator(settings.username.encode("utf-8")))
        self.finished: Deferred = Deferred()
        self._settings = settings
        self._sender: str | None = sender
        self._recipients = recipients
        self._data = data
        self._encoder = _DataEncoder()
        self._clock = clock
        self._deadline = None
        self._command = "the connection"
        self._outcome: str | RelayRefused | None = None

    # --- what to send ---

    def getMailFrom(self) -> str | None:
        sender, self._sender = self._sender, None  # once: the second call (after RSET) ends the session
        return sender

    def getMailTo(self) -> list[str]:
        return self._recipients

    def getMailData(self):
        return self._data

    def transformChunk(self, chunk: bytes) -> bytes:
        return self._encoder.encode(chunk)

    def finishedFileTransfer(self, lastsent: bytes) -> None:
        self._command = "the message data"
        self.sendLine(self._encoder.terminator())

    def sendLine(self, line: bytes) -> None:
        """Remember the command a reply answers (only its verb for AUTH: the rest is the credential)."""
        verb = line.split(b" ", 1)[0].upper()
        if verb in (b"EHLO", b"HELO", b"STARTTLS", b"MAIL", b"RCPT", b"DATA"):
            self._command = line.decode("ascii", "replace")
        elif verb == b"AUTH":
            self._command = b" ".join(line.split(b" ", 2)[:2]).decode("ascii", "replace")
        super().sendLine(line)

    # --- how it went ---

    def connectionMade(self) -> None:
        self._deadline = self._clock.callLater(self._settings.timeout, self._expire)
        super().connectionMade()

    def _expire(self) -> None:
        self._deadline = None
        self._refused(f"did not finish within {self._settings.timeout:g} s (the last step was {self._command})")
        self.transport.abortConnection()

    def _refused(self, text: str, code: int | None = None, permanent: bool = False) -> None:
        """Keep the first failure: later ones are consequences of it."""
        if self._outcome is None:
            self._outcome = RelayRefused(f"{self._settings.name} {text}", permanent=permanent, code=code)

    def _replied(self, code: int, resp: bytes | str) -> None:
        """A refusal of this message: permanent when 5xx."""
        text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp
        self._refused(f"refused {self._command}: {code} {' '.join(text.split())}", code, 500 <= code < 600)

    def smtpState_toOrData(self, code: int, resp: bytes) -> None:
        if self.lastAddress is not None and code not in SUCCESS:
            self._replied(code, resp)  # all or nothing: no DATA for the recipients that were accepted
            self._disconnectFromServer()
            return
        super().smtpState_toOrData(code, resp)

    def sentMail(self, code: int, resp: bytes, numOk, addresses, log) -> None:
        if code in SUCCESS:
            if self._outcome is None:
                self._outcome = f"{code} {' '.join(resp.decode('utf-8', 'replace').split())}"
        else:
            self._replied(code, resp)

    def esmtpTLSRequired(self, code=-1, resp=None) -> None:
        self._refused("does not offer STARTTLS; with starttls = true nothing is sent over a plain connection")
        super().esmtpTLSRequired(code, resp)

    def esmtpAUTHRequired(self, code=-1, resp=None) -> None:
        self._refused("offers neither AUTH PLAIN nor AUTH LOGIN over TLS, but [smtp_relay] username is set")
        super().esmtpAUTHRequired(code, resp)

    def esmtpEHLORequired(self, code=-1, resp=None) -> None:
        self._refused(f"refused {self._command} ({code} {(resp or b'').decode('utf-8', 'replace')}); STARTTLS and "
                      "AUTH need ESMTP", code)
        super().esmtpEHLORequired(code, resp)

    def esmtpAUTHDeclined(self, code=-1, resp=None) -> None:
        self._refused(f"refused {self._command} for user {self._settings.username!r}: {code} "
                      f"{(resp or b'').decode('utf-8', 'replace')}; check [smtp_relay] username and password_file",
                      code)
        super().esmtpAUTHDeclined(code, resp)

    def sendError(self, exc) -> None:
        code = getattr(exc, "code", None)
        if isinstance(code, int) and code > 0:
            self._refused(f"refused {self._command}: {code} {' '.join(exc.resp.decode('utf-8', 'replace').split())}",
                          code)
        else:
            self._refused(f"failed during {self._command}: {_reason(exc)}")
        super().sendError(exc)

    def connectionLost(self, reason=connectionDone) -> None:
        super().connectionLost(reason)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if reason.check(SSL.Error, VerificationError):
            self._refused(f"could not be reached over TLS after STARTTLS ({_reason(reason.value)}); its certificate "
                          f"must be valid for {self._settings.host} and issued by a CA Postroom trusts")
        elif reason.check(ConnectionDone):
            self._refused(f"closed the connection during {self._command}")
        else:
            self._refused(f"connection lost during {self._command}: {_reason(reason.value)}")
        if isinstance(self._outcome, RelayRefused):
            self.finished.errback(self._outcome)
        else:
            self.finished.callback(self._outcome)
