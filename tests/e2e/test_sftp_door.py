"""End to end: the SFTP door driven by OpenSSH ``sftp -b`` and paramiko against a real daemon.

Uploads land through the intake, receipts appear in ``/receipts/`` and verify with ``openssl cms``,
documents reach the recipient's ``/outbox/`` byte for byte, and everything a partner must not do
(traversal, symlinks, mkdir, a wrong key, a foreign source address, an oversized or non-XML upload,
a client killed mid-upload) is refused or ingests nothing.
"""

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import paramiko
import pytest

from tests.e2e.daemon import Daemon
from tests.e2e.https import BASE_EXAMPLE, query
from tests.e2e.test_mtls_door import metric, restrict, wait_until

MAX_BYTES = 200_000


@pytest.fixture
def daemon(home):
    """A running daemon whose payload cap is small enough to exceed quickly."""
    if subprocess.run(["which", "sftp"], capture_output=True).returncode != 0:
        pytest.fail("OpenSSH sftp is required (make test installs openssh-client)")
    text = re.sub(r"(?m)^max_payload_bytes = \d+$", f"max_payload_bytes = {MAX_BYTES}", home.config_file.read_text())
    home.config_file.write_text(text)
    d = Daemon(home).start()
    yield d
    d.stop()


def sftp(daemon, commands: str, *, user: str = "acme", key=None, bind: str | None = None, certificate=None):
    """OpenSSH ``sftp -b -`` as ``user``: the completed process (rc non-zero when any command failed)."""
    key = key or daemon.home.demo / user / "id_ed25519"
    extra = ["-o", f"BindAddress={bind}"] if bind else []
    extra += ["-o", f"CertificateFile={certificate}"] if certificate else []
    return subprocess.run(
        ["sftp", "-b", "-", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", *extra,
         "-P", str(daemon.ports["sftp"]), f"{user}@127.0.0.1"],
        input=commands, capture_output=True, text=True, timeout=60)


