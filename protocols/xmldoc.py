# -*- test-case-name: tests.protocols.test_xmldoc -*-
"""Invoice XML from partners: hardened parsing, document identification and enveloped XML-DSig checks.

Everything here is sans-IO: bytes (or an already parsed root) go in, values come out, and every refusal
is a :class:`DocumentRejected` carrying :class:`Finding` objects with stable ``GW-*`` codes that the
intake can put into a negative receipt as they are. Messages are written for the partner who has to fix
the document.

Security assumptions (see ``shared/research/einvoice.md`` §3 and §4):

* Untrusted bytes are parsed only by :func:`parse`: no DTD, no entities, no network, no XInclude, libxml2's
  own limits kept (``huge_tree=False``), plus our own size and depth caps. A DOCTYPE is refused from a scan
  of the prolog *before* lxml sees the bytes, so nothing is ever resolved or expanded.
* Nothing is read from a document by prefix: every lookup uses explicit namespace maps.
* A signature is trusted only through :func:`verify_signature`, which pins its location, requires a single
  enveloped reference to the whole document, whitelists algorithms and pins the certificate. Callers must
  carry on with :attr:`SignatureResult.signed_xml` (what signxml says was signed), never with the tree they
  handed in.

lxml parsers must not be shared between threads, so each thread gets its own hardened parser.
"""

import re
import threading
from base64 import b64decode
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Literal

import attrs
from cryptography import x509
from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidDigest, InvalidInput, InvalidSignature, SignXMLException
from signxml.xades import XAdESSignatureConfiguration, XAdESVerifier

from certs import x509 as certs_x509
from certs.errors import CertificateError
from partners.errors import InvalidValueError
from partners.identifiers import participant_id
from protocols.findings import Finding

__all__ = [
    "GW_DOCTYPE",
    "GW_DOC_UNKNOWN",
    "GW_SIG_ALGORITHM",
    "GW_SIG_INVALID",
    "GW_SIG_LOCATION",
    "GW_SIG_MISSING",
    "GW_SIG_UNTRUSTED",
    "GW_XML",
    "MAX_BYTES",
    "MAX_DEPTH",
    "Document",
    "DocumentRejected",
    "Finding",
    "SignatureResult",
    "identify",
    "parse",
    "require_known",
    "verify_signature",
]

# ---------------------------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------------------------

GW_XML = "GW-XML"  #: not well-formed, empty, too big, too deep, not UTF-8, XInclude
GW_DOCTYPE = "GW-DOCTYPE"  #: any DOCTYPE, DTD or entity declaration
GW_DOC_UNKNOWN = "GW-DOC-UNKNOWN"  #: well-formed, but neither UBL Invoice/CreditNote 2.x nor CII
GW_SIG_MISSING = "GW-SIG-MISSING"  #: a signature is required and there is none
GW_SIG_INVALID = "GW-SIG-INVALID"  #: digest or signature value wrong, malformed signature
GW_SIG_UNTRUSTED = "GW-SIG-UNTRUSTED"  #: a valid signature, but not by a certificate registered to the sender
GW_SIG_ALGORITHM = "GW-SIG-ALGORITHM"  #: an algorithm or transform outside the whitelist
GW_SIG_LOCATION = "GW-SIG-LOCATION"  #: signature in the wrong place, several signatures, or not over the whole document

_AMOUNT = re.compile(r"-?\d{1,18}(\.\d{1,6})?")
MAX_BYTES = 20 * 1024 * 1024  #: base64 attachments make real invoices reach megabytes
MAX_DEPTH = 64  #: UBL with a XAdES signature is about 16 deep; libxml2 itself stops at 256


class DocumentRejected(Exception):
    """The document cannot be accepted; :attr:`findings` says why, most important first."""

    def __init__(self, findings: Iterable[Finding]):
        self.findings: tuple[Finding, ...] = tuple(findings)
        if not self.findings:
            raise ValueError("DocumentRejected needs at least one finding")
        super().__init__("; ".join(f"{f.code}: {f.message}" for f in self.findings))

    @property
    def code(self) -> str:
        """The code of the first (most important) finding."""
        return self.findings[0].code

    @property
    def codes(self) -> tuple[str, ...]:
        """Every finding's code, in order."""
        return tuple(f.code for f in self.findings)


