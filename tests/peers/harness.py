"""Drive the independent AS2 peers (pyas2lib, django-pyas2) from tests, as separate processes.

Nothing here imports the peers (both GPL): it runs ``pyas2lib_peer.py`` and ``django_pyas2_peer.py``
with their own venvs' pythons (venvs.py) and reads the JSON they print or write. The fixtures in
tests/peers/conftest.py wrap these classes; other test packages (Postroom's AS2 door tests) can import
this module and reuse the same classes with their own fixtures.

- ``Identity``: an AS2 party's keys (S/MIME signing, S/MIME encryption, TLS) issued by a DevCA, and
  the config dicts the peer scripts take (``config()`` for itself, ``as_partner()`` for others).
- ``Pyas2lib``: ``send`` / ``verify_mdn`` (one JSON dict each) and ``serve`` → ``Pyas2libServer``
  (port discovery, ``received()`` / ``wait_received()``, payload bytes, async-MDN outcomes).
- ``DjangoPeer``: a django-pyas2 site in a work directory (``init``, ``serve``, ``send``,
  ``messages``, ``wait_messages``, ``flush_async_mdns``).
- ``MdnCatcher``: a tiny in-test HTTP(S) server that stores POSTs (e.g. async MDNs) as raw
  headers + body, for ``Pyas2lib.verify_mdn``.
Every process started here is stopped by ``stop()`` (terminate, then kill after a deadline).

All calls block (subprocess.run, polling). A test whose server under test runs on the reactor in the
same process must not call them on the reactor thread: use ``deferToThread(pyas2lib.send, ...)``.
"""

import http.server
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from certs.devca import DevCA
from tests.peers.venvs import PEERS_DIR, peer_env

PYAS2LIB_PEER = PEERS_DIR / "pyas2lib_peer.py"
DJANGO_PEER = PEERS_DIR / "django_pyas2_peer.py"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class PeerError(RuntimeError):
    """A peer command failed in a way that is a harness problem (not an AS2 outcome)."""


# --------------------------------------------------------------------------------------------------
# identities


@dataclass(frozen=True)
class Identity:
    """One AS2 party's PEM files (written 0600/0644 by DevCA.issue) and its AS2 name."""

    as2_id: str
    directory: Path
    sign_key: Path
    sign_cert: Path
    encrypt_key: Path
    encrypt_cert: Path
    tls_key: Path
    tls_cert: Path
    ca_cert: Path

    def as_partner(self, **settings) -> dict:
        """This party as a partner entry in someone else's config (certificates + settings)."""
        return {"as2_id": self.as2_id, "sign_cert": str(self.sign_cert), "encrypt_cert": str(self.encrypt_cert),
                "ca": str(self.ca_cert), **settings}

    def config(self, partners: list[dict], output_dir: Path | None = None, **extra) -> dict:
        """A peer config for this party (pyas2lib_peer.py / django_pyas2_peer.py format)."""
        config = {
            "as2_id": self.as2_id,
            "key": str(self.sign_key), "cert": str(self.sign_cert),
            "decrypt_key": str(self.encrypt_key), "decrypt_cert": str(self.encrypt_cert),
            "client_tls": {"cert": str(self.tls_cert), "key": str(self.tls_key), "ca": str(self.ca_cert)},
            "partners": partners,
        }
        if output_dir is not None:
            config["output_dir"] = str(output_dir)
        config.update(extra)
        return config


