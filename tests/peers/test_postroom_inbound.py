"""Independent AS2 peers → Postroom's ``/as2`` door: pyas2lib and django-pyas2 against the real daemon.

Both peers are GPL and run only as separate processes in their own venvs (tests/peers/harness.py).
One daemon serves the module, on a private copy of the demo home, with a partner ``peer`` registered
through the real CLI: AS2 ID PYAS2LIB, allowlist 127.0.0.0/8, its signing, encryption and TLS client
certificates (issued by the session's dev CA, not the home's). The peer trusts the home's dev CA for
the daemon's TLS server certificate ("localhost"), encrypts to the gateway's encryption certificate
and verifies our MDNs with the gateway's signing certificate, chain-checked against that CA.

Every message is the BIS 3 base example under its own invoice number, with the supplier ID changed to
the peer's own participant ID (the demo supplier ID is acme's, which the router refuses from anyone
else) and the customer left as globex, so the router sends it to globex. pyas2lib sends text payloads
with CRLF line ends, so the invoice is made CRLF before sending: the stored SHA-256 must then equal
that of the file the peer sent.

pyas2lib cannot build RC2 or RC4 here (its oscrypto on OpenSSL 3), and the peer script has no knob
for its RSASSA-PSS / RSAES-OAEP options (broken in pyas2lib anyway, see the AS2 research note); the
PSS and OAEP paths are covered by the openssl-driven tests in tests/e2e/test_as2_door.py.
"""

import base64
import contextlib
import hashlib
import itertools
import socket
import ssl
import threading
import uuid
from pathlib import Path

import attrs
import pytest

from tests.e2e.daemon import Daemon, private_home
from tests.e2e.https import invoice, query
from tests.e2e.test_mtls_door import metric, wait_until
from tests.peers.harness import PeerError

pytestmark = [pytest.mark.peers, pytest.mark.e2e]

PEER_AS2_ID = "PYAS2LIB"
PEER_PARTICIPANT = ("0088", "5798000000001")
DEMO_SUPPLIER = b'<cbc:EndpointID schemeID="0088">9482348239847239874</cbc:EndpointID>'
PROCESSED = "automatic-action/MDN-sent-automatically; processed"

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def peer(peer_identity):
    """The pyas2lib side's keys (session dev CA: signing, encryption, TLS for 127.0.0.1/localhost)."""
    return peer_identity(PEER_AS2_ID)


@pytest.fixture(scope="module")
def daemon(demo_home_template, tmp_path_factory, peer):
    """One daemon for the module; the partner ``peer`` is registered through the CLI before it starts."""
    d = Daemon(private_home(demo_home_template, tmp_path_factory.mktemp("as2-peers")))
    d.cli("partner", "add", "peer", "--name", "pyas2lib peer", "--as2-id", PEER_AS2_ID,
          "--participant-id", ":".join(PEER_PARTICIPANT), "--allow-ip", "127.0.0.0/8",
          "--tls-cert", str(peer.tls_cert), "--sign-cert", str(peer.sign_cert),
          "--encrypt-cert", str(peer.encrypt_cert))
    usages = {line.split("usage=")[1].split(",")[0] for line in d.cli("partner", "show", "peer").stdout.splitlines()
              if "usage=" in line}
    assert usages == {"tls", "sign", "encrypt"}
    d.start()
    try:
        yield d
    finally:
        d.stop()


def gateway_as_partner(daemon, **settings) -> dict:
    """Postroom as the peer's partner: our signing and encryption certificates, chain-checked by the dev CA."""
    home = daemon.home
    return {"as2_id": "POSTROOM", "sign_cert": str(home.path / "pki" / "sign.crt"),
            "encrypt_cert": str(home.path / "pki" / "encrypt.crt"), "ca": str(home.dev_ca / "ca.crt"),
            "content_type": "application/xml", **settings}


@pytest.fixture(scope="module")
def config(daemon, peer) -> dict:
    """The pyas2lib peer's config: its keys, Postroom as partner, mutual TLS trusting the home's dev CA."""
    return peer.config([gateway_as_partner(daemon)],
                       client_tls={"cert": str(peer.tls_cert), "key": str(peer.tls_key),
                                   "ca": str(daemon.home.dev_ca / "ca.crt")})


