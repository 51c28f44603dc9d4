"""Byte-level MIME: headers as senders really write them, and parts sliced without re-serialising."""

import io
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocols.as2.mime import (
    CHUNK,
    MAX_PARTS,
    MIMEError,
    Region,
    TooManyParts,
    _delimiters,
    base64_lines,
    build_entity,
    decode,
    parse_content_type,
    parse_entity,
    parse_headers,
    split_multipart,
)


def test_headers_without_space_folded_and_lf_only():
    data = b"Content-Type:application/edi-x12\nContent-Disposition: attachment;\n\tfilename=\"a b.x12\"\n\nISA*00"
    entity = parse_entity(data)
    assert entity.headers.get("CONTENT-TYPE") == "application/edi-x12"
    assert entity.headers.get("content-disposition") == 'attachment; filename="a b.x12"'
    assert entity.filename() == "a b.x12"
    assert entity.body.read() == b"ISA*00"


def test_an_entity_without_headers_starts_with_an_empty_line():
    assert parse_headers(b"\r\nbody") == (parse_headers(b"\r\n")[0], 2)
    assert parse_entity(b"\r\nbody").body.read() == b"body"


@pytest.mark.parametrize("data, message", [
    (b"Content-Type: text/plain\r\nno colon here\r\n\r\nx", "malformed MIME header line"),
    (b" folded first\r\n\r\nx", "continuation line"),
    (b"Content-Type: text/plain\r\nbody without a blank line", "no empty line"),
    (b"X: " + b"a" * 70000, "longer than"),
])
def test_malformed_headers_are_refused_with_the_reason(data, message):
    with pytest.raises(MIMEError, match=message):
        parse_headers(data)


def test_filename_is_reduced_to_a_base_name():
    entity = parse_entity(b'Content-Disposition: attachment; filename="../../etc/pa\x01sswd"\r\n\r\n')
    assert entity.filename() == "passwd"
    assert parse_entity(b"Content-Type: text/plain\r\n\r\n").filename() is None


def test_content_type_parameters():
    value = 'multipart/signed; protocol="application/pkcs7-signature";\tmicalg=SHA-256; boundary="--=_a b"'
    ct = parse_content_type(value)
    assert ct.mime_type == "multipart/signed"
    assert ct.param("Boundary") == "--=_a b"
    assert ct.param("micalg") == "SHA-256"
    assert ct.param("missing") is None


def test_split_keeps_the_exact_part_bytes():
    """The CRLF before a delimiter belongs to the delimiter; everything else is the part's, byte for byte."""
    first = b"Content-Type:application/xml\r\n\r\n<a/>\r\n  trailing  "
    body = b"preamble\r\n--XYZ\r\n" + first + b"\r\n--XYZ\r\nContent-Type: application/pkcs7-signature\r\n\r\nSIG" \
           b"\r\n--XYZ--\r\nepilogue"
    parts = [p.read() for p in split_multipart(body, "XYZ")]
    assert parts == [first, b"Content-Type: application/pkcs7-signature\r\n\r\nSIG"]


def test_split_handles_lf_only_and_padding_after_the_boundary():
    body = b"--b  \n1\n--b\n2\n--b--  \n"
    assert [p.read() for p in split_multipart(body, "b")] == [b"1", b"2"]


def test_split_stops_at_the_first_part_beyond_the_limit():
    """Exactly ``max_parts`` parts are fine; one more is TooManyParts before the rest of the body is looked at."""
    three = b"--b\r\n1\r\n--b\r\n2\r\n--b\r\n3\r\n--b--\r\n"
    assert [p.read() for p in split_multipart(three, "b", max_parts=3)] == [b"1", b"2", b"3"]
    with pytest.raises(TooManyParts, match="more than 2 parts") as refused:
        split_multipart(three, "b", max_parts=2)
    assert refused.value.limit == 2
    hostile = b"--b\r\n" * 1_000_000  # no closing delimiter: only the limit can end the scan early
    with pytest.raises(TooManyParts, match=f"more than {MAX_PARTS} parts"):
        split_multipart(hostile, "b")


@pytest.mark.parametrize("body, boundary, message", [
    (b"--b\r\npart\r\n", "b", "no closing delimiter"),
    (b"--b--\r\n", "b", "no parts"),
    (b"x", "", "boundary parameter"),
])
def test_split_refuses_broken_multiparts(body, boundary, message):
    with pytest.raises(MIMEError, match=message):
        split_multipart(body, boundary)


