"""Tests for the installed ``postroom`` console script, run as a separate process.

These check what CliRunner cannot: the entry point is installed, ``main`` sets the umask, and exit
statuses and streams reach the shell. Subprocesses are slow, so a handful share one demo home.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

POSTROOM = Path(sys.executable).with_name("postroom")


def run(*args, env: dict | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``postroom`` with a clean environment (no inherited POSTROOM_HOME)."""
    base = {k: v for k, v in os.environ.items() if k != "POSTROOM_HOME"}
    prefix = ["--home", str(home)] if home is not None else []
    return subprocess.run([POSTROOM, *prefix, *map(str, args)], capture_output=True, text=True,
                          env=base | (env or {}), timeout=120, check=False)


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def initialised(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``postroom init --demo --ephemeral-ports`` run once into a fresh directory."""
    home = tmp_path_factory.mktemp("exe") / "home"
    return home, run("init", "--demo", "--ephemeral-ports", home=home)


def test_help_lists_the_command_groups():
    """``postroom --help`` exits 0 and names every command group of the contract that exists today."""
    assert POSTROOM.is_file(), f"{POSTROOM} is not installed (pip install -e .)"
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: postroom ")
    commands = result.stdout.split("Commands:", 1)[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.strip()}
    assert {"init", "serve", "partner", "pki"} <= listed


def test_init_demo_creates_a_private_home(initialised):
    """``init --demo`` prints how to try the demo and writes config, keys (0600), demo keys and the database."""
    home, result = initialised
    assert result.returncode == 0, result.stderr
    assert f"Postroom home created in {home}" in result.stdout
    assert "Demo partners" in result.stdout
    assert "acme" in result.stdout and "globex" in result.stdout
    assert f"--cert {home}/demo/acme/acme-tls.crt" in result.stdout
    assert f"postroom --home {home} partner list" in result.stdout

    config = (home / "postroom.toml").read_text()
    assert 'as2 = "tcp:0:interface=127.0.0.1"' in config
    assert mode(home) == 0o700
    assert mode(home / "pki") == 0o700
    for secret in ("tls.key", "sign.key", "encrypt.key", "dev-ca/ca.key", "ssh_host_ed25519_key", "ssh_host_rsa_key"):
        assert mode(home / "pki" / secret) == 0o600, secret
    for public in ("tls.crt", "sign.crt", "encrypt.crt", "dev-ca/ca.crt",
                   "ssh_host_ed25519_key.pub", "ssh_host_rsa_key.pub"):
        assert (home / "pki" / public).is_file(), public
    for partner in ("acme", "globex"):
        folder = home / "demo" / partner
        for usage in ("tls", "sign", "encrypt"):
            assert (folder / f"{partner}-{usage}.crt").is_file()
            assert mode(folder / f"{partner}-{usage}.key") == 0o600
        assert mode(folder / "id_ed25519") == 0o600
        assert (folder / "id_ed25519.pub").read_text().startswith("ssh-ed25519 ")
    database = home / "postroom.db"
    assert database.is_file()
    assert mode(database) & 0o077 == 0  # the console script's umask keeps the database private
    assert (home / "spool").is_dir()


def test_partner_list_json_parses(initialised):
    """``partner list --json`` from the executable is a JSON array of objects with the demo partners' ids."""
    home, _ = initialised
    result = run("partner", "list", "--json", home=home)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [p["id"] for p in listing] == ["acme", "globex"]


def test_user_error_exits_1_with_one_line(initialised):
    """A refusal reaches the shell as exit status 1 and one ``postroom: error:`` line on stderr."""
    home, _ = initialised
    result = run("partner", "show", "nobody", home=home)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "postroom: error: no partner with ID 'nobody'\n"


def test_usage_error_exits_2(initialised):
    """An unknown subcommand reaches the shell as exit status 2 with a usage hint."""
    home, _ = initialised
    result = run("partner", "frob", home=home)
    assert result.returncode == 2
    assert "No such command 'frob'" in result.stderr
    assert result.stdout == ""


def test_postroom_home_environment_is_honoured(initialised):
    """Without --home the executable finds the home through POSTROOM_HOME."""
    home, _ = initialised
    result = run("partner", "show", "globex", "--json", env={"POSTROOM_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["as2_ids"] == ["GLOBEX"]