def url(daemon) -> str:
    """The door as a partner addresses it (the daemon's certificate names localhost)."""
    return f"https://localhost:{daemon.ports['as2']}/as2"


@attrs.frozen
class Invoice:
    path: Path
    data: bytes
    number: str


def fresh_invoice(directory: Path) -> Invoice:
    """A new invoice from the peer to globex, CRLF line ends, under a number no other test uses."""
    number = f"PEER-{uuid.uuid4().hex[:8]}-{next(_numbers)}"
    scheme, value = PEER_PARTICIPANT
    ours = f'<cbc:EndpointID schemeID="{scheme}">{value}</cbc:EndpointID>'.encode()
    data = invoice(number).replace(DEMO_SUPPLIER, ours, 1)
    assert ours in data
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    path = directory / f"invoice-{number}.xml"
    path.write_bytes(data)
    return Invoice(path, data, number)


def new_message_id() -> str:
    return f"{uuid.uuid4().hex}@pyas2lib-peer.test"


def stored(daemon, message_id: str) -> list[tuple]:
    """The messages row(s) for an AS2 Message-ID (``external_id`` keeps the angle brackets as sent)."""
    return query(daemon, "SELECT sender_id, recipient_id, channel, filename, content_type, sha256, state "
                         "FROM messages WHERE external_id = :id", id=f"<{message_id}>")


def quarantined(daemon, message_id: str) -> list[tuple]:
    return query(daemon, "SELECT codes FROM quarantine WHERE external_id = :id", id=f"<{message_id}>")


def evidence(daemon, result: dict) -> str:
    """What to read when an assertion fails: the peer's view of the exchange and the daemon's log."""
    shown = {k: v for k, v in result.items() if k not in ("mdn_raw_b64", "stderr")}
    return f"{shown}\npeer stderr:\n{result.get('stderr', '')[-2000:]}\ndaemon log: {daemon.log}"


def mdn_body(result: dict) -> bytes:
    """The MDN's HTTP body (pyas2lib_peer.py keeps headers + blank line + body, base64)."""
    return base64.b64decode(result["mdn_raw_b64"]).split(b"\r\n\r\n", 1)[1]


def assert_accepted(daemon, result: dict, sent: Invoice, *, mdn_signed: bool = True) -> None:
    """A sync MDN ``processed`` that pyas2lib parsed and verified, MIC equal, the invoice stored for globex."""
    why = evidence(daemon, result)
    assert result["http_status"] == 200, why
    assert (result["mdn_status"], result["detailed_status"]) == ("processed", None), why
    assert result["mdn_signed"] is mdn_signed, why
    assert result["mic_ok"] is True, why
    assert result["original_message_id"] == result["message_id"], why
    assert result["disposition"] == PROCESSED, why
    headers = {k.lower(): v for k, v in result["mdn_headers"].items()}
    assert (headers["as2-from"], headers["as2-to"]) == ("POSTROOM", PEER_AS2_ID), why
    rows = stored(daemon, result["message_id"])
    assert len(rows) == 1, why
    *row, state = rows[0]
    assert row == ["peer", "globex", "as2", sent.path.name, "application/xml", hashlib.sha256(sent.data).hexdigest()]
    assert state in ("accepted", "delivered")  # globex takes its mailbox deliveries at once


def send(pyas2lib, daemon, config, tmp_path, **options) -> tuple[dict, Invoice]:
    """Send a fresh invoice with pyas2lib as ``application/xml``."""
    sent = fresh_invoice(tmp_path)
    options.setdefault("message_id", new_message_id())
    return pyas2lib.send(config, url(daemon), sent.path, content_type="application/xml", **options), sent


def set_policy(daemon, setting: str) -> None:
    """Change peer's policy through the CLI and wait until the daemon has loaded it."""
    before = metric(daemon, "postroom_directory_version")
    daemon.cli("partner", "policy", "peer", setting)
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)


# --------------------------------------------------------------------------------------------------
# pyas2lib → Postroom: what pyas2lib can build


