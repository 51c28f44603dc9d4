"""Email door against aiosmtpd: signed mails with one 10 KB invoice each, over parallel STARTTLS connections.

The issue's figure: messages/s for 1,000 signed mails, one 10 KB UBL invoice each, over 4 parallel SMTP
connections. Servers, side by side in one invocation, alternating, ``--rounds`` times (medians and ratio):

* Postroom: a real ``postroom serve`` daemon in a fresh ``postroom init --demo`` home on the real disk; its
  ``250`` after DATA means the mail's S/MIME signature checked and the invoice fsynced and committed.
* aiosmtpd: the floor, what a minimal durable Python SMTP receiver does: STARTTLS with the gateway's own
  certificate, and a handler that writes each mail to its own file, fsyncs it and its directory (a new file
  is not durable before its directory entry is) in a worker thread, then answers ``250``. A child process,
  so it shares no GIL with the clients.

Every mail is distinct (its own invoice number and Message-ID) and signed by acme with ``openssl smime -sign
-md sha256`` before anything is timed. Each connection: EHLO, STARTTLS, EHLO, then MAIL/RCPT/DATA again and
again, one thread per connection, with TCP_NODELAY as Postfix's client sets it (``--nagle`` leaves it off,
as plain smtplib does: then every mail waits ~40 ms for a delayed ACK, whatever the server). Timed from the
first MAIL to the last reply; any reply other than 250 makes the run invalid (printed, counted, left out of
the medians). Postroom must also have exactly one new ``email`` message per mail in its database, and
nothing quarantined. Server CPU runs from idle to idle, so Postroom's includes filing into the mailbox.

Results: a table on stdout and ``bench/results/smtp.json`` (every round's figures). ``--profile`` then
sends one more batch to a daemon under cProfile (one profiler per thread, on the thread's CPU clock) and
prints where its CPU went.

    .venv/bin/python -m bench.smtp [--quick] [--mails 1000] [--connections 4] [--rounds 3] [--profile [LINES]]
"""

import argparse
import json
import os
import pstats
import re
import shutil
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aiosmtpd

from bench.common import (
    DEFAULT_TMP,
    ROOT,
    DaemonSide,
    demo_home,
    filesystem,
    machine,
    save_results,
    vm_kb,
    with_defaults,
    work_folder,
)
from bench.intake import invoices
from bench.sftp import cpu_seconds, settle
from gateway.home import Home
from tests.e2e.daemon import Daemon

RESULTS = ROOT / "bench" / "results" / "smtp.json"
SENDER, RECIPIENT = "invoices@acme.example", "invoices@localhost"
FULL = {"mails": 1000, "rounds": 3}
QUICK = {"mails": 100, "rounds": 1}


# ---------------------------------------------------------------------------------------------------------------
# Mails
# ---------------------------------------------------------------------------------------------------------------

def unsigned(number: str, invoice: bytes) -> bytes:
    """multipart/mixed: a short text part and the invoice as a base64 XML attachment, CRLF line ends."""
    message = EmailMessage()
    message.set_content(f"Please find invoice {number} attached.\n")
    message.add_attachment(invoice, maintype="application", subtype="xml", filename=f"{number}.xml")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def sign(home: Home, number: str, invoice: bytes) -> bytes:
    """The mail signed by acme with ``openssl smime`` (multipart/signed), its own Message-ID, CRLF throughout:
    openssl writes bare LF, which SMTP does not carry."""
    acme = home.demo / "acme"
    out = subprocess.run(["openssl", "smime", "-sign", "-md", "sha256", "-signer", str(acme / "acme-sign.crt"),
                          "-inkey", str(acme / "acme-sign.key"), "-from", SENDER, "-to", RECIPIENT,
                          "-subject", f"Invoice {number}"], input=unsigned(number, invoice), capture_output=True,
                         check=True).stdout
    mail = f"Message-ID: <{number}@acme.example>\n".encode() + out
    return re.sub(rb"\r?\n", b"\r\n", mail)


