"""AS2 floor: the CPU cost of reading one AS2 message and building its signed MDN, against pyas2lib.

One 10 KB UBL invoice, signed (SHA-256) and encrypted (AES-256-CBC, RSA v1.5) by ``openssl cms`` —
neither side built it — with a signed sync MDN requested. Measured per message, in a tight loop:

* Postroom: ``inbound.unwrap`` (decrypt, verify, MIC over the received bytes) + the signed MDN
  (``ReceiptSigner.intake``) — exactly the door's CPU work, without HTTP, spool or database.
* pyas2lib 1.4.4 in its own virtualenv (GPL: a separate process): ``Message.parse`` + ``Mdn.build``.

Both run in the same invocation, alternating, ``--rounds`` times; the report gives medians and the
ratio. ``--large MB`` also reads one MB-sized message (in a child process) and reports its peak RSS.
Results: a table on stdout and ``bench/results/as2.json``.

    .venv/bin/python -m bench.as2 [--messages 300] [--rounds 3] [--large 100]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from admin.initialise import initialise
from bench.common import RSSSampler, save_results, vm_kb
from bench.intake import environment
from certs.x509 import load_certificate, load_key_and_certificate, read_file
from gateway.config import load
from gateway.home import Home
from gateway.receipts import ReceiptSigner
from protocols.as2 import inbound
from protocols.as2.mime import Headers, Region, Scratch, memory_scratch
from protocols.mdn import Disposition

BASE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "invoices" / "peppol-bis3" / "base-example.xml"
RESULTS = Path(__file__).resolve().parent / "results" / "as2.json"
VERSION = "import importlib.metadata as m; print(m.version('pyas2lib'))"
HEADERS = Headers.of([("Content-Type", 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'),
                      ("AS2-From", "ACME"), ("AS2-To", "POSTROOM"), ("Message-ID", "<bench@openssl>")])


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def build_message(home: Home, payload: bytes, work: Path) -> bytes:
    """The openssl-built AS2 body (CRLF payload, so pyas2lib's re-serialising verifier agrees)."""
    acme = home.demo / "acme"
    part = work / "part.mime"
    part.write_bytes(b"Content-Type: application/xml\r\nContent-Transfer-Encoding: binary\r\n\r\n" + payload)
    _openssl("cms", "-sign", "-binary", "-crlfeol", "-md", "sha256", "-in", str(part), "-signer",
             str(acme / "acme-sign.crt"), "-inkey", str(acme / "acme-sign.key"), "-outform", "SMIME",
             "-out", str(work / "signed.mime"))
    signed = (work / "signed.mime").read_bytes()
    if signed.startswith(b"MIME-Version"):
        signed = signed.split(b"\r\n", 1)[1]
    (work / "signed.mime").write_bytes(signed)
    _openssl("cms", "-encrypt", "-binary", "-aes256", "-in", str(work / "signed.mime"), "-outform", "DER",
             "-out", str(work / "body.p7m"), str(home.path / "pki" / "encrypt.crt"))
    return (work / "body.p7m").read_bytes()


class Postroom:
    """The door's CPU work for one message."""

    def __init__(self, home: Home):
        config = load(home)
        pki = home.path / "pki"
        loaded = load_key_and_certificate(read_file(pki / "encrypt.key"), read_file(pki / "encrypt.crt"))
        self.recipients = [(loaded.key, loaded.certificate)]
        self.trusted = [load_certificate(read_file(home.demo / "acme" / "acme-sign.crt"))]
        self.signer = ReceiptSigner.from_config(config)

    def once(self, body: bytes | Region, scratch: Scratch = memory_scratch) -> Region:
        now = datetime.now(UTC)
        got = inbound.unwrap(HEADERS, body, recipients=self.recipients, trusted=self.trusted, cas=(),
                             security=inbound.Security(), mic_digest="sha256", max_decompressed=1 << 30, now=now,
                             scratch=scratch)
        self.signer.intake(kind="acceptance", partner_id="acme", original_id="<bench@openssl>", sha256=None, now=now,
                           disposition=Disposition(), text="Accepted.", mic=got.mic, message_id="m")
        return got.payload


PYAS2LIB_LOOP = textwrap.dedent('''
    import json, sys, time
    from pyas2lib import Mdn, Message, Organization, Partner
    cfg = json.loads(sys.argv[1])
    read = lambda p: open(p, "rb").read()
    org = Organization(as2_name="POSTROOM", sign_key=read(cfg["key"]) + read(cfg["cert"]), sign_key_pass=None,
                       decrypt_key=read(cfg["dkey"]) + read(cfg["dcert"]), decrypt_key_pass=None)
    partner = Partner(as2_name="ACME", verify_cert=read(cfg["verify"]), validate_certs=False, sign=True,
                      encrypt=True, mdn_mode="SYNC", mdn_digest_alg="sha256")
    body = read(cfg["body"])
    headers = {"content-type": 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
               "as2-from": "ACME", "as2-to": "POSTROOM", "message-id": "<bench@openssl>",
               "disposition-notification-to": "x@y", "disposition-notification-options":
               "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256"}
    raw = b"".join(f"{k}: {v}\\r\\n".encode() for k, v in headers.items()) + b"\\r\\n" + body
    def once():
        message = Message()
        status, exc, mdn = message.parse(raw, find_org_cb=lambda h: org, find_partner_cb=lambda h: partner)
        assert status == "processed", (status, exc)
        Mdn(mdn_mode="SYNC").build(message=message, status=status)
    for _ in range(cfg["warmup"]):
        once()
    start = time.process_time()
    for _ in range(cfg["n"]):
        once()
    print(json.dumps({"cpu_ms": (time.process_time() - start) * 1000 / cfg["n"]}))
''')


def pyas2lib_round(python: Path, home: Home, body_file: Path, n: int) -> float:
    pki = home.path / "pki"
    cfg = {"key": str(pki / "sign.key"), "cert": str(pki / "sign.crt"), "dkey": str(pki / "encrypt.key"),
           "dcert": str(pki / "encrypt.crt"), "verify": str(home.demo / "acme" / "acme-sign.crt"),
           "body": str(body_file), "n": n, "warmup": min(20, n)}
    out = subprocess.run([str(python), "-c", PYAS2LIB_LOOP, json.dumps(cfg)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["cpu_ms"]


def postroom_round(postroom: Postroom, body: bytes, n: int) -> float:
    for _ in range(min(20, n)):
        postroom.once(body)
    start = time.process_time()
    for _ in range(n):
        postroom.once(body)
    return (time.process_time() - start) * 1000 / n


LARGE_CHILD = textwrap.dedent('''
    import re, sys, tempfile
    from bench.as2 import Postroom
    from gateway.home import Home
    from protocols.as2.mime import Region
    def peak_kb():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec from the parent
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    postroom = Postroom(Home(sys.argv[1]))
    before = peak_kb()
    with open(sys.argv[2], "rb") as body:  # as the door has it: spooled to a file, layers in scratch files
        payload = postroom.once(Region.of_file(body), scratch=lambda: tempfile.TemporaryFile(dir=sys.argv[3]))
        payload.digest("sha256")  # the intake streams it to the spool the same way
    print(before, peak_kb())
''')

BUILD_CHILD = textwrap.dedent('''
    import re, sys, tempfile
    from bench.as2 import outgoing_for
    from protocols.as2.mime import Region
    def peak_kb():
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    before = peak_kb()
    with open(sys.argv[2], "rb") as payload:  # as the delivery queue has it: the stored blob
        out = outgoing_for(sys.argv[1], Region.of_file(payload), lambda: tempfile.TemporaryFile(dir=sys.argv[3]))
        out.body.digest("sha256")  # the POST streams it the same way
    print(before, peak_kb())
''')


def outgoing_for(home_path: str, payload: Region, scratch: Scratch):
    """Build what the push client sends globex: signed, compressed, encrypted (the bench of the sending side)."""
    from protocols.as2 import outbound

    home = Home(home_path)
    signer = ReceiptSigner.from_config(load(home))
    globex = load_certificate(read_file(home.demo / "globex" / "globex-encrypt.crt"))
    return outbound.build(payload, content_type="application/octet-stream", filename="big.bin",
                          options=outbound.SendOptions(compress=True), as2_from="POSTROOM", as2_to="GLOBEX",
                          message_id="<bench@postroom>", sign_key=signer.key, sign_cert=signer.certificate,
                          encrypt_cert=globex, scratch=scratch)


def large(home: Home, work: Path, megabytes: int) -> dict:
    """Peak RSS of reading one ``megabytes`` MB message, in a child process of its own."""
    payload = (BASE.read_bytes().replace(b"\n", b"\r\n") * (megabytes * 1024 * 1024 // 10000 + 1))
    body_file = work / "large.p7m"
    body_file.write_bytes(build_message(home, payload[: megabytes << 20], work))
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", LARGE_CHILD, str(home.path), str(body_file), str(work)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    before, peak = (int(v) for v in out.split())
    payload_file = work / "large.bin"
    payload_file.write_bytes(payload[: megabytes << 20])
    start_build = time.monotonic()
    out = subprocess.run([sys.executable, "-c", BUILD_CHILD, str(home.path), str(payload_file), str(work)],
                         check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    build_before, build_peak = (int(v) for v in out.split())
    return {"payload_mb": megabytes, "read_wall_s": round(start_build - start, 1),
            "read_rss_before_mb": round(before / 1024), "read_peak_rss_mb": round(peak / 1024),
            "build_wall_s": round(time.monotonic() - start_build, 1), "build_rss_before_mb": round(build_before / 1024),
            "build_peak_rss_mb": round(build_peak / 1024)}


def daemon_large(megabytes: int, work: Path) -> dict:
    """One MB-sized opaque payload through a real daemon's /as2 (curl, signed + encrypted, sync MDN): its peak RSS."""
    from tests.e2e.as2 import build, send
    from tests.e2e.daemon import Daemon

    home = Home(work / "daemon-home")
    initialise(home, demo=True, key_bits=2048, listen=_ephemeral())
    daemon = Daemon(home).start()
    try:
        daemon.cli("partner", "policy", "acme", "allow_opaque=true")
        daemon.cli("route", "add", "--to", "globex", "--from", "acme", "--kind", "opaque")
        time.sleep(3)  # the daemon polls the directory every 2 s
        payload = bytes(range(256)) * (megabytes * 1_000_000 // 256)
        entity = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n"
                  b'Content-Disposition: attachment; filename="big.bin"\r\n\r\n' + payload)
        built = build(home, b"", work, entity=entity)
        del payload, entity
        with RSSSampler(daemon.process.pid) as rss:
            start = time.monotonic()
            response = send(daemon, built, work)
            took = time.monotonic() - start
        disposition = next((line for line in response.body.split(b"\r\n") if line.startswith(b"Disposition:")), b"")
        report = {"payload_mb": megabytes, "status": response.status,
                  "mdn": disposition.decode().split(";")[-1].strip(),
                  "wall_s": round(took, 1), "daemon_rss_before_mb": rss.before_mb,
                  "daemon_peak_rss_mb": round(vm_kb(daemon.process.pid, "VmHWM") / 1024, 1),
                  "rss_samples": rss.rss_samples, "series_label": f"AS2 door, one {megabytes} MB message (curl)"}
    finally:
        daemon.stop()
    return report


def _ephemeral():
    from gateway.config import ListenSection

    return ListenSection(**{door: "tcp:0:interface=127.0.0.1" for door in ("as2", "portal", "sftp", "smtp", "metrics")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.as2", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per round and side (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--large", type=int, default=0, metavar="MB", help="also read one MB-sized message")
    parser.add_argument("--daemon-large", type=int, default=0, metavar="MB",
                        help="also send one MB-sized message to a real daemon and report its peak RSS")
    parser.add_argument("--no-peer", action="store_true", help="skip pyas2lib (no network for its venv)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="postroom-bench-as2-") as tmp:
        work = Path(tmp)
        home = Home(work / "home")
        initialise(home, demo=True, key_bits=2048)
        payload = (BASE.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") * 2)[:10 * 1024]
        body = build_message(home, payload, work)
        (work / "body.p7m").write_bytes(body)
        postroom = Postroom(home)
        python = None
        if not args.no_peer:
            from tests.peers.venvs import peer_python

            python = peer_python("pyas2lib")
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(postroom_round(postroom, body, args.messages))
            if python is not None:
                theirs.append(pyas2lib_round(python, home, work / "body.p7m", args.messages))
        print(f"AS2 read + signed MDN, 10 KB invoice, RSA-2048, SHA-256, AES-256-CBC; {args.rounds} rounds x "
              f"{args.messages} messages; CPU ms per message (median):")
        print(f"  postroom   {statistics.median(ours):7.2f} ms   ({1000 / statistics.median(ours):6.0f} msg/s/core)"
              f"   rounds {', '.join(f'{v:.2f}' for v in ours)}")
        if theirs:
            print(f"  pyas2lib   {statistics.median(theirs):7.2f} ms   ({1000 / statistics.median(theirs):6.0f} "
                  f"msg/s/core)   rounds {', '.join(f'{v:.2f}' for v in theirs)}")
            print(f"  ratio      pyas2lib / postroom = {statistics.median(theirs) / statistics.median(ours):.1f}x")
        report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": environment(),
                  "parameters": {"messages": args.messages, "rounds": args.rounds, "large_mb": args.large,
                                 "daemon_large_mb": args.daemon_large},
                  "postroom": {"median_ms": statistics.median(ours), "rounds_ms": ours}}
        if theirs:
            version = subprocess.run([str(python), "-c", VERSION], capture_output=True, text=True).stdout.strip()
            report["machine"]["pyas2lib"] = version or "?"
            report["pyas2lib"] = {"median_ms": statistics.median(theirs), "rounds_ms": theirs}
        if args.large:
            report["large"] = large(home, work, args.large)
            print(f"  large      {report['large']}")
        if args.daemon_large:
            report["daemon_large"] = daemon_large(args.daemon_large, work)
            print(f"  daemon     {report['daemon_large']}")
        print(f"  (this process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB)")
    save_results(RESULTS, report)


if __name__ == "__main__":
    main()
