"""Tests for :mod:`certs.tls`: real TLS handshakes between Twisted's memory-BIO protocols, no sockets.

The server side is exactly what the gateway listens with, ``TLSMemoryBIOFactory(ServerTLS(server_context
(...)))``; clients are Twisted's own ``optionsForClientTLS`` or, for what it cannot express (old protocol
versions, weak ciphers, session reuse), a raw pyOpenSSL context. Bytes move through ``iosim``'s pump.
"""

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

import certs.tls
from certs.devca import key_pem
from certs.tls import ServerTLS, server_context
from certs.x509 import KeyAndCertificate, fingerprint
from tests.certs.conftest import ec_key, pem

GREETING = b"UNH+1+INVOIC:D:96A:UN'"

# Twisted's own client options (PrivateCertificate) still hand pyOpenSSL X509/PKey objects to OpenSSL.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL (X509|PKey) objects is deprecated:DeprecationWarning")


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """One application end: greets on connect, records what arrives, and echoes it reversed if asked."""

    def __init__(self, greeting: bytes = b"", echo: bool = False):
        self.greeting = greeting
        self.echo = echo
        self.received = b""
        self.handshake_done = False
        self.lost = None

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def handshakeCompleted(self):
        self.handshake_done = True

    def dataReceived(self, data):
        self.received += data
        if self.echo:
            self.transport.write(data[::-1])

    def connectionLost(self, reason):
        self.lost = reason


@implementer(IOpenSSLClientConnectionCreator)
class RawClient:
    """A client connection creator around a hand-made pyOpenSSL context (remembers its connection)."""

    def __init__(self, context: SSL.Context, session: SSL.Session | None = None):
        self.context = context
        self.session = session
        self.connection: SSL.Connection | None = None

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        self.connection = SSL.Connection(self.context, None)
        if self.session is not None:
            self.connection.set_session(self.session)
        return self.connection


class Exchange:
    """The outcome of one in-memory connection: both application ends and both TLS protocols."""

    def __init__(self, server_context_: SSL.Context, client_creator):
        self.server = Recorder(echo=True)
        self.client = Recorder(greeting=GREETING)
        clock = Clock()
        server_factory = TLSMemoryBIOFactory(
            ServerTLS(server_context_), False, Factory.forProtocol(lambda: self.server), clock=clock
        )
        client_factory = TLSMemoryBIOFactory(
            client_creator, True, Factory.forProtocol(lambda: self.client), clock=clock
        )
        self.client_tls, self.server_tls, pump = connectedServerAndClient(
            lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None), clock=clock
        )
        pump.flush()

    @property
    def succeeded(self) -> bool:
        """Handshake done on the server and data delivered both ways, connection still up."""
        return (self.server.handshake_done and self.server.received == GREETING
                and self.client.received == GREETING[::-1] and self.client.lost is None)

    def assert_refused(self, client_says: str, server_says: str) -> None:
        """No application byte crossed, and each side lost the connection with the expected TLS error."""
        assert not self.server.handshake_done
        assert self.server.received == b""
        assert self.client.received == b""
        assert self.client.lost is not None and self.server.lost is not None
        assert isinstance(self.client.lost.value, SSL.Error), self.client.lost
        assert isinstance(self.server.lost.value, SSL.Error), self.server.lost
        assert client_says in str(self.client.lost.value)
        assert server_says in str(self.server.lost.value)


@pytest.fixture
def twisted_client(dev_ca, client_identity):
    """Build Twisted client options for ``localhost`` trusting dev_ca, with or without a client certificate."""

    def make(identity: KeyAndCertificate | None = client_identity):
        certificate = None
        if identity is not None:
            certificate = PrivateCertificate.loadPEM(key_pem(identity.key) + pem(identity.certificate))
        return optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(pem(dev_ca.certificate)), clientCertificate=certificate
        )

    return make


def raw_context(max_version=None, ciphers: bytes | None = None, identity=None) -> SSL.Context:
    """A bare pyOpenSSL client context (no server verification), optionally capped or with a client cert."""
    context = SSL.Context(SSL.TLS_METHOD)
    if max_version is not None:
        context.set_max_proto_version(max_version)
    if ciphers is not None:
        context.set_cipher_list(ciphers)
    if identity is not None:
        context.use_certificate(identity.certificate)
        context.use_privatekey(identity.key)
    return context