def test_transfer_encodings():
    assert decode(b"aGVs\r\nbG8=\r\n", "Base64") == b"hello"
    assert decode(b"caf=C3=A9", "quoted-printable") == "café".encode()
    assert decode(b"\x00\xff", None) == b"\x00\xff"
    with pytest.raises(MIMEError, match="base64"):
        decode(b"not base64!", "base64")
    with pytest.raises(MIMEError, match="unknown Content-Transfer-Encoding"):
        decode(b"x", "x-uuencode")


def test_built_entities_parse_back():
    data = build_entity([("Content-Type", "application/xml"), ("Content-Transfer-Encoding", "base64")],
                        base64_lines(b"<Invoice/>" * 20))
    entity = parse_entity(data)
    assert entity.decoded().read() == b"<Invoice/>" * 20
    assert all(len(line) <= 76 for line in entity.body.read().split(b"\r\n"))


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_parse_or_raise_mime_error(data):
    try:
        entity = parse_entity(data)
    except MIMEError:
        return
    assert data.endswith(entity.body.read())


@given(st.lists(st.binary(max_size=200).filter(lambda p: b"--bnd" not in p), min_size=1, max_size=5))
def test_split_returns_the_parts_that_were_joined(parts):
    body = b"".join(b"--bnd\r\n" + p + b"\r\n" for p in parts) + b"--bnd--\r\n"
    assert [p.read() for p in split_multipart(body, "bnd")] == parts


def test_regions_split_and_decode_in_chunks_across_chunk_boundaries():
    """A part and a base64 body much larger than a chunk: same bytes as in memory, delimiters found across chunks."""
    import io

    from protocols.as2.mime import CHUNK, Region

    payload = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    encoded = build_entity([("Content-Transfer-Encoding", "base64")], base64_lines(payload))
    body = b"--bnd\r\n" + encoded + b"\r\n--bnd\r\n\r\nsig\r\n--bnd--\r\n"
    region = Region.of_file(io.BytesIO(b"junk" + body))
    parts = split_multipart(region.sub(4), "bnd")
    assert parts[0].read() == encoded and parts[1].read() == b"\r\nsig"
    sink = io.BytesIO()
    decoded = parse_entity(parts[0]).decoded(lambda: sink)
    assert decoded.read() == payload and sink.getvalue() == payload
    assert decoded.reader().read() == payload


def _reference_delimiters(data: bytes, marker: bytes) -> list[tuple[int, int, bool]]:
    """The delimiter rule of RFC 2046 §5.1.1 on bytes in memory, one candidate at a time."""
    out, at = [], data.find(marker)
    while at != -1:
        before = data[max(0, at - 2):at]
        match = re.compile(rb"(--)?[ \t]{0,100}(\r?\n|$)").match(data[at + len(marker):at + len(marker) + 104])
        if (at == 0 or before.endswith(b"\n")) and match and (match.group(2) or at + len(marker) + match.end()
                                                                >= len(data)):
            start = at - (2 if before.endswith(b"\r\n") else 1 if before else 0)
            out.append((start, at + len(marker) + match.end(), bool(match.group(1))))
        at = data.find(marker, at + 1)
    return out


@given(st.lists(st.sampled_from([b"--b", b"--b--", b"\r\n", b"\n", b"\r", b"x", b" ", b"\t", b"-", b"b", b" " * 60,
                                  b" " * 99]), max_size=80),
       st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=5))
@example(pieces=[b"\r\n", b"--b", b"\r\n", b"--b", b" " * 99], chunk=1, offset=0)  # once gave a delimiter twice
@settings(max_examples=500)
def test_delimiters_found_in_chunks_are_those_found_whole(pieces, chunk, offset):
    """Whatever the chunk size and wherever the region starts, the one-pass scan finds what the rule finds on
    the whole bytes."""
    data = b"".join(pieces)
    region = Region(io.BytesIO(b"p" * offset + data), offset, offset + len(data))
    found = [(start - offset, end - offset, closing) for start, end, closing in _delimiters(region, b"--b", chunk)]
    assert found == _reference_delimiters(data, b"--b")


class CountingFile(io.BytesIO):
    """Counts its reads."""

    reads = 0

    def read(self, size=-1):
        self.reads += 1
        return super().read(size)


def test_near_delimiters_cost_one_pass():
    """A body of a million lines that only look like delimiters has one part, found in one pass of chunked reads
    (it was two reads per candidate: seconds per megabyte)."""
    body = b"--b\r\n1\r\n" + b"\n--bX" * 1_000_000 + b"\r\n--b--\r\n"
    file = CountingFile(body)
    assert [p.size for p in split_multipart(Region(file, 0, len(body)), "b")] == [len(body) - 14]
    assert file.reads <= len(body) // CHUNK + 2
