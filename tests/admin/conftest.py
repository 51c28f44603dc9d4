"""Fixtures for the ``postroom`` CLI tests: a runner bound to a demo home, certificate files, snapshots."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from admin.cli import cli
from certs.devca import key_pem, new_rsa_key
from certs.ssh import SSHPublicKey, generate_keypair
from certs.x509 import Certificate, to_pem
from gateway.config import load
from gateway.home import Home
from partners.store import directory_version
from spool.database import create_engine

ERROR_PREFIX = "postroom: error: "


class Postroom:
    """The ``postroom`` command line run in-process against one home."""

    def __init__(self, home: Home):
        self.home = home
        self.runner = CliRunner(catch_exceptions=False)

    def __call__(self, *args: str, env: dict | None = None) -> Result:
        """Run ``postroom --home HOME ARGS...``; unexpected exceptions propagate to the test."""
        return self.runner.invoke(cli, ["--home", str(self.home.path), *map(str, args)], env=env)

    def ok(self, *args: str) -> Result:
        """Run a command that must succeed."""
        result = self(*args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str):
        """Run a command with ``--json`` that must succeed, and parse what it printed."""
        return json.loads(self.ok(*args, "--json").stdout)

    def refused(self, *args: str) -> str:
        """Run a command that must be refused as a user error; return its one-line message.

        The contract: exit 1, exactly one line on stderr starting ``postroom: error:``, nothing on stdout.
        """
        result = self(*args)
        assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(ERROR_PREFIX), lines[0]
        assert len(lines[0]) > len(ERROR_PREFIX) + 10, lines[0]
        return lines[0][len(ERROR_PREFIX):]

    def snapshot(self) -> dict:
        """Everything the directory holds as the CLI shows it, the change counter daemons poll, and the audit trail."""
        listing = self.json("partner", "list")
        engine = create_engine(load(self.home).database_url)
        try:
            with engine.connect() as conn:
                version = directory_version(conn)
        finally:
            engine.dispose()
        return {
            "list": listing,
            "show": {p["id"]: self.json("partner", "show", p["id"]) for p in listing},
            "version": version,
            "audit": self.json("audit", "list", "--limit", "100000"),
        }


@pytest.fixture
def postroom(demo_home) -> Postroom:
    """The CLI bound to a private demo home (partners acme and globex)."""
    return Postroom(demo_home)


@pytest.fixture(scope="session")
def rsa_key():
    """One RSA key for the certificates tests issue (a fresh key per certificate only costs time)."""
    return new_rsa_key(2048)


@pytest.fixture
def write_cert(dev_ca, rsa_key, tmp_path):
    """Issue a certificate from ``dev_ca`` and write it as PEM; returns (path, certificate)."""

    def write(name: str, usage: str = "tls-client", ca=None, **options) -> tuple[Path, Certificate]:
        _, cert = (ca or dev_ca).build(name, usage, key=rsa_key, **options)
        path = tmp_path / f"{name}.pem"
        path.write_bytes(to_pem(cert))
        return path, cert

    return write


@pytest.fixture
def expired_cert(write_cert) -> tuple[Path, Certificate]:
    """A certificate from the trusted dev CA whose validity ended last month."""
    return write_cert("expired", "tls-client", not_before=datetime.now(UTC) - timedelta(days=60), days=30)


@pytest.fixture
def private_key_file(rsa_key, tmp_path) -> Path:
    """A PEM private key, the file partners most often send by mistake instead of a certificate."""
    path = tmp_path / "oops-private.pem"
    path.write_bytes(key_pem(rsa_key))
    return path


@pytest.fixture
def ssh_key(tmp_path):
    """Make a new ed25519 SSH key pair in the test's directory; returns (path of the .pub, public key)."""

    def make(name: str) -> tuple[Path, SSHPublicKey]:
        key = generate_keypair(tmp_path / name, f"{name}@test", "ed25519")
        return tmp_path / f"{name}.pub", key

    return make