class Authorizer:
    """An ``authorize`` callback that records every certificate it is asked about."""

    def __init__(self, answer=True):
        self.answer = answer
        self.seen: list = []

    def __call__(self, certificate):
        self.seen.append(certificate)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_authorised_client_certificate_completes_and_data_flows(server_identity, client_identity, twisted_client):
    """A client certificate that authorize accepts gets a full connection, with data both ways."""
    authorize = Authorizer(True)
    exchange = Exchange(server_context(server_identity, authorize), twisted_client())
    assert exchange.succeeded
    assert exchange.client.handshake_done
    assert authorize.seen, "authorize was never asked"
    for seen in authorize.seen:
        assert isinstance(seen, x509.Certificate)
        assert fingerprint(seen) == fingerprint(client_identity.certificate)
    peer = exchange.server_tls.getPeerCertificate()
    assert fingerprint(peer.to_cryptography()) == fingerprint(client_identity.certificate)


def test_only_the_leaf_is_given_to_authorize(server_identity, client_identity, twisted_client, dev_ca):
    """The client also sends its CA certificate (depth 1), yet authorize only ever judges the leaf."""
    authorize = Authorizer(True)
    exchange = Exchange(server_context(server_identity, authorize), twisted_client())
    assert exchange.succeeded
    chain = [fingerprint(c.to_cryptography()) for c in exchange.server_tls.getHandle().get_peer_cert_chain()]
    assert fingerprint(dev_ca.certificate) in chain  # the CA really was offered
    assert {fingerprint(c) for c in authorize.seen} == {fingerprint(client_identity.certificate)}


def test_client_sending_only_its_leaf_is_authorised(server_identity, client_identity):
    """A client that sends no chain at all (many AS2 products) still reaches authorize and gets in."""
    authorize = Authorizer(True)
    exchange = Exchange(server_context(server_identity, authorize), RawClient(raw_context(identity=client_identity)))
    assert exchange.succeeded
    assert {fingerprint(c) for c in authorize.seen} == {fingerprint(client_identity.certificate)}


def test_no_client_certificate_is_refused(server_identity, twisted_client):
    """With mutual TLS required, a client without a certificate gets an alert and no application data."""
    authorize = Authorizer(True)
    exchange = Exchange(server_context(server_identity, authorize), twisted_client(None))
    exchange.assert_refused("alert certificate required", "peer did not return a certificate")
    assert authorize.seen == []


def test_client_certificate_refused_by_authorize(server_identity, client_identity, twisted_client):
    """When authorize says no, the handshake fails, even for a certificate of the trusted CA."""
    authorize = Authorizer(False)
    exchange = Exchange(server_context(server_identity, authorize), twisted_client())
    exchange.assert_refused("alert", "certificate verify failed")
    assert {fingerprint(c) for c in authorize.seen} == {fingerprint(client_identity.certificate)}


def test_authorize_raising_refuses_and_is_logged(server_identity, twisted_client, monkeypatch):
    """A bug in authorize fails closed: the handshake is refused, nothing escapes, and the failure is logged."""
    events: list = []
    monkeypatch.setattr(certs.tls, "_log", Logger(namespace="certs.tls", observer=events.append))
    authorize = Authorizer(RuntimeError("directory unavailable"))
    exchange = Exchange(server_context(server_identity, authorize), twisted_client())
    exchange.assert_refused("alert", "certificate verify failed")
    assert authorize.seen
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def test_refusal_is_logged_with_the_subject(server_identity, twisted_client, monkeypatch):
    """An unregistered certificate is logged with its subject, so operators can see who knocked."""
    events: list = []
    monkeypatch.setattr(certs.tls, "_log", Logger(namespace="certs.tls", observer=events.append))
    Exchange(server_context(server_identity, Authorizer(False)), twisted_client())
    subjects = {e.get("subject") for e in events}
    assert "CN=acme,O=Postroom development" in subjects


def test_foreign_ca_client_reaches_authorize_not_openssl_trust(server_identity, other_ca, twisted_client):
    """Trust is authorize's decision alone: an other_ca certificate is let in when authorize says yes."""
    key, cert = other_ca.build("pinned", "tls-client", key=ec_key())
    authorize = Authorizer(True)
    exchange = Exchange(server_context(server_identity, authorize), twisted_client(KeyAndCertificate(key, cert)))
    assert exchange.succeeded
    assert {fingerprint(c) for c in authorize.seen} == {fingerprint(cert)}


