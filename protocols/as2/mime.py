# -*- test-case-name: tests.protocols.as2.test_mime -*-
"""MIME at the byte level: what AS2 needs, and no re-serialisation.

A signature covers the exact bytes that were sent, so parts are sliced out of the received bytes,
never parsed into ``email`` objects and written back (pyas2lib's MIC failures against big commercial
stacks come from doing that). Header *values* are read with ``email``'s parameter parser, which
only reads. Senders vary: ``Content-Type:x`` without a space, folded lines, LF-only line ends, and
upper- or lower-case names all appear in real traffic and all work here.

Bodies are :class:`Region` objects — a byte range of a seekable file — so a 100 MB message is sliced,
hashed and decoded in chunks, never held in memory whole; a small one is the same code over a
``BytesIO``.
"""

import base64
import binascii
import functools
import hashlib
import io
import quopri
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from email.message import Message as _ValueParser
from typing import BinaryIO

import attrs

#: The most header bytes one entity may carry before the body starts.
MAX_HEADER_BYTES = 64 * 1024
#: Bytes read at a time from a region.
CHUNK = 1 << 16

_HEADER_END = re.compile(rb"\r?\n\r?\n")


class MIMEError(ValueError):
    """The bytes are not the MIME structure the sender's headers announce; the text says where."""


class TooManyParts(MIMEError):
    """A multipart body has more parts than the caller takes (``limit``); found before it was split further."""

    def __init__(self, limit: int):
        super().__init__(f"the multipart body has more than {limit} parts")
        self.limit = limit


Scratch = Callable[[], BinaryIO]


def memory_scratch() -> BinaryIO:
    """A scratch file in memory (for small messages and tests)."""
    return io.BytesIO()


