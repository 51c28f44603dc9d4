"""Build and reuse the independent AS2 peers' own virtualenvs (pyas2lib, django-pyas2).

Both peers are GPL, so they are never imported here or by Postroom: each gets a venv of its own under
``<repo>/.peers/<name>/<key>/`` (``.peers/`` is gitignored), where ``<key>`` hashes the requirements
file and the Python version, so changing a pin builds a fresh venv and an unchanged one is reused.
A file lock (``.peers/<name>/build.lock``) makes concurrent test processes wait for one build instead
of racing. A venv counts as built only once ``.postroom-peer-ready`` is written, after pip and an
import check succeeded; a half-built one (killed run) is deleted and built again.

Every venv also gets ``oscrypto_fix.py`` plus a ``zz_oscrypto_fix.pth`` line importing it, so any
process in it can import pyas2lib on OpenSSL 3 (see oscrypto_fix.py).

If the venv cannot be built (no network to PyPI, a pin that no longer resolves) ``peer_python``
raises ``PeerVenvError`` with pip's output: the tests fail loudly instead of skipping.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
REPO = PEERS_DIR.parents[1]
SHIM = PEERS_DIR / "oscrypto_fix.py"
READY = ".postroom-peer-ready"

# name -> (requirements file, a module whose import proves the venv works)
PEERS = {
    "pyas2lib": ("requirements-pyas2lib.txt", "pyas2lib"),
    "django-pyas2": ("requirements-django-pyas2.txt", "pyas2lib"),
}

BUILD_TIMEOUT = 900  # seconds for venv + pip; pip itself retries and times out per request


class PeerVenvError(RuntimeError):
    """A peer virtualenv could not be built or does not work."""


def peers_root() -> Path:
    """Where the venvs live: ``$POSTROOM_PEERS_DIR`` or ``<repo>/.peers``."""
    return Path(os.environ.get("POSTROOM_PEERS_DIR") or REPO / ".peers")


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for running a peer process: the caller's, minus anything that would point it at
    the product's virtualenv or site-packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV",
                                                             "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    env.update(extra or {})
    return env


def _key(requirements: Path) -> str:
    digest = hashlib.sha256()
    digest.update(requirements.read_bytes())
    digest.update(f"{sys.version_info[:3]}".encode())
    return digest.hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list, log: Path, what: str, timeout: float) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(map(str, cmd))}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=peer_env(), timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired as e:
            raise PeerVenvError(f"{what} took longer than {timeout:.0f} s; log: {log}\n{_tail(log)}") from e
    if proc.returncode != 0:
        raise PeerVenvError(
            f"{what} failed (exit {proc.returncode}). Is PyPI reachable? Log: {log}\n{_tail(log)}"
        )


def _tail(log: Path, lines: int = 40) -> str:
    # pip's "Location ... is ignored" warnings for this machine's optional local indexes are noise
    text = [line for line in log.read_text(errors="replace").splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(text[-lines:])


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, env=peer_env(), check=True, timeout=60,
    )
    return Path(out.stdout.strip())


def install_shim(python: Path) -> None:
    """Copy oscrypto_fix.py into the venv and add the .pth line importing it (idempotent, cheap)."""
    site = _site_packages(python)
    target = site / "oscrypto_fix.py"
    if not target.exists() or target.read_bytes() != SHIM.read_bytes():
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(SHIM, tmp)
        os.replace(tmp, target)
    pth = site / "zz_oscrypto_fix.pth"
    if not pth.exists() or pth.read_text() != "import oscrypto_fix\n":
        pth.write_text("import oscrypto_fix\n")


def peer_python(name: str) -> Path:
    """The python of peer ``name``'s virtualenv, building it first if needed."""
    if name not in PEERS:
        raise PeerVenvError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    requirements_name, probe = PEERS[name]
    requirements = PEERS_DIR / requirements_name
    base = peers_root() / name
    venv = base / _key(requirements)
    python = _python(venv)
    with _locked(base / "build.lock"):
        if not (venv / READY).exists() or not python.exists():
            _build(name, venv, requirements, probe)
        install_shim(python)
    return python


def _build(name: str, venv: Path, requirements: Path, probe: str) -> None:
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    for old in venv.parent.iterdir():  # venvs of earlier requirement versions
        if old.is_dir() and old != venv:
            shutil.rmtree(old, ignore_errors=True)
    log = venv.parent / f"build-{venv.name}.log"
    log.write_bytes(b"")
    _run([sys.executable, "-m", "venv", str(venv)], log, f"creating the {name} venv", 120)
    python = _python(venv)
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
          "-r", str(requirements)], log, f"pip install -r {requirements.name}", BUILD_TIMEOUT)
    install_shim(python)
    _run([str(python), "-c", f"import {probe}"], log, f"importing {probe} in the {name} venv", 120)
    (venv / READY).write_text(f"built in {time.monotonic() - started:.1f} s from {requirements.name}\n")
