"""Postroom → independent peers: the delivery queue's ``as2`` push, received by pyas2lib and django-pyas2.

pyas2lib and django-pyas2 (both GPL) run only as separate processes in their own venvs (harness.py).
One daemon serves the module, on a private copy of the demo home, with fast directory reloads and a
delivery policy that retries within seconds (``backoff = 1``, ``max_attempts = 3``). Each peer is a
partner registered through the real CLI (``--deliver as2 --as2-url https://localhost:PORT/...``) with
its own CA (not the home's dev CA, not shared with another partner: a CA registered for ``tls`` also
names whoever holds a certificate it issued), registered for ``tls`` so the push trusts the peer's
HTTPS server (hostname ``localhost`` in its SAN) and the door takes its async MDNs; its signing
certificate verifies its MDNs, its encryption certificate is what we encrypt to. The peer requires our
TLS client certificate (the home's dev CA), verifies our signatures with the gateway's signing
certificate chain-checked by the home's dev CA, and signs its MDNs.

Every message is the BIS 3 base example uploaded by acme (its supplier ID is acme's) under a new
invoice number, the customer's EndpointID changed to the peer's participant ID: the router sends it
to the peer's mailbox and plans an ``as2`` push. pyas2lib's received payload must be byte-identical to
what acme uploaded (the CRLF note in test_peer_harness.py is about what pyas2lib *sends*; a binary
payload it receives is kept as it came, LF line ends included).

Retries and dead letters take a few seconds each: a failed push waits about ``backoff`` and is then
picked up by the delivery queue's next round (every 5 s).
"""

import hashlib
import itertools
import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from certs.devca import DevCA
from certs.x509 import load_certificate, read_file
from tests.e2e.daemon import POSTROOM, Daemon, private_home
from tests.e2e.deliveries import DELIVERY_TIMEOUT, push_delivery, wait_push
from tests.e2e.https import invoice, post_document, query
from tests.e2e.test_mtls_door import metric, wait_until
from tests.peers.harness import Identity, Pyas2lib, Pyas2libServer, make_identity

pytestmark = [pytest.mark.peers, pytest.mark.e2e]

DEMO_CUSTOMER = b'<cbc:EndpointID schemeID="0002">FR23342</cbc:EndpointID>'
DEFAULTS = {"sign": "true", "encrypt": "true", "compress": "false", "digest": "sha256", "pss": "false",
            "cipher": "aes256-cbc", "key_transport": "rsa-v1.5", "mdn": "sync", "signed_mdn": "true"}
PROCESSED = "MDN automatic-action/MDN-sent-automatically; processed"
MATRIX_TIMEOUT = 10.0  #: one push and its sync MDN take well under a second
BURST = 6  #: async pushes in a row

_numbers = itertools.count(1)


# --------------------------------------------------------------------------------------------------
# the daemon and the peers


@pytest.fixture(scope="module")
def daemon(demo_home_template, tmp_path_factory):
    """One daemon for the module: directory reloads every 0.25 s, pushes retried after about a second, 3 tries."""
    home = private_home(demo_home_template, tmp_path_factory.mktemp("as2-outbound"), backoff=1)
    text = home.config_file.read_text()
    home.config_file.write_text(re.sub(r"(?m)^max_attempts = \d+$", "max_attempts = 3", text))
    d = Daemon(home).start()
    try:
        yield d
    finally:
        d.stop()


@dataclass
class Peer:
    """One receiving peer: its partner registration at Postroom and what it runs."""

    partner_id: str
    participant: str  #: ``scheme:value`` routed to it
    identity: Identity
    ca_cert: Path  #: its own CA, registered with us for ``tls``
    url: str
    server: Pyas2libServer | None = None


def gateway_as_partner(daemon, **settings) -> dict:
    """Postroom in a peer's config: our signing/encryption certificates, chain-checked by the home's dev CA."""
    home = daemon.home
    return {"as2_id": "POSTROOM", "sign_cert": str(home.path / "pki" / "sign.crt"),
            "encrypt_cert": str(home.path / "pki" / "encrypt.crt"), "ca": str(home.dev_ca / "ca.crt"), **settings}