def make_identity(ca: DevCA, directory: Path, as2_id: str) -> Identity:
    """Issue signing, encryption and TLS (127.0.0.1/localhost) certificates for ``as2_id``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = as2_id.lower()
    sign = ca.issue(f"{name}-sign", "sign", directory)
    enc = ca.issue(f"{name}-encrypt", "encrypt", directory)
    tls = ca.issue(f"{name}-tls", "tls", directory, hostnames=["127.0.0.1", "localhost"])
    ca_cert = directory / "ca.crt"
    ca_cert.write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    return Identity(as2_id, directory, sign.key_path, sign.cert_path, enc.key_path, enc.cert_path,
                    tls.key_path, tls.cert_path, ca_cert)


# --------------------------------------------------------------------------------------------------
# processes


def _write_config(config: dict | Path | str, directory: Path) -> Path:
    if isinstance(config, (str, Path)):
        return Path(config)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"config-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def run_json(argv: list, *, timeout: float = 180, ok: tuple[int, ...] = (0,), env: dict | None = None) -> dict:
    """Run a peer command and return the JSON object it printed last; PeerError otherwise."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env=peer_env(env), check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in ok or not lines:
        raise PeerError(f"{' '.join(map(str, argv[:3]))} ... exited {proc.returncode}\n"
                        f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}")
    result = json.loads(lines[-1])
    result.setdefault("exit_code", proc.returncode)
    result["stderr"] = proc.stderr[-6000:]
    return result


