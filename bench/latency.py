"""End-to-end latency: an invoice accepted over AS2 until it is visible in the recipient's portal API listing.

A real ``postroom serve`` in a fresh ``postroom init --demo`` home on the real disk. acme sends globex
10 KB UBL invoices, each with its own number, at a fixed open-loop rate (``--rates``, messages per
second, for ``--seconds`` each): a scheduler thread releases message k at ``start + k / rate`` to a
pool of worker threads, each with its own keep-alive mutual-TLS connection (acme's TLS certificate),
so a slow answer never delays the next send. The door is AS2 (``--door as2``, the default): every
body is signed with acme's key and encrypted to the gateway by ``openssl cms`` (``bench.as2``'s
builder) before the clock starts, and a signed synchronous MDN is asked for. ``--door https`` posts
the same invoices to the HTTPS upload door (``POST /api/v1/documents``) instead: the same intake.

Meanwhile a poller thread, with globex's token from ``postroom token create`` and its own keep-alive
HTTPS connection to the portal, asks ``GET /api/v1/invoices?limit=200`` (newest first) every
``--poll-ms`` and notes when each invoice number first appears. Per message:

* latency = first seen (the listing's answer arrived) - request sent: what the issue's target (p99 <= 250 ms)
  is about;
* accepted -> visible = first seen - acceptance (the 201, or the MDN for AS2) received.

A message not seen within ``--grace`` seconds after the last send is a failure, like one the door did
not accept. Results: a table on stdout and ``bench/results/latency.json`` (raw latency lists).

    .venv/bin/python -m bench.latency [--quick] [--rates 50,200] [--seconds 20] [--door as2|https]
"""

import argparse
import http.client
import json
import os
import queue
import shutil
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from bench.as2 import build_message
from bench.common import DEFAULT_TMP, ROOT, demo_home, filesystem, machine, save_results, with_defaults, work_folder
from bench.intake import invoices
from gateway.home import Home
from tests.e2e.daemon import Daemon

RESULTS = ROOT / "bench" / "results" / "latency.json"
TARGET_P99_MS = 250
FULL = {"rates": [50, 200], "seconds": 20.0}
QUICK = {"rates": [20], "seconds": 5.0}
AS2_HEADERS = {"AS2-Version": "1.2", "AS2-From": "ACME", "AS2-To": "POSTROOM",
               "Content-Type": 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
               "Disposition-Notification-To": "edi@acme.example",
               "Disposition-Notification-Options": "signed-receipt-protocol=optional, pkcs7-signature; "
                                                   "signed-receipt-micalg=optional, sha-256"}


# ---------------------------------------------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------------------------------------------

def tls_context(home: Home, partner: str | None = None) -> ssl.SSLContext:
    """Trusts the dev CA; with ``partner``, also presents that partner's TLS certificate (the mTLS doors)."""
    context = ssl.create_default_context(cafile=str(home.dev_ca / "ca.crt"))
    if partner is not None:
        folder = home.demo / partner
        context.load_cert_chain(folder / f"{partner}-tls.crt", folder / f"{partner}-tls.key")
    return context


