"""curl, the client we did not write, driving the HTTPS upload door and fetching receipts.

Each call returns what a partner would see: status, headers, body. Receipts are checked with
``openssl cms -verify`` against the home's dev CA, exactly as a partner would check ours.
"""

import json
import subprocess
from pathlib import Path

import attrs
from sqlalchemy import create_engine, text

FIXTURES = Path(__file__).parents[1] / "fixtures" / "invoices"
BASE_EXAMPLE = FIXTURES / "peppol-bis3" / "base-example.xml"


@attrs.frozen
class Response:
    """One HTTP exchange as curl saw it (``status`` 0 when the connection failed)."""

    status: int
    headers: dict[str, str]
    body: bytes
    curl_exit: int
    stderr: str

    def json(self) -> dict:
        """The body as JSON."""
        return json.loads(self.body)


def mtls_request(daemon, path: str, args: list[str], partner: str, tmp: Path) -> Response:
    home = daemon.home
    folder = home.demo / partner
    headers_file = tmp / "headers.txt"
    body_file = tmp / "body.bin"
    for f in (headers_file, body_file):
        f.unlink(missing_ok=True)
    command = ["curl", "-sS", "--max-time", "20", "--cacert", str(home.dev_ca / "ca.crt"),
               "--cert", str(folder / f"{partner}-tls.crt"), "--key", str(folder / f"{partner}-tls.key"),
               "--connect-to", f"localhost:443:127.0.0.1:{daemon.ports['as2']}",
               "-D", str(headers_file), "-o", str(body_file), "-w", "%{http_code}", *args,
               f"https://localhost{path}"]
    result = subprocess.run(command, capture_output=True, text=True)
    headers = {}
    if headers_file.exists():
        for line in headers_file.read_text("latin-1").splitlines()[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
    body = body_file.read_bytes() if body_file.exists() else b""
    return Response(int(result.stdout or 0), headers, body, result.returncode, result.stderr)


def post_document(daemon, document: Path | bytes, tmp: Path, *, partner: str = "acme", key: str | None = None,
                  filename: str | None = None, chunked: bool = False) -> Response:
    """``POST /api/v1/documents`` with ``document`` as the body (``chunked``: without a Content-Length)."""
    if isinstance(document, bytes):
        path = tmp / "upload.bin"
        path.write_bytes(document)
        document = path
    args = ["--data-binary", f"@{document}", "-H", "Content-Type: application/xml"]
    if key is not None:
        args += ["-H", f"Idempotency-Key: {key}"]
    if filename is not None:
        args += ["-H", f'Content-Disposition: attachment; filename="{filename}"']
    if chunked:
        args += ["-H", "Transfer-Encoding: chunked"]
    return mtls_request(daemon, "/api/v1/documents", args, partner, tmp)


def get(daemon, path: str, tmp: Path, *, partner: str = "acme") -> Response:
    """``GET path`` on the mutual-TLS listener."""
    return mtls_request(daemon, path, [], partner, tmp)


def verify_receipt(daemon, response: Response, tmp: Path) -> str:
    """Check a fetched receipt's S/MIME signature with ``openssl cms``; return the signed report's text."""
    mime = tmp / "receipt.eml"
    mime.write_bytes(f"Content-Type: {response.headers['content-type']}\r\nMIME-Version: 1.0\r\n\r\n".encode()
                     + response.body)
    result = subprocess.run(["openssl", "cms", "-verify", "-in", str(mime), "-inform", "SMIME",
                             "-CAfile", str(daemon.home.dev_ca / "ca.crt"), "-purpose", "any"],
                            capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode("utf-8", "replace")


def query(daemon, sql: str, **params) -> list[tuple]:
    """Read the daemon's SQLite database directly (read-only checks of what was recorded)."""
    engine = create_engine(f"sqlite:///{daemon.home.path / 'postroom.db'}")
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def invoice(number: str, *, note: str = "") -> bytes:
    """The BIS 3 base example under a different invoice number (and optionally a note, to change the bytes)."""
    data = BASE_EXAMPLE.read_bytes()
    data = data.replace(b"<cbc:ID>Snippet1</cbc:ID>", f"<cbc:ID>{number}</cbc:ID>".encode(), 1)
    if note:
        data = data.replace(b"<cbc:DocumentCurrencyCode>", f"<cbc:Note>{note}</cbc:Note><cbc:DocumentCurrencyCode>"
                            .encode(), 1)
    return data