def _reject(code: str, message: str, field: str | None = None) -> DocumentRejected:
    return DocumentRejected([Finding(code, message, field)])


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------

_XINCLUDE_NS = ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude")
_XML_DECL_ENCODING = re.compile(rb"""\A<\?xml[^>]*?\sencoding\s*=\s*["']([^"']*)["']""")
_UTF8_BOM = b"\xef\xbb\xbf"
_local = threading.local()


def _parser() -> etree.XMLParser:
    """This thread's hardened parser (lxml parsers are not thread-safe)."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False,  # never substitute entities, not even internal ones
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,  # keep libxml2's limits: depth 256, 10 MB per text node, amplification
            remove_comments=False,  # signatures may cover comments; keep the document as sent
            remove_pis=False,
            collect_ids=False,
        )
    return parser


def _check_prolog(text: str) -> None:
    """Refuse any ``<!DOCTYPE``/``<!ENTITY`` before the root element, without handing it to a parser."""
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and text[pos] in " \t\r\n":
            pos += 1
        if text.startswith("<?", pos):
            close = text.find("?>", pos + 2)
            if close < 0:
                return  # let the parser report the broken processing instruction
            pos = close + 2
        elif text.startswith("<!--", pos):
            close = text.find("-->", pos + 4)
            if close < 0:
                return
            pos = close + 3
        elif text.startswith("<!", pos):
            raise _reject(
                GW_DOCTYPE,
                "The document contains a DOCTYPE or DTD declaration, which we never process. "
                "Send the invoice without any <!DOCTYPE ...> or <!ENTITY ...> declarations.",
                f"byte {len(text[:pos].encode('utf-8'))}",
            )
        else:
            return


def parse(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> etree._Element:
    """Parse untrusted invoice bytes into an lxml root, refusing anything hostile or malformed.

    The caller should have checked ``max_bytes`` at the channel already; it is checked again here. The
    document must be UTF-8 (as UBL, CII and Peppol require), have no DOCTYPE, be at most ``max_depth``
    elements deep and contain no XInclude elements (they are never processed, so they can only be an attack
    or a mistake).

    :param data: the exact bytes as received (and as spooled).
    :returns: the root element; its tree is not shared with anyone.
    :raises DocumentRejected: ``GW-XML`` or ``GW-DOCTYPE``; never any other exception for ``bytes`` input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"parse() takes bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise _reject(GW_XML, f"The document is {len(data)} bytes; the limit is {max_bytes} bytes. "
                      "Send large attachments separately or ask us to raise your limit.")
    body = data[len(_UTF8_BOM):] if data.startswith(_UTF8_BOM) else data
    if not body.strip():
        raise _reject(GW_XML, "The document is empty. Send the invoice XML itself.")
    if body.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00<", b"<\x00")):
        raise _reject(GW_XML, "The document is UTF-16; invoices must be encoded as UTF-8.")
    declared = _XML_DECL_ENCODING.match(body)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        name = declared.group(1).decode("ascii", "replace")
        raise _reject(GW_XML, f"The XML declaration says encoding={name!r}; invoices must be encoded as UTF-8 "
                      "and declare encoding=\"UTF-8\" (or no encoding).", "/")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _reject(GW_XML, f"The document is not valid UTF-8 (bad byte at offset {exc.start}). "
                      "Encode the invoice as UTF-8.", f"byte {exc.start}") from None
    _check_prolog(text)
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise _reject(GW_XML, f"The document is not well-formed XML: {exc.msg}. Send complete, well-formed XML.",
                      f"line {exc.lineno}" if exc.lineno else None) from None
    except (etree.LxmlError, ValueError, OSError) as exc:
        raise _reject(GW_XML, f"The document could not be read as XML ({exc}). Send well-formed UTF-8 XML.") from None
    if root is None:
        raise _reject(GW_XML, "The document has no root element. Send the invoice XML itself.")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _reject(GW_DOCTYPE, "The document contains a DOCTYPE or DTD declaration, which we never process. "
                      "Send the invoice without any <!DOCTYPE ...> declaration.")
    _check_tree(root, max_depth)
    return root


def _xpath(path: str) -> etree.XPath:
    """This thread's compiled XPath for ``path`` (compiled once per thread, like the parser)."""
    cache = _local.__dict__.setdefault("xpaths", {})
    if path not in cache:
        cache[path] = etree.XPath(path, namespaces=NS)
    return cache[path]


