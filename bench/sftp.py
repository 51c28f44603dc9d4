"""SFTP door against OpenSSH: upload throughput for one large file and for many small signed invoices.

Servers, side by side in one invocation, alternating, ``--rounds`` times (medians and ratios reported):

* Postroom: a real ``postroom serve`` daemon in a fresh ``postroom init --demo`` home on the real disk;
  every upload is staged, fsynced and committed by the intake before its close returns.
* OpenSSH: Debian's ``sshd`` with its own config, host key and loopback port, key auth only,
  ``internal-sftp`` chrooted to a root-owned directory with a writable ``inbox/``. Plain ``put`` leaves
  the data in the page cache; ``put -f`` asks the server to fsync it (OpenSSH ``sftp`` only: paramiko
  has no fsync request), the fair peer on durability.

Clients: OpenSSH ``sftp -b`` (key auth, timed from its first command's answer to its exit, so process
start and login are left out) and paramiko (``put(confirm=True)``, timed after login).

1. one ``--big-mb`` MB random file (opaque: acme may send opaque payloads, routed to globex): MB/s;
2. ``--files`` distinct 10 KB UBL invoices, XML-DSig signed with acme's demo key, in one session: files/s;
   every Postroom run must have all of them accepted, or it is reported invalid and left out;
3. ``--gigabyte``: one 1 GB paramiko upload to the daemon while its RSS is sampled every 50 ms.

MB means 2**20 bytes. Results: a table on stdout and ``bench/results/sftp.json`` (every run's figures).

    .venv/bin/python -m bench.sftp [--quick] [--rounds 3] [--big-mb 200] [--files 1000] [--no-gigabyte]
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import paramiko
from lxml import etree
from signxml import XMLSigner
from signxml.algorithms import CanonicalizationMethod

from bench.common import (
    DEFAULT_TMP,
    ROOT,
    DaemonSide,
    RSSSampler,
    demo_home,
    filesystem,
    machine,
    require_real_disk,
    save_results,
    vm_kb,
    with_defaults,
)
from certs.x509 import load_key_and_certificate, read_file
from gateway.home import Home
from protocols import xmldoc
from tests.e2e.daemon import Daemon

PLACEHOLDER = ROOT / "tests" / "fixtures" / "invoices" / "signed" / "unsigned-with-placeholder.xml"
RESULTS = ROOT / "bench" / "results" / "sftp.json"
SSHD = "/usr/sbin/sshd"
#: sshd refuses a chroot with any group/world-writable component, such as /var/tmp: this one is 0755 root.
SSHD_PARENT = "/var/lib"
MB = 1 << 20
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
               "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
FULL = {"rounds": 3, "big_mb": 200, "files": 1000, "gigabyte": True}
QUICK = {"rounds": 1, "big_mb": 20, "files": 100, "gigabyte": False}


# ---------------------------------------------------------------------------------------------------------------
# The two servers
# ---------------------------------------------------------------------------------------------------------------

class Server:
    """Where a client logs in and uploads to ``/inbox/``; ``pid`` is the process whose CPU is the server's."""

    name = ""
    port = 0
    user = ""

    def pid(self) -> int:
        raise NotImplementedError


class Postroom(DaemonSide, Server):
    """A ``postroom serve`` daemon in a fresh demo home that takes acme's opaque payloads up to 2 GiB."""

    name = "postroom"
    user = "acme"

    def __init__(self, work: Path):
        self.home = demo_home(work / "home")
        config = self.home.config_file
        config.write_text(re.sub(r"(?m)^max_payload_bytes = \d+$", f"max_payload_bytes = {2 << 30}",
                                 config.read_text()))
        self.daemon = Daemon(self.home)
        self.daemon.cli("partner", "policy", "acme", "allow_opaque=true", "require_xmldsig=true")
        self.daemon.cli("route", "add", "--to", "globex", "--from", "acme", "--kind", "opaque")
        self.key = self.home.demo / "acme" / "id_ed25519"

    def start(self) -> "Postroom":
        self.daemon.start()
        self.port = self.daemon.ports["sftp"]
        return self



