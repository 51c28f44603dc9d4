"""Intake throughput: accepted 10 KB invoices per second through ``Intake.accept()``, fully durable.

The target (issue): at least 1,000 accepted 10 KB documents/s with 64 concurrent writers on a
2-core machine, every one fsynced and committed before its ``Decision``. The intake is wired as
``gateway.app`` wires it (io pool of 32 threads, cpu pool of max(2, cores), one
:class:`GroupCommitter`, the home's real receipt signer, SQLite in WAL with ``synchronous=FULL``) over
a fresh copy of one ``postroom init --demo`` home per run, on the real disk: fsync on tmpfs is free,
so a figure taken there would say nothing.

Figures are never alone; each comes with peers measured in the same process, on the same disk:

* ``max_batch=1`` is the peer of the larger batches: one publish + one transaction per message.
* the raw disk: fsync'd 10 KB file writes per second from 64 threads, measured just before each
  run (a shared machine's disk drifts), and once from 1 thread, so the reader sees how close the
  intake gets to what the disk itself can do.

The second table says where the time goes, from timers and counters that add no logic: CPU per
message split by thread (reactor, io, cpu, writer), fsyncs per message through the blob store's
filesystem seam (SQLite's own WAL fsync comes on top, once per batch), each step's mean wall time as
the reactor sees it, and how busy the one writer thread is publishing blobs and running each
message's SQL. ``--profile`` repeats the largest batch under cProfile, one profiler per thread, and
prints each kind of thread. Results: the tables on stdout and ``bench/results/intake.json``.
"""

import argparse
import cProfile
import os
import pstats
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy
from sqlalchemy import func, select
from twisted.internet import defer, task

from admin.initialise import initialise
from bench.common import DEFAULT_TMP, MEMORY_FILESYSTEMS, ROOT, filesystem, machine, save_results
from gateway.committer import GroupCommitter
from gateway.config import load
from gateway.home import Home
from gateway.intake import Intake
from gateway.pools import ThreadPoolService
from gateway.reactor import install_reactor
from gateway.receipts import ReceiptSigner
from partners.directory import load_directory
from protocols.envelope import Envelope
from spool.blobs import BlobStore
from spool.database import create_engine
from spool.fs import OSFileSystem
from spool.schema import messages

RESULTS = ROOT / "bench" / "results" / "intake.json"
BASE = ROOT / "tests" / "fixtures" / "invoices" / "peppol-bis3" / "base-example.xml"
SIZE = 10 * 1024


# ---------------------------------------------------------------------------------------------------------------
# Inputs and the disk peer
# ---------------------------------------------------------------------------------------------------------------

