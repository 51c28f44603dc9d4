# -*- test-case-name: tests.gateway.test_config -*-
"""``postroom.toml``: read, check every key, and fill in defaults.

An unknown key is an error, not a silent default: a typo in ``[listen] as2`` must not leave a door on
a port nobody expected. Every error names the file, the section, the key and what is wrong.
"""

import re
import socket
import tomllib
from typing import Any

import attrs

from gateway.home import Home

DEFAULT_LISTEN = {
    "as2": "tcp:4443:interface=127.0.0.1",
    "portal": "tcp:8443:interface=127.0.0.1",
    "sftp": "tcp:2222:interface=127.0.0.1",
    "smtp": "tcp:2525:interface=127.0.0.1",
    "metrics": "tcp:9464:interface=127.0.0.1",
}


#: a node name is part of file names in the shared spool
_NODE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ConfigError(ValueError):
    """``postroom.toml`` is missing, unreadable or has a bad value."""


@attrs.frozen
class GatewaySection:
    """Who the gateway is."""

    name: str = "Postroom"
    as2_id: str = "POSTROOM"
    hostname: str = "localhost"
    #: our /as2 as partners reach it (for async MDNs to our pushes); empty: https://HOSTNAME:PORT/as2
    as2_url: str = ""
    #: this daemon's name among those sharing one database and spool (its delivery claims and staging
    #: files are released and cleaned at its start, and only its own); empty: the machine's host name
    node: str = ""

    @property
    def node_name(self) -> str:
        """``node``, or the host name when it is empty."""
        return self.node or socket.gethostname()


@attrs.frozen
class ListenSection:
    """Twisted ``tcp:`` endpoint strings per door; an empty string switches a door off."""

    as2: str = DEFAULT_LISTEN["as2"]
    portal: str = DEFAULT_LISTEN["portal"]
    sftp: str = DEFAULT_LISTEN["sftp"]
    smtp: str = DEFAULT_LISTEN["smtp"]
    metrics: str = DEFAULT_LISTEN["metrics"]


@attrs.frozen
class TLSSection:
    """The gateway's TLS server (and outbound client) certificate, relative to the home."""

    certificate: str = "pki/tls.crt"
    private_key: str = "pki/tls.key"


@attrs.frozen
class IdentitySection:
    """The gateway's S/MIME signing and encryption keys, relative to the home."""

    sign_certificate: str = "pki/sign.crt"
    sign_private_key: str = "pki/sign.key"
    encrypt_certificate: str = "pki/encrypt.crt"
    encrypt_private_key: str = "pki/encrypt.key"


@attrs.frozen
class StorageSection:
    """Database and spool; a relative SQLite path or spool dir is relative to the home."""

    database_url: str = "sqlite:///postroom.db"
    spool_dir: str = "spool"


@attrs.frozen
class LimitsSection:
    """Size caps applied before any work is done on a payload."""

    max_payload_bytes: int = 100 * 1024 * 1024
    max_decompressed_bytes: int = 200 * 1024 * 1024


@attrs.frozen
class DeliverySection:
    """Retry policy for pushes: exponential backoff from ``backoff`` seconds, up to ``max_attempts``."""

    max_attempts: int = 12
    backoff: int = 60


@attrs.frozen
class SMTPRelaySection:
    """Outbound mail relay for receipts and notifications; empty host means no outbound mail.

    ``sender`` is the envelope and ``From:`` address (default ``invoices@<hostname>``); ``ca_file`` adds
    CA certificates (PEM) to trust for the relay's TLS certificate besides the system's."""

    host: str = ""
    port: int = 587
    starttls: bool = True
    username: str = ""
    password_file: str = ""
    sender: str = ""
    ca_file: str = ""


