"""An independent AS2 peer built on pyas2lib, run ONLY by the pyas2lib venv's python (see venvs.py).

pyas2lib is GPL: this script is a separate process talking HTTP; Postroom and the test process never
import it (nor pyas2lib). Needs the oscrypto shim (oscrypto_fix.py, installed by venvs.py).

Commands
--------
``serve --config CONFIG --port-file PATH [--tls-cert PEM --tls-key PEM [--client-ca PEM]]``
    Listen on 127.0.0.1:<free port> (HTTPS with the TLS options; client certificates required when
    ``--client-ca`` is given), write the port number to ``--port-file`` once listening, and receive AS2
    on any path with ``pyas2lib.Message().parse``. For each message, under the config's ``output_dir``:
    ``NNNN.request`` (HTTP headers + body as received), ``NNNN.payload`` (the payload, if it could be
    read), ``NNNN.mdn`` (the MDN sent: headers + body) and one JSON line in ``received.jsonl``
    (see ``_message_facts``). Sync MDNs are the HTTP response; an async MDN is POSTed (urllib,
    ``client_tls`` from the config) to the URL the sender asked for after the 200 response, and the
    outcome appended to ``async_mdns.jsonl``. A POST that is an MDN (an async MDN answering a
    ``send --mdn async``) is checked against ``sent.jsonl`` and recorded in ``mdns.jsonl``.
    Duplicate Message-IDs (already processed) get ``processed/Warning: duplicate-document``.
    Refused TLS handshakes (no or untrusted client certificate) go to ``tls_errors.jsonl``.

``send --config CONFIG --url URL --file PATH [options]``
    Build a message with pyas2lib (options override the partner's config: ``--sign/--no-sign``,
    ``--encrypt/--no-encrypt``, ``--compress/--no-compress``, ``--digest``, ``--cipher``,
    ``--mdn sync|async|none``, ``--mdn-signed/--no-mdn-signed``, ``--mdn-digest``, ``--async-url``,
    ``--message-id``, ``--filename``, ``--content-type``, ``--subject``, ``--header 'Name: value'``,
    ``--tamper``), POST it (urllib; HTTPS with ``--tls-cert/--tls-key`` client certificate and
    ``--ca`` verification, defaults from the config's ``client_tls``), parse a sync MDN with
    ``pyas2lib.Mdn().parse`` and print ONE JSON object (see ``_send``). Exit status: 0 when an HTTP
    response came back (whatever its status or MDN), 2 when the transport failed (connection refused,
    TLS handshake refused; the JSON then has ``error``), 1 for harness errors (bad config, traceback).
    ``--tamper`` changes one byte of the payload inside the built body (needs an unencrypted,
    uncompressed message), so a signed message must fail authentication.

``verify-mdn --config CONFIG --file RAW --message-id ID [--to AS2ID] [--mic MIC] [--mdn-digest ALG]``
    Parse an MDN saved as HTTP headers + blank line + body (e.g. an async MDN caught by a test) and
    print the same MDN facts as ``send``.

Config (JSON; paths absolute, PEM files)::

    {
      "as2_id": "PEERPY",                 # this peer's AS2 name
      "key": "/k/sign.key",               # private key signing messages and MDNs
      "cert": "/k/sign.crt",              # its certificate
      "key_password": null,               # optional, for encrypted PEM keys
      "decrypt_key": "/k/enc.key",        # optional: key decrypting inbound (default "key")
      "decrypt_cert": "/k/enc.crt",       # optional: its certificate (default "cert")
      "sign_mdns": true,                  # serve: sign MDNs when the sender asks (default true)
      "domain": "pyas2lib-peer.test",     # optional: right-hand side of generated Message-IDs
      "mdn_url": null,                    # optional: default --async-url for send
      "output_dir": "/out",               # serve writes here; send appends sent.jsonl here
      "client_tls": {"cert": "...", "key": "...", "ca": "..."},   # optional outbound HTTPS defaults
      "fail_first": 0,                    # serve: answer the first N POSTs 503 without reading them as AS2
      "delay_seconds": 0,                 # serve: wait this long before answering (slow sync MDN)
      "partners": [{
        "as2_id": "POSTROOM",
        "sign_cert": "/k/postroom-sign.crt",    # verifies its messages and MDNs
        "encrypt_cert": "/k/postroom-enc.crt",  # encrypts to it (default sign_cert)
        "ca": "/k/ca.crt",                      # optional: chain-check both certs (else no check)
        "url": "http://127.0.0.1:8080/as2",     # optional default for send --url
        "sign": true, "encrypt": true, "compress": false,         # send defaults
        "digest": "sha256", "cipher": "aes_256_cbc",
        "mdn": "sync", "mdn_signed": true, "mdn_digest": "sha256",
        "content_type": "application/edi-consent",
        "require_signed": false, "require_encrypted": false       # serve: refuse weaker inbound
      }]
    }
"""

