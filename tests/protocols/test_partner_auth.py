"""Tests for :mod:`protocols.partner_auth` and the ``/as2`` resource, with in-memory requests."""

from datetime import UTC, datetime

import pytest
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from partners.directory import Partner, PartnerDirectory
from partners.networks import NetworkSet, parse_network
from protocols.as2.resource import AS2Resource, AS2Settings
from protocols.partner_auth import PartnerAuthError, authenticate


class _PeerCert:
    """What TLSMemoryBIOProtocol.getPeerCertificate returns: a pyOpenSSL X509 wrapper."""

    def __init__(self, cert):
        self._cert = cert

    def to_cryptography(self):
        return self._cert


class _TLSTransport(DummyChannel.TCP):
    """A channel transport with an optional verified peer certificate."""

    def __init__(self, cert):
        super().__init__()
        self._peer_cert = _PeerCert(cert) if cert is not None else None

    def getPeerCertificate(self):
        return self._peer_cert


def request(cert, host="192.0.2.10", method=b"POST") -> DummyRequest:
    channel = DummyChannel()
    channel.transport = _TLSTransport(cert)
    req = DummyRequest([b""])
    req.channel = channel
    req.method = method
    req.client = IPv4Address("TCP", host, 50000)
    return req


@pytest.fixture(scope="module")
def acme_cert(dev_ca):
    return dev_ca.build("acme", "tls-client")[1]


@pytest.fixture(scope="module")
def directory(acme_cert) -> PartnerDirectory:
    acme = Partner("acme", "ACME", True, networks=NetworkSet([parse_network("192.0.2.0/24")]),
                   certificates={"tls": (acme_cert,)}, as2_ids=("ACME",))
    return PartnerDirectory.build(1, [acme])


def current() -> datetime:
    """Now, read when used: certificates made during the run are valid from a few minutes before it."""
    return datetime.now(UTC)


def _unused(*args):
    raise AssertionError("nothing may reach the intake in these tests")


SETTINGS = AS2Settings(as2_id="POSTROOM", hostname="gw.example", recipients=(), max_decompressed=1 << 20,
                       accept=_unused, refuse=_unused, run_cpu=_unused)


def test_registered_certificate_from_its_partners_network_authenticates(directory, acme_cert):
    """Certificate and source address together identify acme."""
    assert authenticate(request(acme_cert), directory, current()).id == "acme"


def test_missing_certificate_is_refused(directory):
    """No verified peer certificate: refused with a reason saying so."""
    with pytest.raises(PartnerAuthError, match="client certificate is required"):
        authenticate(request(None), directory, current())


def test_unregistered_certificate_is_refused(directory, other_ca):
    """A certificate nobody registered identifies nobody."""
    with pytest.raises(PartnerAuthError, match="not registered to an active partner"):
        authenticate(request(other_ca.build("x", "tls-client")[1]), directory, current())


def test_address_outside_the_partners_own_allowlist_is_refused(directory, acme_cert):
    """Even a valid certificate is refused from an address its partner did not allow."""
    with pytest.raises(PartnerAuthError, match=r"198\.51\.100\.1 is not in the allowlist of partner acme"):
        authenticate(request(acme_cert, host="198.51.100.1"), directory, current())


def test_as2_resource_answers_403_and_405(directory, acme_cert):
    """/as2 refuses strangers with 403 and a reason, takes only POST, and checks the AS2 addressing."""
    resource = AS2Resource(lambda: directory, current, SETTINGS)
    forbidden = request(acme_cert, host="198.51.100.1")
    body = resource.render(forbidden)
    assert forbidden.responseCode == 403 and b"allowlist of partner acme" in body
    get = request(acme_cert, method=b"GET")
    resource.render(get)
    assert get.responseCode == 405 and get.responseHeaders.getRawHeaders(b"allow") == [b"POST"]
    post = request(acme_cert)
    body = resource.render(post)
    assert post.responseCode == 403 and b"AS2-From (missing) is not an AS2 ID registered to partner acme" in body
    misaddressed = request(acme_cert)
    misaddressed.requestHeaders.setRawHeaders(b"as2-from", [b'"ACME"'])
    misaddressed.requestHeaders.setRawHeaders(b"as2-to", [b"SOMEONE ELSE"])
    body = resource.render(misaddressed)
    assert misaddressed.responseCode == 403 and b"AS2-To SOMEONE ELSE is not this gateway" in body


def test_as2_resource_reads_the_directory_on_every_request(directory, acme_cert):
    """A partner disabled while a connection stays open is refused on its next request."""
    live = {"d": directory}
    resource = AS2Resource(lambda: live["d"], current, SETTINGS)
    first = request(acme_cert)
    assert b"AS2-From" in resource.render(first)  # authenticated: refused only for its AS2 headers
    disabled = Partner("acme", "ACME", False, networks=NetworkSet([parse_network("192.0.2.0/24")]),
                       certificates={"tls": (acme_cert,)})
    live["d"] = PartnerDirectory.build(2, [disabled])
    second = request(acme_cert)
    assert b"not registered to an active partner" in resource.render(second)
    assert second.responseCode == 403
