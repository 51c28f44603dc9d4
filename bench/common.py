"""What every benchmark does the same way: where it works (a real disk), the machine it reports, a fresh
demo home, and defaults for quick and full runs."""

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from gateway.home import Home
from tests.e2e.daemon import POSTROOM
from tests.e2e.https import query

ROOT = Path(__file__).resolve().parents[1]
#: Not /tmp: it is tmpfs on many machines. Override with --tmp or BENCH_TMPDIR.
DEFAULT_TMP = os.environ.get("BENCH_TMPDIR", "/var/tmp")  # noqa: S108
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs"}


def filesystem(path: Path) -> tuple[str, str, str]:
    """``(type, mount point, device)`` of the filesystem holding ``path`` (the longest matching mount)."""
    path, best = path.resolve(), ("unknown", "", "?")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            device, point, kind = line.split()[:3]
            if path.is_relative_to(point) and len(point) >= len(best[1]):
                best = (kind, point, device)
    return best


def require_real_disk(where: Path) -> None:
    """Refuse tmpfs and friends: fsync is free there, and every figure would flatter us."""
    kind, point, _ = filesystem(where)
    if kind in MEMORY_FILESYSTEMS:
        raise SystemExit(f"{where} is on {kind} ({point}): fsync is free there; use --tmp on a real disk")


def work_folder(tmp: str, name: str) -> Path:
    """A fresh ``postroom-bench-<name>-*`` folder under ``tmp``, on a real disk."""
    require_real_disk(Path(tmp))
    return Path(tempfile.mkdtemp(dir=tmp, prefix=f"postroom-bench-{name}-"))


def machine(**versions: str) -> dict:
    """The machine, the given versions, and the commit measured (files edited since are listed: they ran)."""
    git = [subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.split()
           for a in (["rev-parse", "--short", "HEAD"], ["diff", "--name-only", "HEAD"])]
    model = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {"cpu_count": os.cpu_count(), "cpu_model": model.group(1) if model else "?", "kernel": platform.release(),
            "python": platform.python_version(), **versions, "commit": " ".join(git[0]) or None, "modified": git[1]}


def demo_home(path: Path) -> Home:
    """A fresh ``postroom init --demo`` home on ephemeral ports (the real CLI, as an operator makes one)."""
    home = Home(path)
    subprocess.run([POSTROOM, "--home", str(home.path), "init", "--demo", "--ephemeral-ports"], check=True,
                   capture_output=True)
    return home


def with_defaults(args: argparse.Namespace, quick: dict, full: dict) -> argparse.Namespace:
    """Fill every option left unset from ``quick`` or ``full``, whichever ``--quick`` chose."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def save_results(path: Path, report: dict, load_before: tuple | None = None) -> None:
    """Write a benchmark's JSON (machine, parameters, every raw run) and say where, with the load around it."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    load = f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; " if load_before else ""
    took = f"{report['wall_seconds']} s in all; " if "wall_seconds" in report else ""
    print(f"\n{load}{took}raw figures in {path.relative_to(ROOT)}")


def vm_kb(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


class RSSSampler:
    """Samples a process's VmRSS every ``interval`` seconds while the ``with`` block runs (VmHWM reset first):
    ``rss_samples`` is ``[[seconds, MB], ...]`` for the report's RSS-over-time plot."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.rss_samples: list[list[float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _sample(self) -> None:
        self.rss_samples.append([round(time.monotonic() - self._start, 2), round(vm_kb(self.pid, "VmRSS") / 1024, 1)])

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self._sample()

    def __enter__(self) -> "RSSSampler":
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := the current RSS
        self._start = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self._sample()

    @property
    def before_mb(self) -> float:
        return self.rss_samples[0][1]

    @property
    def peak_mb(self) -> float:
        return max(mb for _, mb in self.rss_samples)


class DaemonSide:
    """What the SFTP and email benchmarks' Postroom sides share: a real daemon (``self.daemon``), its pid, and
    what it stored so far (of ``channel`` only, when it is set)."""

    channel: str | None = None

    def stop(self) -> None:
        self.daemon.stop()

    def pid(self) -> int:
        return self.daemon.process.pid

    def counts(self) -> tuple[int, int]:
        """(messages accepted, quarantined) so far: a run is valid when only the first grew, by what it sent."""
        [(accepted, refused)] = query(
            self.daemon, "SELECT (SELECT count(*) FROM messages WHERE :channel IS NULL OR channel = :channel), "
                         "(SELECT count(*) FROM quarantine)", channel=self.channel)
        return accepted, refused