def test_signed_encrypted_compressed_with_signed_sync_mdn(pyas2lib, daemon, config, tmp_path):
    """pyas2lib's full set — compressed, signed, encrypted, signed sync MDN — is processed and stored."""
    result, sent = send(pyas2lib, daemon, config, tmp_path, sign=True, encrypt=True, compress=True,
                        digest="sha256", cipher="aes_256_cbc", mdn="sync", mdn_signed=True, mdn_digest="sha256")
    assert (result["signed"], result["encrypted"], result["compressed"]) == (True, True, True)
    assert_accepted(daemon, result, sent)
    assert result["received_mic_alg"] == "sha256"  # echoed as pyas2lib spelt it
    assert "micalg=sha-256" in result["mdn_headers"]["Content-Type"]
    assert "Accepted invoice" in result["mdn_text"] and sent.number in result["mdn_text"]


@pytest.mark.parametrize("cipher", ["tripledes_192_cbc", "aes_128_cbc", "aes_192_cbc", "aes_256_cbc"])
def test_every_cipher_pyas2lib_can_build(pyas2lib, daemon, config, tmp_path, cipher):
    result, sent = send(pyas2lib, daemon, config, tmp_path, cipher=cipher, compress=True)
    assert result["cipher"] == cipher
    assert_accepted(daemon, result, sent)


@pytest.mark.parametrize("digest", ["sha224", "sha256", "sha384", "sha512"])
def test_every_sha2_digest_for_signature_and_mic(pyas2lib, daemon, config, tmp_path, digest):
    """Signed with ``digest``, MIC asked for in ``digest``: the MDN's signature verifies and the MIC matches."""
    result, sent = send(pyas2lib, daemon, config, tmp_path, digest=digest, mdn_digest=digest)
    assert result["digest_alg"] == digest
    assert_accepted(daemon, result, sent)
    assert result["received_mic_alg"] == digest
    assert f"micalg=sha-{digest.removeprefix('sha')};" in result["mdn_headers"]["Content-Type"]


@pytest.mark.parametrize("compress", [False, True], ids=["uncompressed", "compressed"])
def test_compression_on_and_off(pyas2lib, daemon, config, tmp_path, compress):
    result, sent = send(pyas2lib, daemon, config, tmp_path, compress=compress)
    assert result["compressed"] is compress
    assert_accepted(daemon, result, sent)


def test_unsigned_mdn(pyas2lib, daemon, config, tmp_path):
    """No ``Disposition-Notification-Options``: a bare multipart/report that pyas2lib reads, MIC still equal."""
    result, sent = send(pyas2lib, daemon, config, tmp_path, mdn="sync", mdn_signed=False)
    assert result["mdn_requested_signed"] is False
    assert result["mdn_headers"]["Content-Type"].startswith("multipart/report"), evidence(daemon, result)
    assert_accepted(daemon, result, sent, mdn_signed=False)


def test_no_mdn(pyas2lib, daemon, config, tmp_path):
    """No ``Disposition-Notification-To``: HTTP 200 with an empty body, and the invoice is stored."""
    result, sent = send(pyas2lib, daemon, config, tmp_path, mdn="none")
    assert "disposition-notification-to" not in {k.lower() for k in result["request_headers"]}
    assert (result["http_status"], result["response_body"]) == (200, ""), evidence(daemon, result)
    assert [row[:4] for row in stored(daemon, result["message_id"])] == [("peer", "globex", "as2", sent.path.name)]


def test_a_resend_gets_the_same_mdn_and_stores_one_message(pyas2lib, daemon, config, tmp_path):
    """pyas2lib builds the message again (new key, new bytes) under the same Message-ID: the identical MDN."""
    sent = fresh_invoice(tmp_path)
    message_id = new_message_id()
    first = pyas2lib.send(config, url(daemon), sent.path, content_type="application/xml", message_id=message_id)
    again = pyas2lib.send(config, url(daemon), sent.path, content_type="application/xml", message_id=message_id)
    assert_accepted(daemon, first, sent)
    assert (again["mdn_status"], again["mic_ok"]) == ("processed", True), evidence(daemon, again)
    assert mdn_body(again) == mdn_body(first)
    assert again["mdn_message_id"] == first["mdn_message_id"]
    assert len(stored(daemon, message_id)) == 1


