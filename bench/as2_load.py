"""AS2 load: inbound throughput and latency of a real daemon over mutual TLS, against django-pyas2.

Servers, side by side in one invocation, alternating per concurrency level and ``--rounds`` times:

* Postroom: a real ``postroom serve`` in a fresh demo home (RSA-2048 keys, SQLite) under ``/var/tmp``;
  every message is decrypted, verified, checked, fsynced, committed and filed before its signed sync MDN.
* Postroom scaled out (``--nodes N``, default 2; ``postroom-Nx``): N daemons, copies of that home with
  their own ``[gateway] node``, sharing a private durable PostgreSQL and one spool; the client spreads
  its connections round-robin over them, as a TCP load balancer would (docs/operations.md).
* django-pyas2 1.2.3 (GPL: only ever a separate process, from its own venv built by
  ``tests/peers/venvs.py``) in its production set-up: gunicorn (4 gthread workers, keep-alive) over
  HTTPS with client certificates required, and a private PostgreSQL (Debian's, fsync on, as durable as
  Postroom). Its organisation holds the gateway's keys and its partner ACME acme's certificates, so it
  takes exactly the same bodies under the same AS2 names.
* pyas2lib 1.4.4 behind the stdlib's ThreadingHTTPServer (``tests/peers/pyas2lib_peer.py serve``, one
  process, HTTPS with client certificates required; plain file writes, no database): ``--no-pyas2lib``.

Messages are built before timing by ``openssl cms`` (neither side wrote it): distinct 10 KB UBL invoices
(each its own invoice number, CRLF line ends), signed SHA-256 by acme and encrypted AES-256-CBC for the
gateway, a signed sync MDN requested, each POST its own Message-ID. The client keeps one persistent
``http.client`` connection per worker thread (acme's TLS certificate, TCP_NODELAY), opened by its first
request, ``--concurrency`` workers; its own CPU is reported. EVERY MDN is checked: HTTP 200,
``multipart/signed``, ``processed``, and the Received-content-MIC equal to the SHA-256 of the signed
part; one failure makes the run INVALID (left out of the medians). Postroom's runs must also grow its
``messages`` table by the message count.

Results: a table on stdout and ``bench/results/as2_load.json`` (machine, versions, parameters, every
run's figures and raw latencies).

    .venv/bin/python -m bench.as2_load [--quick] [--concurrency 1,8,32,128] [--messages 1000] [--rounds 1]
                                       [--nodes 2] [--no-pyas2lib] [--no-peer] [--workers 4] [--threads 8]
                                       [--tmp DIR]
"""

import argparse
import base64
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

from admin.initialise import initialise, register_demo_partners
from bench.as2 import _ephemeral
from bench.common import DEFAULT_TMP, MEMORY_FILESYSTEMS, ROOT, filesystem, machine, save_results
from bench.intake import invoices
from gateway.home import Home
from spool.database import create_engine, upgrade
from tests.e2e.daemon import Daemon
from tests.e2e.https import query
from tests.peers.django_pyas2_peer import CONFIGURE
from tests.peers.django_pyas2_peer import SITE as DJANGO_SITE
from tests.peers.venvs import PEERS_DIR, peer_env, peer_python
from tests.postgres import DURABLE_SETTINGS, ThrowawayPostgres, _bin

RESULTS = ROOT / "bench" / "results" / "as2_load.json"
FULL = {"concurrency": [1, 8, 32, 128], "messages": 1000, "rounds": 1}
QUICK = {"concurrency": [1, 8], "messages": 100, "rounds": 1}
WARMUP = 16
TARGETS = {"msgs_per_s_c32": 500, "ratio_c32": 9.0, "p99_ms_c32": 100.0}
TICK = os.sysconf("SC_CLK_TCK")
DISPOSITION = re.compile(rb"^Disposition:[ \t]*(.+(?:\r?\n[ \t]+.+)*)", re.I | re.M)
MIC = re.compile(rb"^Received-content-MIC:[ \t]*([^\r\n]+)", re.I | re.M)


# ---------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------