def peer_config(daemon, identity: Identity, **extra) -> dict:
    """A peer's config: its keys, Postroom as its partner, TLS client trusting the daemon (async MDNs)."""
    return identity.config([gateway_as_partner(daemon)],
                           client_tls={"cert": str(identity.tls_cert), "key": str(identity.tls_key),
                                       "ca": str(daemon.home.dev_ca / "ca.crt")}, **extra)


def new_identity(directory: Path, as2_id: str) -> tuple[Identity, Path]:
    """Keys for a peer from a CA of its own (the CA certificate's path second)."""
    ca = DevCA.create(directory / "ca", f"{as2_id} CA", key_bits=2048)
    identity = make_identity(ca, directory / "keys", as2_id)
    return identity, identity.ca_cert


def register(daemon, peer: Peer, *, encrypt_cert: Path | None = None, tls_cert: Path | None = None) -> None:
    """``postroom partner add ... --deliver as2 --as2-url`` and wait until the daemon has loaded it."""
    before = metric(daemon, "postroom_directory_version")
    daemon.cli("partner", "add", peer.partner_id, "--name", f"{peer.identity.as2_id} test peer",
               "--as2-id", peer.identity.as2_id, "--participant-id", peer.participant,
               "--allow-ip", "127.0.0.0/8", "--tls-cert", str(tls_cert or peer.ca_cert),
               "--sign-cert", str(peer.identity.sign_cert),
               "--encrypt-cert", str(encrypt_cert or peer.identity.encrypt_cert),
               "--deliver", "as2", "--as2-url", peer.url)
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)


@pytest.fixture(scope="module")
def pyas2lib_module(pyas2lib_python, tmp_path_factory):
    """pyas2lib servers that live as long as the module's daemon."""
    peer = Pyas2lib(pyas2lib_python, tmp_path_factory.mktemp("pyas2lib-out"))
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture(scope="module")
def add_pyas2lib_peer(daemon, pyas2lib_module, tmp_path_factory):
    """``add(partner_id, as2_id)`` → a pyas2lib HTTPS server (client certificate required) registered as a partner."""
    counter = itertools.count(1)

    def add(partner_id: str, as2_id: str, *, encrypt_cert: Path | None = None, tls_cert: Path | None = None,
            **config) -> Peer:
        identity, ca_cert = new_identity(tmp_path_factory.mktemp(partner_id), as2_id)
        server = pyas2lib_module.serve(peer_config(daemon, identity, **config), tls_cert=identity.tls_cert,
                                       tls_key=identity.tls_key, client_ca=daemon.home.dev_ca / "ca.crt",
                                       name=f"pyas2lib-{partner_id}")
        peer = Peer(partner_id, f"0088:5790{next(counter):09d}", identity, ca_cert,
                    f"https://localhost:{server.port}/as2", server)
        register(daemon, peer, encrypt_cert=encrypt_cert, tls_cert=tls_cert)
        return peer

    return add


@pytest.fixture(scope="module")
def peer(add_pyas2lib_peer) -> Peer:
    """The main pyas2lib peer: partner ``peer``, AS2 ID PYAS2LIB-OUT."""
    return add_pyas2lib_peer("peer", "PYAS2LIB-OUT")


# --------------------------------------------------------------------------------------------------
# helpers


def set_as2(daemon, partner_id: str, **changes: str) -> None:
    """Set every ``partner as2`` option (defaults but ``changes``) and wait until the daemon has them."""
    wanted = {**DEFAULTS, **changes}
    [(stored,)] = query(daemon, "SELECT as2_options FROM partners WHERE id = :id", id=partner_id)
    stored = json.loads(stored) if isinstance(stored, str) else stored or {}
    if {**DEFAULTS, **{k: str(v).lower() for k, v in stored.items()}} == wanted:
        return
    before = metric(daemon, "postroom_directory_version")
    shown = json.loads(daemon.cli("partner", "as2", partner_id, *(f"{k}={v}" for k, v in wanted.items()),
                                  "--json").stdout)
    assert {k: str(v).lower() for k, v in shown.items()} == wanted
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)


def invoice_for(peer: Peer) -> bytes:
    """A new BIS 3 invoice from acme whose customer is ``peer``."""
    scheme, _, value = peer.participant.partition(":")
    number = f"OUT-{uuid.uuid4().hex[:8]}-{next(_numbers)}"
    data = invoice(number).replace(DEMO_CUSTOMER, f'<cbc:EndpointID schemeID="{scheme}">{value}</cbc:EndpointID>'
                                   .encode(), 1)
    assert value.encode() in data
    return data


