"""End to end: async MDNs (``Receipt-Delivery-Option``) POSTed by the daemon to an HTTPS endpoint, with retries.

The sender is ``openssl cms`` + curl; the endpoint is a small TLS server in this test process whose
certificate comes from a CA registered for acme's ``tls`` usage (that is how a partner tells us whom
to trust for its URLs). The MDN that arrives is checked with ``openssl cms -verify``.
"""

import http.server
import ssl
import threading
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from certs.devca import DevCA, key_pem
from tests.e2e.as2 import build, disposition, openssl, received_mic
from tests.e2e.as2 import send as send_as2
from tests.e2e.daemon import Daemon, private_home
from tests.e2e.https import invoice, query
from tests.e2e.test_mtls_door import wait_until

pytestmark = pytest.mark.e2e


class Catcher:
    """An HTTPS endpoint that records POSTs; answers ``fail_first`` of them with 503."""

    def __init__(self, directory, ca: DevCA, fail_first: int = 0):
        key, cert = ca.build("localhost", "tls-server", hostnames=["localhost"])
        (directory / "catcher.key").write_bytes(key_pem(key))
        (directory / "catcher.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        catcher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if catcher.fail_first > 0:
                    catcher.fail_first -= 1
                    self.send_response(503)
                else:
                    catcher.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "catcher.crt", directory / "catcher.key")
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://localhost:{self.server.server_address[1]}/mdn"

    def __enter__(self) -> "Catcher":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def catcher_ca(tmp_path_factory) -> DevCA:
    return DevCA.create(tmp_path_factory.mktemp("catcher-ca"), "Catcher CA", key_bits=2048)


@pytest.fixture(scope="module")
def daemon(demo_home_template, tmp_path_factory, catcher_ca):
    """A daemon whose receipt retries come within seconds, with acme's URLs trusted through the catcher CA."""
    home = private_home(demo_home_template, tmp_path_factory.mktemp("as2-async"), backoff=1)
    ca_file = home.path.parent / "catcher-ca.crt"
    ca_file.write_bytes(catcher_ca.certificate.public_bytes(serialization.Encoding.PEM))
    d = Daemon(home).start()
    d.cli("partner", "cert", "add", "acme", "--usage", "tls", str(ca_file))
    yield d
    d.stop()


def _verify(daemon, headers: dict[str, str], body: bytes, tmp_path) -> str:
    mime = tmp_path / "async-mdn.eml"
    mime.write_bytes(f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body)
    return openssl("cms", "-verify", "-in", str(mime), "-inform", "SMIME", "-CAfile",
                   str(daemon.home.dev_ca / "ca.crt"), "-purpose", "any").decode()


def test_an_async_mdn_is_posted_with_as2_headers_after_the_commit(daemon, tmp_path, catcher_ca):
    """HTTP 200 with no body at once; the signed MDN arrives at the URL, and the receipt is recorded sent."""
    with Catcher(tmp_path, catcher_ca) as catcher:
        built = build(daemon.home, invoice(f"ASYNC-{uuid.uuid4().hex[:8]}"), tmp_path)
        message_id = f"<{uuid.uuid4().hex}@openssl>"
        response = send_as2(daemon, built, tmp_path, message_id=message_id, async_url=catcher.url)
        assert (response.status, response.body) == (200, b"")
        wait_until(lambda: catcher.received, timeout=20)
        headers, body = catcher.received[0]
        assert (headers["as2-from"], headers["as2-to"]) == ("POSTROOM", "ACME")
        report = _verify(daemon, headers, body, tmp_path)
        assert disposition(report).endswith("; processed")
        assert received_mic(report) == built.mic
        assert f"Original-Message-ID: {message_id}" in report
    [(state, attempts)] = query(daemon, "SELECT r.state, r.attempts FROM receipts r JOIN messages m "
                                        "ON r.message_id = m.id WHERE m.external_id = :id", id=message_id)
    assert (state, attempts) == ("sent", 1)


def test_a_refused_post_is_retried_and_a_resend_asks_again(daemon, tmp_path, catcher_ca):
    """503 twice, then 200: the same MDN bytes arrive; a resend of the message re-sends the stored MDN."""
    with Catcher(tmp_path, catcher_ca, fail_first=2) as catcher:
        payload = invoice(f"ASYNC-{uuid.uuid4().hex[:8]}")
        message_id = f"<{uuid.uuid4().hex}@openssl>"
        send_as2(daemon, build(daemon.home, payload, tmp_path), tmp_path, message_id=message_id,
                 async_url=catcher.url)
        wait_until(lambda: catcher.received, timeout=30)
        events = [e for (e,) in query(daemon, "SELECT event FROM audit_log WHERE event LIKE 'receipt.%' "
                                              "ORDER BY seq")]
        assert events[-3:] == ["receipt.retrying", "receipt.retrying", "receipt.sent"]
        send_as2(daemon, build(daemon.home, payload, tmp_path), tmp_path, message_id=message_id,
                 async_url=catcher.url)
        wait_until(lambda: len(catcher.received) == 2, timeout=20)
        assert catcher.received[0][1] == catcher.received[1][1]


def test_an_async_url_that_is_not_https_is_refused(daemon, tmp_path):
    built = build(daemon.home, invoice(f"ASYNC-{uuid.uuid4().hex[:8]}"), tmp_path)
    response = send_as2(daemon, built, tmp_path, async_url="http://127.0.0.1:1/mdn")
    assert response.status == 400
    assert b"https://" in response.body