def assert_no_banner(daemon, source: str) -> None:
    """A connection from ``source`` is closed before the server says a word."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", daemon.ports["sftp"]))
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass


def connect(daemon, user: str = "acme") -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """A paramiko SFTP session as ``user`` with its demo key."""
    transport = paramiko.Transport(("127.0.0.1", daemon.ports["sftp"]))
    transport.connect(username=user, pkey=paramiko.Ed25519Key.from_private_key_file(
        str(daemon.home.demo / user / "id_ed25519")))
    return transport, paramiko.SFTPClient.from_transport(transport)


def test_openssh_upload_gives_a_signed_receipt_and_reaches_the_recipients_outbox(daemon, tmp_path):
    """acme puts an invoice; its receipt verifies; globex gets identical bytes, then removes (acknowledges) it."""
    put = sftp(daemon, f"put {BASE_EXAMPLE} /inbox/\nls /receipts\n")
    assert put.returncode == 0, put.stderr
    assert "base-example.xml.mdn" in put.stdout
    got = sftp(daemon, f"get /receipts/base-example.xml.mdn {tmp_path / 'r.mdn'}\n")
    assert got.returncode == 0, got.stderr
    verify = subprocess.run(["openssl", "cms", "-verify", "-inform", "SMIME", "-in", str(tmp_path / "r.mdn"),
                             "-CAfile", str(daemon.home.dev_ca / "ca.crt"), "-purpose", "any"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "processed" in verify.stdout

    wait_until(lambda: query(daemon, "SELECT count(*) FROM mailbox_items") == [(1,)])
    listing = sftp(daemon, "ls /outbox\n", user="globex")
    assert "base-example.xml" in listing.stdout, listing.stderr
    fetched = sftp(daemon, f"get /outbox/base-example.xml {tmp_path / 'doc.xml'}\n", user="globex")
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "doc.xml").read_bytes() == BASE_EXAMPLE.read_bytes()
    assert sftp(daemon, "ls /outbox\n").stdout.count("base-example") == 0  # not in acme's outbox
    wait_until(lambda: query(daemon, "SELECT state FROM mailbox_items") == [("downloaded",)])
    assert sftp(daemon, "rm /outbox/base-example.xml\n", user="globex").returncode == 0
    assert query(daemon, "SELECT state FROM mailbox_items") == [("acknowledged",)]
    assert "base-example" not in sftp(daemon, "ls /outbox\n", user="globex").stdout  # acknowledged: gone
    events = [e for (e,) in query(daemon, "SELECT event FROM audit_log WHERE event LIKE 'mailbox.%'")]
    assert events == ["mailbox.downloaded", "mailbox.acknowledged"]
    assert query(daemon, "SELECT count(*) FROM receipts WHERE kind = 'return'") == [(2,)]
    assert '"result": "accepted"' in daemon.log.read_text()


def test_refused_uploads_fail_at_close_with_the_reason(daemon, tmp_path):
    """Not-XML and oversized uploads fail at close for both clients; a rejection receipt says why."""
    note = tmp_path / "note.xml"
    note.write_bytes(b"this is not an invoice\n")
    refused = sftp(daemon, f"put {note} /inbox/\n")
    assert refused.returncode != 0
    big = tmp_path / "big.xml"
    big.write_bytes(b"<a>" + b"x" * MAX_BYTES + b"</a>")
    too_big = sftp(daemon, f"put {big} /inbox/\n")
    assert too_big.returncode != 0
    transport, client = connect(daemon)
    try:
        with pytest.raises(OSError):
            client.put(str(note), "/inbox/note2.xml", confirm=True)
        with pytest.raises(OSError):
            client.put(str(big), "/inbox/big2.xml", confirm=True)
        assert "note.xml.mdn" in client.listdir("/receipts")
    finally:
        transport.close()
    assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]
    log = daemon.log.read_text()
    assert log.count('"result": "rejected"') == 2 and log.count('"result": "refused"') == 2


def test_paramiko_upload_with_a_temporary_name_is_taken_on_rename(daemon, tmp_path):
    """A .part upload is held until renamed to its final name; paramiko's confirm stat then succeeds."""
    transport, client = connect(daemon)
    try:
        client.put(str(BASE_EXAMPLE), "/inbox/invoice.xml.part", confirm=True)
        assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]
        assert client.listdir("/inbox") == ["invoice.xml.part"]
        client.posix_rename("/inbox/invoice.xml.part", "/inbox/invoice.xml")
        assert query(daemon, "SELECT filename, channel FROM messages") == [("invoice.xml", "sftp")]
        assert "invoice.xml.mdn" in client.listdir("/receipts")
    finally:
        transport.close()


def test_killing_the_client_mid_upload_ingests_nothing(daemon):
    """A client killed with an upload open: the teardown close ingests nothing."""
    child = textwrap.dedent(f"""
        import paramiko, sys, time
        t = paramiko.Transport(("127.0.0.1", {daemon.ports["sftp"]}))
        t.connect(username="acme", pkey=paramiko.Ed25519Key.from_private_key_file(
            {str(daemon.home.demo / "acme" / "id_ed25519")!r}))
        f = paramiko.SFTPClient.from_transport(t).open("/inbox/half.xml", "wb")
        f.write(open({str(BASE_EXAMPLE)!r}, "rb").read()[:4000]); f.flush()
        print("ready", flush=True); time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    wait_until(lambda: '"result": "interrupted"' in daemon.log.read_text())
    assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]
    assert query(daemon, "SELECT count(*) FROM quarantine") == [(0,)]


def test_paths_outside_the_tree_symlinks_and_mkdir_are_refused(daemon, tmp_path):
    """Traversal, absolute paths, symlinks, mkdir and writes outside /inbox all fail."""
    for command in ("get ../../../../etc/passwd", "get /etc/passwd", f"put {BASE_EXAMPLE} /etc/x.xml",
                    f"put {BASE_EXAMPLE} /outbox/x.xml", f"put {BASE_EXAMPLE} ../../tmp/x.xml",
                    "ln -s /etc/passwd /inbox/p", "ln /inbox/a /inbox/b", "mkdir /inbox/d", "mkdir /d",
                    "chmod 777 /inbox", "rename /receipts /inbox/r"):
        result = sftp(daemon, f"cd /\n{command}\n")
        assert result.returncode != 0, command
    listing = sftp(daemon, "ls /\nls ../..\n")
    assert listing.returncode == 0 and "passwd" not in listing.stdout and "inbox" in listing.stdout


def test_wrong_key_disabled_partner_and_foreign_source_are_refused(daemon, tmp_path):
    """An unregistered key, another partner's key, a disabled partner and an address nobody allows."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    assert sftp(daemon, "ls /\n", key=tmp_path / "k").returncode != 0
    assert sftp(daemon, "ls /\n", user="acme", key=daemon.home.demo / "globex" / "id_ed25519").returncode != 0
    daemon.cli("partner", "disable", "globex")
    wait_until(lambda: sftp(daemon, "ls /\n", user="globex").returncode != 0)
    restrict(daemon, "acme", "127.0.0.1/32")
    wait_until(lambda: sftp(daemon, "ls /\n", bind="127.0.0.2").returncode != 0)

    assert_no_banner(daemon, "127.0.0.2")  # a stranger
    assert sftp(daemon, "ls /\n").returncode == 0  # 127.0.0.1 still allowed for acme


def test_openssh_certificates_from_a_partners_ca_log_in_as_that_partner_only(daemon, tmp_path):
    """``partner ssh-key add acme CA.pub --ca``: a certificate it signs for principal ``acme`` logs in with a key
    never registered; another principal, no principal, an expired certificate, another partner's CA, or the
    CA key used as a plain key do not."""
    def keygen(*args: str) -> None:
        subprocess.run(["ssh-keygen", "-q", *args], check=True, capture_output=True)

    keygen("-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca"))
    keygen("-t", "ed25519", "-N", "", "-f", str(tmp_path / "other-ca"))
    daemon.cli("partner", "ssh-key", "add", "acme", str(tmp_path / "ca.pub"), "--ca")
    daemon.cli("partner", "ssh-key", "add", "globex", str(tmp_path / "other-ca.pub"), "--ca")
    shown = json.loads(daemon.cli("partner", "show", "acme", "--json").stdout)
    assert [k["ca"] for k in shown["ssh_keys"]] == [False, True]

    def certified(name: str, ca: str, *options: str):
        key = tmp_path / name
        keygen("-t", "ed25519", "-N", "", "-f", str(key))
        keygen("-s", str(tmp_path / ca), "-I", name, *options, str(key) + ".pub")
        return key, tmp_path / f"{name}-cert.pub"

    key, cert = certified("good", "ca", "-n", "acme", "-V", "-5m:+1h")
    wait_until(lambda: sftp(daemon, "ls /\n", key=key, certificate=cert).returncode == 0)
    assert sftp(daemon, f"put {BASE_EXAMPLE} /inbox/by-certificate.xml\n", key=key, certificate=cert).returncode == 0
    assert query(daemon, "SELECT sender_id, filename FROM messages") == [("acme", "by-certificate.xml")]
    assert sftp(daemon, "ls /\n", user="globex", key=key, certificate=cert).returncode != 0  # principal is acme

    refused = [certified("globex", "ca", "-n", "globex"), certified("anyone", "ca"),
               certified("expired", "ca", "-n", "acme", "-V", "-2h:-1h"),
               certified("foreign", "other-ca", "-n", "acme")]
    for key, cert in refused:
        assert sftp(daemon, "ls /\n", key=key, certificate=cert).returncode != 0, key.name
    assert sftp(daemon, "ls /\n", key=tmp_path / "ca").returncode != 0


def test_a_source_that_keeps_failing_is_banned_audited_and_counted(home, tmp_path):
    """``[sftp] ban_after = 3``: the third failed login bans 127.0.0.3 — no banner any more, even with a good
    key — while 127.0.0.1 still gets in; the ban is an audit event and a metric."""
    home.config_file.write_text(home.config_file.read_text() + "\n[sftp]\nban_after = 3\nban_seconds = 600\n")
    daemon = Daemon(home).start()
    try:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
        for _ in range(3):  # one wrong key per connection (IdentitiesOnly): one failure each
            assert sftp(daemon, "ls /\n", key=tmp_path / "k", bind="127.0.0.3").returncode != 0
        assert sftp(daemon, "ls /\n", bind="127.0.0.3").returncode != 0  # acme's own key, banned source
        assert_no_banner(daemon, "127.0.0.3")
        assert sftp(daemon, "ls /\n").returncode == 0
        [(details,)] = query(daemon, "SELECT details FROM audit_log WHERE event = 'sftp.banned'")
        assert '"source": "127.0.0.3"' in details and '"seconds": 600' in details
        assert metric(daemon, "postroom_sftp_bans_total") == 1
    finally:
        daemon.stop()