def connection(port: int, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", port, context=context, timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# The messages: built before the clock starts
# ---------------------------------------------------------------------------------------------------------------

def build_bodies(home: Home, door: str, prefix: str, count: int, work: Path) -> list[tuple[str, bytes]]:
    """``count`` (invoice number, request body) pairs; AS2 bodies signed and encrypted by openssl, in parallel."""
    payloads = invoices(prefix, count)
    numbers = [f"{prefix}-{i:07d}" for i in range(count)]
    if door == "https":
        return list(zip(numbers, payloads, strict=True))

    def one(i: int) -> bytes:
        folder = work / f"build-{prefix}-{i}"
        folder.mkdir()
        try:
            return build_message(home, payloads[i], folder)
        finally:
            shutil.rmtree(folder)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(zip(numbers, pool.map(one, range(count)), strict=True))


def request(conn: http.client.HTTPSConnection, door: str, number: str, body: bytes) -> tuple[int, bytes]:
    """Send one message through ``door`` and read the whole answer: (status, body)."""
    if door == "as2":
        headers = {**AS2_HEADERS, "Message-ID": f"<{number}@acme.bench>"}
        conn.request("POST", "/as2", body=body, headers=headers)
    else:
        conn.request("POST", "/api/v1/documents", body=body,
                     headers={"Content-Type": "application/xml", "Idempotency-Key": number})
    response = conn.getresponse()
    return response.status, response.read()


def accepted(door: str, status: int, body: bytes) -> bool:
    """The door's own word that the message was accepted: 201, or a 200 MDN without an error disposition."""
    if door == "https":
        return status == 201
    return status == 200 and b"processed" in body and b"processed/error" not in body and b"failed" not in body


# ---------------------------------------------------------------------------------------------------------------
# The two sides: open-loop senders and the portal poller
# ---------------------------------------------------------------------------------------------------------------

class Poller(threading.Thread):
    """globex's program: asks for the newest page every ``period`` seconds; notes each number's first sight."""

    def __init__(self, port: int, context: ssl.SSLContext, token: str, period: float):
        super().__init__(name="poller", daemon=True)
        self.conn = connection(port, context)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.period = period
        self.seen: dict[str, float] = {}
        self.polls: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                self.conn.request("GET", "/api/v1/invoices?limit=200", headers=self.headers)
                response = self.conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as e:
                self.errors.append(repr(e))
                self.conn.close()
                continue
            now = time.perf_counter()
            self.polls.append(now - start)
            if response.status == 200:
                for item in json.loads(body)["items"]:
                    self.seen.setdefault(item["number"], now)
            else:
                self.errors.append(f"{response.status} {body[:200]!r}")
            self.stop.wait(max(0.0, self.period - (time.perf_counter() - now)))


def send_all(port: int, context: ssl.SSLContext, door: str, bodies: list[tuple[str, bytes]], rate: float,
             workers: int) -> list[dict]:
    """Release message k at ``start + k / rate`` to ``workers`` threads with keep-alive connections (open loop)."""
    todo: queue.Queue = queue.Queue()
    records: list[dict] = [{} for _ in bodies]

    def worker() -> None:
        conn = connection(port, context)
        try:
            while (job := todo.get()) is not None:
                k, due = job
                number, body = bodies[k]
                sent = time.perf_counter()
                try:
                    status, answer = request(conn, door, number, body)
                    ok = accepted(door, status, answer)
                    error = None if ok else f"{status} {answer[:200]!r}"
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    ok, error = False, repr(e)
                records[k] = {"number": number, "due": due, "sent": sent, "answered": time.perf_counter(),
                              "accepted": ok, "error": error}
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, name=f"sender-{i}") for i in range(workers)]
    for t in threads:
        t.start()
    start = time.perf_counter() + 0.1
    for k in range(len(bodies)):
        due = start + k / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        todo.put((k, due))
    for _ in threads:
        todo.put(None)
    for t in threads:
        t.join()
    return records


# ---------------------------------------------------------------------------------------------------------------
# One rate, and the figures
# ---------------------------------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": round(ordered[-1], 1)}