@pytest.mark.parametrize(
    "max_version, accepted",
    [(SSL.TLS1_1_VERSION, False), (SSL.TLS1_2_VERSION, True), (SSL.TLS1_3_VERSION, True)],
    ids=["tls1.1", "tls1.2", "tls1.3"],
)
def test_tls_1_2_is_the_minimum(server_identity, max_version, accepted):
    """A client capped at TLS 1.1 is refused with a protocol-version alert; TLS 1.2 and 1.3 get in."""
    # SECLEVEL=0 lets this OpenSSL client really offer TLS 1.1, so the refusal is the server's.
    client = RawClient(raw_context(max_version, b"DEFAULT:@SECLEVEL=0"))
    exchange = Exchange(server_context(server_identity, None), client)
    if accepted:
        assert exchange.succeeded
        assert client.connection.get_protocol_version() == max_version
    else:
        exchange.assert_refused("alert protocol version", "unsupported protocol")


def test_tls_1_2_minimum_does_not_rest_on_the_cipher_list(server_identity):
    """Even with the cipher list and security level loosened, the version floor alone refuses TLS 1.1."""
    context = server_context(server_identity, None)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    exchange = Exchange(context, RawClient(raw_context(SSL.TLS1_1_VERSION, b"DEFAULT:@SECLEVEL=0")))
    exchange.assert_refused("alert protocol version", "unsupported protocol")


@pytest.mark.parametrize(
    "cipher, accepted",
    [
        (b"ECDHE-RSA-AES128-GCM-SHA256", True),
        (b"ECDHE-RSA-CHACHA20-POLY1305", True),
        (b"ECDHE-RSA-AES128-SHA256", False),  # CBC, not AEAD
        (b"ECDHE-RSA-AES256-SHA", False),  # SHA-1 MAC
        (b"AES128-GCM-SHA256", False),  # RSA key exchange, no forward secrecy
    ],
)
def test_only_forward_secret_aead_ciphers_under_tls_1_2(server_identity, cipher, accepted):
    """A TLS 1.2 client limited to a weak suite finds no shared cipher; ECDHE with AEAD gets in."""
    client = RawClient(raw_context(SSL.TLS1_2_VERSION, cipher + b":@SECLEVEL=0"))
    exchange = Exchange(server_context(server_identity, None), client)
    if accepted:
        assert exchange.succeeded
        assert client.connection.get_cipher_name() == cipher.decode()
    else:
        exchange.assert_refused("alert handshake failure", "no shared cipher")


def test_portal_context_needs_no_client_certificate(server_identity, twisted_client):
    """Without authorize (the portal door) a client gets in with no certificate."""
    exchange = Exchange(server_context(server_identity, None), twisted_client(None))
    assert exchange.succeeded
    assert exchange.server_tls.getPeerCertificate() is None


def test_portal_context_does_not_ask_for_a_certificate(server_identity, twisted_client):
    """The portal never requests a client certificate, so browsers do not pop up a certificate picker."""
    exchange = Exchange(server_context(server_identity, None), twisted_client())
    assert exchange.succeeded
    assert exchange.server_tls.getPeerCertificate() is None


@pytest.mark.parametrize("max_version", [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION], ids=["tls1.2", "tls1.3"])
def test_resumed_session_is_authorised_afresh(server_identity, client_identity, max_version):
    """A client offering its previous session still goes through authorize, so removing a partner takes effect."""
    context = raw_context(max_version, identity=client_identity)
    context.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    authorize = Authorizer(True)
    server = server_context(server_identity, authorize)
    first = RawClient(context)
    assert Exchange(server, first).succeeded
    asked_first = len(authorize.seen)
    assert asked_first > 0

    authorize.answer = False  # the partner was removed meanwhile
    second = Exchange(server, RawClient(context, first.connection.get_session()))
    second.assert_refused("alert", "certificate verify failed")
    assert len(authorize.seen) > asked_first


def test_chain_certificates_of_the_identity_are_sent(server_identity, dev_ca):
    """Chain certificates that came with the identity are sent to clients after the leaf."""
    with_chain = KeyAndCertificate(server_identity.key, server_identity.certificate, (dev_ca.certificate,))
    for identity, expected in ((server_identity, [server_identity.certificate]),
                               (with_chain, [server_identity.certificate, dev_ca.certificate])):
        client = RawClient(raw_context())
        assert Exchange(server_context(identity, None), client).succeeded
        sent = [c.to_cryptography() for c in client.connection.get_peer_cert_chain()]
        assert [fingerprint(c) for c in sent] == [fingerprint(c) for c in expected]


def test_mismatched_identity_is_refused_at_build_time(server_identity):
    """A server key that does not match its certificate fails when the context is built, not per connection."""
    with pytest.raises(SSL.Error):
        server_context(KeyAndCertificate(ec_key(), server_identity.certificate), None)
