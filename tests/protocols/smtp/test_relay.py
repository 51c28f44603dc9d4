"""Tests for :mod:`protocols.smtp.relay`: submissions to a real aiosmtpd relay on loopback (its own asyncio loop
in a thread, STARTTLS with a dev-CA certificate), and the DATA encoding across chunk boundaries."""

import base64
import socket
import ssl
from contextlib import contextmanager

import attrs
import pytest
import pytest_twisted
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from certs.devca import key_pem
from certs.x509 import to_pem
from partners.errors import InvalidValueError
from protocols.as2.mime import Region
from protocols.smtp.relay import Relay, RelayRefused, RelaySettings, _DataEncoder

USER, PASSWORD = "gateway", "s3cret-Pa55word"
SENDER, RECIPIENT = "postroom@gw.example", "ap@buyer.example"


class _EphemeralController(Controller):
    """aiosmtpd 1.4's Controller probes the configured port after starting; with port 0, probe the bound one."""

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@attrs.define
class Recorder:
    """An aiosmtpd handler that records every command and delivery, refusing the RCPTs it is told to."""

    rcpt_replies: dict[str, str] = attrs.Factory(dict)
    commands: list[tuple[str, str]] = attrs.Factory(list)
    received: list[dict] = attrs.Factory(list)
    logins: list[tuple[str, bytes, bytes]] = attrs.Factory(list)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.commands.append(("MAIL", address))
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.commands.append(("RCPT", address))
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "content": envelope.original_content, "tls": session.ssl is not None,
                              "authenticated": bool(session.authenticated)})
        return "250 2.0.0 queued as 42"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((mechanism, auth_data.login, auth_data.password))
        valid = (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=valid, handled=False)  # unhandled: aiosmtpd answers 535 itself


@pytest.fixture(scope="module")
def certificates(dev_ca, other_ca, tmp_path_factory):
    """Server certificate files: for 127.0.0.1 from the trusted CA, from an untrusted CA, and for another name."""
    folder = tmp_path_factory.mktemp("relay-certs")
    issued = {"good": dev_ca.build("relay", "tls-server", hostnames=["127.0.0.1"]),
              "stranger": other_ca.build("relay", "tls-server", hostnames=["127.0.0.1"]),
              "other-name": dev_ca.build("relay", "tls-server", hostnames=["mail.example"])}
    for name, (key, cert) in issued.items():
        (folder / f"{name}.key").write_bytes(key_pem(key))
        (folder / f"{name}.crt").write_bytes(to_pem(cert))
    return folder


