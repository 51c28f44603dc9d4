"""An independent AS2 peer: django-pyas2 in its own venv, run ONLY by that venv's python (venvs.py).

django-pyas2 is GPL: this script only starts processes (``manage.py``, gunicorn) in the peer venv;
it never imports Django or pyas2 itself, and Postroom and the test process never import them either.
The Django project lives in ``django_site/`` (``peersite`` settings; state in ``--workdir``).

Commands (each prints ONE JSON object on stdout; exit 1 on harness errors)
------------------------------------------------------------------------
``init --workdir DIR --config CONFIG``
    ``manage.py migrate`` (SQLite in DIR) and ``configure``.
``configure --workdir DIR --config CONFIG``
    Create or update the Organization (our keys), the Partners and their certificates from CONFIG
    (same style as pyas2lib_peer.py, see below). Safe to run again with a changed config.
``serve --workdir DIR --port-file PATH [--tls-cert PEM --tls-key PEM [--client-ca PEM]]``
    Bind 127.0.0.1:<free port>, write ``DIR/server.json`` (URLs, so async MDN requests name the right
    port) and exec gunicorn (gthread, 1 worker) on that socket (``--bind fd://N``), HTTPS with the
    TLS options (client certificate required with ``--client-ca``). The port file is written once
    the worker has loaded Django. AS2 endpoint: ``/pyas2/as2receive``.
``send --workdir DIR --to PARTNER --file PATH [--from ORG] [--ca PEM]``
    Copy PATH under MEDIA_ROOT (``sendas2message`` only reads files there) and run
    ``sendas2message ORG PARTNER FILE`` through ``call_command`` inside ``manage.py shell -c``;
    print the new outbound message(s) with their MDN (see ``messages``). ``--ca`` (default: the
    config's ``client_tls.ca``) becomes REQUESTS_CA_BUNDLE for HTTPS targets. django-pyas2 cannot
    present a TLS client certificate.
``messages --workdir DIR [--direction IN|OUT]``
    Every message in the peer's DB (``manage.py shell -c``): id, status (S success, E error, W, P
    pending, R retry), detailed status, flags, payload path/sha256, and the MDN (status S sent, R
    received, P pending; disposition and Received-content-MIC read from the stored MDN).
``async-mdns --workdir DIR [--ca PEM]``
    ``manageas2server --async-mdns``: POST pending async MDNs (django-pyas2 does not send them from
    the request; a cron job does) and expire outbound messages still waiting for one.

Config (JSON, absolute PEM paths)::

    {"as2_id": "PEERDJ", "key": "/k/sign.key", "cert": "/k/sign.crt", "key_password": null,
     "decrypt_key": "/k/enc.key", "decrypt_cert": "/k/enc.crt",          # optional (default key/cert)
     "email": "edi@peer.test",                                           # optional
     "client_tls": {"ca": "/k/ca.crt"},                                  # optional, outbound HTTPS
     "partners": [{"as2_id": "POSTROOM", "sign_cert": "...", "encrypt_cert": "...", "ca": "...",
                   "url": "http://127.0.0.1:8080/as2",                   # where send posts
                   "sign": true, "digest": "sha256", "encrypt": true, "cipher": "aes_256_cbc",
                   "compress": false, "mdn": "sync", "mdn_signed": true, "mdn_digest": "sha256",
                   "content_type": "application/edi-consent", "subject": "...", "keep_filename": false}]}

django-pyas2 uses the partner's sign/encrypt settings both ways: what it sends AND what it demands
of inbound messages (unsigned/unencrypted inbound is refused with insufficient-message-security).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

SITE = Path(__file__).resolve().parent / "django_site"
MARK = "PEERJSON "

CONFIGURE = r'''
import json, os
from pathlib import Path
from pyas2.models import Organization, Partner, PrivateKey, PublicCertificate

cfg = json.loads(os.environ["PEER_ARGS"])
def rb(p):
    return Path(p).read_bytes() if p else None

password = cfg.get("key_password") or ""
sign_key = PrivateKey(name=cfg["as2_id"] + "-sign", key=rb(cfg["key"]) + b"\n" + rb(cfg["cert"]), key_pass=password)
sign_key.save()
if cfg.get("decrypt_key"):
    decrypt_key = PrivateKey(name=cfg["as2_id"] + "-decrypt", key_pass=password,
                             key=rb(cfg["decrypt_key"]) + b"\n" + rb(cfg.get("decrypt_cert") or cfg["cert"]))
    decrypt_key.save()
else:
    decrypt_key = sign_key
Organization.objects.update_or_create(as2_name=cfg["as2_id"], defaults=dict(
    name=cfg["as2_id"], email_address=cfg.get("email"), signature_key=sign_key, encryption_key=decrypt_key))
partners = []
for p in cfg.get("partners", []):
    ca = rb(p.get("ca"))
    sign_cert = PublicCertificate(name=p["as2_id"] + "-sign", certificate=rb(p["sign_cert"]),
                                  certificate_ca=ca, verify_cert=bool(ca))
    sign_cert.save()
    encrypt_cert = PublicCertificate(name=p["as2_id"] + "-encrypt",
                                     certificate=rb(p.get("encrypt_cert") or p["sign_cert"]),
                                     certificate_ca=ca, verify_cert=bool(ca))
    encrypt_cert.save()
    mdn = (p.get("mdn") or "sync").lower()
    Partner.objects.update_or_create(as2_name=p["as2_id"], defaults=dict(
        name=p["as2_id"],
        target_url=p.get("url") or "http://127.0.0.1:9/no-url-configured",
        subject=p.get("subject") or "EDI Message sent using pyas2",
        content_type=p.get("content_type") or "application/edi-consent",
        compress=bool(p.get("compress", False)),
        signature=(p.get("digest") or "sha256") if p.get("sign", True) else None,
        signature_cert=sign_cert,
        encryption=(p.get("cipher") or "aes_256_cbc") if p.get("encrypt", True) else None,
        encryption_cert=encrypt_cert,
        mdn=mdn != "none",
        mdn_mode={"sync": "SYNC", "async": "ASYNC"}.get(mdn),
        mdn_sign=(p.get("mdn_digest") or "sha256") if mdn != "none" and p.get("mdn_signed", True) else None,
        keep_filename=bool(p.get("keep_filename", False)),
        https_verify_ssl=True,
    ))
    partners.append(p["as2_id"])
print("PEERJSON " + json.dumps({"organization": cfg["as2_id"], "partners": partners}))
'''

DESCRIBE = r'''
import hashlib, json, os, re
from pathlib import Path
from django.conf import settings
from pyas2.models import Mdn, Message

def _file(field):
    if not field or not field.name:
        return None, None
    path = Path(settings.MEDIA_ROOT) / field.name
    return str(path), path

def _grep(pattern, data):
    m = re.search(pattern, data, re.IGNORECASE | re.MULTILINE)
    return " ".join(m.group(1).decode("utf-8", "replace").split()) if m else None

def describe(m):
    payload_path, path = _file(m.payload)
    d = dict(id=m.id, message_id=m.message_id, direction=m.direction, status=m.status,
             detailed_status=m.detailed_status, organization=m.organization_id, partner=m.partner_id,
             signed=m.signed, encrypted=m.encrypted, compressed=m.compressed, mdn_mode=m.mdn_mode,
             mic=m.mic, retries=m.retries, timestamp=m.timestamp.isoformat(), payload_path=payload_path,
             filename=Path(m.payload.name).name if m.payload else None,
             payload_size=None, payload_sha256=None, mdn=None)
    if path is not None and path.exists():
        data = path.read_bytes()
        d.update(payload_size=len(data), payload_sha256=hashlib.sha256(data).hexdigest())
    mdn = Mdn.objects.filter(message=m).first()
    if mdn is not None:
        mdn_path, mpath = _file(mdn.payload)
        data = mpath.read_bytes() if mpath is not None and mpath.exists() else b""
        mic = _grep(rb"^Received-content-MIC:[ \t]*(.+)$", data)
        d["mdn"] = dict(mdn_id=mdn.mdn_id, status=mdn.status, signed=mdn.signed, return_url=mdn.return_url,
                        payload_path=mdn_path, disposition=_grep(rb"^Disposition:[ \t]*(.+)$", data),
                        received_mic=mic.split(",")[0].strip() if mic else None)
    return d
'''

SEND = DESCRIBE + r'''
from django.core.management import call_command
args = json.loads(os.environ["PEER_ARGS"])
before = Message.objects.order_by("-id").values_list("id", flat=True).first() or 0
error = None
try:
    call_command("sendas2message", args["org"], args["partner"], args["path"])
except BaseException as e:
    error = f"{type(e).__name__}: {e}"
sent = [describe(m) for m in Message.objects.filter(direction="OUT", id__gt=before).order_by("id")]
print("PEERJSON " + json.dumps({"error": error, "messages": sent}))
'''

LIST = DESCRIBE + r'''
args = json.loads(os.environ["PEER_ARGS"])
query = Message.objects.order_by("id")
if args.get("direction"):
    query = query.filter(direction=args["direction"])
print("PEERJSON " + json.dumps({"messages": [describe(m) for m in query]}))
'''

ASYNC_MDNS = r'''
import io, json
from django.core.management import call_command
from pyas2.models import Mdn
out = io.StringIO()
call_command("manageas2server", async_mdns=True, stdout=out)
mdns = [dict(mdn_id=m.mdn_id, message_id=m.message.message_id, status=m.status, return_url=m.return_url)
        for m in Mdn.objects.order_by("id")]
print("PEERJSON " + json.dumps({"output": out.getvalue(), "mdns": mdns}))
'''


class HarnessError(RuntimeError):
    pass


def site_env(workdir: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(SITE), PEER_WORKDIR=str(workdir), DJANGO_SETTINGS_MODULE="peersite.settings")
    env.update(extra or {})
    return env


def manage(workdir: Path, *args: str, extra_env: dict | None = None, timeout: float = 300) -> str:
    proc = subprocess.run([sys.executable, str(SITE / "manage.py"), *args], capture_output=True, text=True,
                          env=site_env(workdir, extra_env), timeout=timeout, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"manage.py {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def shell(workdir: Path, code: str, args: dict, extra_env: dict | None = None) -> dict:
    env = {"PEER_ARGS": json.dumps(args), **(extra_env or {})}
    out = manage(workdir, "shell", "-c", code, extra_env=env)
    for line in reversed(out.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise HarnessError(f"no result from manage.py shell:\n{out}")


def _config(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _ca_env(ca: str | None) -> dict:
    return {"REQUESTS_CA_BUNDLE": ca} if ca else {}


def cmd_init(args) -> dict:
    workdir = Path(args.workdir)
    (workdir / "media").mkdir(parents=True, exist_ok=True)
    manage(workdir, "migrate", "--noinput")
    return cmd_configure(args)


def cmd_configure(args) -> dict:
    return shell(Path(args.workdir), CONFIGURE, _config(args.config))


def cmd_send(args) -> dict:
    workdir = Path(args.workdir).resolve()
    config = _config(workdir / "config.json") if (workdir / "config.json").exists() else {}
    org = args.sender or config.get("as2_id")
    if not org:
        raise HarnessError("say --from (no config.json in the workdir)")
    rel = Path("outbox") / uuid.uuid4().hex / Path(args.file).name
    target = workdir / "media" / rel
    target.parent.mkdir(parents=True)
    shutil.copyfile(args.file, target)
    ca = args.ca or (config.get("client_tls") or {}).get("ca")
    return shell(workdir, SEND, {"org": org, "partner": args.to, "path": str(rel)}, extra_env=_ca_env(ca))


def cmd_messages(args) -> dict:
    return shell(Path(args.workdir), LIST, {"direction": args.direction})


def cmd_async_mdns(args) -> dict:
    workdir = Path(args.workdir).resolve()
    config = _config(workdir / "config.json") if (workdir / "config.json").exists() else {}
    ca = args.ca or (config.get("client_tls") or {}).get("ca")
    return shell(workdir, ASYNC_MDNS, {}, extra_env=_ca_env(ca))


def cmd_serve(args) -> None:
    workdir = Path(args.workdir).resolve()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    scheme = "https" if args.tls_cert else "http"
    base = f"{scheme}://127.0.0.1:{port}"
    (workdir / "server.json").write_text(json.dumps({
        "port": port, "url": f"{base}/pyas2/as2receive", "mdn_url": f"{base}/pyas2/as2receive"}))
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    argv = [sys.executable, "-m", "gunicorn", "-c", str(SITE / "gunicorn_conf.py"), "--bind", f"fd://{fd}",
            "--chdir", str(SITE)]
    if args.tls_cert:
        argv += ["--certfile", args.tls_cert, "--keyfile", args.tls_key]
        if args.client_ca:
            argv += ["--ca-certs", args.client_ca, "--cert-reqs", "2"]
    env = site_env(workdir, {"PEER_PORT": str(port), "PEER_PORT_FILE": str(Path(args.port_file).resolve())})
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)  # noqa: S606 - gunicorn replaces this process (same pid)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("init", "configure"):
        p = commands.add_parser(name)
        p.add_argument("--workdir", required=True)
        p.add_argument("--config", required=True)
    p = commands.add_parser("serve")
    p.add_argument("--workdir", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--client-ca")
    p = commands.add_parser("send")
    p.add_argument("--workdir", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--from", dest="sender")
    p.add_argument("--file", required=True)
    p.add_argument("--ca")
    p = commands.add_parser("messages")
    p.add_argument("--workdir", required=True)
    p.add_argument("--direction", choices=("IN", "OUT"))
    p = commands.add_parser("async-mdns")
    p.add_argument("--workdir", required=True)
    p.add_argument("--ca")
    args = parser.parse_args(argv)

    if args.command in ("init", "configure"):
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        target = Path(args.workdir) / "config.json"
        if not target.exists() or not target.samefile(args.config):
            shutil.copyfile(args.config, target)
    if args.command == "serve":
        cmd_serve(args)  # does not return
    try:
        result = {"init": cmd_init, "configure": cmd_configure, "send": cmd_send, "messages": cmd_messages,
                  "async-mdns": cmd_async_mdns}[args.command](args)
    except HarnessError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
