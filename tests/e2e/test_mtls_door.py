"""End to end: the real daemon's mutual-TLS door behind IP allowlists, driven with curl and openssl.

Each test starts ``postroom serve`` on ephemeral loopback ports from a demo home (partners acme and
globex, both allowlisted for 127.0.0.0/8) and changes the directory through the real CLI.
"""

import socket
import subprocess
import time

import pytest

from certs.x509 import fingerprint, load_certificate, read_file


def curl(daemon, path, *, partner="acme", interface=None, door="as2", method="POST", host="127.0.0.1"):
    """Run curl against a door; returns (exit code, HTTP status, body, stderr).

    The AS2 probe is correctly addressed but has no Message-ID: an authenticated partner gets 400.
    """
    home = daemon.home
    args = ["curl", "-sS", "--max-time", "10", "--cacert", str(home.dev_ca / "ca.crt"),
            "-o", "-", "-w", "\n%{http_code}", "-X", method,
            "--connect-to", f"localhost:443:{host}:{daemon.ports[door]}"]
    if partner:
        folder = home.demo / partner
        args += ["--cert", str(folder / f"{partner}-tls.crt"), "--key", str(folder / f"{partner}-tls.key"),
                 "-H", f"AS2-From: {partner.upper()}", "-H", "AS2-To: POSTROOM"]
    if interface:
        args += ["--interface", interface]
    if method == "POST":
        args += ["--data-binary", "<Invoice/>", "-H", "Content-Type: application/xml"]
    result = subprocess.run([*args, f"https://localhost{path}"], capture_output=True, text=True)
    body, _, code = result.stdout.rpartition("\n")
    return result.returncode, int(code or 0), body, result.stderr


def metric(daemon, name: str) -> float:
    """Read one sample from the daemon's Prometheus endpoint."""
    out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{daemon.ports['metrics']}/metrics"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(predicate, timeout: float = 10.0) -> float:
    """Poll ``predicate`` until true; return the seconds it took (fail after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not reached within {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - start


def restrict(daemon, partner: str, network: str) -> None:
    """Let ``partner`` connect only from ``network``."""
    daemon.cli("partner", "allow-ip", partner, network)
    daemon.cli("partner", "deny-ip", partner, "127.0.0.0/8")


def test_registered_partner_from_allowed_address_reaches_as2(daemon):
    """acme's registered certificate from an allowed address is authenticated (400: the probe has no Message-ID)."""
    rc, code, body, err = curl(daemon, "/as2")
    assert (rc, code) == (0, 400), err
    assert "Every AS2 message needs a Message-ID header" in body


def test_as2_only_takes_post(daemon):
    """Other methods are refused once the partner is authenticated."""
    rc, code, _, _ = curl(daemon, "/as2", method="GET")
    assert code == 405


def test_no_client_certificate_fails_the_handshake(daemon):
    """Without a client certificate the TLS handshake fails: no HTTP status at all."""
    rc, code, _, err = curl(daemon, "/as2", partner=None)
    assert rc != 0 and code == 0
    assert "certificate required" in err or "alert" in err


def test_unregistered_certificate_fails_the_handshake(daemon, other_ca, tmp_path):
    """A certificate from a CA no partner registered — even a valid one — fails the handshake."""
    stranger = tmp_path / "stranger"
    other_ca.issue("stranger-tls", "tls-client", stranger)
    # curl looks for HOME/demo/<partner>/<partner>-tls.*: put the stranger's files there.
    (daemon.home.demo / "stranger").mkdir()
    for suffix in ("crt", "key"):
        (daemon.home.demo / "stranger" / f"stranger-tls.{suffix}").write_bytes(
            (stranger / f"stranger-tls.{suffix}").read_bytes())
    rc, code, _, err = curl(daemon, "/as2", partner="stranger")
    assert rc != 0 and code == 0, err


def test_openssl_s_client_sees_tls12_minimum_and_client_cert_request(daemon):
    """TLS 1.1 is refused; TLS 1.2 with acme's certificate completes and verifies our server certificate."""
    home, port = daemon.home, daemon.ports["as2"]
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", str(home.dev_ca / "ca.crt")]
    acme = ["-cert", str(home.demo / "acme/acme-tls.crt"), "-key", str(home.demo / "acme/acme-tls.key")]
    old = subprocess.run([*base, *acme, "-tls1_1"], input="", capture_output=True, text=True, timeout=20)
    assert old.returncode != 0
    assert "Cipher is (NONE)" in old.stdout  # no session was negotiated
    good = subprocess.run([*base, *acme, "-tls1_2", "-verify_return_error"], input="Q\n",
                          capture_output=True, text=True, timeout=20)
    assert "Verify return code: 0 (ok)" in good.stdout, good.stdout + good.stderr
    assert "TLSv1.2" in good.stdout