def prepare(home: Home, batches: int, count: int) -> list[list[bytes]]:
    """``batches`` lists of ``count`` signed mails, every invoice number distinct (so none is a duplicate
    document); openssl runs in parallel, one process per call, from a thread pool."""
    stamp = datetime.now(UTC).strftime("%H%M%S")
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
        out = []
        for b in range(batches):
            docs = invoices(f"SMTP{stamp}R{b + 1}", count)
            numbers = [re.search(rb"<cbc:ID>(SMTP[^<]+)</cbc:ID>", d).group(1).decode() for d in docs]
            out.append(list(pool.map(lambda pair: sign(home, *pair), zip(numbers, docs, strict=True))))
    return out


# ---------------------------------------------------------------------------------------------------------------
# The two servers
# ---------------------------------------------------------------------------------------------------------------

class Postroom(DaemonSide):
    """A ``postroom serve`` daemon in a fresh demo home (``profile``: under one cProfile per thread)."""

    name = "postroom"
    channel = "email"

    def __init__(self, work: Path):
        self.home = demo_home(work / "home")
        self.daemon = Daemon(self.home)
        self.profiles = work / "profiles"

    def start(self, profile: bool = False) -> "Postroom":
        if not profile:
            self.daemon.start()
        else:  # Daemon.start's wait for the ports file, with a profiling wrapper as the command
            self.profiles.mkdir(exist_ok=True)
            self.home.ports_file.unlink(missing_ok=True)
            with self.daemon.log.open("ab") as log:
                self.daemon.process = subprocess.Popen(
                    [sys.executable, "-c", PROFILED_SERVE, str(self.profiles), str(self.home.path)], stdout=log,
                    stderr=subprocess.STDOUT, cwd=ROOT)
            while not self.home.ports_file.exists():
                if self.daemon.process.poll() is not None:
                    raise RuntimeError(f"profiled serve exited:\n{self.daemon.log.read_text()[-2000:]}")
                time.sleep(0.05)
            self.daemon.ports = json.loads(self.home.ports_file.read_text())
        self.port = self.daemon.ports["smtp"]
        return self



#: ``postroom serve`` with one cProfile per thread, timed by the thread's own CPU clock (so a thread waiting for
#: the GIL, a lock or the disk is not charged); on exit, one pstats file per kind of thread.
PROFILED_SERVE = textwrap.dedent("""
    import cProfile, os, pstats, sys, threading, time
    from collections import defaultdict
    from bench.intake import thread_group

    out, home = sys.argv[1:3]
    groups = defaultdict(list)

    def hook(*_):
        profile = cProfile.Profile(time.thread_time)
        groups[thread_group(threading.current_thread().name)].append(profile)
        profile.enable()  # replaces this hook for the rest of the thread's life

    main_profile = cProfile.Profile(time.thread_time)
    threading.setprofile(hook)
    main_profile.enable()
    sys.argv = ["postroom", "--home", home, "serve"]
    try:
        from admin.cli import main
        main()
    except SystemExit:
        pass
    finally:
        threading.setprofile(None)
        main_profile.disable()
        groups["reactor"].append(main_profile)
        for group, found in groups.items():
            pstats.Stats(*found).dump_stats(os.path.join(out, group + ".pstats"))
""")


AIOSMTPD_SERVER = textwrap.dedent("""
    import asyncio, itertools, os, signal, ssl, sys
    from aiosmtpd.smtp import SMTP

    folder, cert, key = sys.argv[1:4]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names = itertools.count()
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)

    def store(data):
        fd = os.open(os.path.join(folder, f"{next(names):08d}.eml"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(directory)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            await asyncio.to_thread(store, envelope.original_content)
            return "250 2.0.0 stored"

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Handler(), hostname="localhost", tls_context=context, require_starttls=True),
            "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    asyncio.run(main())
""")


