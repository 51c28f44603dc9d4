"""Fixtures for tests that drive independent AS2 peers (pyas2lib, django-pyas2) as separate processes.

- ``pyas2lib_python`` / ``django_pyas2_python`` (session): the peers' venv pythons, built on first
  use under ``.peers/`` and reused afterwards (venvs.py). No network → the test errors, it does not
  skip.
- ``peer_identity`` (session): ``peer_identity("PEERPY")`` → harness.Identity with RSA-2048 signing,
  encryption and TLS certificates from the session's ``dev_ca``; the same name gives the same files.
- ``pyas2lib`` (per test): harness.Pyas2lib — ``.send(...)`` → dict, ``.serve(config, ...)`` →
  a started server; every server is stopped when the test ends.
- ``django_pyas2`` (per test): a factory; ``django_pyas2(config, tls_cert=..., ...)`` → a migrated,
  configured and running harness.DjangoPeer, stopped when the test ends.
- ``mdn_catcher`` (per test): a harness.MdnCatcher running on plain HTTP.
"""

import pytest

from tests.peers.harness import DjangoPeer, MdnCatcher, Pyas2lib, make_identity
from tests.peers.venvs import peer_python


@pytest.fixture(scope="session")
def pyas2lib_python():
    return peer_python("pyas2lib")


@pytest.fixture(scope="session")
def django_pyas2_python():
    return peer_python("django-pyas2")


@pytest.fixture(scope="session")
def peer_identity(dev_ca, tmp_path_factory):
    made = {}
    root = tmp_path_factory.mktemp("peer-identities")

    def identity(as2_id: str):
        if as2_id not in made:
            made[as2_id] = make_identity(dev_ca, root / as2_id.lower(), as2_id)
        return made[as2_id]

    return identity


@pytest.fixture
def pyas2lib(pyas2lib_python, tmp_path):
    peer = Pyas2lib(pyas2lib_python, tmp_path / "pyas2lib")
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def django_pyas2(django_pyas2_python, tmp_path):
    peers: list[DjangoPeer] = []

    def start(config: dict, *, tls_cert=None, tls_key=None, client_ca=None, serve: bool = True) -> DjangoPeer:
        peer = DjangoPeer(django_pyas2_python, tmp_path / f"django-pyas2-{len(peers)}")
        peers.append(peer)
        peer.init(config)
        if serve:
            peer.serve(tls_cert=tls_cert, tls_key=tls_key, client_ca=client_ca)
        return peer

    try:
        yield start
    finally:
        for peer in peers:
            peer.stop()


@pytest.fixture
def mdn_catcher():
    with MdnCatcher() as catcher:
        yield catcher
