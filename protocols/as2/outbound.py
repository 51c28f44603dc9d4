# -*- test-case-name: tests.protocols.as2.test_outbound -*-
"""Writing one outbound AS2 message and reading the MDN that answers it: sans-IO.

:func:`build` wraps a payload as the partner asked — compress, sign (detached ``multipart/signed``),
encrypt, in that order — and returns the HTTP headers, the body and the MIC the partner's MDN must
return. :func:`read_mdn` checks an MDN (sync in the HTTP response, or async in a POST to us): its
signature by one of the partner's certificates when signed, and which message it answers.
"""

import base64
import re
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from certs.x509 import Certificate, PrivateKey
from partners.errors import InvalidValueError
from protocols.as2 import cms
from protocols.as2.inbound import digest_name
from protocols.as2.mime import (
    Entity,
    Headers,
    MIMEError,
    Region,
    Scratch,
    base64_lines,
    build_entity,
    memory_scratch,
    parse_entity,
    parse_headers,
    split_multipart,
)

#: A multipart/report has a text part, the machine-readable part and at most the returned content
#: (RFC 6522); more than this many parts is not an MDN.
MDN_PARTS = 8


class MDNError(ValueError):
    """An MDN that cannot be trusted or read; the text says why."""


@attrs.frozen
class SendOptions:
    """How one partner wants its messages wrapped (defaults: AES-256-CBC, RSA v1.5, SHA-256)."""

    sign: bool = True
    encrypt: bool = True
    compress: bool = False
    digest: str = attrs.field(default="sha256", validator=attrs.validators.in_(cms.DIGESTS))
    pss: bool = False
    cipher: str = attrs.field(default="aes256-cbc", validator=attrs.validators.in_(cms.CIPHERS))
    key_transport: str = attrs.field(default="rsa-v1.5", validator=attrs.validators.in_(cms.KEY_TRANSPORTS))
    mdn: str = attrs.field(default="sync", validator=attrs.validators.in_(("sync", "async", "none")))
    signed_mdn: bool = True

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any] | None) -> "SendOptions":
        """The options a partner's stored settings give (defaults for the rest)."""
        try:
            return cls(**(stored or {}))
        except (TypeError, ValueError) as e:
            raise InvalidValueError(f"stored AS2 options {dict(stored or {})} are invalid: {e}") from e

    def with_setting(self, assignment: str) -> "SendOptions":
        """Apply ``name=value`` as typed on the command line."""
        name, sep, raw = assignment.partition("=")
        name, raw = name.strip().replace("-", "_"), raw.strip().lower()
        fields = {f.name: f for f in attrs.fields(type(self))}
        if not sep or name not in fields:
            raise InvalidValueError(f"{assignment!r}: expected NAME=VALUE with NAME one of {', '.join(fields)}")
        value: Any = raw
        if fields[name].type is bool or isinstance(fields[name].default, bool):
            if raw not in ("true", "false"):
                raise InvalidValueError(f"{assignment!r}: {name} is true or false")
            value = raw == "true"
        try:
            return attrs.evolve(self, **{name: value})
        except ValueError as e:
            allowed = {"digest": cms.DIGESTS, "cipher": cms.CIPHERS, "key_transport": cms.KEY_TRANSPORTS,
                       "mdn": ("sync", "async", "none")}[name]
            raise InvalidValueError(f"{assignment!r}: {name} is one of {', '.join(allowed)}") from e

    def changes(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults (what is stored)."""
        default = type(self)()
        return {k: v for k, v in attrs.asdict(self).items() if getattr(default, k) != v}


@attrs.frozen
class Outgoing:
    """A built message: headers and body to POST, and the MIC its MDN must carry."""

    message_id: str
    headers: tuple[tuple[str, str], ...]
    body: Region  #: read it with ``body.reader()`` (its length is known: no chunked upload)
    mic: str | None
    mic_algorithm: str


def _micalg(digest: str) -> str:
    return "sha-" + digest.removeprefix("sha") if digest != "sha1" else "sha-1"


def new_message_id(hostname: str) -> str:
    """A globally unique ``<…@hostname>`` Message-ID."""
    return f"<{secrets.token_hex(16)}@{hostname}>"


def build(payload: bytes | Region, *, content_type: str, filename: str | None, options: SendOptions, as2_from: str,
          as2_to: str, message_id: str, sign_key: PrivateKey | None = None, sign_cert: Certificate | None = None,
          encrypt_cert: Certificate | None = None, receipt_to: str | None = None,
          scratch: Scratch = memory_scratch) -> Outgoing:
    """Wrap ``payload`` as ``options`` say; ``receipt_to`` is our URL for async MDNs.

    Each layer is written to a ``scratch()`` file and read back in chunks, so the payload is never
    held in memory whole (the delivery queue passes a region of the spooled blob).
    """
    if any(c in content_type for c in "\r\n") or (filename and any(c in filename for c in '\r\n"')):
        raise ValueError("content type and file name must not contain line breaks or quotes")
    payload = payload if isinstance(payload, Region) else Region.of_bytes(payload)
    fields = [("Content-Type", content_type), ("Content-Transfer-Encoding", "binary")]
    if filename:
        fields.append(("Content-Disposition", f'attachment; filename="{filename}"'))
    entity = _written(scratch, build_entity(fields, b""), payload)
    if options.compress:
        sink = scratch()
        sink.write(build_entity([("Content-Type", 'application/pkcs7-mime; smime-type=compressed-data; '
                                                  'name="smime.p7z"'), ("Content-Transfer-Encoding", "binary")], b""))
        cms.compress_stream(entity.reader(), sink)
        entity = Region.of_file(sink)
    content_digest = entity.digest(options.digest)
    mic = base64.b64encode(content_digest).decode("ascii")
    if options.sign:
        if sign_key is None or sign_cert is None:
            raise ValueError("signing needs the gateway's signing key and certificate")
        signature = cms.sign_digest(content_digest, sign_key, sign_cert, digest=options.digest, pss=options.pss)
        boundary = f"----=_postroom_as2_{secrets.token_hex(12)}"
        signed_type = (f'multipart/signed; protocol="application/pkcs7-signature"; micalg={_micalg(options.digest)};'
                       f' boundary="{boundary}"')
        tail = (f"\r\n--{boundary}\r\n".encode()
                + build_entity([("Content-Type", 'application/pkcs7-signature; name="smime.p7s"'),
                                ("Content-Transfer-Encoding", "base64"),
                                ("Content-Disposition", 'attachment; filename="smime.p7s"')], base64_lines(signature))
                + f"--{boundary}--\r\n".encode())
        entity = _written(scratch, build_entity([("Content-Type", signed_type)], f"--{boundary}\r\n".encode()),
                          entity, tail)
    if options.encrypt:
        if encrypt_cert is None:
            raise ValueError("encryption needs the partner's encryption certificate")
        sink = scratch()
        cms.encrypt_stream(entity.reader(), entity.size, sink, encrypt_cert, cipher=options.cipher,
                           key_transport=options.key_transport)
        body = Region.of_file(sink)
        top = 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'
    else:
        parsed = parse_entity(entity)
        top, body = parsed.headers.get("content-type") or content_type, parsed.body
    if not options.sign and not options.encrypt:  # RFC 4130 §7.3.1: bare content when neither layer is used
        mic = base64.b64encode(payload.digest(options.digest)).decode("ascii")
    headers = [("AS2-Version", "1.2"), ("AS2-From", _quoted(as2_from)), ("AS2-To", _quoted(as2_to)),
               ("Message-ID", message_id), ("Content-Type", top), ("MIME-Version", "1.0")]
    if filename:
        headers.append(("Content-Disposition", f'attachment; filename="{filename}"'))
    if options.mdn != "none":
        headers.append(("Disposition-Notification-To", receipt_to or as2_from))
        if options.signed_mdn:
            headers.append(("Disposition-Notification-Options",
                            "signed-receipt-protocol=optional, pkcs7-signature; "
                            f"signed-receipt-micalg=optional, {_micalg(options.digest)}"))
        if options.mdn == "async":
            if not receipt_to:
                raise ValueError("an async MDN needs our receipt URL")
            headers.append(("Receipt-Delivery-Option", receipt_to))
    return Outgoing(message_id, tuple(headers), body, mic if options.mdn != "none" else None,
                    _micalg(options.digest))


def _written(scratch: Scratch, head: bytes, middle: Region, tail: bytes = b"") -> Region:
    """``head + middle + tail`` in a new scratch file."""
    sink = scratch()
    sink.write(head)
    middle.copy_to(sink)
    sink.write(tail)
    return Region.of_file(sink)


def receipt_headers(*, receipt_id: str, content_type: str, as2_from: str, as2_to: str, hostname: str,
                    date: str) -> list[tuple[str, str]]:
    """The HTTP headers an MDN travels with, in a sync answer or an async POST (RFC 4130 §7.2)."""
    return [("AS2-Version", "1.2"), ("AS2-From", _quoted(as2_from)), ("AS2-To", _quoted(as2_to)),
            ("Message-ID", f"<{receipt_id}@{hostname}>"), ("Date", date), ("MIME-Version", "1.0"),
            ("Content-Type", content_type)]


def _quoted(as2_id: str) -> str:
    """AS2 names with spaces or specials are sent quoted (RFC 4130 §6.2)."""
    return f'"{as2_id}"' if re.search(r'[\s"\\()<>@,;:/\[\]?={}]', as2_id) else as2_id


@attrs.frozen
class MDN:
    """What an MDN says about one message we sent."""

    original_message_id: str
    disposition: str
    mic: str | None
    mic_algorithm: str | None
    signed: bool
    text: str

    @property
    def status(self) -> str:
        """``processed``, ``warning`` (``processed/warning: …``) or ``failed`` (error/failure/other)."""
        value = self.disposition.split(";", 1)[-1].strip().lower()
        if value == "processed":
            return "processed"
        if value.startswith("processed/warning"):
            return "warning"
        return "failed"

    def answers(self, message_id: str) -> bool:
        """True when this MDN is about ``message_id`` (angle brackets and spaces aside)."""
        return _bare(self.original_message_id) == _bare(message_id)


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>").strip()


def read_mdn(headers: Headers, body: bytes, *, trusted: Sequence[Certificate], cas: Sequence[Certificate],
             now: datetime, require_signature: bool) -> MDN:
    """Read an MDN; a signed one must verify against the partner's signing certificates.

    :raises MDNError: not an MDN, a bad or untrusted signature, or unsigned when a signature is required.
    """
    entity = Entity(headers, Region.of_bytes(body))
    try:
        signed = False
        if entity.content_type.mime_type == "multipart/signed":
            parts = split_multipart(entity.body, entity.content_type.param("boundary") or "", max_parts=2)
            if len(parts) != 2:
                raise MDNError(f"a signed MDN has two parts, not {len(parts)}")
            signature = parse_entity(parts[1])
            try:
                cms.verify(signature.decoded().read(), content=parts[0].read(), trusted=trusted, cas=cas,
                           digests=frozenset(cms.DIGESTS), now=now)
            except cms.CMSError as e:
                raise MDNError(f"the MDN's signature does not verify: {e}") from e
            entity, signed = parse_entity(parts[0]), True
        elif require_signature:
            raise MDNError("the MDN is not signed, but a signed MDN was requested")
        return _report(entity, signed)
    except MIMEError as e:
        raise MDNError(f"the MDN is not well-formed MIME: {e}") from e


def _report(entity: Entity, signed: bool) -> MDN:
    content_type = entity.content_type
    if content_type.mime_type != "multipart/report":
        raise MDNError(f"an MDN is multipart/report, not {content_type.mime_type}")
    text, fields = "", None
    for raw in split_multipart(entity.body, content_type.param("boundary") or "", max_parts=MDN_PARTS):
        part = parse_entity(raw)
        if part.content_type.mime_type == "message/disposition-notification":
            fields = _notification(part.decoded().read())
        elif part.content_type.mime_type == "text/plain" and not text:
            text = part.decoded().read().decode("utf-8", "replace")
    if fields is None:
        raise MDNError("the MDN has no message/disposition-notification part")
    original = fields.get("original-message-id")
    disposition = fields.get("disposition")
    if not original or not disposition:
        raise MDNError("the MDN lacks Original-Message-ID or Disposition")
    mic, algorithm = None, None
    if received := fields.get("received-content-mic"):
        mic, _, algorithm = (v.strip() for v in received.partition(","))
    return MDN(original, disposition, mic or None, algorithm or None, signed, text.strip())


def _notification(data: bytes) -> dict[str, str]:
    headers, _ = parse_headers(data.rstrip(b"\r\n") + b"\r\n\r\n")
    return {name.lower(): value for name, value in headers.fields}


def mic_matches(expected: str | None, algorithm: str, mdn: MDN) -> bool:
    """True when the MDN returned our MIC in an algorithm we can compare."""
    if expected is None:
        return True
    return mdn.mic == expected and digest_name(mdn.mic_algorithm or "") == digest_name(algorithm)

