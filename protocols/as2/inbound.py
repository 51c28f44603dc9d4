# -*- test-case-name: tests.protocols.as2.test_inbound -*-
"""Reading one inbound AS2 message (RFC 4130, RFC 5402): sans-IO, bytes and headers in, a payload out.

:func:`unwrap` peels the layers the sender chose — enveloped, signed (``multipart/signed`` or
``pkcs7-mime`` signed-data), compressed, in any legal order — checks them against the partner's
policy, and computes the MIC over the exact received bytes of what was signed. Every refusal is an
:class:`AS2Refused` carrying one finding, whose code maps to the receipt's disposition modifier
(:data:`DISPOSITION_ERRORS`). :func:`receipt_request` reads what kind of MDN the sender asked for.
"""

import base64
import re
from collections.abc import Sequence
from datetime import datetime

import attrs

from certs.x509 import Certificate, PrivateKey
from partners.policy import Policy
from protocols.as2 import cms
from protocols.as2.mime import (
    Entity,
    Headers,
    MIMEError,
    Region,
    Scratch,
    TooManyParts,
    memory_scratch,
    parse_entity,
    split_multipart,
)
from protocols.findings import Finding

AS2_DECRYPT = "AS2-DECRYPT"
AS2_SIGNER = "AS2-SIGNER"
AS2_INTEGRITY = "AS2-INTEGRITY"
AS2_SECURITY = "AS2-SECURITY"
AS2_FORMAT = "AS2-FORMAT"

#: How each refusal shows in the MDN's ``Disposition`` (RFC 4130 §7.4.3).
DISPOSITION_ERRORS = {
    AS2_DECRYPT: "decryption-failed",
    AS2_SIGNER: "authentication-failed",
    AS2_INTEGRITY: "integrity-check-failed",
    AS2_SECURITY: "insufficient-message-security",
    AS2_FORMAT: "unexpected-processing-error",
}

#: Layers deeper than this are refused: no legal AS2 message needs more than three.
MAX_LAYERS = 6
#: How many times compressed content may expand (XML invoices: 5 to 30; a zlib bomb: about 1000).
MAX_RATIO = 250
#: A detached signature larger than this is not a signature (certificates included).
MAX_SIGNATURE_BYTES = 1 << 20

_PKCS7_MIME = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_PKCS7_SIGNATURE = ("application/pkcs7-signature", "application/x-pkcs7-signature")

class AS2Refused(Exception):
    """The message cannot be accepted; ``finding`` says why, for the negative MDN."""

    def __init__(self, code: str, message: str, mic: str | None = None):
        super().__init__(message)
        self.finding = Finding(code, message, "as2")
        self.mic = mic


@attrs.frozen
class Security:
    """What one partner's messages must carry and may use (from its :class:`~partners.policy.Policy`)."""

    require_signature: bool = True
    require_encryption: bool = True
    digests: frozenset[str] = frozenset({"sha224", "sha256", "sha384", "sha512"})
    ciphers: frozenset[str] = frozenset(cms.CIPHERS)
    key_transports: frozenset[str] = frozenset(cms.KEY_TRANSPORTS)

    @classmethod
    def of(cls, policy: Policy) -> "Security":
        """The AS2 rules a partner policy implies (SHA-1 only where the partner is allowed it)."""
        strict = cls(require_signature=policy.as2_require_signature,
                     require_encryption=policy.as2_require_encryption)
        return attrs.evolve(strict, digests=strict.digests | {"sha1"}) if policy.allow_sha1 else strict


@attrs.frozen
class Unwrapped:
    """The payload and what protected it."""

    payload: Region  #: the payload, decoded (read it with ``payload.reader()`` or ``payload.read()``)
    content_type: str
    filename: str | None
    mic: str  #: base64 digest for ``Received-Content-MIC``
    signed: bool
    encrypted: bool
    compressed: bool
    cipher: str | None = None
    signature_digest: str | None = None
    #: the innermost entity's MIME headers (a multipart payload's boundary is here; its transfer encoding
    #: is already undone in ``payload``)
    headers: Headers = attrs.field(factory=Headers)


@attrs.frozen
class ReceiptRequest:
    """The MDN the sender asked for (RFC 4130 §7.3)."""

    wanted: bool = False
    signed: bool = False
    mic_algorithm: str = "sha-256"  #: as the sender spelt it, echoed in ``Received-Content-MIC``
    async_url: str | None = None

    @property
    def digest(self) -> str:
        """The :mod:`cms` digest name of :attr:`mic_algorithm`."""
        return digest_name(self.mic_algorithm) or "sha256"