def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def build_one(home: Home, payload: bytes, work: Path) -> tuple[bytes, str]:
    """(the openssl-built AS2 body, the base64 SHA-256 MIC of the signed part) for one CRLF payload."""
    work.mkdir(parents=True)
    acme = home.demo / "acme"
    part = b"Content-Type: application/xml\r\nContent-Transfer-Encoding: binary\r\n\r\n" + payload
    (work / "part.mime").write_bytes(part)
    _openssl("cms", "-sign", "-binary", "-crlfeol", "-md", "sha256", "-in", str(work / "part.mime"), "-signer",
             str(acme / "acme-sign.crt"), "-inkey", str(acme / "acme-sign.key"), "-outform", "SMIME",
             "-out", str(work / "signed.mime"))
    signed = (work / "signed.mime").read_bytes()
    if signed.startswith(b"MIME-Version"):
        (work / "signed.mime").write_bytes(signed.split(b"\r\n", 1)[1])
    _openssl("cms", "-encrypt", "-binary", "-aes256", "-in", str(work / "signed.mime"), "-outform", "DER",
             "-out", str(work / "body.p7m"), str(home.path / "pki" / "encrypt.crt"))
    body = (work / "body.p7m").read_bytes()
    shutil.rmtree(work)
    return body, base64.b64encode(hashlib.sha256(part).digest()).decode()


def build_set(home: Home, prefix: str, count: int, work: Path) -> list[tuple[bytes, str]]:
    """``count`` distinct messages, built by openssl on every core (threads: the work is in the children)."""
    payloads = [doc.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for doc in invoices(prefix, count)]
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda ip: build_one(home, ip[1], work / f"{prefix}-{ip[0]}"), enumerate(payloads)))


def headers_for(message_id: str) -> dict[str, str]:
    return {"AS2-Version": "1.2", "AS2-From": "ACME", "AS2-To": "POSTROOM", "Message-ID": message_id,
            "Content-Type": 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
            "Disposition-Notification-To": "edi@acme.example",
            "Disposition-Notification-Options": "signed-receipt-protocol=optional, pkcs7-signature; "
                                                "signed-receipt-micalg=optional, sha-256"}


