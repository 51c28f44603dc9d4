"""Tests for :mod:`gateway.config`: defaults, strict keys, types, and path anchoring."""

import socket
import tomllib

import pytest

from gateway.config import Config, ConfigError, load, parse, render_default
from gateway.home import Home


def test_rendered_default_parses_to_the_defaults(tmp_path):
    """What ``init`` writes is exactly the built-in defaults, so the file documents them truthfully."""
    home = Home(tmp_path)
    assert parse(tomllib.loads(render_default()), home) == Config(home=home)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"listen": {"as3": "tcp:1"}}, "unknown key 'as3' in [listen]"),
        ({"lisen": {}}, "unknown section [lisen]"),
        ({"limits": {"max_payload_bytes": "big"}}, "max_payload_bytes must be an integer"),
        ({"limits": {"max_payload_bytes": True}}, "max_payload_bytes must be an integer"),
        ({"limits": {"max_payload_bytes": -1}}, "must not be negative"),
        ({"smtp_relay": {"starttls": "yes"}}, "starttls must be true or false"),
        ({"portal": {"allow_ips": "10.0.0.0/8"}}, "allow_ips must be a list of strings"),
        ({"directory": {"reload_seconds": 0}}, "reload_seconds must be positive"),
        ({"gateway": "x"}, "[gateway] must be a table"),
        ({"gateway": {"node": "a/b"}}, "[gateway] node must be 1-64 letters"),
        ({"gateway": {"node": "x" * 65}}, "[gateway] node must be 1-64 letters"),
    ],
)
def test_bad_values_name_section_key_and_problem(tmp_path, doc, message):
    """Every config error says where and what, so the admin can fix it from the message alone."""
    with pytest.raises(ConfigError) as e:
        parse(doc, Home(tmp_path))
    assert message in str(e.value)


def test_node_defaults_to_the_host_name(tmp_path):
    """Daemons sharing a database and spool are told apart by node; one per machine needs no setting."""
    assert parse({}, Home(tmp_path)).gateway.node_name == socket.gethostname()
    assert parse({"gateway": {"node": "gw-2.a"}}, Home(tmp_path)).gateway.node_name == "gw-2.a"


def test_relative_sqlite_path_is_anchored_at_home(tmp_path):
    """A relative SQLite file lives in the home, wherever the daemon is started from."""
    config = parse({"storage": {"database_url": "sqlite:///data/p.db"}}, Home(tmp_path))
    assert config.database_url == f"sqlite:///{tmp_path}/data/p.db"


def test_absolute_and_postgres_urls_are_kept(tmp_path):
    """Absolute SQLite paths and PostgreSQL URLs pass through untouched."""
    home = Home(tmp_path)
    assert parse({"storage": {"database_url": "sqlite:////x/p.db"}}, home).database_url == "sqlite:////x/p.db"
    url = "postgresql+psycopg://postroom@db/postroom"
    assert parse({"storage": {"database_url": url}}, home).database_url == url


def test_missing_file_says_to_run_init(tmp_path):
    """Without postroom.toml the error tells the admin the command that creates it."""
    with pytest.raises(ConfigError, match=r"run `postroom --home .* init` first"):
        load(Home(tmp_path))


def test_invalid_toml_is_reported(tmp_path):
    """A syntax error names the file."""
    (tmp_path / "postroom.toml").write_text("[listen\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(Home(tmp_path))