def _looks_clean(root: etree._Element, max_depth: int) -> bool:
    """The common case, decided inside libxml2: no entity reference, no XInclude, nothing too deep."""
    too_deep = _xpath("/".join(["*"] * max_depth))  # from the root: elements at depth max_depth + 1
    return (next(root.iter(etree.Entity), None) is None
            and next(root.iter(*(f"{{{ns}}}*" for ns in _XINCLUDE_NS)), None) is None
            and not too_deep(root))


def _check_tree(root: etree._Element, max_depth: int) -> None:
    """Depth cap, no entity references, no XInclude; the Python walk runs only to name what is wrong."""
    if _looks_clean(root, max_depth):
        return
    depth = 0
    for event, node in etree.iterwalk(root, events=("start", "end")):
        if event == "end":
            depth -= 1
            continue
        depth += 1
        if depth > max_depth:
            raise _reject(GW_XML, f"The document nests elements more than {max_depth} levels deep; "
                          "invoices need far fewer. Flatten the structure.")
        for child in node:  # comments, PIs and entity references are not reported as 'start' events
            if isinstance(child, etree._Entity):
                raise _reject(GW_DOCTYPE, f"The document uses the entity reference &{child.name};. "
                              "Entities are never expanded; write the characters themselves.")
        tag = node.tag
        if isinstance(tag, str) and tag.startswith("{") and tag[1:].split("}", 1)[0] in _XINCLUDE_NS:
            raise _reject(GW_XML, "The document contains an XInclude element, which we never process. "
                          "Put the content into the invoice itself.", _path(node))


# ---------------------------------------------------------------------------------------------------------------
# Identification
# ---------------------------------------------------------------------------------------------------------------

_UBL_INVOICE = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
_UBL_CREDITNOTE = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
_CII = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
_DS = "http://www.w3.org/2000/09/xmldsig#"
_XADES = ("http://uri.etsi.org/01903/v1.3.2#", "http://uri.etsi.org/01903/v1.4.1#")

NS = {
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
    "ext": "urn:oasis:names:specification:ubl:schema:xsd:CommonExtensionComponents-2",
    "sig": "urn:oasis:names:specification:ubl:schema:xsd:CommonSignatureComponents-2",
    "sac": "urn:oasis:names:specification:ubl:schema:xsd:SignatureAggregateComponents-2",
    "rsm": _CII,
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
    "ds": _DS,
}

Kind = Literal["ubl-invoice", "ubl-creditnote", "cii-invoice", "unknown"]

_KINDS: dict[str, Kind] = {
    f"{{{_UBL_INVOICE}}}Invoice": "ubl-invoice",
    f"{{{_UBL_CREDITNOTE}}}CreditNote": "ubl-creditnote",
    f"{{{_CII}}}CrossIndustryInvoice": "cii-invoice",
}


@attrs.frozen
class Document:
    """What the gateway needs to know about an invoice to route, deduplicate and show it.

    Fields the document does not carry are ``None``. Participant IDs are ``scheme:value``, stripped and
    lowercased exactly like :func:`partners.identifiers.participant_id`, so they can be looked up in the
    partner directory directly; an endpoint without a ``schemeID`` (or with an unusable value) gives ``None``.

    :ivar kind: ``ubl-invoice``, ``ubl-creditnote``, ``cii-invoice`` or ``unknown``.
    :ivar root_tag: the root element in Clark notation, for messages about unknown documents.
    :ivar issue_date: ISO 8601 (``YYYY-MM-DD``), ``None`` when missing or not a real date.
    """

    kind: Kind
    root_tag: str
    customization_id: str | None = None
    profile_id: str | None = None
    number: str | None = None
    issue_date: str | None = None
    type_code: str | None = None
    currency: str | None = None
    supplier_name: str | None = None
    customer_name: str | None = None
    supplier_id: str | None = None
    customer_id: str | None = None
    #: the amount due (BT-115) as written, when it is a plain decimal number
    amount: str | None = None

    @property
    def known(self) -> bool:
        """True for UBL Invoice/CreditNote 2.x and CII CrossIndustryInvoice."""
        return self.kind != "unknown"


