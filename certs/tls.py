# -*- test-case-name: tests.certs.test_tls -*-
"""TLS server contexts: TLS 1.2+ only, strong ciphers, and optional mutual TLS decided by a callback.

Why not ``CertificateOptions(trustRoot=…)``: a partner may register a self-signed certificate that is
pinned by fingerprint rather than issued by a CA, and the set of registered certificates changes
while the daemon runs. So the handshake asks a callback, ``authorize(certificate) -> bool``, which the
gateway answers from its live partner directory. Certificate *checks* stay here and in
:mod:`certs.x509`; *who* is registered is the caller's business.
"""

from typing import Callable

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from certs.x509 import KeyAndCertificate

# Forward secrecy and AEAD only; TLS 1.3 suites are fixed by OpenSSL and all strong.
CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"

Authorizer = Callable[[x509.Certificate], bool]

_log = Logger()


def server_context(identity: KeyAndCertificate, authorize: Authorizer | None = None,
                   session_id: bytes = b"postroom") -> SSL.Context:
    """Build a server :class:`SSL.Context` for ``identity``.

    :param authorize: when given, a client certificate is **required**; the handshake succeeds only
        if ``authorize(leaf_certificate)`` returns True. When None, no client certificate is asked for.
    :param session_id: distinguishes this listener's sessions; tickets and the session cache are off
        anyway so that every connection is authorised afresh.
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_NO_TICKET
    )
    ctx.set_cipher_list(CIPHERS)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_session_id(session_id)
    ctx.use_privatekey(identity.key)
    ctx.use_certificate(identity.certificate)
    for extra in identity.chain:
        ctx.add_extra_chain_cert(extra)
    ctx.check_privatekey()
    if authorize is not None:
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verifier(authorize))
    return ctx


def _verifier(authorize: Authorizer):
    """Adapt ``authorize`` to OpenSSL's per-certificate verify callback.

    OpenSSL calls back once per chain element and error; the chain above the leaf is judged by
    ``authorize`` itself (pinning or issued-by-a-registered-CA), so only depth 0 decides.
    """

    def verify(connection, cert, errnum, depth, ok) -> bool:
        if depth != 0:
            return True
        leaf = cert.to_cryptography()
        try:
            allowed = bool(authorize(leaf))
        except Exception:
            _log.failure("client certificate check failed")
            return False
        if not allowed:
            _log.info(
                "TLS client certificate refused: {subject} is not registered to an active partner",
                subject=leaf.subject.rfc4514_string(),
            )
        return allowed

    return verify


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """A Twisted TLS connection creator around one fixed server context."""

    def __init__(self, context: SSL.Context):
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """One OpenSSL connection per accepted TCP connection."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection
