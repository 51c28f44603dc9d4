"""The ``sftp`` push into a real OpenSSH ``sshd``: atomic upload under the final name, and a pinned host key.

The test starts Debian's ``/usr/sbin/sshd`` (openssh-server) on 127.0.0.1 and a private port, with its own
config and host key, ``internal-sftp``, and the gateway's client key (the home's
``pki/ssh_host_ed25519_key.pub``) as the only authorized key. It runs as root (``sshd -D -e -f``), and the
gateway logs in as root with ``PermitRootLogin prohibit-password`` (the key only). A partner registered
through the real CLI with ``--deliver sftp --sftp-url sftp://root@127.0.0.1:PORT/DIR --sftp-host-key @PUB``
and a participant ID receives what acme uploads through the HTTPS door, addressed to that participant ID.
"""

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from certs.ssh import generate_keypair
from tests.e2e.deliveries import push_delivery, wait_push
from tests.e2e.https import invoice, post_document, query
from tests.e2e.test_mtls_door import metric, wait_until

SSHD = "/usr/sbin/sshd"
DEMO_CUSTOMER = b'<cbc:EndpointID schemeID="0002">FR23342</cbc:EndpointID>'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """One ``sshd -D -e -f CONFIG`` on 127.0.0.1:``port`` that lets the gateway's key in, writing to ``inbox``."""

    def __init__(self, folder: Path, authorized_key: Path):
        self.folder = folder
        self.port = free_port()
        self.inbox = folder / "inbound"
        self.inbox.mkdir()
        self.host_key = folder / "ssh_host_ed25519_key"
        generate_keypair(self.host_key, "sshd@e2e", "ed25519")
        self.host_pub = folder / "ssh_host_ed25519_key.pub"
        authorized = folder / "authorized_keys"
        shutil.copyfile(authorized_key, authorized)
        self.log = folder / "sshd.log"
        self.config = folder / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\nPidFile none\n"
            f"AuthorizedKeysFile {authorized}\nSubsystem sftp internal-sftp\nUsePAM no\nStrictModes no\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nAllowTcpForwarding no\nX11Forwarding no\nLogLevel VERBOSE\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Sshd":
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"sshd exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return self
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"sshd did not listen on {self.port}:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def sshd(daemon, tmp_path, request):
    """A running OpenSSH server that trusts the gateway's client key; stopped by a finalizer."""
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} is required (Debian openssh-server; make test installs it)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd runs as root and lets the gateway log in as root")
    (tmp_path / "sshd").mkdir()
    server = Sshd(tmp_path / "sshd", daemon.home.pki / "ssh_host_ed25519_key.pub")
    request.addfinalizer(server.stop)
    return server.start()


def register(daemon, partner_id: str, participant: str, url: str, host_key: str) -> None:
    """Add a partner pushed to by SFTP through the CLI and wait until the daemon has reloaded it."""
    before = metric(daemon, "postroom_directory_version")
    daemon.cli("partner", "add", partner_id, "--name", partner_id.title(), "--participant-id", participant,
               "--deliver", "sftp", "--sftp-url", url, "--sftp-host-key", host_key)
    wait_until(lambda: metric(daemon, "postroom_directory_version") > before)


def invoice_to(participant: str) -> bytes:
    """A new BIS 3 invoice from acme whose customer's EndpointID is ``participant``."""
    scheme, _, value = participant.partition(":")
    data = invoice(f"SFTP-{uuid.uuid4().hex[:8]}").replace(
        DEMO_CUSTOMER, f'<cbc:EndpointID schemeID="{scheme}">{value}</cbc:EndpointID>'.encode(), 1)
    assert value.encode() in data
    return data


def upload(daemon, data: bytes, tmp_path: Path, filename: str) -> str:
    response = post_document(daemon, data, tmp_path, partner="acme", filename=filename)
    assert response.status == 201, (response, daemon.log.read_text()[-3000:])
    return response.json()["message"]


def sftp_delivery(daemon, message_id: str) -> tuple | None:
    """(state, remote_id, attempts, last_error) of the message's ``sftp`` delivery."""
    return push_delivery(daemon, message_id, "sftp")


def wait_delivery(daemon, sshd, message_id: str, settled) -> tuple:
    return wait_push(daemon, message_id, "sftp", settled, explain=lambda: f"sshd log:\n{sshd.log.read_text()[-3000:]}")


def test_push_uploads_byte_identical_under_the_final_name(daemon, sshd, tmp_path):
    """acme's invoice arrives in the server's directory under its filename, no ``.part`` left, delivery done."""
    register(daemon, "files", "0088:7300010000001", f"sftp://root@127.0.0.1:{sshd.port}{sshd.inbox}",
             f"@{sshd.host_pub}")
    data = invoice_to("0088:7300010000001")
    message_id = upload(daemon, data, tmp_path, "invoice-sftp.xml")
    state, remote_id, _, last_error = wait_delivery(daemon, sshd, message_id, lambda row: row[0] in ("done", "dead"))
    assert (state, last_error) == ("done", None), (state, last_error)
    final = sshd.inbox / "invoice-sftp.xml"
    assert sorted(p.name for p in sshd.inbox.iterdir()) == ["invoice-sftp.xml"]  # no .invoice-sftp.xml.part
    assert final.read_bytes() == data
    assert remote_id in (None, str(final))
    events = query(daemon, "SELECT details FROM audit_log WHERE message_id = :id AND event = 'delivery.done'",
                   id=message_id)
    assert any(f"uploaded {len(data)} bytes to 127.0.0.1:{sshd.port}:{final}" in str(d) for (d,) in events), events


def test_push_refuses_a_server_whose_host_key_is_not_the_pinned_one(daemon, sshd, tmp_path):
    """Pinned to another key: nothing is written, and the delivery is retried naming the host key mismatch."""
    other = generate_keypair(tmp_path / "other_key", "not-the-server", "ed25519")
    register(daemon, "wrongkey", "0088:7300010000002", f"sftp://root@127.0.0.1:{sshd.port}{sshd.inbox}",
             other.openssh)
    message_id = upload(daemon, invoice_to("0088:7300010000002"), tmp_path, "wrong.xml")
    state, _, attempts, last_error = wait_delivery(daemon, sshd, message_id,
                                                   lambda row: row[2] >= 1 or row[0] in ("done", "dead"))
    assert state == "pending" and attempts >= 1, (state, attempts, last_error)
    assert "host key mismatch" in last_error and other.fingerprint in last_error, last_error
    assert list(sshd.inbox.iterdir()) == []