def run_rate(daemon: Daemon, token: str, door: str, rate: float, seconds: float, args, work: Path) -> dict:
    """Send ``rate * seconds`` messages at ``rate``/s while polling the portal; latencies in ms."""
    home, count = daemon.home, int(rate * seconds)
    print(f"\n{rate:g} msg/s for {seconds:g} s: building {count} {door} messages", flush=True)
    bodies = build_bodies(home, door, f"LAT{int(rate)}", count, work)
    poller = Poller(daemon.ports["portal"], tls_context(home), token, args.poll_ms / 1e3)
    poller.start()
    try:
        door_port = daemon.ports["as2"]  # the mutual-TLS listener carries both AS2 and the upload API
        workers = args.workers or max(8, int(rate // 4))
        sends = send_all(door_port, tls_context(home, "acme"), door, bodies, rate, workers)
        deadline = time.perf_counter() + args.grace
        while time.perf_counter() < deadline and not all(s["number"] in poller.seen for s in sends if s["accepted"]):
            time.sleep(0.05)
    finally:
        poller.stop.set()
        poller.join(10)
        poller.conn.close()
    for s in sends:
        s["seen"] = poller.seen.get(s["number"])
    ok = [s for s in sends if s["accepted"] and s["seen"] is not None]
    first, last = min(s["sent"] for s in sends), max(s["sent"] for s in sends)
    latency = [round((s["seen"] - s["sent"]) * 1e3, 2) for s in ok]
    visible = [round((s["seen"] - s["answered"]) * 1e3, 2) for s in ok]
    answer = [round((s["answered"] - s["sent"]) * 1e3, 2) for s in sends if s["accepted"]]
    lag = [round((s["sent"] - s["due"]) * 1e3, 2) for s in sends]
    from_due = [round((s["seen"] - s["due"]) * 1e3, 2) for s in ok]  # counts a send the senders held back
    return {"rate": rate, "seconds": seconds, "door": door, "workers": workers, "sent": len(sends),
            "achieved_rate": round((len(sends) - 1) / (last - first), 1) if last > first else None,
            "accepted": sum(s["accepted"] for s in sends), "visible": len(ok),
            "failures": len(sends) - len(ok), "errors": [s["error"] for s in sends if s["error"]][:10],
            "latency_ms": percentiles(latency), "accepted_to_visible_ms": percentiles(visible),
            "door_answer_ms": percentiles(answer), "send_lag_ms": percentiles(lag),
            "latency_from_schedule_ms": percentiles(from_due),
            "poll_ms": percentiles([p * 1e3 for p in poller.polls]), "poll_errors": poller.errors[:10],
            "raw": {"latency_ms": latency, "latency_from_schedule_ms": from_due, "accepted_to_visible_ms": visible,
                    "door_answer_ms": answer}}


def print_report(results: list[dict]) -> None:
    """One row per rate: the end-to-end figures against the target, then where the time went."""
    print(f"\nAccepted over {results[0]['door'].upper()} -> visible in globex's portal listing (target p99 <= "
          f"{TARGET_P99_MS} ms)")
    print(f"{'rate':>5} {'achieved':>8} {'sent':>5} {'fail':>4} | {'latency p50/p95/p99 ms':>22} | "
          f"{'accepted->visible p50/p95/p99':>29} | {'door answer p50/p99':>19} | {'poll p50':>8} | {'target':>6}")
    for r in results:
        lat, vis, ans, poll = (r[k] or {} for k in ("latency_ms", "accepted_to_visible_ms", "door_answer_ms",
                                                    "poll_ms"))
        met = "met" if lat and lat["p99"] <= TARGET_P99_MS and not r["failures"] else "MISSED"
        print(f"{r['rate']:>5g} {r['achieved_rate'] or 0:>8.1f} {r['sent']:>5} {r['failures']:>4} | "
              f"{lat.get('p50', 0):>6.1f}/{lat.get('p95', 0):>6.1f}/{lat.get('p99', 0):>7.1f} | "
              f"{vis.get('p50', 0):>8.1f}/{vis.get('p95', 0):>8.1f}/{vis.get('p99', 0):>9.1f} | "
              f"{ans.get('p50', 0):>8.1f}/{ans.get('p99', 0):>8.1f} | {poll.get('p50', 0):>8.1f} | {met:>6}")
        due, lag = r["latency_from_schedule_ms"] or {}, r["send_lag_ms"] or {}
        print(f"      {r['workers']} senders; send lag behind the schedule p50/p99 {lag.get('p50')}/{lag.get('p99')} "
              "ms; "
              f"latency from the scheduled time p50/p99 {due.get('p50')}/{due.get('p99')} ms")
        if r["errors"] or r["poll_errors"]:
            print(f"      errors: {r['errors'][:3]} poll errors: {r['poll_errors'][:3]}")


def environment() -> dict:
    """Machine, versions and the commit measured."""
    return machine(openssl=ssl.OPENSSL_VERSION)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 msg/s for 5 s")
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        help="messages per second, one run each (default 50,200)")
    parser.add_argument("--seconds", type=float, help="length of each run (default 20)")
    parser.add_argument("--door", choices=("as2", "https"), default="as2",
                        help="AS2 with a signed sync MDN (default) or the HTTPS upload API")
    parser.add_argument("--workers", type=int, help="sender threads (default max(8, rate / 4))")
    parser.add_argument("--poll-ms", type=float, default=10, help="portal poll period (default 10 ms)")
    parser.add_argument("--grace", type=float, default=10, help="seconds to wait for stragglers (default 10)")
    parser.add_argument("--tmp", default=DEFAULT_TMP, help=f"where the home goes (default {DEFAULT_TMP})")
    args = parser.parse_args(argv)
    with_defaults(args, QUICK, FULL)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    began, load_before = time.monotonic(), os.getloadavg()
    work = work_folder(args.tmp, "latency")
    daemon = None
    try:
        home = demo_home(work / "home")
        daemon = Daemon(home).start(timeout=60)
        token = daemon.cli("token", "create", "--partner", "globex", "--name", "bench").stdout.split()[-1]
        results = [run_rate(daemon, token, args.door, rate, args.seconds, args, work) for rate in args.rates]
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_report(results)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {**environment(), "filesystem": filesystem(work)[0], "load_before": load_before,
                          "load_after": os.getloadavg()},
              "parameters": {"rates": args.rates, "seconds": args.seconds, "door": args.door,
                             "poll_ms": args.poll_ms, "grace": args.grace, "payload_bytes": 10 * 1024,
                             "target_p99_ms": TARGET_P99_MS},
              "runs": results, "wall_seconds": round(time.monotonic() - began)}
    save_results(RESULTS, report, load_before)


if __name__ == "__main__":
    main()