import argparse
import base64
import hashlib
import http.server
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from datetime import UTC, datetime
from email import message_from_bytes
from pathlib import Path

import pyas2lib
from pyas2lib.constants import DIGEST_ALGORITHMS, ENCRYPTION_ALGORITHMS

log = logging.getLogger("pyas2lib-peer")


# --------------------------------------------------------------------------------------------------
# config


def load_config(path: str) -> dict:
    config = json.loads(Path(path).read_text())
    for field in ("as2_id", "key", "cert"):
        if not config.get(field):
            raise SystemExit(f"config {path}: {field!r} is required")
    config.setdefault("partners", [])
    return config


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def organization(config: dict, *, sign: bool = True, mdn_url: str | None = None) -> pyas2lib.Organization:
    """Our side as a pyas2lib Organization (PEM key + certificate concatenated, as pyas2lib wants)."""
    password = config.get("key_password")
    sign_pem = _read(config["key"]) + b"\n" + _read(config["cert"])
    decrypt_pem = _read(config.get("decrypt_key") or config["key"]) + b"\n" + _read(
        config.get("decrypt_cert") or config["cert"])
    org = pyas2lib.Organization(
        as2_name=config["as2_id"],
        sign_key=sign_pem if sign else None,
        sign_key_pass=password,
        decrypt_key=decrypt_pem,
        decrypt_key_pass=password,
        mdn_url=mdn_url or config.get("mdn_url"),
        domain=config.get("domain") or "pyas2lib-peer.test",
    )
    if config.get("mdn_confirm_text"):
        org.mdn_confirm_text = config["mdn_confirm_text"]
    return org


def find_partner(config: dict, as2_id: str | None) -> dict | None:
    partners = config["partners"]
    if as2_id is None:
        if len(partners) != 1:
            raise SystemExit("the config has several partners: say which with --to")
        return partners[0]
    for p in partners:
        if p["as2_id"] == as2_id:
            return p
    return None


def partner(spec: dict, **overrides) -> pyas2lib.Partner:
    """A pyas2lib Partner from a config entry. ``sign``/``encrypt`` mean "sign/encrypt what we send"
    for send and "require signed/encrypted" for serve (pyas2lib uses one flag for both)."""
    ca = _read(spec.get("ca"))
    params = dict(
        as2_name=spec["as2_id"],
        verify_cert=_read(spec.get("sign_cert")),
        verify_cert_ca=ca,
        encrypt_cert=_read(spec.get("encrypt_cert") or spec.get("sign_cert")),
        encrypt_cert_ca=ca,
        validate_certs=bool(ca),
        ignore_self_signed=True,
        compress=bool(spec.get("compress", False)),
        sign=bool(spec.get("sign", True)),
        digest_alg=spec.get("digest", "sha256"),
        encrypt=bool(spec.get("encrypt", True)),
        enc_alg=spec.get("cipher", "aes_256_cbc"),
        mdn_mode=_mdn_mode(spec.get("mdn", "sync")),
        mdn_digest_alg=(spec.get("mdn_digest", "sha256") if spec.get("mdn_signed", True) else None),
    )
    params.update({k: v for k, v in overrides.items() if v is not None or k == "mdn_mode"})
    if params["mdn_mode"] is None:
        params["mdn_digest_alg"] = None
    return pyas2lib.Partner(**params)