class PeerProcess:
    """A long-running peer server: started with a port file as its readiness signal, stopped for sure."""

    def __init__(self, name: str, argv: list, workdir: Path, port_file: Path, *, tls: bool,
                 path: str = "/", env: dict | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.workdir = workdir
        self.port_file = port_file
        self.log = workdir / f"{name}.log"
        self.scheme = "https" if tls else "http"
        self.path = path
        self.env = env
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """The AS2 receive URL."""
        return f"{self.scheme}://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout: float = START_TIMEOUT) -> "PeerProcess":
        self.port_file.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=peer_env(self.env),
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise PeerError(f"{self.name} exited with {self.process.returncode} before listening:\n"
                                f"{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PeerError(f"{self.name} did not listen within {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text().strip())
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL (the process and its session, e.g. gunicorn workers) after ``timeout``."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the session this process leads (started by us)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        return proc.returncode

    def log_text(self, limit: int = 8000) -> str:
        return self.log.read_text(errors="replace")[-limit:] if self.log.exists() else ""


# --------------------------------------------------------------------------------------------------
# pyas2lib


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(read, count: int, timeout: float, what: str) -> list:
    deadline = time.monotonic() + timeout
    while True:
        items = read()
        if len(items) >= count:
            return items
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {count} {what}, have {len(items)}: {items}")
        time.sleep(0.05)


class Pyas2libServer(PeerProcess):
    """``pyas2lib_peer.py serve``; what it received is in ``output_dir`` (see that script's docstring)."""

    def __init__(self, *args, output_dir: Path, config: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_dir = output_dir
        self.config = config

    def received(self) -> list[dict]:
        """One dict per message received so far (received.jsonl)."""
        return _read_jsonl(self.output_dir / "received.jsonl")

    def wait_received(self, count: int = 1, timeout: float = 30) -> list[dict]:
        return _wait(self.received, count, timeout, "received messages")

    def payload(self, record: dict) -> bytes:
        """The payload bytes of a received message (KeyError-free: None if it was not readable)."""
        return (self.output_dir / record["payload_file"]).read_bytes() if record.get("payload_file") else None

    def file(self, name: str) -> bytes:
        return (self.output_dir / name).read_bytes()

    def async_mdns(self) -> list[dict]:
        """Outcomes of the async MDNs this server POSTed (async_mdns.jsonl)."""
        return _read_jsonl(self.output_dir / "async_mdns.jsonl")

    def wait_async_mdns(self, count: int = 1, timeout: float = 30) -> list[dict]:
        return _wait(self.async_mdns, count, timeout, "async MDN sends")

    def tls_errors(self) -> list[dict]:
        """TLS handshakes the server refused (tls_errors.jsonl), e.g. no or untrusted client certificate."""
        return _read_jsonl(self.output_dir / "tls_errors.jsonl")

    def mdns(self) -> list[dict]:
        """MDNs POSTed to this server (answers to ``send --mdn async``), parsed (mdns.jsonl)."""
        return _read_jsonl(self.output_dir / "mdns.jsonl")

    def wait_mdns(self, count: int = 1, timeout: float = 30) -> list[dict]:
        return _wait(self.mdns, count, timeout, "received MDNs")


class Pyas2lib:
    """The pyas2lib peer: one-shot commands and servers, all in its own venv."""

    def __init__(self, python: Path, workdir: Path):
        self.python = Path(python)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.servers: list[Pyas2libServer] = []

    def serve(self, config: dict, *, tls_cert: Path | None = None, tls_key: Path | None = None,
              client_ca: Path | None = None, name: str | None = None, path: str = "/as2") -> Pyas2libServer:
        """Start ``serve``; ``config['output_dir']`` defaults to a fresh directory in the work dir."""
        name = name or f"pyas2lib-{config['as2_id'].lower()}-{len(self.servers)}"
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        config = {**config, "output_dir": config.get("output_dir") or str(workdir / "out")}
        config_path = _write_config(config, workdir)
        argv = [self.python, PYAS2LIB_PEER, "serve", "--config", config_path, "--port-file", workdir / "port"]
        if tls_cert:
            argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
            if client_ca:
                argv += ["--client-ca", client_ca]
        server = Pyas2libServer(name, argv, workdir, workdir / "port", tls=bool(tls_cert), path=path,
                                output_dir=Path(config["output_dir"]), config=config)
        self.servers.append(server)
        return server.start()

    def send(self, config: dict | Path, url: str, file: Path, *, to: str | None = None,
             sign: bool | None = None, encrypt: bool | None = None, compress: bool | None = None,
             digest: str | None = None, cipher: str | None = None, mdn: str | None = None,
             mdn_signed: bool | None = None, mdn_digest: str | None = None, async_url: str | None = None,
             message_id: str | None = None, filename: str | None = None, content_type: str | None = None,
             subject: str | None = None, headers: dict | None = None, tamper: bool = False,
             tls_cert: Path | None = None, tls_key: Path | None = None, ca: Path | None = None,
             expect_transport_error: bool = False, timeout: float = 120) -> dict:
        """Build and POST one message; the parsed result (see pyas2lib_peer.py ``send``).

        Raises PeerError on harness errors, and on transport errors unless ``expect_transport_error``
        (then the result has ``error`` and ``http_status`` None)."""
        argv = [self.python, PYAS2LIB_PEER, "send", "--config", _write_config(config, self.workdir),
                "--url", url, "--file", file, "--timeout", timeout]
        for flag, value in (("sign", sign), ("encrypt", encrypt), ("compress", compress),
                            ("mdn-signed", mdn_signed)):
            if value is not None:
                argv.append(f"--{flag}" if value else f"--no-{flag}")
        for flag, value in (("to", to), ("digest", digest), ("cipher", cipher), ("mdn", mdn),
                            ("mdn-digest", mdn_digest), ("async-url", async_url), ("message-id", message_id),
                            ("filename", filename), ("content-type", content_type), ("subject", subject),
                            ("tls-cert", tls_cert), ("tls-key", tls_key), ("ca", ca)):
            if value is not None:
                argv += [f"--{flag}", value]
        for name, value in (headers or {}).items():
            argv += ["--header", f"{name}: {value}"]
        if tamper:
            argv.append("--tamper")
        result = run_json(argv, timeout=timeout + 60, ok=(0, 2) if expect_transport_error else (0,))
        if expect_transport_error and result["exit_code"] != 2:
            raise PeerError(f"expected a transport error, got HTTP {result.get('http_status')}: {result}")
        return result

    def verify_mdn(self, config: dict | Path, raw: bytes | Path, message_id: str, *, mic: str | None = None,
                   to: str | None = None, mdn_digest: str | None = None) -> dict:
        """Parse an MDN saved as HTTP headers + blank line + body (e.g. from MdnCatcher.raw)."""
        if isinstance(raw, bytes):
            path = self.workdir / f"mdn-{uuid.uuid4().hex[:8]}.raw"
            path.write_bytes(raw)
            raw = path
        argv = [self.python, PYAS2LIB_PEER, "verify-mdn", "--config", _write_config(config, self.workdir),
                "--file", raw, "--message-id", message_id]
        for flag, value in (("mic", mic), ("to", to), ("mdn-digest", mdn_digest)):
            if value is not None:
                argv += [f"--{flag}", value]
        return run_json(argv)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


# --------------------------------------------------------------------------------------------------
# django-pyas2


class DjangoPeer:
    """A django-pyas2 site in ``workdir`` (SQLite, MEDIA_ROOT), served by gunicorn."""

    def __init__(self, python: Path, workdir: Path):
        self.python = Path(python)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server: PeerProcess | None = None
        self.config: dict | None = None

    def _run(self, *args, timeout: float = 180) -> dict:
        return run_json([self.python, DJANGO_PEER, *args, "--workdir", self.workdir], timeout=timeout)

    def init(self, config: dict) -> dict:
        """Migrate the database and load the organization and partners."""
        self.config = config
        return self._run("init", "--config", _write_config(config, self.workdir))

    def configure(self, config: dict) -> dict:
        """Re-load a changed config (partners' URLs, algorithms, certificates)."""
        self.config = config
        return self._run("configure", "--config", _write_config(config, self.workdir))

    def serve(self, *, tls_cert: Path | None = None, tls_key: Path | None = None,
              client_ca: Path | None = None) -> PeerProcess:
        argv = [self.python, DJANGO_PEER, "serve", "--workdir", self.workdir, "--port-file", self.workdir / "port"]
        if tls_cert:
            argv += ["--tls-cert", tls_cert, "--tls-key", tls_key]
            if client_ca:
                argv += ["--client-ca", client_ca]
        self.server = PeerProcess("django-pyas2", argv, self.workdir, self.workdir / "port", tls=bool(tls_cert),
                                  path="/pyas2/as2receive")
        return self.server.start()

    @property
    def url(self) -> str:
        """Its AS2 receive URL (also where it takes async MDNs)."""
        return self.server.url

    def send(self, to: str, file: Path, *, ca: Path | None = None) -> dict:
        """``sendas2message`` to partner ``to``; returns {"error", "messages": [the new OUT message]}."""
        args = ["send", "--to", to, "--file", file]
        if ca:
            args += ["--ca", ca]
        return self._run(*args)

    def messages(self, direction: str | None = None) -> list[dict]:
        args = ["messages"] + (["--direction", direction] if direction else [])
        return self._run(*args)["messages"]

    def wait_messages(self, direction: str, count: int = 1, timeout: float = 30) -> list[dict]:
        return _wait(lambda: self.messages(direction), count, timeout, f"{direction} messages")

    def flush_async_mdns(self) -> dict:
        """Send pending async MDNs now (django-pyas2 leaves that to a cron job)."""
        return self._run("async-mdns")

    def log_text(self) -> str:
        path = self.workdir / "peer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# --------------------------------------------------------------------------------------------------
# a tiny receiver for async MDNs (or anything POSTed)


@dataclass
class Caught:
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    client_cert: dict | None = None

    @property
    def raw(self) -> bytes:
        """Headers + blank line + body, the form ``Pyas2lib.verify_mdn`` reads."""
        head = "".join(f"{k}: {' '.join(v.split())}\r\n" for k, v in self.headers)
        return head.encode("utf-8", "surrogateescape") + b"\r\n" + self.body


@dataclass
class MdnCatcher:
    """An in-test HTTP(S) server on 127.0.0.1 that answers 200 to every POST and keeps it."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    status: int = 200
    caught: list[Caught] = field(default_factory=list)

    def __enter__(self) -> "MdnCatcher":
        catcher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                catcher.caught.append(Caught(self.path, list(self.headers.items()), body, cert))
                self.send_response(catcher.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
            if self.client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(self.client_ca)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}/mdn"

    def wait(self, count: int = 1, timeout: float = 30) -> list[Caught]:
        return _wait(lambda: list(self.caught), count, timeout, "POSTs")
