"""Fixtures for end-to-end tests: a demo home with fast directory reloads and a running daemon."""

import shutil

import pytest

from tests.e2e.daemon import Daemon

pytestmark = pytest.mark.e2e


@pytest.fixture
def home(demo_home):
    """A demo home whose daemon notices directory changes within a quarter second."""
    with demo_home.config_file.open("a") as f:
        f.write("\n[directory]\nreload_seconds = 0.25\n")
    return demo_home


@pytest.fixture
def daemon(home):
    """A running ``postroom serve``; stopped (and killed if need be) after the test."""
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required for end-to-end tests (make test installs it)")
    d = Daemon(home).start()
    yield d
    d.stop()
