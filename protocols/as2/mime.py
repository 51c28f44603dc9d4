# -*- test-case-name: tests.protocols.as2.test_mime -*-
"""MIME at the byte level: what AS2 needs, and no re-serialisation.

A signature covers the exact bytes that were sent, so parts are sliced out of the received bytes,
never parsed into ``email`` objects and written back (pyas2lib's MIC failures against big commercial
stacks come from doing that). Header *values* are read with ``email``'s parameter parser, which
only reads. Senders vary: ``Content-Type:x`` without a space, folded lines, LF-only line ends, and
upper- or lower-case names all appear in real traffic and all work here.
"""

import base64
import binascii
import quopri
import re
from collections.abc import Iterable, Sequence
from email.message import Message as _ValueParser

import attrs

#: The most header bytes one entity may carry before the body starts.
MAX_HEADER_BYTES = 64 * 1024

_HEADER_END = re.compile(rb"\r?\n\r?\n")


class MIMEError(ValueError):
    """The bytes are not the MIME structure the sender's headers announce; the text says where."""


@attrs.frozen
class Headers:
    """Header fields in order, names compared without case."""

    fields: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``."""
        name = name.lower()
        return next((v for n, v in self.fields if n.lower() == name), default)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> "Headers":
        """Headers from ``(name, value)`` pairs (e.g. an HTTP request's), values unfolded and stripped."""
        return cls(tuple((n.strip(), _unfold(v)) for n, v in pairs))


@attrs.frozen
class ContentType:
    """A ``Content-Type`` value: the lower-case ``type/subtype`` and its parameters (names lower-case)."""

    mime_type: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """A parameter's value, or None."""
        return dict(self.params).get(name.lower())


@attrs.frozen
class Entity:
    """One MIME entity as received: its headers, and its raw bytes (``raw[body_start:]`` is the body)."""

    headers: Headers
    raw: bytes = attrs.field(repr=False)
    body_start: int

    @property
    def body(self) -> bytes:
        """The body bytes, still in their transfer encoding."""
        return self.raw[self.body_start:]

    @property
    def content_type(self) -> ContentType:
        """The parsed ``Content-Type`` (``text/plain`` when absent, as RFC 2045 says)."""
        return parse_content_type(self.headers.get("content-type") or "text/plain")

    def decoded_body(self) -> bytes:
        """The body with its ``Content-Transfer-Encoding`` undone."""
        return decode(self.body, self.headers.get("content-transfer-encoding"))

    def filename(self) -> str | None:
        """The ``Content-Disposition`` file name, reduced to a base name."""
        value = self.headers.get("content-disposition")
        if not value:
            return None
        parser = _ValueParser()
        parser["content-disposition"] = value
        name = parser.get_filename()
        if not name:
            return None
        name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
        return "".join(c for c in name if c.isprintable())[:255] or None


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def parse_headers(data: bytes) -> tuple[Headers, int]:
    """The header block at the start of ``data`` and the offset where the body begins.

    An entity with no header block at all (it starts with an empty line) has empty headers.
    """
    if data.startswith(b"\r\n"):
        return Headers(), 2
    if data.startswith(b"\n"):
        return Headers(), 1
    end = _HEADER_END.search(data, 0, MAX_HEADER_BYTES + 4)
    if end is None:
        if len(data) > MAX_HEADER_BYTES:
            raise MIMEError(f"the MIME headers are longer than {MAX_HEADER_BYTES} bytes or never end")
        raise MIMEError("the MIME entity has no empty line between its headers and its body")
    text = data[:end.start()].decode("latin-1")
    fields: list[tuple[str, str]] = []
    for line in re.split(r"\r?\n", text):
        if line[:1] in (" ", "\t"):
            if not fields:
                raise MIMEError("the MIME headers start with a continuation line")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or not name.isprintable():
            raise MIMEError(f"malformed MIME header line {line[:80]!r}")
        fields.append((name, value.strip()))
    return Headers(tuple(fields)), end.end()


def parse_entity(data: bytes) -> Entity:
    """An entity (headers + body) from its raw bytes."""
    headers, start = parse_headers(data)
    return Entity(headers, data, start)


def parse_content_type(value: str) -> ContentType:
    """``type/subtype; name=value; ...`` → :class:`ContentType` (quoted values and RFC 2231 handled)."""
    parser = _ValueParser()
    parser["content-type"] = value
    mime_type = parser.get_content_type()
    params = tuple((k.lower(), str(v)) for k, v in (parser.get_params() or [])[1:])
    return ContentType(mime_type, params)


def decode(body: bytes, transfer_encoding: str | None) -> bytes:
    """Undo a ``Content-Transfer-Encoding``; unknown encodings are an error, not a guess."""
    cte = (transfer_encoding or "binary").strip().lower()
    if cte in ("binary", "8bit", "7bit"):
        return body
    if cte == "base64":
        try:
            return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
        except (binascii.Error, ValueError) as e:
            raise MIMEError(f"the base64 body does not decode: {e}") from e
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    raise MIMEError(f"unknown Content-Transfer-Encoding {transfer_encoding!r}")


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The raw bytes of each body part between ``--boundary`` delimiters (RFC 2046 §5.1.1).

    The line break before a delimiter belongs to the delimiter, not to the part: the bytes returned
    are exactly the bytes a signature over the part covers.
    """
    if not boundary or len(boundary) > 200:
        raise MIMEError("a multipart entity needs a boundary parameter of 1 to 200 characters")
    marker = re.escape(b"--" + boundary.encode("latin-1"))
    delimiter = re.compile(rb"(?:^|\r?\n)" + marker + rb"(--)?[ \t]*(?:\r?\n|$)")
    parts: list[bytes] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start:match.start()])
        if match.group(1):
            break
        start = match.end()
    else:
        raise MIMEError(f"the multipart body has no closing delimiter --{boundary}--")
    if not parts:
        raise MIMEError("the multipart body has no parts")
    return parts


def build_entity(headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """An entity as bytes: CRLF header lines, an empty line, the body as given."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("ascii") + b"\r\n" + body


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045), ending with CRLF."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")
