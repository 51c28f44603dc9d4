"""What every benchmark does the same way: defaults for quick and full runs, and its folder on a real disk."""

import argparse
import tempfile
from pathlib import Path

from bench.intake import MEMORY_FILESYSTEMS, filesystem


def with_defaults(args: argparse.Namespace, quick: dict, full: dict) -> argparse.Namespace:
    """Fill every option left unset from ``quick`` or ``full``, whichever ``--quick`` chose."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def require_real_disk(where: Path) -> None:
    """Refuse tmpfs and friends: fsync is free there, and every figure would flatter us."""
    kind, point, _ = filesystem(where)
    if kind in MEMORY_FILESYSTEMS:
        raise SystemExit(f"{where} is on {kind} ({point}): fsync is free there; use --tmp on a real disk")


def work_folder(tmp: str, name: str) -> Path:
    """A fresh ``postroom-bench-<name>-*`` folder under ``tmp``, on a real disk."""
    require_real_disk(Path(tmp))
    return Path(tempfile.mkdtemp(dir=tmp, prefix=f"postroom-bench-{name}-"))