def _mdn_mode(mode: str | None) -> str | None:
    return {"sync": "SYNC", "async": "ASYNC", "none": None, None: None}[mode.lower() if mode else None]


def client_ssl_context(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _client_tls(config: dict, cert=None, key=None, ca=None) -> ssl.SSLContext:
    tls = config.get("client_tls") or {}
    return client_ssl_context(cert or tls.get("cert"), key or tls.get("key"), ca or tls.get("ca"))


# --------------------------------------------------------------------------------------------------
# HTTP helpers


def raw_http_message(headers, body: bytes) -> bytes:
    """HTTP headers + blank line + body: the form pyas2lib's parse() expects."""
    lines = "".join(f"{k}: {' '.join(str(v).split())}\r\n" for k, v in headers)
    return lines.encode("utf-8", "surrogateescape") + b"\r\n" + body


def _clean_headers(headers: dict) -> dict:
    return {k: " ".join(str(v).split()) for k, v in headers.items()}


def post(url: str, headers: dict, body: bytes, context: ssl.SSLContext | None, timeout: float):
    """POST and return (status, reason, headers as list of pairs, body); raises OSError on transport."""
    request = urllib.request.Request(url, data=body, headers=_clean_headers(headers), method="POST")
    handlers = [urllib.request.HTTPSHandler(context=context)] if context else []
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.reason, list(response.headers.items()), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.reason, list(e.headers.items()), e.read()


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return datetime.now(UTC).isoformat()


# --------------------------------------------------------------------------------------------------
# MDN facts (send, verify-mdn, serve's async-MDN receipt)


def mdn_facts(raw: bytes, orig_message: pyas2lib.Message | None) -> dict:
    """Parse an MDN (headers + body) with pyas2lib and report what it says."""
    mdn = pyas2lib.Mdn()
    status, detailed = mdn.parse(raw, lambda message_id, recipient: orig_message)
    outer = message_from_bytes(raw)
    facts = {
        "mdn_status": status,
        "detailed_status": detailed,
        "mdn_signed": outer.get_content_type() == "multipart/signed",
        "mdn_message_id": (outer.get("Message-ID") or "").strip().strip("<>") or None,
        "original_message_id": mdn.orig_message_id,
        "disposition": None,
        "received_mic": None,
        "received_mic_alg": None,
        "mic_ok": None,
        "mdn_text": None,
    }
    for part in outer.walk():
        if part.get_content_type() == "message/disposition-notification":
            for block in part.get_payload() if part.is_multipart() else [message_from_bytes(part.as_bytes())]:
                for name, value in block.items():
                    lname = name.lower()
                    if lname == "disposition":
                        facts["disposition"] = " ".join(value.split())
                    elif lname == "received-content-mic":
                        mic, _, alg = value.partition(",")
                        facts["received_mic"], facts["received_mic_alg"] = mic.strip(), alg.strip() or None
        elif part.get_content_type() == "text/plain" and facts["mdn_text"] is None:
            facts["mdn_text"] = part.get_payload(decode=True).decode("utf-8", "replace").strip()
    sent_mic = orig_message.mic.decode() if orig_message is not None and orig_message.mic else None
    if sent_mic and facts["received_mic"]:
        facts["mic_ok"] = facts["received_mic"] == sent_mic
    elif sent_mic:
        facts["mic_ok"] = False
    return facts


def _orig_message(config: dict, to: str | None, message_id: str, mic: str | None,
                  mdn_digest: str | None) -> pyas2lib.Message:
    spec = find_partner(config, to)
    if spec is None:
        raise SystemExit(f"no partner {to!r} in the config")
    message = pyas2lib.Message(sender=organization(config),
                               receiver=partner(spec, mdn_digest_alg=mdn_digest, mdn_mode="SYNC"))
    if mdn_digest is None:
        message.receiver.mdn_digest_alg = None
    message.message_id = message_id.strip("<>")
    message.mic = mic.encode() if mic else None
    return message


# --------------------------------------------------------------------------------------------------
# send


def _send(args) -> int:
    config = load_config(args.config)
    spec = find_partner(config, args.to)
    if spec is None:
        raise SystemExit(f"no partner {args.to!r} in the config")
    url = args.url or spec.get("url")
    if not url:
        raise SystemExit("no --url and no url for the partner in the config")
    mdn_mode = _mdn_mode(args.mdn) if args.mdn else _mdn_mode(spec.get("mdn", "sync"))
    mdn_signed = args.mdn_signed if args.mdn_signed is not None else spec.get("mdn_signed", True)
    receiver = partner(
        spec, sign=args.sign, encrypt=args.encrypt, compress=args.compress, digest_alg=args.digest,
        enc_alg=args.cipher, mdn_mode=mdn_mode,
        mdn_digest_alg=(args.mdn_digest or spec.get("mdn_digest", "sha256")) if mdn_signed else None,
    )
    if not mdn_signed or mdn_mode is None:
        receiver.mdn_digest_alg = None
    org = organization(config, mdn_url=args.async_url)
    message_id = args.message_id
    if message_id and "@" in message_id.strip("<>"):
        left, _, org.domain = message_id.strip("<>").rpartition("@")
        message_id = left
    elif message_id:
        message_id = message_id.strip("<>")
    data = Path(args.file).read_bytes()
    extra = {}
    for header in args.header or []:
        name, _, value = header.partition(":")
        extra[name.strip()] = value.strip()
    message = pyas2lib.Message(sender=org, receiver=receiver)
    message.build(
        data,
        filename=args.filename if args.filename is not None else Path(args.file).name,
        subject=args.subject,
        content_type=args.content_type or spec.get("content_type") or "application/edi-consent",
        additional_headers=extra,
        message_id=message_id,
    )
    headers = dict(message.headers)
    body = message.content
    if isinstance(body, str):
        body = body.encode()
    if args.tamper:
        needle = (data.strip().splitlines() or [b""])[0][:64]
        if receiver.encrypt or receiver.compress or not needle or needle not in body:
            raise SystemExit("--tamper needs a non-empty payload that is readable in the body "
                             "(no encryption, no compression)")
        at = body.index(needle) + len(needle) // 2
        body = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1:]
    result = {
        "url": url,
        "message_id": message.message_id,
        "as2_from": org.as2_name,
        "as2_to": receiver.as2_name,
        "signed": message.signed,
        "encrypted": message.encrypted,
        "compressed": message.compressed,
        "digest_alg": message.digest_alg,
        "cipher": message.enc_alg,
        "mic": message.mic.decode() if message.mic else None,
        "mdn_mode": receiver.mdn_mode,
        "mdn_requested_signed": bool(receiver.mdn_digest_alg),
        "request_headers": _clean_headers(headers),
        "http_status": None,
        "error": None,
    }
    if config.get("output_dir"):
        Path(config["output_dir"]).mkdir(parents=True, exist_ok=True)
        _append_jsonl(Path(config["output_dir"]) / "sent.jsonl", {
            "time": _now(), "message_id": message.message_id, "to": receiver.as2_name, "mic": result["mic"],
            "mdn_digest": receiver.mdn_digest_alg, "mdn_mode": receiver.mdn_mode, "url": url,
        })
    context = (_client_tls(config, args.tls_cert, args.tls_key, args.ca)
               if url.lower().startswith("https:") else None)
    try:
        status, reason, response_headers, response_body = post(url, headers, body, context, args.timeout)
    except (OSError, ssl.SSLError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result, sort_keys=True))
        return 2
    result.update(http_status=status, http_reason=reason, response_headers=dict(response_headers))
    content_type = next((v for k, v in response_headers if k.lower() == "content-type"), "")
    is_mdn = content_type.lower().startswith(("multipart/report", "multipart/signed"))
    if mdn_mode == "SYNC" and is_mdn:
        result.update(mdn_facts(raw_http_message(response_headers, response_body), message))
        result["mdn_headers"] = dict(response_headers)
        result["mdn_raw_b64"] = base64.b64encode(raw_http_message(response_headers, response_body)).decode()
    else:
        result.update(mdn_status=None, detailed_status=None, mic_ok=None, mdn_headers=None)
        result["response_body"] = response_body[:4000].decode("utf-8", "replace")
    print(json.dumps(result, sort_keys=True))
    return 0


def _verify_mdn(args) -> int:
    config = load_config(args.config)
    message = _orig_message(config, args.to, args.message_id, args.mic, args.mdn_digest)
    print(json.dumps(mdn_facts(Path(args.file).read_bytes(), message), sort_keys=True))
    return 0


# --------------------------------------------------------------------------------------------------
# serve


class PeerState:
    """What serve knows: config, output files, seen Message-IDs; one lock serialises processing."""

    def __init__(self, config: dict):
        self.config = config
        self.out = Path(config.get("output_dir") or ".").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.seen: set[tuple[str, str]] = set()
        self.refused = 0
        # a restarted peer goes on numbering and remembers what it processed
        self.seq = max((int(p.stem) for p in self.out.glob("*.request") if p.stem.isdigit()), default=0)
        received = self.out / "received.jsonl"
        if received.exists():
            for line in received.read_text().splitlines():
                record = json.loads(line)
                if record.get("payload_file"):
                    self.seen.add((record["message_id"], record["as2_from"]))
        self.org = organization(config, sign=config.get("sign_mdns", True))
        self.partners = {}
        for spec in config["partners"]:
            self.partners[spec["as2_id"]] = partner(
                spec, sign=bool(spec.get("require_signed", False)),
                encrypt=bool(spec.get("require_encrypted", False)),
            )

    def find_org(self, as2_id):
        return self.org if as2_id == self.org.as2_name else None

    def find_partner(self, as2_id):
        return self.partners.get(as2_id)

    def is_duplicate(self, message_id, partner_id):
        return (message_id, partner_id) in self.seen

    def find_sent(self, message_id, recipient):
        """The message a received MDN answers, rebuilt from sent.jsonl (written by send)."""
        sent = self.out / "sent.jsonl"
        if not sent.exists():
            return None
        for line in reversed(sent.read_text().splitlines()):
            record = json.loads(line)
            if record["message_id"] == message_id:
                spec = find_partner(self.config, record["to"])
                if spec is None:
                    return None
                msg = pyas2lib.Message(sender=self.org, receiver=partner(spec, mdn_mode="SYNC",
                                                                         mdn_digest_alg=record.get("mdn_digest")))
                if not record.get("mdn_digest"):
                    msg.receiver.mdn_digest_alg = None
                msg.message_id = message_id
                msg.mic = record["mic"].encode() if record.get("mic") else None
                return msg
        return None