# --------------------------------------------------------------------------------------------------
# pyas2lib → Postroom: refusals pyas2lib reads as errors


def test_a_tampered_message_gets_a_negative_mdn_and_is_quarantined(pyas2lib, daemon, config, tmp_path):
    """One payload byte flipped after signing (pyas2lib can only tamper in the clear, so the peer may send
    unencrypted for this test) → ``processed/error: integrity-check-failed``, quarantined, nothing stored."""
    set_policy(daemon, "as2_require_encryption=false")
    try:
        result, _ = send(pyas2lib, daemon, config, tmp_path, sign=True, encrypt=False, compress=False, tamper=True)
    finally:
        set_policy(daemon, "as2_require_encryption=true")
    why = evidence(daemon, result)
    assert result["http_status"] == 200, why
    assert result["mdn_status"].lower() == "processed/error", why  # Postroom writes "error", pyas2lib "Error"
    assert result["detailed_status"] == "integrity-check-failed", why
    assert result["mdn_signed"] is True, why
    assert result["original_message_id"] == result["message_id"], why
    assert quarantined(daemon, result["message_id"]) == [("AS2-INTEGRITY",)], why
    assert stored(daemon, result["message_id"]) == []


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_a_weak_signature_digest_is_insufficient_message_security(pyas2lib, daemon, config, tmp_path, digest):
    """pyas2lib still offers SHA-1 and MD5 signatures; Postroom refuses them with a negative MDN."""
    result, _ = send(pyas2lib, daemon, config, tmp_path, digest=digest)
    why = evidence(daemon, result)
    assert result["mdn_status"].lower() == "processed/error", why
    assert result["detailed_status"] == "insufficient-message-security", why
    assert f"digest algorithm {digest} is refused" in result["mdn_text"], why
    assert quarantined(daemon, result["message_id"]) == [("AS2-SECURITY",)], why
    assert stored(daemon, result["message_id"]) == []


@pytest.mark.parametrize("cipher", [
    pytest.param("rc2_128_cbc", marks=pytest.mark.xfail(
        strict=True, raises=PeerError, reason="pyas2lib cannot build RC2: its oscrypto says 'OpenSSL has been "
                                              "compiled without RC2 support' on OpenSSL 3")),
    pytest.param("rc4_128_cbc", marks=pytest.mark.xfail(
        strict=True, raises=PeerError, reason="pyas2lib cannot build RC4: its oscrypto says 'OpenSSL has been "
                                              "compiled without RC4 support' on OpenSSL 3")),
])
def test_a_legacy_cipher_is_insufficient_message_security(pyas2lib, daemon, config, tmp_path, cipher):
    result, _ = send(pyas2lib, daemon, config, tmp_path, cipher=cipher)
    assert result["detailed_status"] == "insufficient-message-security", evidence(daemon, result)
    assert quarantined(daemon, result["message_id"]) == [("AS2-SECURITY",)]


# --------------------------------------------------------------------------------------------------
# django-pyas2 → Postroom


def test_django_pyas2_cannot_connect_without_a_client_certificate(django_pyas2, daemon, peer, tmp_path):
    """django-pyas2 has no way to present a TLS client certificate, so the mutual-TLS listener refuses its
    handshake: django-pyas2 marks the send for retry, Postroom stores nothing.

    The client sees TLS 1.3's ``certificate_required`` alert or, when the server closes first, an EOF."""
    home = daemon.home
    django = django_pyas2(peer.config([gateway_as_partner(daemon, url=url(daemon))],
                                      client_tls={"ca": str(home.dev_ca / "ca.crt")}), serve=False)
    sent = fresh_invoice(tmp_path)
    before = query(daemon, "SELECT (SELECT count(*) FROM messages WHERE sender_id = 'peer'), "
                           "(SELECT count(*) FROM quarantine WHERE sender_id = 'peer')")
    result = django.send("POSTROOM", sent.path, ca=home.dev_ca / "ca.crt")
    (message,) = result["messages"]
    assert message["status"] == "R", result  # django-pyas2: "retry"
    assert "SSLError" in message["detailed_status"], result
    assert ("CERTIFICATE_REQUIRED" in message["detailed_status"]
            or "EOF occurred in violation of protocol" in message["detailed_status"]), result
    assert message["mdn"] is None, result
    assert query(daemon, "SELECT count(*) FROM messages WHERE number = :n", n=sent.number) == [(0,)]
    assert query(daemon, "SELECT (SELECT count(*) FROM messages WHERE sender_id = 'peer'), "
                         "(SELECT count(*) FROM quarantine WHERE sender_id = 'peer')") == before