def _text(root: etree._Element, path: str) -> str | None:
    """The stripped text of the first match of a namespace-qualified XPath, or ``None`` when empty."""
    found = _xpath(path)(root)
    if not found:
        return None
    node = found[0]
    value = node if isinstance(node, str) else node.text
    value = (value or "").strip()
    return value or None


def _participant(root: etree._Element, path: str) -> str | None:
    found = _xpath(path)(root)
    if not found:
        return None
    scheme, value = (found[0].get("schemeID") or "").strip(), (found[0].text or "").strip()
    if not scheme or not value:
        return None
    try:
        return participant_id(f"{scheme}:{value}")
    except InvalidValueError:
        return None


def _decimal(value: str | None) -> str | None:
    """A plain decimal amount (``1234.50``, ``-10``), or ``None``."""
    return value if value is not None and _AMOUNT.fullmatch(value) else None


def _iso_date(value: str | None, fmt: str = "%Y-%m-%d") -> str | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, fmt).date().isoformat()
    except ValueError:
        return None


def identify(root: etree._Element) -> Document:
    """Say what ``root`` is and read its routing and business keys.

    Never raises for a parsed document: anything that is not UBL Invoice/CreditNote 2.x or CII
    CrossIndustryInvoice comes back as ``kind="unknown"`` so that the caller's policy decides whether
    opaque documents are allowed (:func:`require_known` turns that into ``GW-DOC-UNKNOWN``). Call it on
    :attr:`SignatureResult.signed_xml` when the document is signed.
    """
    tag = root.tag if isinstance(root.tag, str) else ""
    kind = _KINDS.get(tag, "unknown")
    if kind in ("ubl-invoice", "ubl-creditnote"):
        version = _text(root, "cbc:UBLVersionID")
        if version is not None and not version.startswith("2."):
            kind = "unknown"
    if kind == "unknown":
        return Document(kind="unknown", root_tag=tag)
    if kind == "cii-invoice":
        agreement = "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeAgreement"
        raw_date = _text(root, "rsm:ExchangedDocument/ram:IssueDateTime/udt:DateTimeString")
        fmt = root.xpath("string(rsm:ExchangedDocument/ram:IssueDateTime/udt:DateTimeString/@format)", namespaces=NS)
        return Document(
            kind=kind,
            root_tag=tag,
            customization_id=_text(
                root, "rsm:ExchangedDocumentContext/ram:GuidelineSpecifiedDocumentContextParameter/ram:ID"),
            profile_id=_text(
                root, "rsm:ExchangedDocumentContext/ram:BusinessProcessSpecifiedDocumentContextParameter/ram:ID"),
            number=_text(root, "rsm:ExchangedDocument/ram:ID"),
            issue_date=_iso_date(raw_date, "%Y%m%d") if fmt in ("", "102") else None,
            type_code=_text(root, "rsm:ExchangedDocument/ram:TypeCode"),
            currency=_text(
                root, "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement/ram:InvoiceCurrencyCode"),
            supplier_name=_text(root, f"{agreement}/ram:SellerTradeParty/ram:Name"),
            customer_name=_text(root, f"{agreement}/ram:BuyerTradeParty/ram:Name"),
            supplier_id=_participant(root, f"{agreement}/ram:SellerTradeParty/ram:URIUniversalCommunication/ram:URIID"),
            customer_id=_participant(root, f"{agreement}/ram:BuyerTradeParty/ram:URIUniversalCommunication/ram:URIID"),
            amount=_decimal(_text(root, "rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement/"
                                        "ram:SpecifiedTradeSettlementHeaderMonetarySummation/ram:DuePayableAmount")),
        )
    supplier, customer = "cac:AccountingSupplierParty/cac:Party", "cac:AccountingCustomerParty/cac:Party"

    def name(party: str) -> str | None:
        return _text(root, f"{party}/cac:PartyName/cbc:Name") or _text(
            root, f"{party}/cac:PartyLegalEntity/cbc:RegistrationName")

    return Document(
        kind=kind,
        root_tag=tag,
        customization_id=_text(root, "cbc:CustomizationID"),
        profile_id=_text(root, "cbc:ProfileID"),
        number=_text(root, "cbc:ID"),
        issue_date=_iso_date(_text(root, "cbc:IssueDate")),
        type_code=_text(root, "cbc:InvoiceTypeCode" if kind == "ubl-invoice" else "cbc:CreditNoteTypeCode"),
        currency=_text(root, "cbc:DocumentCurrencyCode"),
        supplier_name=name(supplier),
        customer_name=name(customer),
        supplier_id=_participant(root, f"{supplier}/cbc:EndpointID"),
        customer_id=_participant(root, f"{customer}/cbc:EndpointID"),
        amount=_decimal(_text(root, "cac:LegalMonetaryTotal/cbc:PayableAmount")),
    )