def digest_name(value: str) -> str | None:
    """``sha-256``, ``SHA256`` … → ``sha256``; None for anything not in :data:`cms.DIGESTS`."""
    name = value.strip().lower().replace("-", "")  # RFC 5751 writes sha-256; many peers drop the dash
    return name if name in cms.DIGESTS else None


def _options(value: str) -> dict[str, list[str]]:
    """``name=importance, v1, v2; name2=…`` → ``{name: [v1, v2]}`` (RFC 4130 §7.3)."""
    options: dict[str, list[str]] = {}
    for item in value.split(";"):
        name, _, rest = item.partition("=")
        values = [v.strip().lower() for v in rest.split(",")]
        if name.strip():
            options[name.strip().lower()] = values[1:] if values[:1] in (["optional"], ["required"]) else values
    return options


def receipt_request(headers: Headers, sha1_allowed: bool) -> ReceiptRequest:
    """What MDN the sender asked for; SHA-1 MICs only for partners still allowed SHA-1."""
    if headers.get("disposition-notification-to") is None:
        return ReceiptRequest()
    options = _options(headers.get("disposition-notification-options") or "")
    signed = any(p in ("pkcs7-signature", "application/pkcs7-signature")
                 for p in options.get("signed-receipt-protocol", ()))
    algorithm = "sha-256"
    for requested in options.get("signed-receipt-micalg", ()):
        name = digest_name(requested)
        if name is not None and (name != "sha1" or sha1_allowed):
            algorithm = requested
            break
    url = (headers.get("receipt-delivery-option") or "").strip() or None
    return ReceiptRequest(wanted=True, signed=signed, mic_algorithm=algorithm, async_url=url)


def as2_name(value: str | None) -> str | None:
    """An ``AS2-From``/``AS2-To`` value without its optional quotes (RFC 4130 §6.2; case matters)."""
    if value is None:
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value or None


@attrs.define
class _Peeled:
    """State while peeling layers."""

    scratch: Scratch
    mic: str | None = None
    signed: bool = False
    encrypted: bool = False
    compressed: bool = False
    cipher: str | None = None
    signature_digest: str | None = None
    decrypted_entity: Region | None = None


def unwrap(headers: Headers, body: bytes | Region, *, recipients: Sequence[tuple[PrivateKey, Certificate]],
           trusted: Sequence[Certificate], cas: Sequence[Certificate], security: Security, mic_digest: str,
           max_decompressed: int, now: datetime, max_ratio: int = MAX_RATIO,
           scratch: Scratch = memory_scratch) -> Unwrapped:
    """Peel every layer of one received message and check it against ``security``.

    :param headers: the HTTP headers (they are the outer entity's MIME headers).
    :param body: the raw request body (a region of the file it was spooled to, or bytes).
    :param recipients: the gateway's decryption key pairs (more than one during a key rollover).
    :param trusted: the partner's registered signing certificates; ``cas`` the CAs that issue them.
    :param mic_digest: the :mod:`cms` digest name for the MIC the receipt returns.
    :param scratch: makes the temporary files each layer's output goes to (the spool's ``tmp/``).
    :raises AS2Refused: with the finding for the negative MDN.
    """
    state = _Peeled(scratch)
    entity = Entity(headers, body if isinstance(body, Region) else Region.of_bytes(body))
    try:
        for _ in range(MAX_LAYERS):
            content_type = entity.content_type
            if content_type.mime_type in _PKCS7_MIME:
                entity = _open_pkcs7(entity, state, recipients=recipients, trusted=trusted, cas=cas,
                                     security=security, mic_digest=mic_digest, max_decompressed=max_decompressed,
                                     max_ratio=max_ratio, now=now)
            elif content_type.mime_type == "multipart/signed":
                entity = _open_signed(entity, state, trusted=trusted, cas=cas, security=security,
                                      mic_digest=mic_digest, now=now)
            else:
                return _finish(entity, state, security, mic_digest)
    except MIMEError as e:
        raise AS2Refused(AS2_FORMAT, f"The message is not well-formed MIME: {e}", state.mic) from e
    except cms.CMSError as e:
        raise _refusal(e, state.mic) from e
    raise AS2Refused(AS2_FORMAT, f"The message nests more than {MAX_LAYERS} S/MIME layers.", state.mic)


def _refusal(error: "cms.CMSError", mic: str | None) -> AS2Refused:
    if isinstance(error, cms.DecryptionFailed):
        return AS2Refused(AS2_DECRYPT, str(error), mic)
    if isinstance(error, cms.AlgorithmRefused):
        return AS2Refused(AS2_SECURITY, str(error), mic)
    if isinstance(error, cms.SignatureInvalid):
        return AS2Refused(AS2_INTEGRITY, str(error), mic)
    if isinstance(error, cms.SignerNotTrusted):
        return AS2Refused(AS2_SIGNER, str(error), mic)
    if isinstance(error, cms.DecompressionRefused):
        return AS2Refused(AS2_FORMAT, f"The compressed content was not decompressed: {error}", mic)
    return AS2Refused(AS2_FORMAT, str(error), mic)