class Aiosmtpd:
    """The inline aiosmtpd server above in a child process, storing into ``work/aiosmtpd``."""

    name = "aiosmtpd"

    def __init__(self, work: Path, home: Home):
        self.folder = work / "aiosmtpd"
        self.folder.mkdir()
        pki = home.path / "pki"
        self.process = subprocess.Popen([sys.executable, "-c", AIOSMTPD_SERVER, str(self.folder), str(pki / "tls.crt"),
                                         str(pki / "tls.key")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.port = int(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pid(self) -> int:
        return self.process.pid

    def counts(self) -> tuple[int, int]:
        """(files stored, 0): every mail must have become a file."""
        return len(os.listdir(self.folder)), 0


# ---------------------------------------------------------------------------------------------------------------
# The clients
# ---------------------------------------------------------------------------------------------------------------

def connection(port: int, context: ssl.SSLContext, mails: list[bytes], ready: threading.Barrier, out: dict,
               nodelay: bool) -> None:
    """One SMTP session: EHLO, STARTTLS, EHLO, then every mail as MAIL/RCPT/DATA, each timed to its last reply;
    a reply other than 250 is recorded and the transaction reset.

    ``nodelay``: TCP_NODELAY, as Postfix's client sets it. Without it a ~17 KB mail leaves as a full TLS
    record and a short one; Nagle holds the short one until the first is ACKed, and the server delays that
    ACK (40 ms on Linux) waiting for more: every mail then waits ~40 ms, whatever the server."""
    client = None
    try:
        client = smtplib.SMTP("127.0.0.1", port, timeout=120)
        if nodelay:  # kept by the TLS socket that wraps this one
            client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.ehlo("bench.example")
        client.starttls(context=context)
        client.ehlo("bench.example")
        out["cipher"] = client.sock.version() + " " + client.sock.cipher()[0]
        ready.wait(60)
        out["first"] = time.perf_counter()
        for mail in mails:
            start = time.perf_counter()
            try:
                reply = client.mail(SENDER, [f"SIZE={len(mail)}"])
                if reply[0] == 250:
                    reply = client.rcpt(RECIPIENT)
                if reply[0] == 250:
                    reply = client.data(mail)
            except smtplib.SMTPResponseException as e:
                reply = (e.smtp_code, e.smtp_error)
            out["latencies"].append(time.perf_counter() - start)
            if reply[0] != 250:
                out["other"].append(f"{reply[0]} {reply[1].decode(errors='replace')[:200]}")
                client.rset()
        out["last"] = time.perf_counter()
        client.quit()
    except (OSError, ValueError, smtplib.SMTPException, threading.BrokenBarrierError) as e:
        ready.abort()  # the other sessions must not wait for this one
        out["other"].append(f"connection failed: {e!r}"[:300])
        if client is not None:
            client.close()


def send(port: int, cafile: Path, mails: list[bytes], connections: int, nodelay: bool) -> dict:
    """All ``mails`` over ``connections`` parallel sessions (a barrier starts them together after STARTTLS):
    wall seconds from the first MAIL to the last reply, every mail's latency, every reply that was not 250."""
    context = ssl.create_default_context(cafile=str(cafile))
    ready = threading.Barrier(connections)
    outs = [{"latencies": [], "other": []} for _ in range(connections)]
    threads = [threading.Thread(target=connection, args=(port, context, mails[i::connections], ready, outs[i], nodelay))
               for i in range(connections)]
    client_cpu = time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = sorted(x for o in outs for x in o["latencies"])
    firsts, lasts = [o.get("first") for o in outs], [o.get("last") for o in outs]
    wall = max(lasts) - min(firsts) if None not in firsts + lasts else None
    return {"wall_s": wall, "latencies": latencies, "other": [x for o in outs for x in o["other"]],
            "cipher": outs[0].get("cipher"), "client_cpu_s": time.process_time() - client_cpu}


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

def run(server, cafile: Path, mails: list[bytes], connections: int, nodelay: bool = True) -> dict:
    """One timed batch, checked: all 250, and the server holds exactly one new message (file) per mail.
    CPU and peak RSS are the server process's, from an idle start to an idle end (VmHWM reset first)."""
    settle(server)
    before = server.counts()
    Path(f"/proc/{server.pid()}/clear_refs").write_text("5")  # VmHWM := current RSS
    cpu = sum(cpu_seconds(server.pid()))
    sent = send(server.port, cafile, mails, connections, nodelay)
    settle(server)
    cpu = sum(cpu_seconds(server.pid())) - cpu
    after = server.counts()
    n, lat = len(mails), sent["latencies"]
    stored, refused = after[0] - before[0], after[1] - before[1]
    record = {"server": server.name, "mails": n, "mail_bytes": sum(map(len, mails)) // n,
              "valid": not sent["other"] and stored == n and refused == 0 and sent["wall_s"] is not None,
              "stored": stored, "quarantined": refused, "non_250": len(sent["other"]), "replies": sent["other"][:20],
              "cipher": sent["cipher"], "server_cpu_ms_per_mail": round(cpu * 1000 / n, 3),
              "client_cpu_ms_per_mail": round(sent["client_cpu_s"] * 1000 / n, 3),
              "peak_rss_mb": round(vm_kb(server.pid(), "VmHWM") / 1024, 1)}
    if sent["wall_s"]:
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
        record |= {"seconds": round(sent["wall_s"], 3), "msgs_per_s": round(n / sent["wall_s"], 1),
                   "p50_ms": round(q[49] * 1000, 2), "p95_ms": round(q[94] * 1000, 2),
                   "p99_ms": round(q[98] * 1000, 2), "max_ms": round(lat[-1] * 1000, 2)}
    return record


def progress(record: dict) -> None:
    """One line per run as it ends; an invalid one says why, loudly."""
    print(f"  round {record['round']} {record['server']:9} {record.get('msgs_per_s')} msgs/s, "
          f"p50 {record.get('p50_ms')} ms, p99 {record.get('p99_ms')} ms, "
          f"server CPU {record['server_cpu_ms_per_mail']} ms/mail, peak RSS {record['peak_rss_mb']} MB", flush=True)
    if not record["valid"]:
        print(f"  !!!!! INVALID RUN: {record['non_250']} replies other than 250, {record['stored']} of "
              f"{record['mails']} stored, {record['quarantined']} quarantined: {record['replies'][:5]}", flush=True)


MEASURES = ("msgs_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_mail", "peak_rss_mb",
            "client_cpu_ms_per_mail")


def medians(runs: list[dict]) -> dict:
    """Per server, the median of each measure over its valid runs (invalid runs are counted only)."""
    table = {}
    for name in ("postroom", "aiosmtpd"):
        valid = [r for r in runs if r["server"] == name and r["valid"]]
        table[name] = {m: statistics.median(r[m] for r in valid) if valid else None for m in MEASURES}
        table[name]["invalid"] = sum(1 for r in runs if r["server"] == name and not r["valid"])
    ours, theirs = table["postroom"], table["aiosmtpd"]
    table["ratio"] = {m: round(ours[m] / theirs[m], 2) if ours[m] and theirs[m] else None for m in MEASURES}
    return table


def print_table(table: dict, mails: int, connections: int, rounds: int) -> None:
    heads = ("msgs/s", "p50 ms", "p95 ms", "p99 ms", "CPU ms/mail", "peak RSS MB", "client CPU ms")
    print(f"\n{mails} signed mails (one 10 KB invoice each), {connections} STARTTLS connections; median of "
          f"{rounds} round(s); CPU and RSS are the server process's")
    print(f"  {'':9} " + " ".join(f"{h:>13}" for h in heads) + "  invalid")
    for name in ("postroom", "aiosmtpd", "ratio"):
        row = table[name]
        cells = " ".join(f"{row[m]:>13}" if row[m] is not None else f"{'-':>13}" for m in MEASURES)
        print(f"  {name:9} {cells}  {row.get('invalid', '')}")
    print("  (ratio = Postroom / aiosmtpd)")


#: Where a thread waits: no CPU of its own, but see print_profiles.
WAITS = ("'acquire' of '_thread.lock'", "'get' of '_queue.SimpleQueue'")


def print_profiles(folder: Path, lines: int, mails: int) -> None:
    """Per kind of thread of the profiled daemon: its CPU per mail (the reactor's from its loop on, leaving out
    start-up), then its top cumulative entries."""
    for path in sorted(folder.glob("*.pstats")):
        stats = pstats.Stats(str(path))
        loop = [v[3] for k, v in stats.stats.items() if k[2] == "run_forever"]
        # a thread still alive at exit (blocked in a queue) has its open frames closed by the main thread's clock
        cpu = loop[0] if loop else sum(v[2] for k, v in stats.stats.items() if not any(w in k[2] for w in WAITS))
        print(f"\n--- daemon profile, {path.stem} thread(s): CPU {cpu * 1000 / mails:.2f} ms/mail (under the profiler)")
        stats.strip_dirs().sort_stats("cumulative").print_stats(lines)


def environment() -> dict:
    """Machine, versions and the commit measured."""
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return machine(aiosmtpd=aiosmtpd.__version__, openssl=openssl, python_ssl=ssl.OPENSSL_VERSION)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100 mails, 1 round")
    parser.add_argument("--mails", type=int, help="signed mails per run (default 1000)")
    parser.add_argument("--connections", type=int, default=4, help="parallel SMTP sessions (default 4)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3)")
    parser.add_argument("--nagle", action="store_true", help="leave Nagle on in the clients, as plain smtplib does")
    parser.add_argument("--profile", type=int, nargs="?", const=30, default=0, metavar="LINES",
                        help="then one more batch to a daemon under cProfile; print LINES lines per thread kind")
    parser.add_argument("--tmp", default=DEFAULT_TMP, help=f"where the home and mails go (default {DEFAULT_TMP})")
    args = parser.parse_args(argv)
    with_defaults(args, QUICK, FULL)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    began, load_before = time.monotonic(), os.getloadavg()
    work = work_folder(args.tmp, "smtp")
    postroom = peer = None
    runs = []
    try:
        postroom = Postroom(work)
        cafile = postroom.home.dev_ca / "ca.crt"
        prep = time.monotonic()
        batches = prepare(postroom.home, args.rounds + (1 if args.profile else 0), args.mails)
        prep = time.monotonic() - prep
        print(f"prepared {sum(map(len, batches))} signed mails of ~{len(batches[0][0]) // 1024} KB in {prep:.1f} s",
              flush=True)
        postroom.start()
        peer = Aiosmtpd(work, postroom.home)
        for r in range(1, args.rounds + 1):
            for server in (postroom, peer):
                runs.append({"round": r, **run(server, cafile, batches[r - 1], args.connections, not args.nagle)})
                progress(runs[-1])
        if args.profile:
            postroom.stop()
            postroom.start(profile=True)
            profiled = run(postroom, cafile, batches[-1], args.connections, not args.nagle)
            print(f"\nprofiled daemon (slower under cProfile): {profiled.get('msgs_per_s')} msgs/s, "
                  f"valid {profiled['valid']}")
            postroom.stop()
            print_profiles(postroom.profiles, args.profile, args.mails)
    finally:
        for server in (peer, postroom):
            if server is not None:
                server.stop()
        shutil.rmtree(work)
    table = medians(runs)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**environment(), "filesystem": filesystem(work)[0], "load_before": load_before,
                    "load_after": os.getloadavg()},
        "parameters": {"mails": args.mails, "connections": args.connections, "rounds": args.rounds,
                       "client_tcp_nodelay": not args.nagle,
                       "prepare_seconds": round(prep, 1)},
        "medians": table, "runs": runs, "wall_seconds": round(time.monotonic() - began),
    }
    print_table(table, args.mails, args.connections, args.rounds)
    invalid = [r for r in runs if not r["valid"]]
    if invalid:
        print(f"\n!!!!! {len(invalid)} INVALID RUN(S): see 'replies' in {RESULTS.relative_to(ROOT)}")
    save_results(RESULTS, report, load_before)


if __name__ == "__main__":
    main()