def require_known(document: Document) -> Document:
    """Return ``document`` if it is a UBL or CII invoice, for channels whose policy forbids opaque documents.

    :raises DocumentRejected: ``GW-DOC-UNKNOWN``.
    """
    if not document.known:
        raise _reject(GW_DOC_UNKNOWN, f"The root element {document.root_tag or '(none)'} is not a UBL 2.x Invoice "
                      "or CreditNote nor a CII CrossIndustryInvoice. Send one of those (check the root element's "
                      "namespace).", "/")
    return document


# ---------------------------------------------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------------------------------------------

_UBL_SIG_PATH = ("ext:UBLExtensions", "ext:UBLExtension", "ext:ExtensionContent", "sig:UBLDocumentSignatures",
                 "sac:SignatureInformation")
_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
_XADES_SIGNED_PROPERTIES = "http://uri.etsi.org/01903#SignedProperties"

_C14N = frozenset(m.value for m in CanonicalizationMethod if not m.value.endswith("#WithComments"))
_SIG_STRONG = frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA384, SignatureMethod.RSA_SHA512,
                         SignatureMethod.ECDSA_SHA256, SignatureMethod.ECDSA_SHA384, SignatureMethod.ECDSA_SHA512})
_SIG_SHA1 = frozenset({SignatureMethod.RSA_SHA1, SignatureMethod.ECDSA_SHA1})
_DIGEST_STRONG = frozenset({DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512})
_DIGEST_SHA1 = frozenset({DigestAlgorithm.SHA1})


def _q(prefixed: str) -> str:
    prefix, local = prefixed.split(":")
    return f"{{{NS[prefix]}}}{local}"


def _path(node: etree._Element) -> str:
    """A readable location (``/Invoice/UBLExtensions/...``) for messages; local names only."""
    return "/" + "/".join(
        etree.QName(n).localname for n in reversed([node, *node.iterancestors()]) if isinstance(n.tag, str))


@attrs.frozen
class SignatureResult:
    """The outcome of :func:`verify_signature` when the document may be accepted.

    :ivar status: ``valid`` or ``unsigned`` (only possible with ``require=False``).
    :ivar signed_xml: for ``valid``, the signed document exactly as signxml verified it (the enveloped
        signature removed, canonicalised). Continue with this tree, never with the input.
    :ivar certificate: the certificate whose key verified the signature (a registered one, or one issued by a
        registered CA).
    :ivar signature_method: the SignatureMethod algorithm URI.
    :ivar xades: True when the signature carries XAdES qualifying properties (verified with XAdESVerifier).
    """

    status: Literal["valid", "unsigned"]
    signed_xml: etree._Element | None = None
    certificate: x509.Certificate | None = attrs.field(default=None, eq=False)
    signature_method: str | None = None
    xades: bool = False

    @property
    def signed(self) -> bool:
        """True when a signature was present and verified."""
        return self.status == "valid"


def _allowed_locations(root: etree._Element) -> tuple[tuple[str, ...], str]:
    """The parent path a signature may sit under, as Clark tags, and its signxml ``location``."""
    kind = _KINDS.get(root.tag if isinstance(root.tag, str) else "", "unknown")
    if kind in ("ubl-invoice", "ubl-creditnote"):
        tags = tuple(_q(p) for p in _UBL_SIG_PATH)
        return tags, "./" + "".join(f"{t}/" for t in tags)
    return (), "./"


def _is_template(signature: etree._Element) -> bool:
    value = signature.find("ds:SignatureValue", NS)
    return value is None or not (value.text or "").strip()