@attrs.frozen
class PortalSection:
    """The recipients' portal.

    ``allow_ips`` opens the portal to networks beyond the partners' own allowlists (e.g. an
    office VPN); by default only addresses some active partner is allowed from may connect.
    """

    base_url: str = "https://localhost:8443"
    allow_ips: tuple[str, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class SFTPSection:
    """The SFTP door: ``ban_after`` failed logins from one source within ``ban_window`` seconds ban it for
    ``ban_seconds``; a partner may hold ``max_connections`` logged-in connections at once, each moving at
    most ``max_rate`` bytes per second (0: no limit)."""

    ban_after: int = 10
    ban_window: int = 600
    ban_seconds: int = 900
    max_connections: int = 8
    max_rate: int = 0


@attrs.frozen
class DirectorySection:
    """How often the daemon polls for partner directory changes made by the CLI."""

    reload_seconds: float = 2.0


_SECTIONS = {
    "gateway": GatewaySection,
    "listen": ListenSection,
    "tls": TLSSection,
    "identity": IdentitySection,
    "storage": StorageSection,
    "limits": LimitsSection,
    "delivery": DeliverySection,
    "smtp_relay": SMTPRelaySection,
    "portal": PortalSection,
    "sftp": SFTPSection,
    "directory": DirectorySection,
}


@attrs.frozen
class Config:
    """The whole configuration of one home."""

    home: Home
    gateway: GatewaySection = GatewaySection()
    listen: ListenSection = ListenSection()
    tls: TLSSection = TLSSection()
    identity: IdentitySection = IdentitySection()
    storage: StorageSection = StorageSection()
    limits: LimitsSection = LimitsSection()
    delivery: DeliverySection = DeliverySection()
    smtp_relay: SMTPRelaySection = SMTPRelaySection()
    portal: PortalSection = PortalSection()
    sftp: SFTPSection = SFTPSection()
    directory: DirectorySection = DirectorySection()

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path anchored at the home."""
        url = self.storage.database_url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
            return prefix + str(self.home.resolve(url[len(prefix):]))
        return url


def _check_type(where: str, key: str, value: Any, expected: Any) -> Any:
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in kinds:
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where} {key} must be {kinds[expected]}, not {value!r}")
        if expected in (int, float) and value < 0:
            raise ConfigError(f"{where} {key} must not be negative")
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} {key} must be a list of strings")
    return tuple(value)


def parse(data: dict, home: Home, source: str = "postroom.toml") -> Config:
    """Check a parsed TOML document and build the :class:`Config`."""
    sections = {}
    for name, value in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"{source}: unknown section [{name}]; known: {', '.join(_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        fields = {f.name: f for f in attrs.fields(cls)}
        values = {}
        for key, raw in value.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {key!r} in [{name}]; known: {', '.join(fields)}")
            expected = fields[key].type
            if expected not in (int, float, bool, str):
                expected = list
            values[key] = _check_type(f"{source}: [{name}]", key, raw, expected)
        sections[name] = cls(**values)
    config = Config(home=home, **sections)
    if config.gateway.node and not _NODE.fullmatch(config.gateway.node):
        raise ConfigError(f"{source}: [gateway] node must be 1-64 letters, digits, '.', '_' or '-', "
                          f"not {config.gateway.node!r}")
    if config.directory.reload_seconds <= 0:
        raise ConfigError(f"{source}: [directory] reload_seconds must be positive")
    return config


def load(home: Home) -> Config:
    """Read ``HOME/postroom.toml``.

    :raises ConfigError: when it is missing (run ``postroom init``), not TOML, or has bad values.
    """
    path = home.config_file
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; run `postroom --home {home.path} init` first") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return parse(data, home, str(path))


def render_default(gateway: GatewaySection = GatewaySection(), listen: ListenSection = ListenSection(),
                   storage: StorageSection = StorageSection()) -> str:
    """The commented ``postroom.toml`` that ``postroom init`` writes."""
    lines = [
        "# Postroom configuration. Paths are relative to this file's directory.",
        "# Reference: docs/operations.md",
        "",
        "[gateway]",
        f"name = {gateway.name!r}".replace("'", '"'),
        f'as2_id = "{gateway.as2_id}"',
        f'hostname = "{gateway.hostname}"',
        "",
        "# Twisted tcp: endpoint strings; tcp:0 picks a free port (see run/ports.json); \"\" turns a door off.",
        "# TLS is added by the gateway (mutual TLS on as2), never written here.",
        "[listen]",
        *(f'{name} = "{getattr(listen, name)}"' for name in DEFAULT_LISTEN),
        "",
        "[tls]",
        'certificate = "pki/tls.crt"',
        'private_key = "pki/tls.key"',
        "",
        "[identity]",
        'sign_certificate = "pki/sign.crt"',
        'sign_private_key = "pki/sign.key"',
        'encrypt_certificate = "pki/encrypt.crt"',
        'encrypt_private_key = "pki/encrypt.key"',
        "",
        "[storage]",
        '# or "postgresql+psycopg://user@host/db" (install the postgres extra)',
        f'database_url = "{storage.database_url}"',
        f'spool_dir = "{storage.spool_dir}"',
        "",
        "[limits]",
        f"max_payload_bytes = {LimitsSection().max_payload_bytes}",
        f"max_decompressed_bytes = {LimitsSection().max_decompressed_bytes}",
        "",
        "[delivery]",
        f"max_attempts = {DeliverySection().max_attempts}",
        f"backoff = {DeliverySection().backoff}",
        "",
        "[smtp_relay]",
        'host = ""',
        "port = 587",
        "starttls = true",
        'username = ""',
        'password_file = ""',
        "",
        "[portal]",
        f'base_url = "https://{gateway.hostname}:8443"',
        "allow_ips = []",
        "",
    ]
    return "\n".join(lines)