class OpenSSH(Server):
    """``sshd -D -e -f CONFIG`` on a private loopback port, letting ``authorized`` in as root, chrooted."""

    name = "openssh"
    user = "root"

    def __init__(self, authorized: Path):
        self.folder = Path(tempfile.mkdtemp(dir=SSHD_PARENT, prefix="postroom-bench-sshd-"))
        self.inbox = self.folder / "chroot" / "inbox"
        self.inbox.mkdir(parents=True)
        (self.folder / "chroot").chmod(0o755)
        host_key = self.folder / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        shutil.copyfile(authorized, self.folder / "authorized_keys")
        self.port = free_port()
        self.config = self.folder / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}\nSubsystem sftp internal-sftp\n"
            f"ChrootDirectory {self.folder / 'chroot'}\nUsePAM no\nStrictModes yes\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nAllowTcpForwarding no\nX11Forwarding no\nLogLevel ERROR\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "OpenSSH":
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation directory
        with (self.folder / "sshd.log").open("ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.folder / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"sshd did not listen on {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.folder)

    def pid(self) -> int:
        return self.process.pid

    def received(self) -> list[int]:
        """Sizes of the files in the inbox, which is then moved aside, not deleted: Postroom keeps what it
        receives too, and in a VM writing into just-freed page cache costs a fraction of writing into new pages."""
        sizes = [p.stat().st_size for p in self.inbox.iterdir()]
        kept = self.folder / "kept"
        kept.mkdir(exist_ok=True)
        self.inbox.rename(kept / str(len(list(kept.iterdir()))))
        self.inbox.mkdir()
        return sizes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU used by ``pid`` and its reaped children: sshd's sessions are children of the listener."""
    fields = [int(v) / os.sysconf("SC_CLK_TCK") for v in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
              .split()[11:15]]
    return fields[0] + fields[2], fields[1] + fields[3]


def settle(server: Server) -> None:
    """Flush the page cache and wait until the server is idle, so no run pays for the previous one's tail."""
    os.sync()
    last = sum(cpu_seconds(server.pid()))
    for _ in range(50):
        time.sleep(0.2)
        now = sum(cpu_seconds(server.pid()))
        if now - last < 0.01:
            return
        last = now


# ---------------------------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------------------------

def random_file(path: Path, megabytes: int) -> Path:
    """Random bytes: incompressible, and never XML (the first byte is not ``<``), so the gateway takes it opaque."""
    with path.open("wb") as f:
        for _ in range(megabytes):
            f.write(os.urandom(MB))
    return path


def relabel(path: Path, label: str) -> None:
    """Make the file's first bytes unique, so each Postroom upload is a new document."""
    with path.open("r+b") as f:
        f.write(f"BENCH {label:<58}\n".encode()[:64])


class InvoiceSigner:
    """acme's signing key from the demo home, over the UBL placeholder example (supplier acme, customer globex)."""

    def __init__(self, home: Home):
        acme = home.demo / "acme"
        self.loaded = load_key_and_certificate(read_file(acme / "acme-sign.key"), read_file(acme / "acme-sign.crt"))
        self.signer = XMLSigner(signature_algorithm="rsa-sha256", digest_algorithm="sha256",
                                c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
        # without indentation it signs to about 10 KB
        self.template = re.sub(rb">\s+<", b"><", PLACEHOLDER.read_bytes())

    def batch(self, folder: Path, tag: str, count: int) -> list[Path]:
        """``count`` signed invoices numbered ``TAG-000001``...: distinct numbers, so none is a duplicate."""
        folder.mkdir()
        paths = []
        for i in range(1, count + 1):
            number = f"{tag}-{i:06d}"
            doc = self.template.replace(b"<cbc:ID>Snippet1</cbc:ID>", f"<cbc:ID>{number}</cbc:ID>".encode(), 1)
            root = self.signer.sign(xmldoc.parse(doc), key=self.loaded.key, cert=[self.loaded.certificate])
            path = folder / f"{number}.xml"
            path.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
            paths.append(path)
        return paths


# ---------------------------------------------------------------------------------------------------------------
# The two clients
# ---------------------------------------------------------------------------------------------------------------

def sftp_batch(server: Server, key: Path, files: list[Path], work: Path, fsync: bool = False) -> float:
    """Seconds for OpenSSH ``sftp -b`` to put ``files``, from its answer to a first ``pwd`` until it exits."""
    batch = work / "batch"
    put = "put -f" if fsync else "put"
    batch.write_text("pwd\n" + "".join(f"{put} {path} /inbox/{path.name}\n" for path in files))
    process = subprocess.Popen(["sftp", "-b", str(batch), "-i", str(key), *SSH_OPTIONS, "-P", str(server.port),
                                f"{server.user}@127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stdout:  # sftp line-buffers its stdout
        if line.startswith(b"Remote working directory"):
            break
    start = time.perf_counter()
    _, err = process.communicate()
    took = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"sftp exited {process.returncode}: {err.decode(errors='replace')[-500:]}")
    return took


def paramiko_puts(server: Server, key: Path, files: list[Path]) -> float:
    """Seconds for paramiko to ``put(confirm=True)`` ``files`` in one session, after login."""
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(username=server.user, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
        client = paramiko.SFTPClient.from_transport(transport)
        start = time.perf_counter()
        for path in files:
            client.put(str(path), f"/inbox/{path.name}", confirm=True)
        return time.perf_counter() - start
    finally:
        transport.close()


def ciphers(servers: list[Server], key: Path) -> dict:
    """The cipher each client negotiates with each server (the client's preference decides)."""
    found = {}
    for server in servers:
        verbose = subprocess.run(["sftp", "-v", "-i", str(key), *SSH_OPTIONS, "-o", "LogLevel=DEBUG1", "-b", "-",
                                  "-P", str(server.port), f"{server.user}@127.0.0.1"], input="pwd\n",
                                 capture_output=True, text=True)
        match = re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", verbose.stderr)
        found[f"sftp->{server.name}"] = " ".join(match.groups()) if match else "?"
        transport = paramiko.Transport(("127.0.0.1", server.port))
        try:
            transport.connect(username=server.user, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
            found[f"paramiko->{server.name}"] = f"{transport.local_cipher} {transport.local_mac}"
        finally:
            transport.close()
    return found


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------

def run(server: Server, client: str, files: list[Path], key: Path, work: Path, fsync: bool = False) -> dict:
    """One timed upload of ``files``, checked: Postroom must accept every file, OpenSSH must hold them whole."""
    settle(server)
    before = server.counts() if isinstance(server, Postroom) else None
    cpu = cpu_seconds(server.pid())
    record = {"server": server.name + ("-f" if fsync else ""), "client": client, "files": len(files),
              "bytes": sum(p.stat().st_size for p in files)}
    try:
        took = sftp_batch(server, key, files, work, fsync) if client == "sftp" else paramiko_puts(server, key, files)
    except (OSError, RuntimeError, paramiko.SSHException) as e:
        took, record["error"] = None, str(e)[-300:]
    settle(server)
    user, system = (b - a for a, b in zip(cpu, cpu_seconds(server.pid()), strict=True))
    record["server_cpu_s"], record["server_sys_s"] = round(user + system, 3), round(system, 3)
    if isinstance(server, Postroom):
        after = server.counts()
        record["accepted"], record["refused"] = after[0] - before[0], after[1] - before[1]
        record["valid"] = took is not None and record["accepted"] == len(files) and record["refused"] == 0
    else:
        sizes = sorted(server.received())
        record["valid"] = took is not None and sizes == sorted(p.stat().st_size for p in files)
    record["seconds"] = round(took, 4) if took is not None else None
    if took is not None:
        record["mb_per_s"] = round(record["bytes"] / MB / took, 1)
        record["files_per_s"] = round(len(files) / took, 1)
    return record


def progress(record: dict, measure: str, unit: str) -> None:
    """One line per run as it ends; an invalid run says why (it is left out of the medians)."""
    counts = f"{record.get('accepted')} accepted, {record.get('refused')} refused"
    why = "" if record["valid"] else f"  INVALID: {record.get('error') or counts}"
    print(f"  {record['test']:5} round {record['round']} {record['client']:8} {record['server']:10} "
          f"{record.get(measure)} {unit}{why}", flush=True)


def variants(servers: tuple[Postroom, OpenSSH]) -> list[tuple[Server, str, bool]]:
    """(server, client, fsync) in the order one round runs them: Postroom, then its peers, per client."""
    postroom, openssh = servers
    return [(postroom, "sftp", False), (openssh, "sftp", False), (openssh, "sftp", True),
            (postroom, "paramiko", False), (openssh, "paramiko", False)]


def big_rounds(servers, key: Path, big: Path, work: Path, rounds: int) -> list[dict]:
    """The single-stream upload, alternating servers; each Postroom upload gets distinct first bytes."""
    out = []
    for r in range(1, rounds + 1):
        for server, client, fsync in variants(servers):
            relabel(big, f"round {r} {client} {server.name} {fsync}")
            out.append({"test": "big", "round": r, **run(server, client, [big], key, work, fsync)})
            progress(out[-1], "mb_per_s", "MB/s")
    return out


def small_rounds(servers, key: Path, batches: dict, work: Path, rounds: int) -> list[dict]:
    """The many-small-files session, alternating servers; each Postroom run has its own invoice numbers."""
    out = []
    for r in range(1, rounds + 1):
        for server, client, fsync in variants(servers):
            files = batches[r, client]
            out.append({"test": "small", "round": r, **run(server, client, files, key, work, fsync)})
            progress(out[-1], "files_per_s", "files/s")
    return out


def gigabyte(postroom: Postroom, key: Path, work: Path) -> dict:
    """One 1 GB paramiko upload while the daemon's VmRSS is sampled every 50 ms (and its VmHWM reset first)."""
    path = random_file(work / "gigabyte.bin", 1024)
    relabel(path, "gigabyte")
    pid = postroom.pid()
    settle(postroom)
    with RSSSampler(pid) as rss:
        result = run(postroom, "paramiko", [path], key, work)
    path.unlink()
    return {**result, "rss_before_mb": rss.before_mb, "rss_peak_mb": rss.peak_mb,
            "rss_growth_mb": round(rss.peak_mb - rss.before_mb, 1), "vm_hwm_mb": round(vm_kb(pid, "VmHWM") / 1024, 1),
            "samples": len(rss.rss_samples), "rss_samples": rss.rss_samples,
            "series_label": "SFTP door, one 1 GB upload (paramiko)"}


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

def medians(runs: list[dict], measure: str) -> dict:
    """Median of ``measure`` per (client, server) over the valid runs; invalid runs are counted, not used."""
    table: dict = {}
    for r in runs:
        cell = table.setdefault(r["client"], {}).setdefault(r["server"], {"values": [], "cpu": [], "invalid": 0})
        if r["valid"]:
            cell["values"].append(r[measure])
            cell["cpu"].append(r["server_cpu_s"])
        else:
            cell["invalid"] += 1
    for servers in table.values():
        for cell in servers.values():
            cell["median"] = statistics.median(cell["values"]) if cell["values"] else None
            cell["median_cpu_s"] = statistics.median(cell["cpu"]) if cell["cpu"] else None
        ours = servers["postroom"]["median"]
        for name in ("openssh", "openssh-f"):
            theirs = servers.get(name, {}).get("median")
            if ours and theirs:
                servers[f"ratio_vs_{name}"] = round(ours / theirs, 2)
    return table


def print_table(title: str, unit: str, table: dict) -> None:
    """Medians per client, the ratios, and the server's CPU seconds per run (sshd: its reaped sessions)."""
    names = ("postroom", "openssh", "openssh-f")
    print(f"\n{title} ({unit}, median of valid runs; ratio = Postroom / OpenSSH)")
    print(f"  {'client':9} {'Postroom':>9} {'OpenSSH':>9} {'put -f':>9} {'ratio':>6} {'ratio -f':>8}  "
          f"{'server CPU s (P / O / -f)':>25}  invalid")
    for client, servers in table.items():
        cells = [servers.get(name, {}) for name in names]
        rates = " ".join(f"{c['median']:9.1f}" if c.get("median") else f"{'-':>9}" for c in cells)
        cpu = " / ".join(f"{c['median_cpu_s']:.2f}" if c.get("median_cpu_s") is not None else "-" for c in cells)
        ratios = [servers.get(f"ratio_vs_{name}") or "-" for name in names[1:]]
        invalid = sum(c.get("invalid", 0) for c in cells)
        print(f"  {client:9} {rates} {ratios[0]:>6} {ratios[1]:>8}  {cpu:>25}  {invalid}")


def environment() -> dict:
    """Machine, versions and the commit measured."""
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    return machine(asyncssh=asyncssh.__version__, paramiko=paramiko.__version__,
                   openssh=(ssh.stderr or ssh.stdout).strip())


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sftp", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 MB, 100 files, 1 round, no 1 GB")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 3)")
    parser.add_argument("--big-mb", type=int, help="size of the single-stream file in MB (default 200)")
    parser.add_argument("--files", type=int, help="signed 10 KB invoices per session (default 1000)")
    parser.add_argument("--gigabyte", action=argparse.BooleanOptionalAction, help="the 1 GB RSS run (default on)")
    parser.add_argument("--tmp", default=DEFAULT_TMP, help=f"where the home and payloads go (default {DEFAULT_TMP})")
    args = parser.parse_args(argv)
    with_defaults(args, QUICK, FULL)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    for where in (Path(args.tmp), Path(SSHD_PARENT)):
        require_real_disk(where)
    began, load_before = time.monotonic(), os.getloadavg()
    work = Path(tempfile.mkdtemp(dir=args.tmp, prefix="postroom-bench-sftp-"))
    postroom = openssh = None
    try:
        postroom = Postroom(work)
        key = postroom.key
        signer = InvoiceSigner(postroom.home)
        batches = {(r, client): signer.batch(work / f"r{r}-{client}", f"R{r}{client[0].upper()}", args.files)
                   for r in range(1, args.rounds + 1) for client in ("sftp", "paramiko")}
        invoice_bytes = sorted({p.stat().st_size for p in batches[1, "sftp"]})
        big = random_file(work / "big.bin", args.big_mb)
        postroom.start()
        openssh = OpenSSH(postroom.home.demo / "acme" / "id_ed25519.pub").start()
        servers = (postroom, openssh)
        negotiated = ciphers(list(servers), key)
        print(f"ciphers: {negotiated}", flush=True)
        runs = big_rounds(servers, key, big, work, args.rounds)
        runs += small_rounds(servers, key, batches, work, args.rounds)
        giga = gigabyte(postroom, key, work) if args.gigabyte else None
    finally:
        for server in (openssh, postroom):
            if server is not None:
                server.stop()
        shutil.rmtree(work)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**environment(), "filesystem": filesystem(Path(args.tmp))[0], "load_before": load_before,
                    "load_after": os.getloadavg()},
        "parameters": {"rounds": args.rounds, "big_mb": args.big_mb, "files": args.files,
                       "invoice_bytes": invoice_bytes, "gigabyte": args.gigabyte, "ciphers": negotiated},
        "big": medians([r for r in runs if r["test"] == "big"], "mb_per_s"),
        "small": medians([r for r in runs if r["test"] == "small"], "files_per_s"),
        "gigabyte": giga, "runs": runs, "wall_seconds": round(time.monotonic() - began),
    }
    print_table(f"One {args.big_mb} MB file, single stream", "MB/s", report["big"])
    print_table(f"{args.files} signed 10 KB invoices, one session", "files/s", report["small"])
    if giga:
        print(f"\n1 GB paramiko upload to Postroom: {giga.get('mb_per_s')} MB/s, valid {giga['valid']}; daemon RSS "
              f"{giga['rss_before_mb']} MB before, peak {giga['rss_peak_mb']} MB (VmHWM {giga['vm_hwm_mb']} MB), "
              f"growth {giga['rss_growth_mb']} MB")
    save_results(RESULTS, report, load_before)


if __name__ == "__main__":
    main()