def invoices(prefix: str, count: int) -> list[bytes]:
    """``count`` UBL invoices of exactly 10 KB, each with its own number, padded with a ``cbc:Note``."""
    head, tail = BASE.read_text(encoding="utf-8").split("</cbc:InvoiceTypeCode>", 1)
    head += "</cbc:InvoiceTypeCode>\n    <cbc:Note>"  # UBL's place for a note: right after the type code
    tail = "</cbc:Note>" + tail
    assert head.count("<cbc:ID>Snippet1</cbc:ID>") == 1
    out = []
    for i in range(count):
        doc = head.replace("<cbc:ID>Snippet1</cbc:ID>", f"<cbc:ID>{prefix}-{i:07d}</cbc:ID>") + tail
        pad = SIZE - len(doc.encode("utf-8"))
        assert pad >= 0, "the base example is already larger than the target size"
        note = ("Padding so the document weighs what a typical invoice does. " * (pad // 60 + 1))[:pad]
        out.append(doc.replace("<cbc:Note></cbc:Note>", f"<cbc:Note>{note}</cbc:Note>").encode("utf-8"))
    return out


def disk_rate(root: Path, threads: int, files: int) -> float:
    """Files/s when ``threads`` threads each create, write 10 KB, fsync and close their share of ``files``."""
    folder = Path(tempfile.mkdtemp(dir=root, prefix="disk-"))
    data, share = os.urandom(SIZE), max(1, files // threads)

    def writer(t: int) -> None:
        for i in range(share):
            fd = os.open(folder / f"{t}-{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder)
    return share * threads / elapsed


# ---------------------------------------------------------------------------------------------------------------
# The intake under test, with counters and timers that add no logic
# ---------------------------------------------------------------------------------------------------------------

def thread_group(name: str) -> str:
    """``reactor``, ``io``, ``cpu`` or ``commit`` (the writer) for the threads the intake uses."""
    if name == "MainThread":
        return "reactor"
    return name.split("-")[2] if name.startswith("PoolThread-postroom-") else "other"


def thread_cpu() -> Counter[str]:
    """CPU seconds used so far by each group of live threads (Linux: ``/proc/self/task/*/stat``)."""
    used: Counter[str] = Counter()
    for thread in threading.enumerate():
        try:
            stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name: state, ppid, ...
        used[thread_group(thread.name)] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


class CountingFS(OSFileSystem):
    """The real filesystem, counting file and directory fsyncs (the blob store's seam)."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        with self._lock:
            self.counts["file"] += 1

    def fsync_dir(self, path: Path) -> None:
        super().fsync_dir(path)
        with self._lock:
            self.counts["dir"] += 1


class TimedStore(BlobStore):
    """The real blob store, adding the time :meth:`publish` takes (renames, directory fsyncs) to ``spent``."""

    def __init__(self, spent: dict[str, float], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._spent = spent

    def publish(self, staged) -> None:
        start = time.perf_counter()
        try:
            super().publish(staged)
        finally:
            self._spent["publish"] += time.perf_counter() - start


class Rig:
    """An intake wired like the daemon's (``gateway.app``) over a private copy of the template home.

    :attr:`phases`: each step's wall time per message as the reactor sees it (queueing included);
    :attr:`writer`: seconds the writer thread spent publishing blobs and running ``record`` (the SQL);
    :attr:`fs`: fsyncs made through the blob store.
    """

    def __init__(self, reactor, template: Path, folder: Path, max_batch: int):
        shutil.copytree(template, folder, symlinks=True)
        config = load(Home(folder))
        self.engine = create_engine(config.database_url)
        with self.engine.connect() as conn:
            directory = load_directory(conn)
        self.acme = directory.get("acme")
        self.phases: dict[str, list[float]] = defaultdict(list)
        self.writer: dict[str, float] = defaultdict(float)
        self.fs = CountingFS()
        store = TimedStore(self.writer, config.home.resolve(config.storage.spool_dir), fs=self.fs,
                           max_bytes=config.limits.max_payload_bytes)
        self.io = ThreadPoolService(reactor, "io", threads=32)
        self.cpu = ThreadPoolService(reactor, "cpu", threads=max(2, os.cpu_count() or 2))
        self.committer = GroupCommitter(reactor, store, self.engine, max_batch=max_batch)
        for service in (self.io, self.cpu, self.committer):
            service.startService()
        self.intake = Intake(store, self._timed("stage", self.io.run), self._timed("examine", self.cpu.run),
                             self._timed("commit", self._commit), lambda: directory,
                             ReceiptSigner.from_config(config), lambda: datetime.now(UTC))

    def _commit(self, blobs, record):
        def timed(conn):
            start = time.perf_counter()
            try:
                return record(conn)
            finally:
                self.writer["rows"] += time.perf_counter() - start
        return self.committer.commit(blobs, timed)

    def _timed(self, phase: str, call):
        def run(*args):
            start = time.perf_counter()
            return call(*args).addBoth(lambda result: (self.phases[phase].append(time.perf_counter() - start),
                                                       result)[1])
        return run

    def reset(self) -> None:
        """Forget the warm-up."""
        for counters in (self.committer.batch_sizes, self.phases, self.writer, self.fs.counts):
            counters.clear()

    def count_messages(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(messages))

    def stop(self) -> None:
        for service in (self.committer, self.cpu, self.io):
            service.stopService()
        self.engine.dispose()


async def drive(rig: Rig, payloads: list[bytes], writers: int, tag: str) -> tuple[float, list[float]]:
    """Keep exactly ``writers`` calls to ``accept()`` in flight until every payload is in; (seconds, latencies)."""
    todo, latencies = iter(enumerate(payloads)), []

    async def writer() -> None:
        for i, payload in todo:
            envelope = Envelope(rig.acme, "https", external_id=f"{tag}-{i}", content_type="application/xml")
            start = time.perf_counter()
            decision = await rig.intake.accept(envelope, payload)
            latencies.append(time.perf_counter() - start)
            if decision.outcome != "accepted":
                raise AssertionError(f"{tag}-{i}: {decision.outcome} {decision.findings}")

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(writer()) for _ in range(writers)], consumeErrors=True)
    return time.perf_counter() - start, latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(reactor, args, template: Path, work: Path, batch: int, label: str) -> dict:
    """One run at ``max_batch=batch``: warm up, then time ``args.messages`` accepts and check every row."""
    disk = disk_rate(work, 64, args.messages)
    rig = Rig(reactor, template, work / label, batch)
    try:
        await drive(rig, invoices(f"WARM-{label}", args.warmup), args.writers, f"warm-{label}")
        rig.reset()
        payloads = invoices(f"INV-{label}", args.messages)
        cpu, threads = time.process_time(), thread_cpu()
        seconds, latencies = await drive(rig, payloads, args.writers, label)
        cpu, threads = time.process_time() - cpu, thread_cpu() - threads
        rows = rig.count_messages()  # nothing else runs now: reading on the reactor thread is harmless
        if rows != args.warmup + args.messages:
            raise AssertionError(f"{label}: {rows} rows in messages, expected {args.warmup + args.messages}")
        n, sizes = args.messages, list(rig.committer.batch_sizes)
        return {"batch": batch, "seconds": seconds, "rate": n / seconds, "disk": disk,
                "formed": sum(sizes) / len(sizes), "cpu": cpu / n, "threads": {k: v / n for k, v in threads.items()},
                "p50": quantile(latencies, 0.5), "p99": quantile(latencies, 0.99),
                "fsyncs": {k: v / n for k, v in rig.fs.counts.items()},
                "phases": {k: sum(v) / len(v) for k, v in rig.phases.items()},
                "writer": {k: v / seconds for k, v in rig.writer.items()}}
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------------------------------
# Profiling: one cProfile per thread, merged by kind of thread
# ---------------------------------------------------------------------------------------------------------------

class ThreadProfiles:
    """Profiles the calling thread and every thread started after :meth:`start`, grouped by pool."""

    def __init__(self):
        self.groups: dict[str, list[cProfile.Profile]] = defaultdict(list)
        self._main = cProfile.Profile()

    def _hook(self, *_):
        profile = cProfile.Profile()
        self.groups[thread_group(threading.current_thread().name)].append(profile)
        profile.enable()  # replaces this hook for the rest of the thread's life

    def start(self) -> None:
        threading.setprofile(self._hook)
        self._main.enable()

    def stop(self) -> None:
        threading.setprofile(None)
        self._main.disable()
        self.groups["reactor"].append(self._main)

    def report(self, seconds: float, lines: int) -> None:
        entry = {"commit": "commit_batch", "cpu": "thd_examine", "io": "thd_stage"}
        for group in ("reactor", "commit", "cpu", "io"):
            profiles = self.groups.get(group)
            if not profiles:
                continue
            stats = pstats.Stats(*profiles)
            busy = sum(v[3] for k, v in stats.stats.items() if k[2] == entry.get(group))
            share = f", in {entry[group]} {busy / seconds / len(profiles):.0%} of the time" if group in entry else ""
            print(f"\n--- {group}: {len(profiles)} thread(s){share}")
            stats.strip_dirs().sort_stats("cumulative" if group != "reactor" else "tottime").print_stats(lines)


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------

def print_tables(results: list[dict], serial_disk: float, writers: int) -> None:
    peer = results[0]
    print(f"\nIntake: {writers} accept() calls in flight, 10 KB UBL invoices, each fsynced and committed before "
          f"its Decision.\nPeers: max_batch={peer['batch']} (one publish + transaction per message) and the disk "
          "(fsync'd 10 KB files/s from 64 threads, measured just before each run).")
    print(f"{'max_batch':>9} {'msgs/s':>7} {'seconds':>7} {'vs batch ' + str(peer['batch']):>10} {'disk/s':>7} "
          f"{'vs disk':>7} {'mean batch':>10} {'p50 ms':>7} {'p99 ms':>7}")
    for r in results:
        print(f"{r['batch']:>9} {r['rate']:>7.0f} {r['seconds']:>7.2f} {r['rate'] / peer['rate']:>9.2f}x "
              f"{r['disk']:>7.0f} {r['rate'] / r['disk']:>7.1%} {r['formed']:>10.1f} {r['p50'] * 1e3:>7.1f} "
              f"{r['p99'] * 1e3:>7.1f}")
    print(f"(disk from 1 thread: {serial_disk:.0f} fsync'd files/s, {1e3 / serial_disk:.2f} ms per fsync)")
    print("\nWhere the time goes, per message: CPU by thread (reactor/io/cpu/writer), fsyncs by the blob store, "
          "each step's\nwall time from the reactor (queueing included), share of the run the writer thread spent "
          "publishing blobs and in SQL")
    print(f"{'max_batch':>9} {'CPU ms':>6} {'= rea/io/cpu/wri':>19} {'fsyncs f+d':>10} {'stage ms':>8} "
          f"{'examine ms':>10} {'commit ms':>9} {'publish':>7} {'SQL':>4}")
    for r in results:
        f, p, w, t = r["fsyncs"], r["phases"], r["writer"], r["threads"]
        split = "/".join(f"{t.get(k, 0) * 1e3:.1f}" for k in ("reactor", "io", "cpu", "commit"))
        print(f"{r['batch']:>9} {r['cpu'] * 1e3:>6.2f} {split:>19} {f.get('file', 0):>4.1f}+{f.get('dir', 0):<5.2f} "
              f"{p['stage'] * 1e3:>8.1f} {p['examine'] * 1e3:>10.1f} {p['commit'] * 1e3:>9.1f} "
              f"{w.get('publish', 0):>7.0%} {w.get('rows', 0):>4.0%}")


def environment() -> dict:
    """Machine, versions and the commit measured."""
    return machine(sqlite=sqlite3.sqlite_version, sqlalchemy=sqlalchemy.__version__)


def save(args, results: list[dict], serial_disk: float, kind: str, load_before: tuple) -> None:
    """``bench/results/intake.json``: every batch size's figures (seconds, rates per second)."""
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {**environment(), "filesystem": kind, "load_before": load_before,
                          "load_after": os.getloadavg()},
              "parameters": {"messages": args.messages, "warmup": args.warmup, "writers": args.writers,
                             "batches": args.batches, "key_bits": args.key_bits, "invoice_bytes": SIZE},
              "serial_disk_per_s": serial_disk, "runs": results}
    save_results(RESULTS, report, load_before)


async def amain(reactor, args) -> None:
    root = Path(args.tmp)
    kind, point, device = filesystem(root)
    print(f"disk: {root} is {kind} on {point} ({device}); {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if kind in MEMORY_FILESYSTEMS:
        raise SystemExit(f"{root} is {kind}: fsync costs nothing there; pass --tmp on a real disk")
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(dir=root, prefix="postroom-bench-"))
    try:
        template = work / "template"
        initialise(Home(template), demo=True, key_bits=args.key_bits)
        serial_disk = disk_rate(work, 1, max(100, args.messages // 10))
        results = [await measure(reactor, args, template, work, batch, f"b{batch}") for batch in args.batches]
        print_tables(results, serial_disk, args.writers)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        save(args, results, serial_disk, kind, load_before)
        if args.profile:
            profiles = ThreadProfiles()
            profiles.start()
            try:
                r = await measure(reactor, args, template, work, max(args.batches), "profiled")
            finally:
                profiles.stop()
            print(f"\nProfile of max_batch={r['batch']}: {r['rate']:.0f} msgs/s under cProfile, "
                  f"mean batch {r['formed']:.1f}")
            profiles.report(r["seconds"], args.profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark on the asyncio reactor (as the daemon does)."""
    parser = argparse.ArgumentParser(prog="python -m bench.intake", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=int(os.environ.get("BENCH_MESSAGES", 2000)),
                        help="timed messages per batch size (default 2000, or $BENCH_MESSAGES)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed messages first (default 200)")
    parser.add_argument("--writers", type=int, default=64, help="accept() calls kept in flight (default 64)")
    parser.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8, 64],
                        help="GroupCommitter max_batch values, the first one is the peer (default 1,8,64)")
    parser.add_argument("--key-bits", type=int, default=2048,
                        help="RSA size of the gateway's receipt key (default 2048; `postroom init` uses 3072)")
    parser.add_argument("--tmp", default=DEFAULT_TMP, help="a directory on the disk under test (default /var/tmp)")
    parser.add_argument("--profile", type=int, nargs="?", const=25, default=0, metavar="LINES",
                        help="then profile the largest batch, printing LINES lines per kind of thread")
    args = parser.parse_args(argv)
    install_reactor()
    task.react(amain, (args,))


if __name__ == "__main__":
    main()