def _message_facts(seq, message: pyas2lib.Message, status, exception, mdn, headers: dict) -> dict:
    """The JSON line written for each received message."""
    error = exception[0]
    lower = {k.lower(): v for k, v in headers.items()}
    return {
        "seq": seq,
        "time": _now(),
        "kind": "message",
        "message_id": message.message_id,
        "as2_from": lower.get("as2-from", "").strip('"'),
        "as2_to": lower.get("as2-to", "").strip('"'),
        "subject": lower.get("subject"),
        "content_type": lower.get("content-type"),
        "status": status,
        "detailed_status": getattr(error, "disposition_modifier", None) if error else None,
        "error": f"{type(error).__name__}: {error}" if error else None,
        "signed": bool(message.signed),
        "encrypted": bool(message.encrypted),
        "compressed": bool(message.compressed),
        "digest_alg": message.digest_alg,
        "enc_alg": message.enc_alg,
        "mic": message.mic.decode() if message.mic else None,
        "mdn_mode": mdn.mdn_mode if mdn else None,
        "mdn_signed": bool(mdn and mdn.payload is not None and mdn.payload.get_content_type() == "multipart/signed"),
        "mdn_url": mdn.mdn_url if mdn else None,
        "http_headers": _clean_headers(headers),
    }


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pyas2lib-peer"

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, " ".join(str(v).split()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self):
        self._reply(200, {"Content-Type": "text/plain"}, b"pyas2lib test peer: POST AS2 messages here\n")

    def do_POST(self):
        try:
            self._post()
        except Exception:  # a harness bug: answer 500 with the traceback rather than drop the connection
            text = traceback.format_exc()
            log.error("failed to handle a POST:\n%s", text)
            self._reply(500, {"Content-Type": "text/plain"}, f"pyas2lib peer error:\n{text}".encode())

    def _post(self):
        state: PeerState = self.server.state
        body = self._body()
        with state.lock:
            refuse = state.refused < int(state.config.get("fail_first") or 0)
            state.refused += refuse
        if refuse:
            self._reply(503, {"Content-Type": "text/plain", "Retry-After": "1"}, b"try again later\n")
            return
        headers = list(self.headers.items())
        raw = raw_http_message(headers, body)
        peer_cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        with state.lock:
            state.seq += 1
            seq = state.seq
            (state.out / f"{seq:04d}.request").write_bytes(raw)
            probe = pyas2lib.Mdn()
            mdn_status, mdn_detail = probe.parse(raw, state.find_sent)
            if mdn_detail != "mdn-not-found":
                record = {"seq": seq, "time": _now(), "kind": "mdn", "request_file": f"{seq:04d}.request"}
                record.update(mdn_facts(raw, state.find_sent(probe.orig_message_id, None)))
                _append_jsonl(state.out / "mdns.jsonl", record)
                reply = None
            else:
                message = pyas2lib.Message()
                status, exception, mdn = message.parse(raw, find_org_cb=state.find_org,
                                                       find_partner_cb=state.find_partner,
                                                       find_message_cb=state.is_duplicate)
                facts = _message_facts(seq, message, status, exception, mdn, dict(headers))
                facts["request_file"] = f"{seq:04d}.request"
                facts["tls_client_subject"] = _subject(peer_cert)
                if exception[0] is None and message.payload is not None:
                    payload = message.content
                    payload = payload.encode() if isinstance(payload, str) else payload
                    (state.out / f"{seq:04d}.payload").write_bytes(payload)
                    facts.update(payload_file=f"{seq:04d}.payload", payload_size=len(payload),
                                 payload_sha256=hashlib.sha256(payload).hexdigest(),
                                 filename=message.payload.get_filename(),
                                 payload_content_type=message.payload.get_content_type())
                    state.seen.add((message.message_id, facts["as2_from"]))
                else:
                    facts.update(payload_file=None, filename=None)
                    if exception[1]:
                        log.warning("message %s: %s", message.message_id, exception[1])
                if mdn is not None:
                    mdn_body = mdn.content.encode() if isinstance(mdn.content, str) else mdn.content
                    (state.out / f"{seq:04d}.mdn").write_bytes(raw_http_message(mdn.headers.items(), mdn_body))
                    facts["mdn_file"] = f"{seq:04d}.mdn"
                _append_jsonl(state.out / "received.jsonl", facts)
                reply = (message, mdn)
        if reply is None:
            self._reply(200, {"Content-Type": "text/plain"}, b"AS2 MDN received\n")
            return
        message, mdn = reply
        time.sleep(float(state.config.get("delay_seconds") or 0))
        if mdn is not None and mdn.mdn_mode == "SYNC":
            self._reply(200, dict(mdn.headers), mdn_body)
            return
        self._reply(200, {"Content-Type": "text/plain"}, b"AS2 message received\n")
        if mdn is not None and mdn.mdn_mode == "ASYNC":
            self._send_async_mdn(state, message, mdn, mdn_body)

    def _send_async_mdn(self, state: PeerState, message, mdn, mdn_body: bytes) -> None:
        record = {"time": _now(), "message_id": message.message_id, "url": mdn.mdn_url, "http_status": None,
                  "error": None}
        try:
            context = _client_tls(state.config) if mdn.mdn_url.lower().startswith("https:") else None
            status, _, _, _ = post(mdn.mdn_url, dict(mdn.headers), mdn_body, context, 60)
            record["http_status"] = status
        except Exception as e:  # recorded for the test to read
            record["error"] = f"{type(e).__name__}: {e}"
        with state.lock:
            _append_jsonl(state.out / "async_mdns.jsonl", record)