def _open_pkcs7(entity: Entity, state: _Peeled, *, recipients, trusted, cas, security: Security, mic_digest: str,
                max_decompressed: int, max_ratio: int, now: datetime) -> Entity:
    der = entity.decoded(state.scratch)
    kind = cms.peek_kind(der.read(cms.PEEK_BYTES))
    sink = state.scratch()
    if kind in ("enveloped", "auth-enveloped"):
        if state.encrypted:
            raise AS2Refused(AS2_FORMAT, "The message is encrypted twice; encrypt once.", state.mic)
        decrypted = cms.decrypt_stream(der.reader(), sink, recipients, ciphers=security.ciphers,
                                       key_transports=security.key_transports)
        state.encrypted, state.cipher = True, decrypted.cipher
        state.decrypted_entity = Region.of_file(sink)
        return parse_entity(state.decrypted_entity)
    if kind == "compressed":
        state.compressed = True
        cms.decompress_stream(der.reader(), sink, max_size=max_decompressed, max_ratio=max_ratio)
        return parse_entity(Region.of_file(sink))
    if kind == "signed":
        verified = cms.verify_stream(der.reader(), sink, trusted=trusted, cas=cas, digests=security.digests, now=now)
        content = Region.of_file(sink)
        _signed(state, verified, content, mic_digest)
        return parse_entity(content)
    raise AS2Refused(AS2_FORMAT, f"An application/pkcs7-mime part holds CMS {kind} content, which AS2 does not use.",
                     state.mic)


def _open_signed(entity: Entity, state: _Peeled, *, trusted, cas, security: Security, mic_digest: str,
                 now: datetime) -> Entity:
    boundary = entity.content_type.param("boundary") or ""
    try:
        parts = split_multipart(entity.body, boundary, max_parts=2)
    except TooManyParts:
        raise MIMEError("multipart/signed needs exactly two parts (content, signature), not more") from None
    if len(parts) != 2:
        raise MIMEError(f"multipart/signed needs exactly two parts (content, signature), not {len(parts)}")
    content, signature = parts[0], parse_entity(parts[1])
    if signature.content_type.mime_type not in _PKCS7_SIGNATURE:
        raise MIMEError(f"the signature part is {signature.content_type.mime_type}, not application/pkcs7-signature")
    if signature.body.size > MAX_SIGNATURE_BYTES:
        raise MIMEError(f"the signature part is larger than {MAX_SIGNATURE_BYTES} bytes")
    digests: dict[str, bytes] = {}

    def content_digest(name: str) -> bytes:
        if name not in digests:
            digests[name] = content.digest(name)
        return digests[name]

    if not state.signed:  # the MIC goes back even when the signature fails, so the sender can compare
        state.mic = base64.b64encode(content_digest(mic_digest)).decode("ascii")
    verified = cms.verify_digests(signature.decoded().read(), content_digest=content_digest, trusted=trusted,
                                  cas=cas, digests=security.digests, now=now)
    if not state.signed:
        state.signed, state.signature_digest = True, verified.digest
    return parse_entity(content)


def _signed(state: _Peeled, verified: "cms.Verified", content: Region, mic_digest: str) -> None:
    if state.signed:  # the MIC covers what the outermost signature signed
        return
    state.signed, state.signature_digest = True, verified.digest
    state.mic = _mic(content, mic_digest)


def _mic(region: Region, digest: str) -> str:
    return base64.b64encode(region.digest(digest)).decode("ascii")


def _finish(entity: Entity, state: _Peeled, security: Security, mic_digest: str) -> Unwrapped:
    payload = entity.decoded(state.scratch)
    mic = state.mic
    if mic is None:  # RFC 4130 §7.3.1: the decrypted entity, or the bare content when neither layer was used
        mic = _mic(state.decrypted_entity if state.decrypted_entity is not None else payload, mic_digest)
    if security.require_encryption and not state.encrypted:
        raise AS2Refused(AS2_SECURITY, "Your messages must be encrypted to our encryption certificate; this one "
                         "was not.", mic)
    if security.require_signature and not state.signed:
        raise AS2Refused(AS2_SECURITY, "Your messages must be signed with your registered signing certificate; "
                         "this one was not.", mic)
    return Unwrapped(payload=payload, content_type=entity.content_type.mime_type, filename=entity.filename(),
                     mic=mic, signed=state.signed, encrypted=state.encrypted, compressed=state.compressed,
                     cipher=state.cipher, signature_digest=state.signature_digest, headers=entity.headers)
