"""Scale of the store: portal listing and fetch latency with 10 k, 100 k and 1 M messages in the database.

One fresh ``postroom init --demo`` home on the real disk. Messages from acme to globex are written
straight into its SQLite database with SQLAlchemy Core (``messages``, their ``deliveries`` and
``mailbox_items`` rows, in chunks of 10,000 per ``executemany``), as delivery leaves them; every row
points at ONE shared stored blob (a 10 KB invoice published through the real :class:`BlobStore`), so
``/content`` has real bytes to send. IDs come from :func:`spool.records.new_id` with increasing
timestamps, so the database grows between measurements exactly as a busy mailbox would: newest last.
One message in 20 is still ``new`` (spread evenly), the rest ``downloaded``.

For each size a real ``postroom serve`` runs on the home, globex gets a token from ``postroom token
create``, and one persistent HTTPS connection (trusting the dev CA) times each request, ``--requests``
times per endpoint:

* ``first``: ``GET /api/v1/invoices?limit=50``;
* ``deep``: the page reached by following ``next`` ``--depth`` times (the last page's request, repeated);
* ``cursor``: ``?limit=50&cursor=ID`` for random message IDs (a page anywhere in the mailbox);
* ``new``: ``?limit=50&state=new``;
* ``item``: ``GET /api/v1/invoices/{id}`` for random IDs;
* ``content``: ``GET /api/v1/invoices/{id}/content`` for random IDs (mostly a first download: the
  portal signs a return receipt and records it, so it is the dearest request of all).

The listing queries' SQLite ``EXPLAIN QUERY PLAN`` is printed and saved: flat latency needs an index
walk, never a full scan or a temporary sort. Results: a table on stdout and ``bench/results/store.json``.

    .venv/bin/python -m bench.store [--quick] [--sizes 10000,100000,1000000] [--requests 200]
"""

import argparse
import http.client
import json
import os
import random
import shutil
import sqlite3
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy
from sqlalchemy import event, func, insert, select

from bench.common import DEFAULT_TMP, ROOT, demo_home, filesystem, machine, save_results, with_defaults, work_folder
from bench.intake import invoices
from gateway.config import load
from gateway.home import Home
from spool import records
from spool.blobs import BlobStore
from spool.database import create_engine
from spool.schema import deliveries, mailbox_items, messages
from tests.e2e.daemon import Daemon

RESULTS = ROOT / "bench" / "results" / "store.json"
CHUNK = 10_000
T0 = datetime(2024, 1, 1, tzinfo=UTC)
STEP = timedelta(seconds=7)  # 1 M messages span about 81 days
ENDPOINTS = ("first", "deep", "cursor", "new", "item", "content")
FULL = {"sizes": [10_000, 100_000, 1_000_000], "requests": 200}
QUICK = {"sizes": [1_000, 10_000], "requests": 50}


# ---------------------------------------------------------------------------------------------------------------
# The store: a demo home, one shared blob, rows inserted in bulk
# ---------------------------------------------------------------------------------------------------------------