def _algorithm_findings(signature: etree._Element, allow_sha1: bool) -> list[Finding]:
    sig_methods = _SIG_STRONG | (_SIG_SHA1 if allow_sha1 else frozenset())
    digests = _DIGEST_STRONG | (_DIGEST_SHA1 if allow_sha1 else frozenset())
    sig_uris, digest_uris = {m.value for m in sig_methods}, {d.value for d in digests}
    sha1_note = "" if allow_sha1 else " SHA-1 is refused unless agreed with us for your account."
    findings = []

    def refuse(what: str, uri: str | None, allowed: Iterable[str], node: etree._Element) -> None:
        findings.append(Finding(GW_SIG_ALGORITHM, f"The {what} {uri!r} is not accepted. Use one of: "
                                f"{', '.join(sorted(allowed))}.{sha1_note}", _path(node)))

    for node in signature.iterfind("ds:SignedInfo/ds:CanonicalizationMethod", NS):
        if node.get("Algorithm") not in _C14N:
            refuse("canonicalization method", node.get("Algorithm"), _C14N, node)
    for node in signature.iterfind("ds:SignedInfo/ds:SignatureMethod", NS):
        if node.get("Algorithm") not in sig_uris:
            refuse("signature method", node.get("Algorithm"), sig_uris, node)
    for node in signature.iterfind("ds:SignedInfo/ds:Reference/ds:DigestMethod", NS):
        if node.get("Algorithm") not in digest_uris:
            refuse("digest method", node.get("Algorithm"), digest_uris, node)
    for node in signature.iterfind("ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform", NS):
        if node.get("Algorithm") not in _C14N | {_ENVELOPED}:
            refuse("transform", node.get("Algorithm"), _C14N | {_ENVELOPED}, node)
    return findings


def _reference_findings(root: etree._Element, signature: etree._Element, xades: bool) -> tuple[list[Finding], int]:
    """Check what the signature covers; return findings and the index of the whole-document reference."""
    refs = signature.findall("ds:SignedInfo/ds:Reference", NS)
    whole = [i for i, ref in enumerate(refs) if ref.get("URI") == ""]
    where = _path(signature)
    if len(whole) != 1:
        return [Finding(GW_SIG_LOCATION, "The signature must have exactly one Reference with URI=\"\" (the whole "
                        f"document, enveloped); it has {len(whole)}. Sign the whole invoice.", where)], -1
    transforms = [t.get("Algorithm") for t in refs[whole[0]].iterfind("ds:Transforms/ds:Transform", NS)]
    if _ENVELOPED not in transforms:
        return [Finding(GW_SIG_LOCATION, "The whole-document Reference lacks the enveloped-signature transform. "
                        "Sign as an enveloped signature.", where)], -1
    others = [ref for i, ref in enumerate(refs) if i != whole[0]]
    if others and not xades:
        return [Finding(GW_SIG_LOCATION, f"The signature has {len(refs)} References; a plain XML-DSig invoice "
                        "signature must have exactly one, to the whole document (URI=\"\").", where)], -1
    for ref in others:
        uri = ref.get("URI") or ""
        targets = root.xpath("//*[@*[local-name()='Id' or local-name()='ID']=$id]", id=uri[1:]) if (
            uri.startswith("#") and not uri.startswith("#xpointer(")) else []
        inside = len(targets) == 1 and any(a is signature for a in targets[0].iterancestors())
        if not inside:
            return [Finding(GW_SIG_LOCATION, f"The signature's Reference URI={uri!r} must point to exactly one element "
                            "inside the signature itself (XAdES SignedProperties or KeyInfo).", where)], -1
    return [], whole[0]


