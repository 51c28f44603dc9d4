"""An AS2 sender made of tools we did not write: ``openssl cms`` builds the message, curl posts it.

:func:`build` follows the recipe in the AS2 research note (payload MIME entity → detached
``multipart/signed`` → envelope), with knobs for every variant the door must accept; :func:`send`
posts it to the daemon's ``/as2`` with a partner's client certificate and returns what came back;
:func:`verify_mdn` checks a signed MDN with ``openssl cms -verify`` and returns its report text.
"""

import base64
import hashlib
import subprocess
import uuid
from pathlib import Path

import attrs

from tests.e2e.https import Response, mtls_request


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    """Run ``openssl``; fail the test with its stderr when it fails."""
    result = subprocess.run(["openssl", *args], input=stdin, capture_output=True)
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr.decode()}"
    return result.stdout


@attrs.frozen
class Built:
    """A message ready to post: its HTTP ``Content-Type``, body, and the MIC the MDN must return."""

    content_type: str
    body: bytes
    mic: str  #: base64 SHA-256 of the signed part (or of what RFC 4130 says for unsigned messages)


def payload_entity(payload: bytes, *, content_type_line: str = "Content-Type: application/xml",
                   filename: str = "invoice.xml", fold: bool = False) -> bytes:
    """The payload as a MIME entity with CRLF headers; its exact bytes are what the signature covers."""
    disposition = f'Content-Disposition: attachment; filename="{filename}"'
    if fold:
        disposition = f'Content-Disposition: attachment;\r\n\tfilename="{filename}"'
    head = f"{content_type_line}\r\nContent-Transfer-Encoding: binary\r\n{disposition}\r\n\r\n"
    return head.encode("ascii") + payload


def _split(mime: bytes) -> tuple[str, bytes]:
    """``openssl -outform SMIME`` output → (Content-Type value, body)."""
    head, _, body = mime.partition(b"\r\n\r\n")
    fields: dict[str, str] = {}
    name = ""
    for line in head.decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[name] += " " + line.strip()
        else:
            name, _, value = line.partition(":")
            name = name.lower()
            fields[name] = value.strip()
    return fields["content-type"], body


def build(home, payload: bytes, tmp: Path, *, partner: str = "acme", sign: bool = True, digest: str = "sha256",
          pss: bool = False, signer: tuple[Path, Path] | None = None, encrypt: bool = True, cipher: str = "-aes256",
          oaep: str | None = None, stream: bool = False, entity: bytes | None = None,
          recipient: Path | None = None, opaque_signature: bool = False, legacy: bool = False) -> Built:
    """Build one AS2 body with ``openssl cms`` (``oaep``: None, ``sha1`` or ``sha256``)."""
    part = tmp / "part.mime"
    part.write_bytes(entity if entity is not None else payload_entity(payload))
    key_dir = home.demo / partner
    cert, key = signer or (key_dir / f"{partner}-sign.crt", key_dir / f"{partner}-sign.key")
    mic = base64.b64encode(hashlib.sha256(part.read_bytes()).digest()).decode()
    current = part
    content_type = "application/xml"
    if sign:
        signed = tmp / "signed.mime"
        args = ["cms", "-sign", "-binary", "-crlfeol", "-md", digest, "-in", str(current), "-signer", str(cert),
                "-inkey", str(key), "-outform", "SMIME", "-out", str(signed)]
        if pss:
            args += ["-keyopt", "rsa_padding_mode:pss"]
        if opaque_signature:  # application/pkcs7-mime; smime-type=signed-data
            args.insert(args.index("-outform"), "-nodetach")
        if stream:
            args.insert(1, "-stream")
        openssl(*args)
        text = signed.read_bytes()
        if text.startswith(b"MIME-Version"):
            text = text.split(b"\r\n", 1)[1]
        signed.write_bytes(text)
        current = signed
        content_type, _ = _split(text)
    if encrypt:
        enveloped = tmp / "body.p7m"
        args = ["cms", "-encrypt", "-binary", cipher, "-in", str(current), "-outform", "DER", "-out", str(enveloped),
                "-recip", str(recipient or home.path / "pki" / "encrypt.crt")]
        if oaep:
            args += ["-keyopt", "rsa_padding_mode:oaep"]
            if oaep != "sha1":
                args += ["-keyopt", f"rsa_oaep_md:{oaep}"]
        if stream:
            args.insert(1, "-stream")
        if legacy:  # single DES, RC2: only OpenSSL's legacy provider still makes them
            args += ["-provider", "legacy", "-provider", "default"]
        openssl(*args)
        if not sign:  # RFC 4130 §7.3.1: encrypted, unsigned → MIC over the decrypted entity
            mic = base64.b64encode(hashlib.sha256(current.read_bytes()).digest()).decode()
        return Built('application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
                     enveloped.read_bytes(), mic)
    if sign:
        return Built(*_split(current.read_bytes()), mic)
    return Built(content_type, payload, base64.b64encode(hashlib.sha256(payload).digest()).decode())


def send(daemon, built: Built, tmp: Path, *, partner: str = "acme", as2_from: str | None = None,
         as2_to: str = "POSTROOM", message_id: str | None = None, mdn: str = "signed",
         micalg: str = "sha-256", async_url: str | None = None, extra: dict[str, str] | None = None) -> Response:
    """POST ``built`` to ``/as2`` with curl (``mdn``: ``signed``, ``unsigned`` or ``none``)."""
    body = tmp / "as2.body"
    body.write_bytes(built.body)
    headers = {
        "AS2-Version": "1.2", "AS2-From": as2_from or partner.upper(), "AS2-To": as2_to,
        "Message-ID": message_id or f"<{uuid.uuid4().hex}@openssl-peer>", "Content-Type": built.content_type,
        "Expect": "",
    }
    if mdn != "none":
        headers["Disposition-Notification-To"] = "edi@peer.example"
    if mdn == "signed":
        headers["Disposition-Notification-Options"] = (
            f"signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, {micalg}")
    if async_url:
        headers["Receipt-Delivery-Option"] = async_url
    headers.update(extra or {})
    args = ["--data-binary", f"@{body}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}" if value else f"{name}:"]
    return mtls_request(daemon, "/as2", args, partner, tmp)


def verify_mdn(daemon, response: Response, tmp: Path) -> str:
    """Check a signed MDN with ``openssl cms -verify`` (trusting the dev CA); the signed report's text."""
    mime = tmp / "mdn.eml"
    mime.write_bytes(f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.body)
    report = openssl("cms", "-verify", "-in", str(mime), "-inform", "SMIME", "-CAfile",
                     str(daemon.home.dev_ca / "ca.crt"), "-purpose", "any")
    return report.decode("utf-8", "replace")


def disposition(report: str) -> str:
    """The ``Disposition:`` value of an MDN report."""
    return next(line.split(":", 1)[1].strip() for line in report.splitlines() if line.startswith("Disposition:"))


def received_mic(report: str) -> str:
    """The ``Received-Content-MIC`` value, without the algorithm."""
    line = next(line for line in report.splitlines() if line.lower().startswith("received-content-mic:"))
    return line.split(":", 1)[1].split(",")[0].strip()