@attrs.frozen
class Region:
    """Bytes ``[start, end)`` of a seekable file, read in chunks; the file is shared, so reads seek first."""

    file: BinaryIO = attrs.field(repr=False)
    start: int
    end: int

    @classmethod
    def of_bytes(cls, data: bytes) -> "Region":
        """A region over bytes in memory."""
        return cls(io.BytesIO(data), 0, len(data))

    @classmethod
    def of_file(cls, file: BinaryIO) -> "Region":
        """The whole of ``file``."""
        return cls(file, 0, file.seek(0, io.SEEK_END))

    @property
    def size(self) -> int:
        """Its length in bytes."""
        return self.end - self.start

    def sub(self, start: int, end: int | None = None) -> "Region":
        """The part ``[start, end)`` of this region, offsets relative to it."""
        return Region(self.file, self.start + start, self.end if end is None else self.start + end)

    def read(self, limit: int | None = None) -> bytes:
        """The bytes (or the first ``limit`` of them): for small parts only."""
        self.file.seek(self.start)
        return self.file.read(self.size if limit is None else min(limit, self.size))

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The bytes, ``size`` at a time."""
        position = self.start
        while position < self.end:
            self.file.seek(position)
            chunk = self.file.read(min(size, self.end - position))
            if not chunk:
                raise MIMEError("the message ended early (truncated file)")
            position += len(chunk)
            yield chunk

    def digest(self, name: str) -> bytes:
        """The ``hashlib`` digest ``name`` of the bytes."""
        h = hashlib.new(name)
        for chunk in self.chunks():
            h.update(chunk)
        return h.digest()

    def reader(self) -> BinaryIO:
        """A file object reading just this region (for streaming it onward)."""
        return _RegionReader(self)

    def copy_to(self, sink: BinaryIO) -> None:
        """Write the bytes to ``sink``."""
        for chunk in self.chunks():
            sink.write(chunk)


class _RegionReader(io.RawIOBase):
    def __init__(self, region: Region):
        super().__init__()
        self._region = region
        self._position = region.start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._region.start, io.SEEK_CUR: self._position, io.SEEK_END: self._region.end}[whence]
        self._position = min(max(base + offset, self._region.start), self._region.end)
        return self._position - self._region.start

    def tell(self) -> int:
        return self._position - self._region.start

    def readinto(self, buffer) -> int:
        if self._position >= self._region.end:
            return 0
        self._region.file.seek(self._position)
        data = self._region.file.read(min(len(buffer), self._region.end - self._position))
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


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
    """One MIME entity as received: its headers, and its body still in its transfer encoding."""

    headers: Headers
    body: Region

    @property
    def content_type(self) -> ContentType:
        """The parsed ``Content-Type`` (``text/plain`` when absent, as RFC 2045 says)."""
        return parse_content_type(self.headers.get("content-type") or "text/plain")

    def decoded(self, scratch: Scratch = memory_scratch) -> Region:
        """The body with its ``Content-Transfer-Encoding`` undone (base64 decoded in chunks into ``scratch()``)."""
        cte = (self.headers.get("content-transfer-encoding") or "binary").strip().lower()
        if cte in ("binary", "8bit", "7bit"):
            return self.body
        if cte == "base64":
            sink = scratch()
            _decode_base64(self.body, sink)
            return Region.of_file(sink)
        return Region.of_bytes(decode(self.body.read(), cte))

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


def _decode_base64(body: Region, sink: BinaryIO) -> None:
    pending = b""
    try:
        for chunk in body.chunks():
            pending += re.sub(rb"\s+", b"", chunk)
            whole = len(pending) - len(pending) % 4
            sink.write(base64.b64decode(pending[:whole], validate=True))
            pending = pending[whole:]
        if pending:
            raise binascii.Error(f"{len(pending)} characters left over at the end")
    except (binascii.Error, ValueError) as e:
        raise MIMEError(f"the base64 body does not decode: {e}") from e


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


def parse_entity(data: bytes | Region) -> Entity:
    """An entity (headers + body) from its raw bytes or a region of a file."""
    region = data if isinstance(data, Region) else Region.of_bytes(data)
    headers, start = parse_headers(region.read(MAX_HEADER_BYTES + 4))
    return Entity(headers, region.sub(start))


@functools.lru_cache(maxsize=1024)
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


#: Parts a multipart body may have unless the caller says otherwise: every caller knows fewer (two for
#: multipart/signed, a handful for an MDN, the mail reader's own budget), and a list of millions of tiny
#: parts must never be built.
MAX_PARTS = 1000


def split_multipart(body: bytes | Region, boundary: str, max_parts: int = MAX_PARTS) -> list[Region]:
    """Each body part between ``--boundary`` delimiters (RFC 2046 §5.1.1), as a region of the body.

    The line break before a delimiter belongs to the delimiter, not to the part: the bytes of a part
    are exactly the bytes a signature over it covers. The body is scanned in chunks.

    :raises TooManyParts: as soon as a part beyond ``max_parts`` begins.
    """
    if not boundary or len(boundary) > 200:
        raise MIMEError("a multipart entity needs a boundary parameter of 1 to 200 characters")
    region = body if isinstance(body, Region) else Region.of_bytes(body)
    parts: list[Region] = []
    start: int | None = None
    for line_start, line_end, closing in _delimiters(region, b"--" + boundary.encode("latin-1")):
        if start is not None:
            parts.append(Region(region.file, start, line_start))
        if closing:
            break
        if len(parts) == max_parts:
            raise TooManyParts(max_parts)
        start = line_end
    else:
        raise MIMEError(f"the multipart body has no closing delimiter --{boundary}--")
    if not parts:
        raise MIMEError("the multipart body has no parts")
    return parts


#: What may follow the boundary on a delimiter line: "--", up to 100 blanks, CRLF.
_LOOKAHEAD = 104


def _delimiters(region: Region, marker: bytes, chunk: int = CHUNK) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, closing)`` of each delimiter line, absolute offsets; ``start`` includes the line break before.

    One pass over the region in chunks. A delimiter line is found by one regular expression (the line
    break before, the boundary, and in a look-ahead what may follow it), so text that only looks like a
    delimiter is passed over inside the regex engine; the window keeps the two bytes before it and holds
    back candidates whose look-ahead is not in hand yet.
    """
    line = re.compile(rb"(\r?\n|^)" + re.escape(marker) + rb"(?=(--)?[ \t]{0,100}(\r?\n|$))")
    window, base, before_window = b"", region.start, b""
    chunks = region.chunks(chunk)
    while True:
        piece = next(chunks, None)
        last = piece is None
        window += piece or b""
        limit = len(window) - 1 if last else len(window) - len(marker) - _LOOKAHEAD  # candidates seen whole
        text, shift = before_window + window, len(before_window)
        for match in line.finditer(text):
            at = match.end(1) - shift  # where the boundary starts, in the window
            if at > limit:
                break
            if at < 0 or (not match.group(1) and (shift or base != region.start)):
                continue  # a boundary scanned in the window before, or "^" the start of a window, not of a line
            yield base + match.start(1) - shift, base + match.end(3) - shift, match.group(2) is not None
        if last:
            return
        cut = max(limit + 1, 0)
        before_window = text[max(0, cut + shift - 2):cut + shift]
        window, base = window[cut:], base + cut


def build_entity(headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    """An entity as bytes: CRLF header lines, an empty line, the body as given."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("ascii") + b"\r\n" + body


def base64_lines(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines (RFC 2045), ending with CRLF."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")