def _embedded_certificates(signature: etree._Element) -> list[x509.Certificate]:
    found = []
    for node in signature.iterfind("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS):
        try:
            found.append(x509.load_der_x509_certificate(b64decode("".join((node.text or "").split()))))
        except ValueError:
            continue
    return found


def _describe(cert: x509.Certificate) -> str:
    return f"subject {cert.subject.rfc4514_string()!r}, SHA-256 fingerprint {certs_x509.fingerprint(cert)}"


def _within(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def verify_signature(
    data_or_root: bytes | etree._Element,
    certificates: Sequence[x509.Certificate],
    *,
    cas: Sequence[x509.Certificate] = (),
    require: bool,
    allow_sha1: bool = False,
    now: datetime | None = None,
) -> SignatureResult:
    """Verify the document's enveloped XML-DSig (or XAdES-BES) signature against the sender's certificates.

    Pass the exact received bytes when you can (they are parsed with :func:`parse`); a root from
    :func:`parse` works too, but nothing may have rewritten it. Rules, all fail-closed:

    * at most one ``ds:Signature`` in the whole document; for UBL it must sit at
      ``ext:UBLExtensions/ext:UBLExtension/ext:ExtensionContent/sig:UBLDocumentSignatures/sac:SignatureInformation``
      (UBL 2.1 §5, and every signed sample), for CII and other documents directly under the root;
    * exactly one Reference with ``URI=""`` and the enveloped-signature transform; XAdES may add References
      only to elements inside the signature (SignedProperties, KeyInfo);
    * algorithms: RSA/ECDSA with SHA-256/384/512 (SHA-1 only with ``allow_sha1``), C14N 1.0/1.1/exclusive
      without comments, no other transforms (signxml silently skips e.g. XPath filters, so they are refused);
    * the key is pinned with signxml's ``x509_cert=``: each of ``certificates`` is tried, plus any certificate
      in KeyInfo directly issued by one of ``cas``; certificates outside their validity at ``now`` are not used.

    An empty ``ds:Signature`` template (no SignatureValue) counts as no signature.

    :param certificates: the sender's registered signing certificates
        (``partner.certificates.get("sign", ())``).
    :param cas: the sender's registered signing CA certificates (``partner.cas.get("sign", ())``).
    :param require: whether the sender's policy demands a signature.
    :param data_or_root: the received bytes, or a root returned by :func:`parse` (never one from another parser).
    :param now: the time for certificate validity (default: the current time).
    :raises DocumentRejected: ``GW-XML``/``GW-DOCTYPE`` (from parsing), ``GW-SIG-MISSING``, ``GW-SIG-LOCATION``,
        ``GW-SIG-ALGORITHM``, ``GW-SIG-INVALID``, ``GW-SIG-UNTRUSTED``.
    """
    now = now or datetime.now(UTC)
    root = parse(data_or_root) if isinstance(data_or_root, bytes | bytearray | memoryview) else data_or_root
    root = root.getroottree().getroot()
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise _reject(GW_DOCTYPE, "The document contains a DOCTYPE or DTD declaration, which we never process. "
                      "Send the invoice without any <!DOCTYPE ...> declaration.")
    if root.tag == f"{{{_DS}}}Signature":
        raise _reject(GW_SIG_LOCATION, "The document is an enveloping ds:Signature; send the invoice itself with an "
                      "enveloped signature inside it.", "/Signature")
    signatures = [s for s in root.iter(f"{{{_DS}}}Signature") if not _is_template(s)]
    if not signatures:
        if require:
            raise _reject(GW_SIG_MISSING, "Your documents must carry an enveloped XML signature and this one has none "
                          "(or only an unfilled template). Sign the invoice with your registered signing certificate.")
        return SignatureResult(status="unsigned")
    if len(signatures) > 1:
        raise DocumentRejected([Finding(GW_SIG_LOCATION, f"The document has {len(signatures)} signatures; exactly one "
                                        "enveloped signature is accepted.", _path(s)) for s in signatures])
    signature = signatures[0]
    parents, location = _allowed_locations(root)
    chain = [a.tag for a in signature.iterancestors()][::-1]  # root first
    if chain[1:] != list(parents):
        expected = "/".join(etree.QName(t).localname for t in (root.tag, *parents, f"{{{_DS}}}Signature"))
        raise _reject(GW_SIG_LOCATION, f"The signature is at {_path(signature)}; it must be at /{expected}. "
                      "Place the enveloped signature there.", _path(signature))
    xades = any(signature.find(f"ds:Object/{{{ns}}}QualifyingProperties", NS) is not None for ns in _XADES)
    findings = _algorithm_findings(signature, allow_sha1)
    if findings:
        raise DocumentRejected(findings)
    findings, whole = _reference_findings(root, signature, xades)
    if findings:
        raise DocumentRejected(findings)

    references = len(signature.findall("ds:SignedInfo/ds:Reference", NS))
    config_class = XAdESSignatureConfiguration if xades else SignatureConfiguration
    config = config_class(
        location=location,
        expect_references=references,
        signature_methods=_SIG_STRONG | (_SIG_SHA1 if allow_sha1 else frozenset()),
        digest_algorithms=_DIGEST_STRONG | (_DIGEST_SHA1 if allow_sha1 else frozenset()),
        verification_time=now,
    )

    embedded = _embedded_certificates(signature)
    candidates: dict[str, x509.Certificate] = {}
    for cert in certificates:
        if _within(cert, now):
            candidates.setdefault(certs_x509.fingerprint(cert), cert)
    for cert in embedded:
        try:
            certs_x509.check_issued_by(cert, cas, now)
        except CertificateError:
            continue
        candidates.setdefault(certs_x509.fingerprint(cert), cert)

    outcomes: list[tuple[x509.Certificate, Exception]] = []
    for cert in candidates.values():
        try:
            result = _run_verifier(root, cert, config, xades, whole)
        except (SignXMLException, etree.LxmlError, ValueError) as exc:
            outcomes.append((cert, exc))
            continue
        return SignatureResult(status="valid", signed_xml=result, certificate=cert,
                               signature_method=signature.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm"),
                               xades=xades)
    raise DocumentRejected(_diagnose(root, signature, config, xades, whole, outcomes, embedded,
                                     certificates, now))


def _run_verifier(root: etree._Element, cert: x509.Certificate, config: SignatureConfiguration, xades: bool,
                  whole: int) -> etree._Element:
    """One signxml verification pinned to ``cert``; returns the signed whole document."""
    if xades:
        results = XAdESVerifier().verify(root, x509_cert=cert, parser=_parser(), expect_config=config)
    else:
        results = XMLVerifier().verify(root, x509_cert=cert, parser=_parser(), expect_config=config)
    result = results[whole] if isinstance(results, list) else results
    signed = result.signed_xml
    if signed is None or signed.tag != root.tag:
        raise InvalidInput("the verified reference is not the whole document")
    return signed


def _diagnose(root, signature, config, xades, whole, outcomes, embedded, certificates, now) -> list[Finding]:
    """Turn failed verifications into findings a partner can act on."""
    where = _path(signature)
    for cert, exc in outcomes:
        if isinstance(exc, InvalidDigest):
            return [Finding(GW_SIG_INVALID, "The signature was made with your registered certificate "
                            f"({_describe(cert)}) but the document was changed after signing ({exc}). "
                            "Sign the final document and send it byte for byte unchanged.", where)]
    for _cert, exc in outcomes:
        if isinstance(exc, InvalidInput | etree.LxmlError | ValueError) and not isinstance(exc, InvalidSignature):
            return [Finding(GW_SIG_INVALID, f"The signature is malformed: {exc}. Produce a standard enveloped "
                            "XML-DSig signature.", where)]
    # No registered key verifies the SignatureValue: find out whose key it is from KeyInfo, for the message only.
    registered = {certs_x509.fingerprint(c): c for c in certificates}
    for cert in embedded:
        fp = certs_x509.fingerprint(cert)
        if fp in registered and not _within(cert, now):
            return [Finding(GW_SIG_UNTRUSTED, f"The signing certificate ({_describe(cert)}) is registered to you but "
                            f"is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                            f"{cert.not_valid_after_utc:%Y-%m-%d}). Register a current certificate and sign with it.",
                            where)]
        if fp in registered:
            continue
        # Diagnosis only: check the signature at a time the embedded certificate was valid.
        probe = replace(config, verification_time=min(max(now, cert.not_valid_before_utc), cert.not_valid_after_utc))
        try:
            _run_verifier(root, cert, probe, xades, whole)
        except InvalidDigest:
            return [Finding(GW_SIG_INVALID, "The document was changed after it was signed (digest mismatch). Sign "
                            "the final document and send it unchanged.", where),
                    Finding(GW_SIG_UNTRUSTED, f"It was also signed with a certificate not registered to you "
                            f"({_describe(cert)}). Sign with your registered certificate or register this one.",
                            where)]
        except (SignXMLException, etree.LxmlError, ValueError):
            continue
        return [Finding(GW_SIG_UNTRUSTED, f"The signature is valid but was made with a certificate not registered to "
                        f"you ({_describe(cert)}). Sign with your registered signing certificate, or register this "
                        "certificate with us first.", where)]
    if not outcomes:
        return [Finding(GW_SIG_UNTRUSTED, "No valid signing certificate is registered for you, so the signature cannot "
                        "be checked. Register your signing certificate (or its issuing CA) with us.", where)]
    return [Finding(GW_SIG_INVALID, "The signature does not verify with any signing certificate registered to you: "
                    "either the signed content was changed after signing or an unregistered key was used. Sign the "
                    "final document with your registered certificate.", where)]