def test_address_no_partner_allows_is_closed_before_server_hello(daemon):
    """From an address no active partner allows, the connection is closed before any TLS byte."""
    restrict(daemon, "acme", "127.0.0.1/32")
    restrict(daemon, "globex", "127.0.0.1/32")
    refused_before = metric(daemon, 'postroom_connections_refused_total{door="as2"}')

    def closed_silently() -> bool:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", daemon.ports["as2"]))
            s.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a ClientHello
            try:
                return s.recv(1024) == b""  # EOF, not a ServerHello
            except ConnectionResetError:
                return True

    wait_until(closed_silently)
    rc, code, _, err = curl(daemon, "/as2", interface="127.0.0.2")
    assert rc != 0 and code == 0, err
    assert metric(daemon, 'postroom_connections_refused_total{door="as2"}') > refused_before
    # 127.0.0.1 is still allowed: the allowlist refused the address, not the partner.
    assert curl(daemon, "/as2")[1] == 400


def test_certificate_of_one_partner_from_another_partners_network_is_forbidden(daemon):
    """acme's certificate from an address only globex allows is refused with a reason naming acme."""
    restrict(daemon, "acme", "127.0.0.1/32")
    wait_until(lambda: curl(daemon, "/as2", interface="127.0.0.3")[1] == 403)
    rc, code, body, _ = curl(daemon, "/as2", interface="127.0.0.3")
    assert "127.0.0.3 is not in the allowlist of partner acme" in body
    assert curl(daemon, "/as2", partner="globex", interface="127.0.0.3")[1] == 400


def test_disabled_partner_is_refused_within_seconds(daemon):
    """`postroom partner disable` reaches the running daemon without a restart, within seconds."""
    assert curl(daemon, "/as2")[1] == 400
    daemon.cli("partner", "disable", "acme")
    took = wait_until(lambda: curl(daemon, "/as2")[1] == 0, timeout=10)
    assert took < 10
    assert curl(daemon, "/as2", partner="globex")[1] == 400
    daemon.cli("partner", "enable", "acme")
    wait_until(lambda: curl(daemon, "/as2")[1] == 400)


def test_removed_certificate_is_refused(daemon):
    """Unregistering acme's TLS certificate closes the door to it."""
    cert = load_certificate(read_file(daemon.home.demo / "acme" / "acme-tls.crt"))
    daemon.cli("partner", "cert", "remove", "acme", fingerprint(cert))
    wait_until(lambda: curl(daemon, "/as2")[1] == 0)


def test_portal_is_server_only_tls_behind_the_allowlist(daemon):
    """The portal needs no client certificate, but does need an allowed source address."""
    rc, code, body, err = curl(daemon, "/", partner=None, door="portal", method="GET")
    assert (rc, code) == (0, 200), err
    assert "<h1>Postroom</h1>" in body
    restrict(daemon, "acme", "127.0.0.1/32")
    restrict(daemon, "globex", "127.0.0.1/32")
    wait_until(lambda: curl(daemon, "/", partner=None, door="portal", method="GET", interface="127.0.0.2")[1] == 0)


def test_health_and_metrics(daemon):
    """/healthz reports the loaded directory; /metrics speaks the Prometheus text format."""
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", f"http://127.0.0.1:{daemon.ports['metrics']}/healthz"],
                         capture_output=True, text=True, check=True).stdout
    body, _, code = out.rpartition("\n")
    assert code == "200"
    assert '"status": "ok"' in body and '"directory_version"' in body
    assert metric(daemon, 'postroom_partners{status="active"}') == 2


def test_sigterm_exits_zero_and_keeps_the_home(daemon):
    """SIGTERM stops the daemon cleanly (exit 0); config, keys, database and spool stay."""
    home = daemon.home

    def kept() -> set:
        # SQLite folds its -wal/-shm files into the database when the last connection closes.
        return {p.relative_to(home.path) for p in home.path.rglob("*")
                if "run" not in p.parts and not p.name.endswith(("-wal", "-shm"))}

    before = kept()
    assert daemon.stop() == 0
    assert before <= kept()
    assert daemon.cli("partner", "list", "--json").stdout.count('"id"') == 2
    assert not home.ports_file.exists()
    assert "Traceback" not in daemon.log.read_text()
