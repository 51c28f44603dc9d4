"""Start and stop a real ``postroom serve`` process for end-to-end tests.

Readiness is ``HOME/run/ports.json`` appearing (written atomically once every door listens), the same
signal an operator's scripts use. Every process started here is stopped by the fixture that made it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.home import Home

POSTROOM = str(Path(sys.executable).with_name("postroom"))


def private_home(template: Path, directory: Path, *, backoff: int | None = None) -> Home:
    """A copy of a demo home for one module's daemon: directory changes noticed within a quarter second,
    and (``backoff``) retries of pushes and receipts within seconds."""
    target = directory / "home"
    shutil.copytree(template, target, symlinks=True)
    home = Home(target)
    text = home.config_file.read_text() + "\n[directory]\nreload_seconds = 0.25\n"
    if backoff is not None:
        text = re.sub(r"(?m)^backoff = \d+$", f"backoff = {backoff}", text)
    home.config_file.write_text(text)
    return home


class Daemon:
    """One ``postroom serve`` child process on ephemeral loopback ports."""

    def __init__(self, home: Home):
        self.home = home
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.log = home.path / "serve.log"

    def launch(self, env: dict[str, str] | None = None) -> "Daemon":
        """Start (with extra environment variables, if given) without waiting for anything."""
        self.home.ports_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [POSTROOM, "--home", str(self.home.path), "serve"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        return self

    def start(self, timeout: float = 30, env: dict[str, str] | None = None) -> "Daemon":
        """Start (with extra environment variables, if given) and wait until every door listens."""
        self.launch(env)
        deadline = time.monotonic() + timeout
        while not self.home.ports_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"postroom serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"postroom serve did not listen within {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.ports = json.loads(self.home.ports_file.read_text())
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit status (killing it if it hangs)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``postroom --home HOME ARGS`` and fail the test if it fails."""
        result = subprocess.run([POSTROOM, "--home", str(self.home.path), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result