class TLSClientProxy:
    """What a partner whose AS2 software cannot present a client certificate runs in front of it (stunnel's
    client mode): plain TCP in on loopback, TLS with the partner's client certificate out to the daemon."""

    def __init__(self, target_port: int, cert: Path, key: Path, ca: Path):
        self._context = ssl.create_default_context(cafile=str(ca))
        self._context.load_cert_chain(str(cert), str(key))
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._spawn(self._accept)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return
            outside = self._context.wrap_socket(socket.create_connection(("127.0.0.1", self._target)),
                                                server_hostname="localhost")
            self._spawn(self._pipe, inside, outside)
            self._spawn(self._pipe, outside, inside)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


def test_django_pyas2_behind_a_tls_client_proxy_is_processed(django_pyas2, daemon, peer, tmp_path):
    """With the client certificate added by a TLS proxy in front of it, django-pyas2's signed, encrypted,
    compressed message is accepted and its signed MDN says processed."""
    proxy = TLSClientProxy(daemon.ports["as2"], peer.tls_cert, peer.tls_key, daemon.home.dev_ca / "ca.crt")
    try:
        to_us = gateway_as_partner(daemon, url=f"http://127.0.0.1:{proxy.port}/as2", compress=True)
        django = django_pyas2(peer.config([to_us]), serve=False)
        sent = fresh_invoice(tmp_path)
        result = django.send("POSTROOM", sent.path)
    finally:
        proxy.close()
    (message,) = result["messages"]
    assert message["status"] == "S", result  # django-pyas2: "success" (processed MDN, verified)
    assert query(daemon, "SELECT sender_id, recipient_id, channel FROM messages WHERE number = :n",
                 n=sent.number) == [("peer", "globex", "as2")]


# --------------------------------------------------------------------------------------------------
# async MDN


def test_an_async_mdn_reaches_pyas2lib_over_mutual_tls(pyas2lib, daemon, config, peer, tmp_path):
    """``--mdn async``: HTTP 200 and no MDN at once; Postroom POSTs the signed MDN to pyas2lib's own HTTPS
    server (which demands our client certificate), and pyas2lib matches it to what it sent: signature and
    MIC good. Postroom trusts the server's certificate through the peer's CA, registered for ``tls``."""
    home = daemon.home
    before = metric(daemon, "postroom_directory_version")
    daemon.cli("partner", "cert", "add", "peer", "--usage", "tls", str(peer.ca_cert))
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)
    server = pyas2lib.serve(dict(config, output_dir=None), tls_cert=peer.tls_cert, tls_key=peer.tls_key,
                            client_ca=home.dev_ca / "ca.crt")
    result, sent = send(pyas2lib, daemon, server.config, tmp_path, mdn="async", async_url=server.url)
    why = evidence(daemon, result)
    assert result["request_headers"]["receipt-delivery-option"] == server.url, why
    assert (result["http_status"], result["mdn_status"], result["response_body"]) == (200, None, ""), why

    (mdn,) = server.wait_mdns(1, timeout=20)
    assert mdn["original_message_id"] == result["message_id"], mdn
    assert (mdn["mdn_status"], mdn["detailed_status"]) == ("processed", None), mdn
    assert mdn["mdn_signed"] is True and mdn["mic_ok"] is True, mdn
    assert mdn["disposition"] == PROCESSED, mdn
    assert server.tls_errors() == []
    assert [row[:4] for row in stored(daemon, result["message_id"])] == [("peer", "globex", "as2", sent.path.name)]
    receipt = "SELECT r.state FROM receipts r JOIN messages m ON r.message_id = m.id WHERE m.external_id = :id"
    wait_until(lambda: query(daemon, receipt, id=f"<{result['message_id']}>") == [("sent",)])