def check_mdn(status: int, content_type: str, body: bytes, mic: str) -> str | None:
    """None if the response is a signed sync MDN saying ``processed`` with the right MIC, else why not."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    if not content_type.lower().startswith("multipart/signed"):
        return f"not signed: {content_type}"
    found = DISPOSITION.search(body)
    if not found:
        return "no Disposition line"
    disposition = " ".join(found.group(1).decode("latin-1").split()).lower()
    if disposition != "automatic-action/mdn-sent-automatically; processed":
        return f"disposition: {disposition}"
    got = MIC.search(body)
    if not got or got.group(1).decode("latin-1").split(",")[0].strip() != mic:
        return f"MIC mismatch: {got.group(1) if got else None!r} != {mic}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------------------

class Target:
    """Where and how to POST: host, port(s), path and the client's TLS context (acme's certificate).

    With several ports (several daemons) each new connection goes to the next one, as a TCP load
    balancer spreads connections."""

    def __init__(self, name: str, port: int | list[int], path: str, home: Home):
        self.name, self.path = name, path
        self.ports = itertools.cycle(port if isinstance(port, list) else [port])
        acme = home.demo / "acme"
        self.context = ssl.create_default_context(cafile=str(home.dev_ca / "ca.crt"))
        self.context.load_cert_chain(str(acme / "acme-tls.crt"), str(acme / "acme-tls.key"))

    def connection(self) -> http.client.HTTPSConnection:
        port = next(self.ports)
        conn = http.client.HTTPSConnection("localhost", port, context=self.context, timeout=60)
        raw = socket.create_connection(("127.0.0.1", port), 60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client's own connect() does
        conn.sock = self.context.wrap_socket(raw, server_hostname="localhost")
        return conn


def drive(target: Target, messages: list[tuple[bytes, str]], tag: str, concurrency: int) -> dict:
    """POST every message from ``concurrency`` threads with persistent connections; latencies and failures."""
    counter = itertools.count()
    latencies: list[float] = [0.0] * len(messages)
    failures: list[str] = []
    connections = [0]
    barrier = threading.Barrier(concurrency + 1)

    def worker() -> None:
        # Connect on the first request, as a real sender does (its handshake counts in that request's latency):
        # gunicorn's gthread worker holds a thread on a new connection until its first request arrives, so
        # connections opened ahead and left idle starve it (handshakes time out).
        conn = None
        barrier.wait()
        while (i := next(counter)) < len(messages):
            body, mic = messages[i]
            start = time.perf_counter()
            try:
                if conn is None:
                    conn, connections[0] = target.connection(), connections[0] + 1
                conn.request("POST", target.path, body, headers_for(f"<{tag}-{i:06d}@acme.bench>"))
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                latencies[i] = time.perf_counter() - start
                failures.append(f"{i}: {type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            latencies[i] = time.perf_counter() - start
            problem = check_mdn(response.status, response.getheader("Content-Type", ""), data, mic)
            if problem:
                failures.append(f"{i}: {problem}")
            if response.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "client_cpu_s": time.process_time() - cpu, "latencies": latencies,
            "failures": failures, "connections": connections[0]}


# ---------------------------------------------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------------------------------------------

def _stat(path: Path) -> tuple[str, float]:
    """(comm, utime+stime+cutime+cstime seconds) from a /proc stat file."""
    text = path.read_text()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return comm, sum(int(v) for v in fields[11:15]) / TICK


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        try:
            total += _stat(Path(f"/proc/{p}/stat"))[1]
        except OSError:
            pass
    return total


def threads_of(pid: int) -> dict[str, float]:
    """CPU seconds by thread, as ``name/tid`` (the main thread, the reactor, is ``main``)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm, cpu = _stat(task / "stat")
        except OSError:
            continue
        out["main" if int(task.name) == pid else f"{comm}/{task.name}"] = cpu
    return out


def reset_hwm(pids: list[int]) -> None:
    for p in pids:
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")  # VmHWM := the current RSS
        except OSError:
            pass


def hwm_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmHWM:\s+(\d+)", status)
        total += int(found.group(1)) if found else 0
    return round(total / 1024, 1)


# ---------------------------------------------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------------------------------------------

class Postroom:
    name = "postroom"

    def __init__(self, home: Home):
        self.daemon = Daemon(home).start()
        self.target = Target(self.name, self.daemon.ports["as2"], "/as2", home)

    def pids(self) -> list[int]:
        return [self.daemon.process.pid]

    def accepted(self) -> int:
        return query(self.daemon, "SELECT count(*) FROM messages")[0][0]

    def stop(self) -> None:
        self.daemon.stop()


class PostroomNodes:
    """The scale-out shape (docs/operations.md): ``nodes`` daemons, each its own process with its own
    ``[gateway] node`` name, sharing one PostgreSQL database (a private, durable instance) and one spool;
    the client spreads its connections over them as a TCP load balancer would. Every node is a copy of
    the single daemon's home (same keys, same partners), so it takes the very same messages."""

    def __init__(self, home: Home, work: Path, root: Path, nodes: int):
        self.name = f"postroom-{nodes}x"
        self.pg = ThrowawayPostgres(parent=root, settings=DURABLE_SETTINGS)
        self.daemons: list[Daemon] = []
        try:
            self.pg.start()
            self.url = self.pg.new_database("postroom")
            engine = create_engine(self.url)
            try:
                upgrade(engine)
                register_demo_partners(home, engine, "bench")
            finally:
                engine.dispose()
            spool = work / "spool"
            spool.mkdir(mode=0o700, parents=True)
            for n in range(1, nodes + 1):
                node = Home(work / f"node-{n}")
                shutil.copytree(home.path, node.path,
                                ignore=shutil.ignore_patterns("spool", "run", "postroom.db*"))
                text = node.config_file.read_text().replace("[gateway]\n", f'[gateway]\nnode = "bench-{n}"\n', 1)
                text = re.sub(r'(?m)^database_url = .*$', f'database_url = "{self.url}"', text)
                text = re.sub(r'(?m)^spool_dir = .*$', f'spool_dir = "{spool}"', text)
                node.config_file.write_text(text)
                self.daemons.append(Daemon(node).start())
        except BaseException:
            self.stop()
            raise
        self.target = Target(self.name, [d.ports["as2"] for d in self.daemons], "/as2", home)

    def pids(self) -> list[int]:
        return [d.process.pid for d in self.daemons]

    def db_pids(self) -> list[int]:
        return tree(self.pg.process.pid)

    def accepted(self) -> int:
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM messages")).scalar_one()
        finally:
            engine.dispose()

    def versions(self) -> dict:
        return {"postgres": _postgres_version()}

    def stop(self) -> None:
        try:
            for daemon in self.daemons:
                daemon.stop()
        finally:
            self.pg.stop()