def _subject(cert: dict | None) -> str | None:
    if not cert:
        return None
    return ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: PeerState, context: ssl.SSLContext | None):
        self.state = state
        self.context = context
        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.context is not None:  # handshake in the handler thread, not the accept loop
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                log.warning("TLS handshake with %s failed: %s", client_address, e)
                with self.state.lock:
                    _append_jsonl(self.state.out / "tls_errors.jsonl",
                                  {"time": _now(), "client": list(client_address), "error": str(e)})
                return
        super().finish_request(request, client_address)


def _serve(args) -> int:
    config = load_config(args.config)
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
    server = Server(PeerState(config), context)
    port = server.server_address[1]
    tmp = Path(args.port_file + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, args.port_file)
    log.info("listening on %s://127.0.0.1:%d", "https" if context else "http", port)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve")
    serve.add_argument("--config", required=True)
    serve.add_argument("--port-file", required=True)
    serve.add_argument("--tls-cert")
    serve.add_argument("--tls-key")
    serve.add_argument("--client-ca")

    send = commands.add_parser("send")
    send.add_argument("--config", required=True)
    send.add_argument("--url")
    send.add_argument("--file", required=True)
    send.add_argument("--to", help="partner AS2 id (default: the config's only partner)")
    bool_flag = argparse.BooleanOptionalAction
    send.add_argument("--sign", action=bool_flag, default=None)
    send.add_argument("--encrypt", action=bool_flag, default=None)
    send.add_argument("--compress", action=bool_flag, default=None)
    send.add_argument("--digest", choices=DIGEST_ALGORITHMS)
    send.add_argument("--cipher", choices=ENCRYPTION_ALGORITHMS)
    send.add_argument("--mdn", choices=("sync", "async", "none"))
    send.add_argument("--mdn-signed", action=bool_flag, default=None)
    send.add_argument("--mdn-digest", choices=DIGEST_ALGORITHMS)
    send.add_argument("--async-url")
    send.add_argument("--message-id")
    send.add_argument("--filename", help="Content-Disposition filename (default: the file's name; '' for none)")
    send.add_argument("--content-type")
    send.add_argument("--subject", default="AS2 Message")
    send.add_argument("--header", action="append", help="extra AS2 header 'Name: value' (repeatable)")
    send.add_argument("--tamper", action="store_true")
    send.add_argument("--tls-cert")
    send.add_argument("--tls-key")
    send.add_argument("--ca")
    send.add_argument("--timeout", type=float, default=120)

    verify = commands.add_parser("verify-mdn")
    verify.add_argument("--config", required=True)
    verify.add_argument("--file", required=True)
    verify.add_argument("--message-id", required=True)
    verify.add_argument("--to")
    verify.add_argument("--mic")
    verify.add_argument("--mdn-digest", choices=DIGEST_ALGORITHMS)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return {"serve": _serve, "send": _send, "verify-mdn": _verify_mdn}[args.command](args)
    except SystemExit:
        raise
    except Exception:  # a harness error: say so on stderr, exit 1
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