def test_max_rate_holds_a_connection_to_its_speed(home, tmp_path):
    """``[sftp] max_rate = 50000``: 150 kB take at least two seconds (three at the rate, less the one-second
    burst) — a lower bound on the wiring, not a performance figure."""
    home.config_file.write_text(home.config_file.read_text() + "\n[sftp]\nmax_rate = 50000\n")
    daemon = Daemon(home).start()
    try:
        payload = tmp_path / "slow.bin"
        payload.write_bytes(b"x" * 150_000)
        started = time.monotonic()
        sftp(daemon, f"put {payload} /inbox/\n")  # refused at close (not XML): the transfer is what counts
        assert time.monotonic() - started >= 2.0
        assert '"size": 150000' in daemon.log.read_text()
    finally:
        daemon.stop()


def test_a_partner_may_hold_only_max_connections_at_once(home):
    """``[sftp] max_connections = 2``: a third login as acme is disconnected; globex is not affected, and
    acme gets in again once one of its connections closes."""
    home.config_file.write_text(home.config_file.read_text() + "\n[sftp]\nmax_connections = 2\n")
    daemon = Daemon(home).start()
    held = []
    try:
        held = [connect(daemon) for _ in range(2)]
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            _, third = connect(daemon)
            third.listdir("/")
        other_transport, other = connect(daemon, "globex")
        assert "outbox" in other.listdir("/")
        other_transport.close()
        transport, _ = held.pop()
        transport.close()
        wait_until(lambda: sftp(daemon, "ls /\n").returncode == 0)
    finally:
        for transport, _ in held:
            transport.close()
        daemon.stop()


def test_tampered_and_unsigned_invoices_are_refused_with_the_reason_in_their_receipts(daemon, tmp_path):
    """With ``require_xmldsig``: a signed invoice changed after signing, and an unsigned one, fail at close;
    each rejection receipt names the finding."""
    signed = BASE_EXAMPLE.parents[1] / "signed"
    daemon.cli("partner", "cert", "add", "acme", "--usage", "sign", str(signed / "test-signing-cert.pem"))
    before = metric(daemon, "postroom_directory_version")
    daemon.cli("partner", "policy", "acme", "require_xmldsig=true")
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)
    assert sftp(daemon, f"put {BASE_EXAMPLE} /inbox/unsigned.xml\n").returncode != 0
    assert sftp(daemon, f"put {signed / 'signed-xmldsig-TAMPERED.xml'} /inbox/tampered.xml\n").returncode != 0
    for name, code in (("unsigned.xml", "GW-SIG-MISSING"), ("tampered.xml", "GW-SIG-INVALID")):
        got = sftp(daemon, f"get /receipts/{name}.mdn {tmp_path / name}.mdn\n")
        assert got.returncode == 0, got.stderr
        receipt = (tmp_path / f"{name}.mdn").read_text("utf-8", "replace")
        assert f"Postroom-Finding: {code};" in receipt, receipt
    assert query(daemon, "SELECT count(*) FROM messages") == [(0,)]


def test_an_sftp_upload_is_the_same_bytes_in_the_portal_api(daemon, tmp_path):
    """What acme put over SFTP, globex fetches through the portal API byte for byte."""
    from tests.e2e.test_portal_api import portal, token_for

    assert sftp(daemon, f"put {BASE_EXAMPLE} /inbox/portal.xml\n").returncode == 0
    wait_until(lambda: query(daemon, "SELECT count(*) FROM mailbox_items") == [(1,)])
    token = token_for(daemon, "globex")
    status, body = portal(daemon, "/api/v1/invoices", token)
    assert status == 200, body
    [item] = json.loads(body)["items"]
    assert (item["channel"], item["filename"]) == ("sftp", "portal.xml")
    status, content = portal(daemon, f"/api/v1/invoices/{item['id']}/content", token)
    assert (status, content) == (200, BASE_EXAMPLE.read_bytes())
