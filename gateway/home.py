# -*- test-case-name: tests.gateway.test_config -*-
"""Where everything of one Postroom installation lives, relative to its home directory."""

import os
from pathlib import Path

import attrs

DEFAULT_HOME = "./var"


@attrs.frozen
class Home:
    """The layout of ``postroom --home DIR``."""

    path: Path = attrs.field(converter=lambda p: Path(p).absolute())

    @classmethod
    def from_env(cls, value: str | None = None) -> "Home":
        """``--home`` if given, else ``POSTROOM_HOME``, else ``./var``."""
        return cls(value or os.environ.get("POSTROOM_HOME") or DEFAULT_HOME)

    @property
    def config_file(self) -> Path:
        """``postroom.toml``."""
        return self.path / "postroom.toml"

    @property
    def pki(self) -> Path:
        """The gateway's keys and certificates (0700)."""
        return self.path / "pki"

    @property
    def dev_ca(self) -> Path:
        """The development CA that ``init`` creates and ``pki issue`` uses."""
        return self.pki / "dev-ca"

    @property
    def run(self) -> Path:
        """Runtime state of a running daemon (``ports.json``)."""
        return self.path / "run"

    @property
    def ports_file(self) -> Path:
        """Real bound ports of a running daemon, written once every door listens."""
        return self.run / "ports.json"

    @property
    def demo(self) -> Path:
        """Demo partners' keys and certificates (``init --demo``)."""
        return self.path / "demo"

    def resolve(self, value: str | Path) -> Path:
        """A path from the config: absolute as given, else relative to the home."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.path / path