def upload(daemon, data: bytes, tmp_path: Path, filename: str = "invoice.xml") -> str:
    """acme uploads ``data`` over the HTTPS door; the message's ID."""
    response = post_document(daemon, data, tmp_path, partner="acme", filename=filename)
    assert response.status == 201, (response, daemon.log)
    return response.json()["message"]


def as2_delivery(daemon, message_id: str) -> tuple | None:
    """(state, remote_id, attempts, last_error) of the message's ``as2`` delivery."""
    return push_delivery(daemon, message_id, "as2")


def audit(daemon, message_id: str, prefix: str = "delivery.") -> list[tuple[str, dict]]:
    """The message's audit events starting with ``prefix``, in order, with their details."""
    rows = query(daemon, "SELECT event, details FROM audit_log WHERE message_id = :id ORDER BY seq", id=message_id)
    return [(event, json.loads(details) if isinstance(details, str) else details)
            for event, details in rows if event.startswith(prefix)]


def wait_delivery(daemon, message_id: str, settled, timeout: float = DELIVERY_TIMEOUT) -> tuple:
    """Poll until ``settled(row)`` holds for the ``as2`` delivery's (state, remote_id, attempts, last_error)."""
    return wait_push(daemon, message_id, "as2", settled, timeout, explain=lambda: f"audit: {audit(daemon, message_id)}")


def tried(row: tuple) -> bool:
    """Settled, or failed at least once."""
    state, _, attempts, _ = row
    return state in ("done", "dead") or (state == "pending" and attempts >= 1)


def finished(row: tuple) -> bool:
    return row[0] in ("done", "dead")


def bare(message_id: str | None) -> str | None:
    return message_id.strip().strip("<>") if message_id else message_id


def received_for(server: Pyas2libServer, remote_id: str) -> list[dict]:
    """What pyas2lib received under one Message-ID (retries reuse it)."""
    return [r for r in server.received() if bare(r["message_id"]) == bare(remote_id)]


def assert_done(daemon, message_id: str, detail: str = PROCESSED, *, timeout: float = DELIVERY_TIMEOUT) -> str:
    """Delivery ``done`` after one attempt, ``delivery.done`` audited with the MDN; the remote Message-ID."""
    state, _, attempts, last_error = wait_delivery(daemon, message_id, tried, timeout=timeout)
    assert (state, attempts, last_error) == ("done", 1, None), (state, attempts, last_error, daemon.log)
    (details,) = [d for e, d in audit(daemon, message_id) if e == "delivery.done" and d["target"] == "as2"]
    assert details["detail"].startswith(detail), details
    remote_id = details["remote_id"]
    assert remote_id.startswith("<") and remote_id.endswith("@localhost>"), remote_id
    return remote_id


def gateway_tls_cn(daemon) -> str:
    cert = load_certificate(read_file(daemon.home.path / "pki" / "tls.crt"))
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


# --------------------------------------------------------------------------------------------------
# 1. defaults


def test_default_options_signed_encrypted_with_signed_sync_mdn(daemon, peer, tmp_path):
    """SHA-256 signature, AES-256-CBC with RSA v1.5, signed sync MDN: pyas2lib gets acme's exact bytes."""
    set_as2(daemon, peer.partner_id)
    data = invoice_for(peer)
    message_id = upload(daemon, data, tmp_path, filename="invoice-default.xml")
    remote_id = assert_done(daemon, message_id)

    (record,) = received_for(peer.server, remote_id)
    assert record["status"] == "processed", record
    assert (record["as2_from"], record["as2_to"]) == ("POSTROOM", "PYAS2LIB-OUT")
    assert (record["signed"], record["encrypted"], record["compressed"]) == (True, True, False)
    assert record["digest_alg"] == "sha256"
    assert record["mdn_mode"] == "SYNC" and record["mdn_signed"] is True
    assert record["filename"] == "invoice-default.xml"
    assert record["payload_content_type"] == "application/xml"
    assert f"commonName={gateway_tls_cn(daemon)}" in record["tls_client_subject"]
    assert peer.server.payload(record) == data
    assert record["payload_sha256"] == hashlib.sha256(data).hexdigest()
    [(state,)] = query(daemon, "SELECT state FROM messages WHERE id = :id", id=message_id)
    assert state == "delivered"  # the mailbox delivery and the push are both done


