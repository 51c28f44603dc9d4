# -*- test-case-name: tests.protocols.as2.test_client -*-
"""POSTing AS2 messages and async MDNs to a partner: Twisted's HTTP client over verified TLS 1.2+.

We present the gateway's TLS certificate (partners may require mutual TLS) and verify the partner's
server: against the CA certificates registered for the partner's ``tls`` usage (and its self-signed
``tls`` certificates) when there are any, else against the platform's trust store. Hostname checks are
Twisted's (service_identity). Plain ``http://`` is refused: AS2 payloads are invoices.
"""

from collections.abc import Iterable, Sequence
from io import BytesIO
from urllib.parse import urlsplit

import attrs
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers as HTTPHeaders
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from certs.x509 import Certificate, KeyAndCertificate, is_ca
from partners.directory import Partner
from protocols.as2.mime import Headers, Region

#: The largest answer we read (an MDN is a few kilobytes).
MAX_ANSWER = 1 << 20


class PostFailed(Exception):
    """The POST did not get an answer (refused, TLS failure, timeout, oversized answer)."""


@attrs.frozen
class Answer:
    """An HTTP answer: status, headers (for MIME parsing) and body."""

    code: int
    headers: Headers
    body: bytes = attrs.field(repr=False)


def _trust_for(partner: Partner) -> list[Certificate]:
    registered = list(partner.cas.get("tls", ())) + list(partner.certificates.get("tls", ()))
    return [c for c in registered if is_ca(c) or c.issuer == c.subject]


@implementer(IPolicyForHTTPS)
class PartnerTLS:
    """TLS for one partner's URLs: our client certificate, the partner's trust anchors, TLS 1.2 at least."""

    def __init__(self, identity: KeyAndCertificate, trust: Sequence[Certificate]):
        pem = lambda c: ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))  # noqa: E731
        key = identity.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self._client = ssl.PrivateCertificate.loadPEM(
            key + identity.certificate.public_bytes(serialization.Encoding.PEM))
        self._chain = [pem(c) for c in identity.chain]
        self._trust = ssl.trustRootFromCertificates([pem(c) for c in trust]) if trust else ssl.platformTrust()

    def creatorForNetloc(self, hostname: bytes, port: int):
        """The connection creator Twisted's Agent asks for."""
        return ssl.optionsForClientTLS(
            hostname.decode("idna"), trustRoot=self._trust, clientCertificate=self._client,
            extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
                                     "extraCertChain": [c.original for c in self._chain]})


class Poster:
    """One HTTP client for every partner (a connection pool, keep-alive), one TLS policy per partner."""

    def __init__(self, reactor, identity: KeyAndCertificate, timeout: float = 120.0):
        self._reactor = reactor
        self._identity = identity
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 4
        self._timeout = timeout

    def post(self, partner: Partner, url: str, headers: Iterable[tuple[str, str]], body: bytes | Region) -> Deferred:
        """POST ``body`` (a region is streamed from its file); fires with an :class:`Answer`, or fails with
        :class:`PostFailed`."""
        return Deferred.fromCoroutine(self._post(partner, url, list(headers), body))

    async def _post(self, partner: Partner, url: str, headers: list[tuple[str, str]], body: bytes | Region) -> Answer:
        if urlsplit(url).scheme != "https":
            raise PostFailed(f"{url} is not an https:// URL; AS2 goes over TLS only")
        agent = Agent(self._reactor, PartnerTLS(self._identity, _trust_for(partner)), pool=self._pool,
                      connectTimeout=30)
        http_headers = HTTPHeaders()
        for name, value in headers:
            http_headers.addRawHeader(name.encode("ascii"), value.encode("latin-1"))
        producer = FileBodyProducer(body.reader() if isinstance(body, Region) else BytesIO(body))
        request = agent.request(b"POST", url.encode("ascii"), http_headers, producer)
        request.addTimeout(self._timeout, self._reactor)
        try:
            response = await request
            reader = _BoundedBody(url)
            response.deliverBody(reader)
            reader.done.addTimeout(self._timeout, self._reactor)
            data = await reader.done
        except PostFailed:
            raise
        except Exception as e:
            raise PostFailed(f"POST to {url} failed: {_reason(e)}") from e
        pairs = [(n.decode("latin-1"), v.decode("latin-1"))
                 for n, vs in response.headers.getAllRawHeaders() for v in vs]
        return Answer(response.code, Headers.of(pairs), data)

    def close(self) -> Deferred:
        """Close pooled connections (on shutdown)."""
        return self._pool.closeCachedConnections()


def _reason(error: Exception) -> str:
    """Twisted's client errors wrap failures in lists; say what they say."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(f"{r.type.__name__}: {r.getErrorMessage()}" for r in reasons)
    return str(error) or type(error).__name__


class _BoundedBody(Protocol):
    """Collects a response body up to :data:`MAX_ANSWER` bytes, then gives up on the connection."""

    def __init__(self, url: str):
        self.done: Deferred = Deferred()
        self._url = url
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_ANSWER:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(PostFailed(f"{self._url} answered with more than {MAX_ANSWER} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._chunks))
        else:
            self.done.errback(PostFailed(f"the answer from {self._url} was cut short: {reason.getErrorMessage()}"))