@contextmanager
def relay_server(handler: Recorder, certificates, *, cert: str | None = "good", auth: bool = False, **options):
    """A running aiosmtpd relay on 127.0.0.1 (STARTTLS required when it has a certificate); stopped on exit."""
    if cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates / f"{cert}.crt", certificates / f"{cert}.key")
        options |= {"tls_context": context, "require_starttls": True}
    if auth:
        options |= {"authenticator": handler.authenticate, "auth_required": True}
    controller = _EphemeralController(handler, hostname="127.0.0.1", port=0, **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def relay(port: int, dev_ca, **changes) -> Relay:
    """A client for the relay on ``port`` that trusts the dev CA."""
    from twisted.internet import reactor

    return Relay(reactor, RelaySettings(**({"host": "127.0.0.1", "port": port, "trust": [dev_ca.certificate],
                                            "timeout": 20} | changes)))


async def refusal(deferred: Deferred) -> RelayRefused:
    """The RelayRefused ``deferred`` fails with (anything else fails the test)."""
    with pytest.raises(RelayRefused) as caught:
        await deferred
    return caught.value


def message(body: bytes = b"Hello.\r\n") -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    return b"From: " + SENDER.encode() + b"\r\nTo: " + RECIPIENT.encode() + b"\r\nSubject: test\r\n\r\n" + body


def with_dots_at_chunk_edges() -> bytes:
    """A message whose dot-led lines fall where Twisted's FileSender cuts 16 KiB chunks, once right after a
    complete CRLF and once after a CRLF cut between its CR and LF; plus a lone "." line and a bare LF."""
    chunk = 1 << 14
    data = message(b".leading dot\r\n.\r\nbare LF follows\nnext\r\n")
    data = filled(data, chunk, b"\r\n") + b".at the edge\r\n"  # a dot-led line starts the second chunk
    data = filled(data, 2 * chunk, b"\r")  # the CR of a CRLF is the last byte of the second chunk
    return data + b"\n.after a split CRLF\r\nend\r\n"


def filled(data: bytes, size: int, end: bytes) -> bytes:
    """``data`` plus lines of filler (under SMTP's line limit), so that it ends with ``end`` at ``size`` bytes."""
    while size - len(data) > 80:
        data += b"x" * 76 + b"\r\n"
    return data + b"y" * (size - len(data) - len(end)) + end


def smtp_data(data: bytes) -> bytes:
    """What a correct SMTP client puts on the wire for ``data`` (minus the terminator)."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


@pytest.mark.parametrize("data", [with_dots_at_chunk_edges()[:300], b".a\r\n.\r\nb\rc\nd\r\n", b"no end", b"x\r"])
def test_data_encoding_does_not_depend_on_where_chunks_are_cut(data):
    """Every way of cutting the message into two chunks gives the same wire bytes: dots stuffed, CRLF kept."""
    whole = _DataEncoder()
    expected = whole.encode(data) + whole.terminator()
    for cut in range(len(data) + 1):
        encoder = _DataEncoder()
        assert encoder.encode(data[:cut]) + encoder.encode(data[cut:]) + encoder.terminator() == expected, cut
    if b"\r" not in data.replace(b"\r\n", b""):
        assert whole.encode(data) == smtp_data(data)


@pytest.mark.parametrize("as_region", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_message_arrives_byte_identical_over_verified_starttls(dev_ca, certificates, as_region):
    """Dot-led lines at chunk edges survive (bytes, or a region streamed from its file); the envelope is ours;
    TLS was used; the relay's reply comes back."""
    handler = Recorder()
    data = with_dots_at_chunk_edges()
    payload = Region.of_bytes(b"spool header" + data).sub(len(b"spool header")) if as_region else data
    with relay_server(handler, certificates) as server:
        reply = await relay(server.port, dev_ca).send(SENDER, [RECIPIENT, "cc@buyer.example"], payload)
    assert reply == "250 2.0.0 queued as 42"
    [got] = handler.received
    assert got["from"] == SENDER and got["to"] == [RECIPIENT, "cc@buyer.example"] and got["tls"]
    assert got["content"] == data.replace(b"follows\nnext", b"follows\r\nnext")  # only the bare LF became CRLF


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest_twisted.ensureDeferred
async def test_auth_runs_inside_tls_when_a_username_is_set(dev_ca, certificates, mechanism):
    """The relay sees AUTH (PLAIN, or LOGIN when PLAIN is not offered) after STARTTLS, then the message."""
    handler = Recorder()
    excluded = ["PLAIN"] if mechanism == "LOGIN" else []
    with relay_server(handler, certificates, auth=True, auth_exclude_mechanism=excluded) as server:
        await relay(server.port, dev_ca, username=USER, password=PASSWORD).send(SENDER, [RECIPIENT], message())
    assert handler.logins == [(mechanism, USER.encode(), PASSWORD.encode())]
    assert handler.received[0]["authenticated"] and handler.received[0]["tls"]


@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_refused_without_showing_it(dev_ca, certificates):
    """A declined login says what to check, is not permanent, and no error text holds the password in any form."""
    handler = Recorder()
    wrong = "Wr0ng-Secret-Value"
    with relay_server(handler, certificates, auth=True) as server:
        error = await refusal(relay(server.port, dev_ca, username=USER, password=wrong).send(
            SENDER, [RECIPIENT], message()))
    assert not error.permanent and error.code == 535
    assert "AUTH PLAIN" in error.text and "password_file" in error.text and repr(USER) in error.text
    texts = str(error) + repr(error) + error.text + repr(error.args)
    for secret in (wrong, base64.b64encode(wrong.encode()).decode(),
                   base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode(),
                   base64.b64encode(f"{USER}\0{USER}\0{wrong}".encode()).decode()):
        assert secret not in texts
    assert handler.commands == [] and handler.received == []


def test_settings_keep_the_password_out_of_repr_and_refuse_auth_without_tls():
    """The password is not in the settings' repr; a username without STARTTLS is a configuration error."""
    settings = RelaySettings("smtp.example", username=USER, password=PASSWORD)
    assert PASSWORD not in repr(settings)
    with pytest.raises(InvalidValueError, match="starttls"):
        RelaySettings("smtp.example", starttls=False, username=USER, password=PASSWORD)
    with pytest.raises(ValueError, match="helo"):
        RelaySettings("smtp.example", helo="gw.example\r\nRCPT TO:<x@evil.example>")


@pytest_twisted.ensureDeferred
async def test_a_relay_without_starttls_gets_nothing(dev_ca, certificates):
    """No STARTTLS offered: a retryable refusal, and the relay never saw MAIL FROM, RCPT or data."""
    handler = Recorder()
    with relay_server(handler, certificates, cert=None) as server:
        error = await refusal(relay(server.port, dev_ca).send(SENDER, [RECIPIENT], message()))
    assert not error.permanent and error.code is None
    assert "does not offer STARTTLS" in error.text
    assert handler.commands == [] and handler.received == []


@pytest.mark.parametrize("cert, reason", [("stranger", "certificate verify failed"),
                                          ("other-name", "not issued for this host name")])
@pytest_twisted.ensureDeferred
async def test_a_relay_certificate_we_cannot_verify_gets_nothing(dev_ca, certificates, cert, reason):
    """An untrusted issuer or a certificate for another host: retryable refusal naming why; nothing sent."""
    handler = Recorder()
    with relay_server(handler, certificates, cert=cert) as server:
        error = await refusal(relay(server.port, dev_ca).send(SENDER, [RECIPIENT], message()))
    assert not error.permanent and error.code is None
    assert reason in error.text and "STARTTLS" in error.text
    assert handler.commands == [] and handler.received == []


@pytest_twisted.ensureDeferred
async def test_a_5xx_recipient_refusal_is_permanent_and_named(dev_ca, certificates):
    """550 on RCPT: permanent, with the code and the relay's words; no data is sent."""
    handler = Recorder(rcpt_replies={"nobody@buyer.example": "550 5.1.1 no such user"})
    with relay_server(handler, certificates) as server:
        error = await refusal(relay(server.port, dev_ca).send(SENDER, ["nobody@buyer.example"], message()))
    assert error.permanent and error.code == 550
    assert error.text == (f"relay 127.0.0.1:{server.port} refused RCPT TO:<nobody@buyer.example>: "
                          "550 5.1.1 no such user")
    assert handler.received == []


@pytest_twisted.ensureDeferred
async def test_a_4xx_refusal_is_not_permanent(dev_ca, certificates):
    """451 on RCPT: retryable, with the code."""
    handler = Recorder(rcpt_replies={RECIPIENT: "451 4.3.0 try again later"})
    with relay_server(handler, certificates) as server:
        error = await refusal(relay(server.port, dev_ca).send(SENDER, [RECIPIENT], message()))
    assert not error.permanent and error.code == 451 and "451 4.3.0 try again later" in error.text


@pytest_twisted.ensureDeferred
async def test_one_refused_recipient_stops_the_whole_message(dev_ca, certificates):
    """All or nothing: the accepted recipient gets no copy, so a retry cannot deliver twice."""
    handler = Recorder(rcpt_replies={"gone@buyer.example": "450 4.2.1 mailbox busy"})
    with relay_server(handler, certificates) as server:
        error = await refusal(relay(server.port, dev_ca).send(SENDER, [RECIPIENT, "gone@buyer.example"], message()))
    assert not error.permanent and error.code == 450 and "RCPT TO:<gone@buyer.example>" in error.text
    assert handler.commands == [("MAIL", SENDER), ("RCPT", RECIPIENT), ("RCPT", "gone@buyer.example")]
    assert handler.received == []


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_a_closed_port_is_a_retryable_refusal(dev_ca):
    """Connection refused: not permanent, no code, says it could not connect."""
    port = closed_port()
    error = await refusal(relay(port, dev_ca).send(SENDER, [RECIPIENT], message()))
    assert not error.permanent and error.code is None
    assert error.text.startswith(f"relay 127.0.0.1:{port}: could not connect") and "refused" in error.text


@pytest.mark.parametrize("sender, recipients", [(SENDER, ["x@y.example>\r\nDATA"]), (SENDER, []),
                                                ("Postroom <postroom@gw.example>", [RECIPIENT]),
                                                (SENDER, ["jörg@buyer.example"])])
@pytest_twisted.ensureDeferred
async def test_an_address_the_relay_cannot_take_is_refused_before_connecting(dev_ca, sender, recipients):
    """Command injection through an address, display names, non-ASCII, no recipients: permanent, no connection."""
    error = await refusal(relay(closed_port(), dev_ca).send(sender, recipients, message()))
    assert error.permanent and "could not connect" not in error.text


@pytest_twisted.ensureDeferred
async def test_a_relay_that_never_answers_times_out(dev_ca):
    """A silent relay: a retryable refusal after the timeout, and the connection is closed before it fires."""
    from twisted.internet import reactor

    gone: Deferred = Deferred()

    class Silent(Protocol):
        def connectionLost(self, reason):
            gone.callback(None)

    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        error = await refusal(relay(port.getHost().port, dev_ca, timeout=0.3).send(SENDER, [RECIPIENT], message()))
        await gone
    finally:
        await port.stopListening()
    assert not error.permanent and error.code is None
    assert "did not finish within 0.3 s (the last step was the connection)" in error.text