class Store:
    """A demo home whose database is grown with globex's mailbox, straight through SQLAlchemy Core."""

    def __init__(self, work: Path):
        self.home = demo_home(work / "home")
        config = load(self.home)
        self.engine = create_engine(config.database_url)
        blobs = BlobStore(config.home.resolve(config.storage.spool_dir))
        self.payload = invoices("STORE", 1)[0]
        with blobs.stage() as writer:
            writer.write(self.payload)
            staged = writer.finish()
        blobs.publish([staged])
        self.sha256 = staged.sha256
        self.count = 0

    def rows(self, i: int) -> tuple[dict, dict, dict]:
        """The message, delivery and mailbox rows of the ``i``-th message (0-based, oldest first)."""
        at = T0 + i * STEP
        mid = records.new_id(at)
        message = {"id": mid, "received_at": at, "sender_id": "acme", "recipient_id": "globex", "channel": "as2",
                   "external_id": f"<{i}@acme.bench>", "filename": f"STORE-{i:07d}.xml",
                   "content_type": "application/xml", "size": len(self.payload), "sha256": self.sha256,
                   "kind": "ubl-invoice", "number": f"STORE-{i:07d}", "issue_date": "2024-01-01", "type_code": "380",
                   "currency": "EUR", "amount": "1325.00", "supplier_id": "0088:7300010000001",
                   "customer_id": "0088:7300010000002", "supplier_name": "ACME", "customer_name": "Globex",
                   "signed": True, "route": "mailbox", "state": "delivered", "updated_at": at}
        delivery = {"message_id": mid, "recipient_id": "globex", "target": "mailbox", "state": "done", "attempts": 1,
                    "next_attempt_at": at, "updated_at": at}
        new = i % 20 == 7
        item = {"message_id": mid, "recipient_id": "globex", "state": "new" if new else "downloaded",
                "delivered_at": at, "downloaded_at": None if new else at + STEP, "acknowledged_at": None}
        return message, delivery, item

    def grow(self, target: int) -> float:
        """Insert messages until there are ``target``; seconds taken (a few chunks per transaction)."""
        start = time.perf_counter()
        while self.count < target:
            upto = min(target, self.count + 10 * CHUNK)
            with self.engine.begin() as conn:
                for lo in range(self.count, upto, CHUNK):
                    batch = [self.rows(i) for i in range(lo, min(upto, lo + CHUNK))]
                    for table, column in ((messages, 0), (deliveries, 1), (mailbox_items, 2)):
                        conn.execute(insert(table), [b[column] for b in batch])
            self.count = upto
            print(f"  {self.count:>9,} messages, {time.perf_counter() - start:6.1f} s", flush=True)
        with self.engine.begin() as conn:
            assert conn.scalar(select(func.count()).select_from(mailbox_items)) == target
        return time.perf_counter() - start

    def sample_ids(self, n: int) -> list[str]:
        """``n`` random message IDs, drawn evenly over the whole mailbox."""
        picks = sorted(random.sample(range(self.count), min(n, self.count)))
        with self.engine.connect() as conn:
            return [conn.scalar(select(messages.c.id).order_by(messages.c.id).offset(p).limit(1)) for p in picks]

    def plans(self) -> dict[str, list[str]]:
        """SQLite's query plan for each listing the portal runs, captured from :func:`records.mailbox` itself."""
        seen: list[tuple[str, tuple]] = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            seen.append((statement, parameters))

        cursor_id = records.new_id(T0 + (self.count // 2) * STEP)
        calls = {"first": {}, "cursor": {"before": cursor_id}, "new": {"state": "new"},
                 "since": {"since": T0 + (self.count // 2) * STEP}}
        out = {}
        with self.engine.connect() as conn:
            for name, kwargs in calls.items():
                seen.clear()
                event.listen(self.engine, "before_cursor_execute", capture)
                try:
                    records.mailbox(conn, "globex", limit=51, **kwargs)
                finally:
                    event.remove(self.engine, "before_cursor_execute", capture)
                statement, parameters = seen[-1]
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
                out[name] = [row[-1] for row in rows]
        return out

    def order_peer(self, repeats: int = 5) -> dict:
        """In-process peer for the first page: the portal's query as it is now, ordered by the mailbox index's
        own column (``mailbox_items.message_id``), and as it was before migration 0010, ordered by the joined
        ``messages.id`` (equal by the join, but SQLite then sorts the whole mailbox); plan and best ms each."""
        before = records._mailbox_query("globex").order_by(messages.c.id.desc()).limit(51)
        now = records._mailbox_query("globex").order_by(mailbox_items.c.message_id.desc()).limit(51)
        out = {}
        with self.engine.connect() as conn:
            for name, query in (("portal_now", now), ("ordered_by_messages_id", before)):
                compiled = query.compile(self.engine, compile_kwargs={"literal_binds": True})
                plan = [r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").fetchall()]
                best = float("inf")
                for _ in range(repeats):
                    start = time.perf_counter()
                    conn.execute(query).fetchall()
                    best = min(best, time.perf_counter() - start)
                out[name] = {"plan": plan, "best_ms": round(best * 1e3, 2)}
        return out


def full_scans(plan: list[str]) -> list[str]:
    """The plan lines that read a whole table or sort in a temporary B-tree: what breaks flat latency."""
    return [line for line in plan if (line.startswith("SCAN ") and " USING " not in line) or "TEMP B-TREE" in line]


# ---------------------------------------------------------------------------------------------------------------
# The client: one keep-alive HTTPS connection to the portal
# ---------------------------------------------------------------------------------------------------------------

class Portal:
    """globex's program: a bearer token and one persistent HTTPS connection that trusts the dev CA."""

    def __init__(self, home: Home, port: int, token: str):
        context = ssl.create_default_context(cafile=str(home.dev_ca / "ca.crt"))
        self.conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> tuple[float, bytes]:
        """(seconds from request to last byte, body); anything but 200 is an error."""
        start = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        took = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return took, body

    def close(self) -> None:
        self.conn.close()


def deep_cursor(portal: Portal, depth: int) -> str:
    """The cursor of page ``depth + 1``, found by following ``next`` like a client paging through."""
    cursor = None
    for _ in range(depth):
        path = "/api/v1/invoices?limit=50" + (f"&cursor={cursor}" if cursor else "")
        cursor = json.loads(portal.get(path)[1])["next"]
        if cursor is None:
            break
    return cursor


def measure(portal: Portal, ids: list[str], requests: int, depth: int, budget: float) -> dict[str, list[float]]:
    """Latencies in ms per endpoint; the item pages and downloads use a different random ID each time."""
    deep = deep_cursor(portal, depth)
    paths = {
        "first": lambda i: "/api/v1/invoices?limit=50",
        "deep": lambda i: f"/api/v1/invoices?limit=50&cursor={deep}" if deep else "/api/v1/invoices?limit=50",
        "cursor": lambda i: f"/api/v1/invoices?limit=50&cursor={ids[i % len(ids)]}",
        "new": lambda i: "/api/v1/invoices?limit=50&state=new",
        "item": lambda i: f"/api/v1/invoices/{ids[i % len(ids)]}",
        "content": lambda i: f"/api/v1/invoices/{ids[-1 - i % len(ids)]}/content",
    }
    for path in paths.values():  # warm: TLS session, statement cache, page cache
        for i in range(3):
            portal.get(path(i + requests))
    return {name: timed(portal, path, requests, budget) for name, path in paths.items()}


def timed(portal: Portal, path, requests: int, budget: float) -> list[float]:
    """Up to ``requests`` latencies in ms, fewer if ``budget`` seconds run out (a slow endpoint at 1 M rows
    would otherwise take the whole run)."""
    out, deadline = [], time.monotonic() + budget
    for i in range(requests):
        out.append(round(portal.get(path(i))[0] * 1e3, 3))
        if time.monotonic() > deadline:
            break
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def run_size(store: Store, size: int, args) -> dict:
    """Grow to ``size``, then serve it and time every endpoint; the daemon is always stopped."""
    print(f"\n{size:,} messages: inserting", flush=True)
    grow = store.grow(size)
    plans, peer = store.plans(), store.order_peer()
    ids = store.sample_ids(args.requests + 10)
    daemon = Daemon(store.home)
    portal = None
    try:
        daemon.start(timeout=120)
        token = daemon.cli("token", "create", "--partner", "globex", "--name", f"bench-{size}").stdout.split()[-1]
        portal = Portal(store.home, daemon.ports["portal"], token)
        raw = measure(portal, ids, args.requests, args.depth, args.budget)
    finally:
        if portal is not None:
            portal.close()
        daemon.stop()
    db = store.home.path / "postroom.db"
    return {"size": size, "insert_seconds": round(grow, 1), "db_mb": round(db.stat().st_size / 2**20, 1),
            "plans": plans, "order_peer": peer,
            "full_scans": {k: full_scans(v) for k, v in plans.items() if full_scans(v)},
            "latency_ms": {k: percentiles(v) for k, v in raw.items()}, "requests": {k: len(v) for k, v in raw.items()},
            "raw_ms": raw}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

def print_report(results: list[dict], requests: int, depth: int) -> None:
    """One row per endpoint, p50/p95/p99 per size: flat means the columns barely move."""
    print(f"\nPortal API latency, ms ({requests} requests each, one keep-alive HTTPS connection; deep = page "
          f"{depth + 1})")
    head = "".join(f" | {r['size']:>9,} p50/p95/p99" for r in results)
    print(f"{'endpoint':8}{head}")
    for name in ENDPOINTS:
        cells = "".join(f" | {r['latency_ms'][name]['p50']:6.1f}/{r['latency_ms'][name]['p95']:5.1f}/"
                        f"{r['latency_ms'][name]['p99']:6.1f}" for r in results)
        print(f"{name:8}{cells}")
    for r in results:
        print(f"\n{r['size']:,} messages: inserted in {r['insert_seconds']} s, database {r['db_mb']} MB")
        for name, plan in r["plans"].items():
            print(f"  plan {name:6}: {' ; '.join(plan)}")
        if r["full_scans"]:
            print(f"  FULL SCAN / TEMP SORT: {r['full_scans']}")
        for name, peer in r["order_peer"].items():
            print(f"  first page in-process, {name}: {peer['best_ms']} ms; {' ; '.join(peer['plan'])}")
        short = {k: n for k, n in r["requests"].items() if n < requests}
        if short:
            print(f"  time budget ran out: only {short} requests")


def environment() -> dict:
    """Machine, versions and the commit measured."""
    return machine(sqlite=sqlite3.sqlite_version, sqlalchemy=sqlalchemy.__version__, openssl=ssl.OPENSSL_VERSION)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1,000 and 10,000 messages, 50 requests")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        help="database sizes, ascending (default 10000,100000,1000000)")
    parser.add_argument("--requests", type=int, help="timed requests per endpoint and size (default 200)")
    parser.add_argument("--depth", type=int, default=20, help="pages followed for the deep page (default 20)")
    parser.add_argument("--budget", type=float, default=60,
                        help="seconds per endpoint and size before it stops short of --requests (default 60)")
    parser.add_argument("--tmp", default=DEFAULT_TMP, help=f"where the home goes (default {DEFAULT_TMP})")
    args = parser.parse_args(argv)
    with_defaults(args, QUICK, FULL)
    if args.sizes != sorted(args.sizes):
        parser.error("--sizes must ascend: one database grows between measurements")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    began, load_before = time.monotonic(), os.getloadavg()
    work = work_folder(args.tmp, "store")
    results = []
    try:
        store = Store(work)
        try:
            results = [run_size(store, size, args) for size in args.sizes]
        finally:
            store.engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(results, args.requests, args.depth)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "machine": {**environment(), "filesystem": filesystem(work)[0], "load_before": load_before,
                          "load_after": os.getloadavg()},
              "parameters": {"sizes": args.sizes, "requests": args.requests, "depth": args.depth, "limit": 50,
                             "budget_seconds": args.budget,
                             "new_share": 0.05, "payload_bytes": 10 * 1024},
              "sizes": results, "wall_seconds": round(time.monotonic() - began)}
    save_results(RESULTS, report, load_before)


if __name__ == "__main__":
    main()
