"""End to end on PostgreSQL: `postroom init --database-url` and `postroom serve` against a real server."""

import subprocess

from gateway.home import Home
from tests.e2e.daemon import POSTROOM, Daemon
from tests.e2e.https import BASE_EXAMPLE, get, post_document, verify_receipt
from tests.e2e.test_mtls_door import curl, wait_until


def test_demo_home_on_postgresql_serves_and_follows_cli_changes(postgres_server, tmp_path):
    """The whole stack runs on PostgreSQL: init migrates it, serve authenticates, a disable reaches it."""
    url = postgres_server.new_database("e2e_home")
    home = Home(tmp_path / "home")
    subprocess.run([POSTROOM, "--home", str(home.path), "init", "--demo", "--ephemeral-ports",
                    "--database-url", url], check=True, capture_output=True)
    assert f'database_url = "{url}"' in home.config_file.read_text()
    assert not (home.path / "postroom.db").exists()
    with home.config_file.open("a") as f:
        f.write("\n[directory]\nreload_seconds = 0.25\n")
    daemon = Daemon(home).start()
    try:
        rc, code, body, err = curl(daemon, "/as2")
        assert (rc, code) == (0, 400), err
        accepted = post_document(daemon, BASE_EXAMPLE, tmp_path, key="pg-1")
        assert accepted.status == 201, accepted
        assert post_document(daemon, BASE_EXAMPLE, tmp_path, key="pg-1").json()["outcome"] == "duplicate"
        verify_receipt(daemon, get(daemon, accepted.json()["receipt"], tmp_path), tmp_path)
        wait_until(lambda: "delivered" in daemon.cli("message", "show", accepted.json()["message"]).stdout)
        daemon.cli("partner", "disable", "acme")
        wait_until(lambda: curl(daemon, "/as2")[1] == 0)
        assert curl(daemon, "/as2", partner="globex")[1] == 400
    finally:
        assert daemon.stop() == 0