GUNICORN_CONF = '''
wsgi_app = "peersite.wsgi:application"
worker_class = "gthread"
workers = {workers}
threads = {threads}
keepalive = 75
backlog = 2048
timeout = 120
graceful_timeout = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
control_socket_disable = True
'''

SETTINGS = '''
from peersite.settings import *  # noqa: F403

DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", "NAME": "pyas2", "USER": "postgres",
                          "HOST": "127.0.0.1", "PORT": {port}, "CONN_MAX_AGE": 600, "CONN_HEALTH_CHECKS": True}}}}
'''


class DjangoPyas2:
    name = "django-pyas2"

    def __init__(self, home: Home, work: Path, root: Path, workers: int, threads: int):
        self.python = peer_python("django-pyas2")
        self.work = work
        (work / "media").mkdir(parents=True)
        self.gunicorn: subprocess.Popen | None = None
        # under the --tmp root itself (our 0700 work dir keeps ``postgres`` out), with fsync on
        self.pg = ThrowawayPostgres(parent=root, settings=DURABLE_SETTINGS)
        try:
            self._start(home, workers, threads)
        except BaseException:
            self.stop()
            raise

    def _start(self, home: Home, workers: int, threads: int) -> None:
        work = self.work
        self.pg.start()
        self.pg.new_database("pyas2")
        deps = work / "pgdeps"  # psycopg for the peer venv, linked from ours (same interpreter), not installed
        deps.mkdir()
        site = Path(next(p for p in sys.path if p.endswith("site-packages")))
        for path in site.iterdir():  # with their dist-info: psycopg reads its own version from it
            if path.name.split("-")[0] in ("psycopg", "psycopg_binary", "psycopg_binary.libs", "typing_extensions.py",
                                           "typing_extensions"):
                (deps / path.name).symlink_to(path)
        (work / "benchsettings.py").write_text(SETTINGS.format(port=self.pg.port))
        (work / "gunicorn_conf.py").write_text(GUNICORN_CONF.format(workers=workers, threads=threads))
        self.env = peer_env({"PYTHONPATH": f"{work}:{DJANGO_SITE}:{deps}", "PEER_WORKDIR": str(work),
                             "DJANGO_SETTINGS_MODULE": "benchsettings"})
        pki, acme = home.path / "pki", home.demo / "acme"
        config = {"as2_id": "POSTROOM", "key": str(pki / "sign.key"), "cert": str(pki / "sign.crt"),
                  "decrypt_key": str(pki / "encrypt.key"), "decrypt_cert": str(pki / "encrypt.crt"),
                  "partners": [{"as2_id": "ACME", "sign_cert": str(acme / "acme-sign.crt"),
                                "encrypt_cert": str(acme / "acme-encrypt.crt"), "ca": str(home.dev_ca / "ca.crt"),
                                "sign": True, "digest": "sha256", "encrypt": True, "cipher": "aes_256_cbc",
                                "mdn": "sync", "mdn_signed": True, "mdn_digest": "sha256"}]}
        self._manage("migrate", "--noinput")
        self._manage("shell", "-c", CONFIGURE, env={"PEER_ARGS": json.dumps(config)})
        port = _free_port()
        self.log = (work / "gunicorn.log").open("ab")
        self.gunicorn = subprocess.Popen(
            [str(self.python), "-m", "gunicorn", "-c", str(work / "gunicorn_conf.py"), "--bind", f"127.0.0.1:{port}",
             "--certfile", str(pki / "tls.crt"), "--keyfile", str(pki / "tls.key"),
             "--ca-certs", str(home.dev_ca / "ca.crt"), "--cert-reqs", str(int(ssl.CERT_REQUIRED))],
            cwd=work, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.target = Target(self.name, port, "/pyas2/as2receive", home)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = self.target.connection()
                conn.request("GET", "/pyas2/as2receive")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if self.gunicorn.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "gunicorn.log").read_text()[-4000:]) from None
                time.sleep(0.2)

    def _manage(self, *args: str, env: dict | None = None) -> None:
        proc = subprocess.run([str(self.python), str(DJANGO_SITE / "manage.py"), *args], capture_output=True,
                              text=True, env={**self.env, **(env or {})}, cwd=self.work, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]}: {proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")

    def pids(self) -> list[int]:
        return tree(self.gunicorn.pid)

    def db_pids(self) -> list[int]:
        return tree(self.pg.process.pid)

    def versions(self) -> dict:
        names = ("django-pyas2", "pyas2lib", "Django", "gunicorn", "cryptography", "psycopg")
        return {**_venv_versions(self.python, names, self.env), "postgres": _postgres_version()}

    def stop(self) -> None:
        try:
            if self.gunicorn is not None:
                _end(self.gunicorn)
        finally:
            self.pg.stop()


class Pyas2libServer:
    """tests/peers/pyas2lib_peer.py ``serve``: pyas2lib behind the stdlib's ThreadingHTTPServer (one process), HTTPS
    with client certificates required; it writes each request, payload and MDN to plain files (no fsync)."""

    name = "pyas2lib"

    def __init__(self, home: Home, work: Path):
        self.python = python = peer_python("pyas2lib")
        (work / "out").mkdir(parents=True)
        pki, acme = home.path / "pki", home.demo / "acme"
        config = {"as2_id": "POSTROOM", "key": str(pki / "sign.key"), "cert": str(pki / "sign.crt"),
                  "decrypt_key": str(pki / "encrypt.key"), "decrypt_cert": str(pki / "encrypt.crt"),
                  "sign_mdns": True, "output_dir": str(work / "out"),
                  "partners": [{"as2_id": "ACME", "sign_cert": str(acme / "acme-sign.crt"),
                                "encrypt_cert": str(acme / "acme-encrypt.crt"), "ca": str(home.dev_ca / "ca.crt"),
                                "mdn": "sync", "mdn_signed": True, "mdn_digest": "sha256"}]}
        (work / "config.json").write_text(json.dumps(config))
        port_file = work / "port"
        with (work / "pyas2lib.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(python), str(PEERS_DIR / "pyas2lib_peer.py"), "serve", "--config", str(work / "config.json"),
                 "--port-file", str(port_file), "--tls-cert", str(pki / "tls.crt"), "--tls-key", str(pki / "tls.key"),
                 "--client-ca", str(home.dev_ca / "ca.crt")],
                env=peer_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError((work / "pyas2lib.log").read_text()[-4000:])
            time.sleep(0.05)
        self.target = Target(self.name, int(port_file.read_text()), "/as2", home)

    def pids(self) -> list[int]:
        return [self.process.pid]

    def versions(self) -> dict:
        return _venv_versions(self.python, ("pyas2lib", "oscrypto", "cryptography", "pyOpenSSL"), peer_env())

    def stop(self) -> None:
        _end(self.process)


def _end(process: subprocess.Popen) -> None:
    """Stop a peer started in its own session: SIGTERM, then its whole process group after 15 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(15)


def _postgres_version() -> str:
    return subprocess.run([_bin("postgres"), "--version"], capture_output=True, text=True).stdout.strip()


def _venv_versions(python: Path, names: tuple[str, ...], env: dict) -> dict:
    code = f"import importlib.metadata as m, json; print(json.dumps({{n: m.version(n) for n in {names!r}}}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(pids) -> None:
    """Wait until the server's CPU stands still (Postroom files and delivers after the MDN)."""
    last = cpu_of(pids())
    for _ in range(100):
        time.sleep(0.2)
        now = cpu_of(pids())
        if now - last < 0.01:
            return
        last = now


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run(server, messages: list[tuple[bytes, str]], tag: str, concurrency: int) -> dict:
    settle(server.pids)
    pids = server.pids()
    extra = server.db_pids() if hasattr(server, "db_pids") else []
    reset_hwm(pids + extra)
    accepted = server.accepted() if hasattr(server, "accepted") else None
    threads = threads_of(pids[0]) if isinstance(server, Postroom) else {}
    cpu, db_cpu = cpu_of(pids), cpu_of(extra)
    got = drive(server.target, messages, tag, concurrency)
    pids_after = server.pids()
    server_cpu = cpu_of(pids_after) - cpu
    peak = hwm_mb(pids_after)
    settle(server.pids)  # then what the server still did for these messages after the last MDN (filing, delivery)
    tail_cpu = cpu_of(server.pids()) - cpu - server_cpu
    record = {"server": server.name, "concurrency": concurrency, "messages": len(messages),
              "wall_s": round(got["wall_s"], 3), "msgs_per_s": round(len(messages) / got["wall_s"], 1),
              "p50_ms": round(percentile(got["latencies"], 50) * 1000, 2),
              "p95_ms": round(percentile(got["latencies"], 95) * 1000, 2),
              "p99_ms": round(percentile(got["latencies"], 99) * 1000, 2),
              "server_cpu_s": round(server_cpu, 2),
              "server_cpu_ms_per_msg": round(server_cpu * 1000 / len(messages), 2),
              "server_tail_cpu_s": round(tail_cpu, 2), "server_peak_rss_mb": peak,
              "client_cpu_s": round(got["client_cpu_s"], 2),
              "connections": got["connections"], "failures": len(got["failures"]),
              "failure_samples": got["failures"][:10], "processes": len(pids_after)}
    if extra:
        record["db_cpu_s"] = round(cpu_of(server.db_pids()) - db_cpu, 2)
        record["db_peak_rss_mb"] = hwm_mb(server.db_pids())
    short = False
    if accepted is not None:
        record["db_accepted"] = grew = server.accepted() - accepted
        short = grew != len(messages)
        if short:
            record["failure_samples"].append(f"messages table grew by {grew}, not {len(messages)}")
    if isinstance(server, Postroom):
        after = threads_of(pids[0])  # after settling: includes the tail
        record["threads_cpu_s"] = {k: round(v - threads.get(k, 0.0), 2) for k, v in sorted(after.items())
                                   if v - threads.get(k, 0.0) >= 0.01}
    record["valid"] = not got["failures"] and not short
    record["latencies_ms"] = [round(v * 1000, 3) for v in got["latencies"]]
    return record


def ours(names: list[str]) -> list[str]:
    """The Postroom set-ups among the servers (one daemon, several nodes); the rest are peers."""
    return [n for n in names if n.startswith("postroom")]


def summarise(runs: list[dict], levels: list[int], names: list[str]) -> dict:
    table = {}
    for c in levels:
        row = {}
        for name in names:
            valid = [r for r in runs if r["server"] == name and r["concurrency"] == c and r["valid"]]
            row[name] = {k: statistics.median(r[k] for r in valid) for k in
                         ("msgs_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_ms_per_msg", "server_peak_rss_mb",
                          "client_cpu_s")} if valid else None
            row[name + "_invalid"] = sum(1 for r in runs if r["server"] == name and r["concurrency"] == c
                                         and not r["valid"])
        for mine in ours(names):
            for peer in (n for n in names if n not in ours(names)):
                a, b = row[mine], row[peer]
                row[f"ratio_{mine}_{peer}"] = round(a["msgs_per_s"] / b["msgs_per_s"], 2) if a and b else None
        table[c] = row
    return table


def print_table(table: dict, names: list[str]) -> None:
    print(f"\n{'c':>4} {'server':<13} {'msg/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>10} "
          f"{'peak RSS MB':>11} {'client CPU s':>12}  Postroom's msg/s over this")
    for c, row in table.items():
        for name in names:
            r = row[name]
            bad = f"  INVALID runs: {row[name + '_invalid']}" if row[name + "_invalid"] else ""
            if r is None:
                print(f"{c:>4} {name:<13} {'(no valid run)':>8}{bad}")
                continue
            ratios = ", ".join(f"{mine} {row[f'ratio_{mine}_{name}']:.2f}x" for mine in ours(names)
                               if row.get(f"ratio_{mine}_{name}"))
            print(f"{c:>4} {name:<13} {r['msgs_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
                  f"{r['p99_ms']:>8.1f} {r['server_cpu_ms_per_msg']:>10.2f} {r['server_peak_rss_mb']:>11.1f} "
                  f"{r['client_cpu_s']:>12.2f}  {ratios}{bad}")


def targets(table: dict, names: list[str]) -> dict:
    """Each Postroom set-up's figures at concurrency 32 against the issue's targets: [value, met]."""
    row = table.get(32)
    found = {}
    for mine in ours(names):
        if not row or not row[mine]:
            found[mine] = {"measured": False}
            continue
        r, ratio = row[mine], row.get(f"ratio_{mine}_django-pyas2")
        found[mine] = {"msgs_per_s_c32": [r["msgs_per_s"], r["msgs_per_s"] >= TARGETS["msgs_per_s_c32"]],
                       "ratio_c32": [ratio, bool(ratio) and ratio >= TARGETS["ratio_c32"]],
                       "p99_ms_c32": [r["p99_ms"], r["p99_ms"] <= TARGETS["p99_ms_c32"]]}
    return found


def environment() -> dict:
    """Machine, versions and the commit measured."""
    openssl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return machine(openssl_cli=openssl, ssl_module=ssl.OPENSSL_VERSION)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.as2_load", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="concurrency 1,8, 100 messages, 1 round")
    parser.add_argument("--concurrency", help="comma-separated client concurrency levels (default 1,8,32,128)")
    parser.add_argument("--messages", type=int, help="messages per run (default 1000)")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 1)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers for django-pyas2 (default 4)")
    parser.add_argument("--threads", type=int, default=8, help="gthread threads per gunicorn worker (default 8)")
    parser.add_argument("--nodes", type=int, default=2,
                        help="also N daemons sharing PostgreSQL and the spool, connections spread over them "
                             "(default 2; 1: the single daemon only)")
    parser.add_argument("--no-peer", action="store_true", help="Postroom only")
    parser.add_argument("--pyas2lib", action=argparse.BooleanOptionalAction, default=True,
                        help="also pyas2lib behind the stdlib HTTP server (default on)")
    parser.add_argument("--tmp", default=DEFAULT_TMP, help=f"where homes and databases go (default {DEFAULT_TMP})")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.concurrency = [int(c) for c in args.concurrency.split(",")] if args.concurrency else base["concurrency"]
    args.messages = args.messages or base["messages"]
    args.rounds = args.rounds or base["rounds"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    root = Path(args.tmp)
    kind = filesystem(root)[0]
    if kind in MEMORY_FILESYSTEMS:
        raise SystemExit(f"{root} is {kind}: fsync costs nothing there; pass --tmp on a real disk")
    began, load_before = time.monotonic(), os.getloadavg()
    work = Path(tempfile.mkdtemp(dir=root, prefix="postroom-bench-as2load-"))
    servers: list = []
    try:
        home = Home(work / "home")
        initialise(home, demo=True, key_bits=2048, listen=_ephemeral())
        start = time.monotonic()
        sets = {(r, c): build_set(home, f"AS2L{os.getpid()}-{r}-{c}", args.messages, work / "build")
                for r in range(args.rounds) for c in args.concurrency}
        warm = build_set(home, f"AS2W{os.getpid()}", WARMUP, work / "build")
        built_s = time.monotonic() - start
        print(f"built {len(sets) * args.messages + WARMUP} messages with openssl in {built_s:.1f} s "
              f"({sum(len(b) for b, _ in warm) // WARMUP} bytes each)", flush=True)
        servers.append(Postroom(home))
        if args.nodes > 1:
            servers.append(PostroomNodes(home, work / "nodes", root, args.nodes))
        if not args.no_peer:
            servers.append(DjangoPyas2(home, work / "django", root, args.workers, args.threads))
            if args.pyas2lib:
                servers.append(Pyas2libServer(home, work / "pyas2lib"))
        for server in servers:
            warmed = drive(server.target, warm, f"warm-{server.name}", 4)
            if warmed["failures"]:
                raise SystemExit(f"{server.name} fails the warm-up: {warmed['failures'][:3]}")
        runs = []
        for r in range(args.rounds):
            for i, c in enumerate(args.concurrency):
                shift = (r * len(args.concurrency) + i) % len(servers)
                order = servers[shift:] + servers[:shift]
                for server in order:
                    record = run(server, sets[(r, c)], f"{server.name}-{r}-{c}", c)
                    record["round"] = r
                    runs.append(record)
                    state = "ok" if record["valid"] else f"INVALID ({record['failures']} failed MDNs)"
                    print(f"round {r} c={c:<4} {server.name:<13} {record['msgs_per_s']:8.1f} msg/s  p50 "
                          f"{record['p50_ms']:.1f} ms  p99 {record['p99_ms']:.1f} ms  server CPU "
                          f"{record['server_cpu_ms_per_msg']:.2f} ms/msg  client CPU {record['client_cpu_s']:.2f} s"
                          f"  {state}", flush=True)
                    for sample in record["failure_samples"][:3]:
                        print(f"    !! {sample}", flush=True)
        versions = {server.name: server.versions() for server in servers if hasattr(server, "versions")}
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    names = [server.name for server in servers]
    table = summarise(runs, args.concurrency, names)
    print_table(table, names)
    met = targets(table, names)
    for mine, figures in met.items():
        if figures.get("measured") is not False:
            print(f"\n{mine} at c=32: " + "; ".join(f"{k} {v[0]} ({'met' if v[1] else 'missed'})"
                                                  for k, v in figures.items()))
    invalid = [r for r in runs if not r["valid"]]
    if invalid:
        print(f"\n!!! {len(invalid)} INVALID run(s), left out of the medians: "
              + ", ".join(f"{r['server']} c={r['concurrency']} ({r['failures']} failed)" for r in invalid))
    busiest = max((r for r in runs if r["server"] == "postroom"), key=lambda r: r["concurrency"])
    share = sorted(busiest["threads_cpu_s"].items(), key=lambda kv: -kv[1])
    print(f"\nPostroom CPU by thread at c={busiest['concurrency']}: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in share[:8]))
    report = {"benchmark": "as2_load", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": {**environment(), "filesystem": kind, "load_before": load_before,
                          "load_after": os.getloadavg()},
              "versions": versions,
              "parameters": {"concurrency": args.concurrency, "messages": args.messages, "rounds": args.rounds,
                             "warmup": WARMUP, "gunicorn_workers": args.workers, "gunicorn_threads": args.threads,
                             "key_bits": 2048, "peer_tls": "HTTPS, client certificate required (both peers)",
                             "peer_db": "PostgreSQL, fsync on", "build_s": round(built_s, 1),
                             "client": "http.client threads, keep-alive, TCP_NODELAY", "nodes": args.nodes,
                             "nodes_db": "PostgreSQL, fsync on; one spool; connections round-robin"},
              "summary": {str(c): row for c, row in table.items()}, "targets": met, "runs": runs,
              "wall_seconds": round(time.monotonic() - began)}
    save_results(RESULTS, report, load_before)


if __name__ == "__main__":
    main()
