"""The benchmark suite: every ``bench.<name>`` module in its own process, then ``bench/results/REPORT.md``.

One process per benchmark, each in a new session: a crash or a hang in one cannot stop the others, and a
timeout ends the benchmark together with every daemon and peer it started (they share its process group).
Each benchmark writes ``bench/results/<name>.json``; the suite adds ``suite.json`` (what ran, how it ended,
how long it took, its output in ``<name>.log``) so the report can tell "failed" from "not run".

    .venv/bin/python -m bench [--quick] [--only intake,sftp] [--timeout S] [-- extra args for a single --only]
"""

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ORDER = ("intake", "as2", "as2_load", "latency", "sftp", "smtp", "store")
#: Arguments for modules that have no ``--quick`` of their own (every other module gets ``--quick``).
QUICK_ARGS = {"intake": ["--messages", "200", "--warmup", "50"],
              "as2": ["--messages", "50", "--rounds", "1", "--daemon-large", "20"]}
#: Arguments a full run adds, where a module's defaults leave out a measurement the report needs.
FULL_ARGS = {"as2": ["--large", "100", "--daemon-large", "100"]}
TIMEOUT = {False: 3600, True: 300}
GRACE = 30  # seconds between SIGINT (the benchmark's cleanup runs) and SIGKILL


def command(name: str, quick: bool, extra: list[str]) -> list[str]:
    args = (QUICK_ARGS.get(name, ["--quick"]) if quick else FULL_ARGS.get(name, [])) + extra
    return [sys.executable, "-m", f"bench.{name}", *args]


def present(name: str) -> bool:
    return importlib.util.find_spec(f"bench.{name}") is not None


def run(name: str, argv: list[str], timeout: float) -> dict:
    """Run one benchmark, its output to the terminal and to ``<name>.log``; how it ended."""
    print(f"\n=== {name}: {' '.join(argv[1:])}", flush=True)
    start = time.monotonic()
    with open(RESULTS / f"{name}.log", "w") as log:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        tee = threading.Thread(target=_tee, args=(process.stdout, log), daemon=True)
        tee.start()
        status = "ok"
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = "timeout"
            _stop(process)
        except KeyboardInterrupt:
            _stop(process)
            raise
        _sweep(process.pid)
        tee.join(5)
    if status == "ok" and process.returncode != 0:
        status = "failed"
    seconds = round(time.monotonic() - start, 1)
    print(f"=== {name}: {status} (exit {process.returncode}) in {seconds} s", flush=True)
    return {"name": name, "status": status, "returncode": process.returncode, "seconds": seconds,
            "command": argv[1:], "log": f"{name}.log"}


def _tee(stream, log) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)


def _sweep(group: int) -> None:
    """SIGKILL whatever the benchmark left running in its process group (a daemon its cleanup missed)."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop(process: subprocess.Popen) -> None:
    """SIGINT to the whole group (the benchmark's ``finally`` stops its daemons), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGINT, GRACE), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                     epilog="Arguments it does not know go to the benchmark named by a single --only.")
    parser.add_argument("--quick", action="store_true", help="the smoke version of every benchmark (about 3 minutes)")
    parser.add_argument("--only", type=lambda s: [n.strip() for n in s.split(",") if n.strip()], default=list(ORDER),
                        help=f"comma-separated benchmarks to run, in the suite's order ({','.join(ORDER)})")
    parser.add_argument("--timeout", type=float, help="seconds per benchmark (default 3600, 300 with --quick)")
    parser.add_argument("--no-report", action="store_true", help="do not write REPORT.md at the end")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    unknown = sorted(set(args.only) - set(ORDER))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(ORDER)}")
    if extra and len(args.only) != 1:
        parser.error(f"{' '.join(extra)}: extra arguments need exactly one --only benchmark")
    return args, extra


def main(argv: list[str] | None = None) -> None:
    args, extra = parse(argv)
    timeout = args.timeout or TIMEOUT[args.quick]
    RESULTS.mkdir(exist_ok=True)
    began = datetime.now(UTC).isoformat(timespec="seconds")
    outcomes = []
    for name in (n for n in ORDER if n in args.only):
        if not present(name):
            print(f"\n=== {name}: not present (no bench/{name}.py yet), skipped", flush=True)
            outcomes.append({"name": name, "status": "not present"})
        else:
            outcomes.append(run(name, command(name, args.quick, extra), timeout))
        (RESULTS / "suite.json").write_text(json.dumps(
            {"date": began, "quick": args.quick, "benchmarks": outcomes}, indent=2) + "\n")
    print("\nsuite: " + ", ".join(f"{o['name']} {o['status']}" for o in outcomes))
    if not args.no_report:
        print(f"report: {report.write(RESULTS).relative_to(ROOT)}")
    if any(o["status"] in ("failed", "timeout") for o in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