def test_the_delivery_records_the_message_id_it_was_pushed_under(daemon, peer, tmp_path):
    """``deliveries.remote_id`` is the Message-ID the peer got (the audit trail has it too)."""
    set_as2(daemon, peer.partner_id)
    message_id = upload(daemon, invoice_for(peer), tmp_path)
    remote_id = assert_done(daemon, message_id)
    assert received_for(peer.server, remote_id)
    assert as2_delivery(daemon, message_id)[:3] == ("done", remote_id, 1)


# --------------------------------------------------------------------------------------------------
# 2. the option matrix pyas2lib reads


def _unreadable(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


PYAS2LIB_NO_GCM = "pyas2lib 1.4.4 cannot decrypt AuthEnvelopedData (AES-GCM): decryption-failed"
PYAS2LIB_NO_OAEP256 = "pyas2lib 1.4.4 decrypts RSAES-OAEP with SHA-1 only: decryption-failed"
PYAS2LIB_NO_MIC = ("pyas2lib computes Received-content-MIC only for signed messages, and so signs a receipt "
                   "without it; RFC 4130 7.4.3 requires it in signed receipts, and Postroom refuses the MDN")

MATRIX = [
    pytest.param({"cipher": "3des"}, id="3des"),
    pytest.param({"cipher": "aes128-cbc"}, id="aes128-cbc"),
    pytest.param({"cipher": "aes192-cbc"}, id="aes192-cbc"),
    pytest.param({"cipher": "aes256-cbc"}, id="aes256-cbc"),
    pytest.param({"compress": "true"}, id="compress"),
    pytest.param({"compress": "true", "cipher": "3des", "digest": "sha512"}, id="compress-3des-sha512"),
    pytest.param({"digest": "sha1"}, id="sha1"),
    pytest.param({"digest": "sha224"}, id="sha224"),
    pytest.param({"digest": "sha384"}, id="sha384"),
    pytest.param({"digest": "sha512"}, id="sha512"),
    pytest.param({"encrypt": "false"}, id="unencrypted"),
    pytest.param({"encrypt": "false", "compress": "true"}, id="unencrypted-compressed"),
    pytest.param({"signed_mdn": "false"}, id="unsigned-mdn"),
    pytest.param({"mdn": "none"}, id="no-mdn"),
    pytest.param({"pss": "true"}, id="pss"),
    pytest.param({"key_transport": "rsa-oaep-sha1"}, id="oaep-sha1"),
    # unsigned messages: pyas2lib returns no Received-content-MIC, which RFC 4130 7.4.3 makes optional in an
    # unsigned receipt and required in a signed one
    pytest.param({"sign": "false", "signed_mdn": "false"}, id="unsigned"),
    pytest.param({"sign": "false", "signed_mdn": "false", "compress": "true"}, id="unsigned-compressed"),
    pytest.param({"sign": "false", "encrypt": "false", "signed_mdn": "false"}, id="plain"),
    pytest.param({"sign": "false", "encrypt": "false", "mdn": "none"}, id="plain-no-mdn"),
    pytest.param({"sign": "false"}, id="unsigned-signed-mdn", marks=_unreadable(PYAS2LIB_NO_MIC)),
    # what pyas2lib cannot read
    pytest.param({"key_transport": "rsa-oaep-sha256"}, id="oaep-sha256", marks=_unreadable(PYAS2LIB_NO_OAEP256)),
    pytest.param({"cipher": "aes128-gcm"}, id="aes128-gcm", marks=_unreadable(PYAS2LIB_NO_GCM)),
    pytest.param({"cipher": "aes256-gcm"}, id="aes256-gcm", marks=_unreadable(PYAS2LIB_NO_GCM)),
]


@pytest.mark.parametrize("options", MATRIX)
def test_option_matrix(daemon, peer, tmp_path, options):
    """Each ``postroom partner as2`` setting: pyas2lib reads the message and Postroom accepts its MDN."""
    set_as2(daemon, peer.partner_id, **options)
    wanted = {**DEFAULTS, **options}
    data = invoice_for(peer)
    message_id = upload(daemon, data, tmp_path)
    no_mdn = wanted["mdn"] == "none"
    remote_id = assert_done(daemon, message_id, "HTTP 200, no MDN requested" if no_mdn else PROCESSED,
                            timeout=MATRIX_TIMEOUT)

    (record,) = received_for(peer.server, remote_id)
    assert record["status"] == "processed", record
    flags = (record["signed"], record["encrypted"], record["compressed"])
    assert flags == tuple(wanted[k] == "true" for k in ("sign", "encrypt", "compress")), record
    if wanted["cipher"] == "3des":
        assert record["enc_alg"] == "tripledes_192_cbc"
    if no_mdn:
        assert record["mdn_mode"] is None and "mdn_file" not in record
    else:
        assert record["mdn_mode"] == "SYNC"
        assert record["mdn_signed"] is (wanted["signed_mdn"] == "true")
    assert peer.server.payload(record) == data


# --------------------------------------------------------------------------------------------------
# 3. async MDN


@pytest.mark.parametrize("signed_mdn", ["true", "false"])
def test_async_mdn_settles_the_awaiting_delivery(daemon, peer, tmp_path, signed_mdn):
    """``mdn=async``: 200 → ``awaiting``; pyas2lib POSTs the MDN to our /as2 (mutual TLS) → ``done``."""
    set_as2(daemon, peer.partner_id, mdn="async", signed_mdn=signed_mdn)
    data = invoice_for(peer)
    message_id = upload(daemon, data, tmp_path)
    state, remote_id, attempts, last_error = wait_delivery(daemon, message_id, finished, timeout=15)
    assert (state, attempts, last_error) == ("done", 1, None), daemon.log
    assert remote_id.endswith("@localhost>")

    events = [(e, d) for e, d in audit(daemon, message_id) if d["target"] == "as2"]
    # pyas2lib often POSTs the MDN before our push has recorded ``awaiting``: then the MDN settles the
    # still-claimed delivery and the push's own record finds nothing left to do
    assert [e for e, _ in events] in (["delivery.awaiting-receipt", "delivery.done"], ["delivery.done"]), events
    *before, (_, done) = events
    assert done["remote_id"] == remote_id
    assert all(d["remote_id"] == remote_id and d["detail"] == "HTTP 200, async MDN requested" for _, d in before)
    assert done["receipt"] == "automatic-action/MDN-sent-automatically; processed" and done["error"] is None

    (record,) = received_for(peer.server, remote_id)
    assert record["status"] == "processed" and record["mdn_mode"] == "ASYNC"
    assert record["mdn_signed"] is (signed_mdn == "true")
    assert record["mdn_url"] == f"https://localhost:{daemon.ports['as2']}/as2"  # [gateway] as2_url's default
    assert peer.server.payload(record) == data
    outcomes = lambda: [o for o in peer.server.async_mdns() if bare(o["message_id"]) == bare(remote_id)]  # noqa: E731
    wait_until(outcomes)  # pyas2lib writes it once our answer to its POST is in
    assert [(o["http_status"], o["error"]) for o in outcomes()] == [(200, None)]
    assert "async MDN from peer: delivery" in daemon.log.read_text()


def test_async_mdns_that_come_at_once_settle_every_delivery(daemon, peer, tmp_path):
    """pyas2lib POSTs the MDN the moment it has answered 200: sometimes before we have recorded the delivery
    ``awaiting``. Each MDN must still settle its delivery (unsigned MDNs here: the door recognises them
    whatever their layout)."""
    set_as2(daemon, peer.partner_id, mdn="async", signed_mdn="false")
    message_ids = [upload(daemon, invoice_for(peer), tmp_path) for _ in range(BURST)]
    rows = [wait_delivery(daemon, message_id, finished, timeout=15) for message_id in message_ids]
    assert [row[0] for row in rows] == ["done"] * BURST, rows
    assert "no delivery to peer awaits a receipt" not in daemon.log.read_text()


# --------------------------------------------------------------------------------------------------
# 4. failures and retries


def stranger_encrypt_cert(directory: Path) -> Path:
    """A fresh encryption certificate whose key no peer has."""
    ca = DevCA.create(directory / "stranger-ca", "Stranger CA", key_bits=2048)
    return ca.issue("stranger-encrypt", "encrypt", directory).cert_path


def test_negative_mdn_is_retried_then_dead_lettered(daemon, add_pyas2lib_peer, tmp_path):
    """Encrypted to the wrong certificate: ``decryption-failed`` MDN each try, ``pending`` between, ``dead`` after 3."""
    bad = add_pyas2lib_peer("peerbadenc", "PYAS2LIB-BADENC", encrypt_cert=stranger_encrypt_cert(tmp_path))
    message_id = upload(daemon, invoice_for(bad), tmp_path)

    state, _, attempts, last_error = wait_delivery(daemon, message_id, tried)
    assert state == "pending" and attempts >= 1, (state, attempts, last_error)
    assert "peerbadenc refused the message" in last_error and "decryption-failed" in last_error, last_error
    retrying = [d for e, d in audit(daemon, message_id) if e == "delivery.retrying"]
    assert retrying and "decryption-failed" in retrying[0]["error"] and retrying[0]["retry_at"]

    state, _, attempts, last_error = wait_delivery(daemon, message_id, finished)
    assert (state, attempts) == ("dead", 3) and "decryption-failed" in last_error
    assert [e for e, d in audit(daemon, message_id) if d["target"] == "as2"] == [
        "delivery.retrying", "delivery.retrying", "delivery.dead"]
    assert query(daemon, "SELECT state FROM messages WHERE id = :id", id=message_id) == [("failed",)]
    records = bad.server.received()
    assert len(records) == 3
    assert {(r["status"], r["detailed_status"], r["payload_file"]) for r in records} == {
        ("processed/Error", "decryption-failed", None)}


def test_a_retry_reuses_the_message_id_so_the_peer_sees_a_duplicate(daemon, add_pyas2lib_peer, tmp_path):
    """The peer processes the message but its MDN is unsigned (we asked for signed): the push fails and is
    retried under the first Message-ID, so the peer answers ``duplicate-document`` instead of taking the
    invoice again (push.py: "Retries always reuse the first Message-ID")."""
    careless = add_pyas2lib_peer("peernosig", "PYAS2LIB-NOSIG", sign_mdns=False)
    message_id = upload(daemon, invoice_for(careless), tmp_path)
    state, _, attempts, last_error = wait_delivery(daemon, message_id, finished)
    assert (state, attempts) == ("dead", 3)
    assert "the MDN is not signed, but a signed MDN was requested" in last_error
    records = careless.server.received()
    assert len(records) == 3
    assert len({r["message_id"] for r in records}) == 1, [r["message_id"] for r in records]
    assert [r["payload_file"] is not None for r in records] == [True, False, False]
    assert [r["status"] for r in records][1:] == ["processed/Warning"] * 2


def test_peer_down_is_retried_with_a_clear_error_then_dead_lettered(daemon, add_pyas2lib_peer, tmp_path):
    """Nobody listens at the partner's URL: the connection error is the ``last_error``, then ``dead``."""
    down = add_pyas2lib_peer("peerdown", "PYAS2LIB-DOWN")
    down.server.stop()
    message_id = upload(daemon, invoice_for(down), tmp_path)

    state, _, attempts, last_error = wait_delivery(daemon, message_id, tried)
    assert state == "pending" and attempts >= 1, (state, attempts, last_error)
    assert last_error.startswith(f"POST to {down.url} failed:") and "refused" in last_error.lower(), last_error
    state, _, attempts, last_error = wait_delivery(daemon, message_id, finished)
    assert (state, attempts) == ("dead", 3) and "refused" in last_error.lower()
    assert [e for e, d in audit(daemon, message_id) if d["target"] == "as2"] == [
        "delivery.retrying", "delivery.retrying", "delivery.dead"]


def test_an_untrusted_server_certificate_is_a_failed_attempt(daemon, add_pyas2lib_peer, tmp_path):
    """The peer's HTTPS certificate is not from the CA registered for its ``tls``: nothing is sent, retried."""
    other_ca = DevCA.create(tmp_path / "other-ca", "Unrelated CA", key_bits=2048)
    other_ca_cert = tmp_path / "other-ca.crt"
    other_ca_cert.write_bytes(other_ca.certificate.public_bytes(serialization.Encoding.PEM))
    stranger = add_pyas2lib_peer("peeruntrusted", "PYAS2LIB-UNTRUSTED", tls_cert=other_ca_cert)
    message_id = upload(daemon, invoice_for(stranger), tmp_path)
    state, _, attempts, last_error = wait_delivery(daemon, message_id, tried)
    assert state == "pending" and attempts == 1, (state, attempts, last_error)
    assert last_error.startswith(f"POST to {stranger.url} failed:") and "certificate verify failed" in last_error, \
        last_error
    assert stranger.server.received() == []


# --------------------------------------------------------------------------------------------------
# 5. postroom send


def postroom_send(daemon, partner_id: str, path: Path) -> tuple[int, dict]:
    result = subprocess.run([POSTROOM, "--home", str(daemon.home.path), "send", "--to", partner_id, str(path),
                             "--json"], capture_output=True, text=True, timeout=120)
    return result.returncode, json.loads(result.stdout or "{}")


@pytest.mark.parametrize("mdn", ["sync", "async"])
def test_postroom_send_cli(daemon, peer, tmp_path, mdn):
    """``postroom send --to peer FILE --json``: outcome ``sent`` with the MDN (an async setting is sent sync)."""
    set_as2(daemon, peer.partner_id, mdn=mdn)
    data = invoice_for(peer)
    path = tmp_path / f"cli-{mdn}.xml"
    path.write_bytes(data)
    code, outcome = postroom_send(daemon, peer.partner_id, path)
    assert code == 0, outcome
    assert outcome["outcome"] == "sent" and outcome["mdn"] == PROCESSED, outcome
    assert outcome["mic"] and outcome["message_id"].endswith("@localhost>")

    (record,) = received_for(peer.server, outcome["message_id"])
    assert record["status"] == "processed" and record["mdn_mode"] == "SYNC"
    assert record["filename"] == path.name and record["payload_content_type"] == "application/xml"
    assert peer.server.payload(record) == data
    assert record["mic"] == outcome["mic"]
    [(filed_under, details)] = query(daemon, "SELECT message_id, details FROM audit_log WHERE event = 'as2.sent' "
                                             "ORDER BY seq DESC LIMIT 1")
    details = json.loads(details) if isinstance(details, str) else details
    assert details["partner"] == peer.partner_id and details["outcome"] == "sent"
    assert outcome["message_id"] in details.values(), details  # the AS2 Message-ID, to find it at the peer
    assert filed_under is None  # audit_log.message_id names spooled messages; nothing was spooled


def test_postroom_send_cli_reports_a_refusal(daemon, add_pyas2lib_peer, tmp_path):
    """A negative MDN: exit 1, outcome ``failed`` with the peer's reason."""
    bad = add_pyas2lib_peer("peercli", "PYAS2LIB-CLI", encrypt_cert=stranger_encrypt_cert(tmp_path))
    path = tmp_path / "cli-refused.xml"
    path.write_bytes(invoice_for(bad))
    code, outcome = postroom_send(daemon, bad.partner_id, path)
    assert code == 1
    assert outcome["outcome"] == "failed" and "decryption-failed" in outcome["error"], outcome


# --------------------------------------------------------------------------------------------------
# 6. django-pyas2 receives


def test_django_pyas2_receives_with_default_options(daemon, django_pyas2, tmp_path):
    """gunicorn over HTTPS (our client certificate required): django-pyas2 stores it and answers ``processed``."""
    identity, ca_cert = new_identity(tmp_path / "django", "DJANGO-OUT")
    django = django_pyas2(identity.config([gateway_as_partner(daemon)]), tls_cert=identity.tls_cert,
                          tls_key=identity.tls_key, client_ca=daemon.home.dev_ca / "ca.crt")
    peer = Peer("peerdj", "0088:5791000000001", identity, ca_cert,
                f"https://localhost:{django.server.port}/pyas2/as2receive")
    register(daemon, peer)
    data = invoice_for(peer)
    message_id = upload(daemon, data, tmp_path, filename="invoice-django.xml")
    remote_id = assert_done(daemon, message_id)

    (message,) = django.messages("IN")
    assert message["message_id"] == bare(remote_id)
    assert message["status"] == "S", (message["detailed_status"], django.log_text())
    assert (message["signed"], message["encrypted"], message["compressed"]) == (True, True, False)
    assert message["payload_sha256"] == hashlib.sha256(data).hexdigest()
    assert message["mdn"]["disposition"].endswith("processed") and message["mdn"]["signed"] is True
