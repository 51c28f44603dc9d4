"""Tests for :mod:`protocols.xmldoc`: hostile XML, identification of real invoices, and signature checks.

Every fixture comes from ``tests/fixtures/invoices`` (see the README there for sources and licences); signed
documents for wrapping and algorithm tests are made here with signxml and throwaway keys.
"""

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from signxml import SignatureConfiguration, XMLSigner, XMLVerifier
from signxml.algorithms import CanonicalizationMethod

from protocols import xmldoc
from protocols.xmldoc import DocumentRejected, identify, parse, require_known, verify_signature

FIXTURES = Path(__file__).parent.parent / "fixtures" / "invoices"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = xmldoc.NS


def read(name: str) -> bytes:
    """The bytes of one fixture file."""
    return (FIXTURES / name).read_bytes()


def load_cert(name: str) -> x509.Certificate:
    """A PEM certificate from the signed fixtures."""
    return x509.load_pem_x509_certificate(read(f"signed/{name}"))


TEST_CERT = load_cert("test-signing-cert.pem")
UNRELATED_CERT = load_cert("unrelated-cert.pem")


def rejected(data: bytes, **kwargs) -> DocumentRejected:
    """Parse ``data`` and return the rejection it must raise."""
    with pytest.raises(DocumentRejected) as info:
        parse(data, **kwargs)
    return info.value


# ---------------------------------------------------------------------------------------------------------------
# parse(): hostile and malformed input
# ---------------------------------------------------------------------------------------------------------------

ATTACKS = {
    "xxe-external-entity.xml": xmldoc.GW_DOCTYPE,
    "xxe-parameter-entity-network.xml": xmldoc.GW_DOCTYPE,
    "external-dtd.xml": xmldoc.GW_DOCTYPE,
    "billion-laughs.xml": xmldoc.GW_DOCTYPE,
    "quadratic-blowup.xml": xmldoc.GW_DOCTYPE,
    "deep-nesting-5000.xml": xmldoc.GW_XML,
    "xinclude.xml": xmldoc.GW_XML,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_fixtures_rejected(name):
    """Each hostile fixture is refused with its documented code."""
    assert rejected(read(f"attacks/{name}")).codes == (ATTACKS[name],)


@pytest.mark.parametrize("name", sorted(n for n, code in ATTACKS.items() if code == xmldoc.GW_DOCTYPE))
def test_doctype_refused_before_lxml_sees_it(name, monkeypatch):
    """DOCTYPE documents never reach the XML parser, so no entity or DTD can be resolved or fetched."""

    def never(*args, **kwargs):
        raise AssertionError("the parser was called on a DOCTYPE document")

    monkeypatch.setattr(xmldoc.etree, "fromstring", never)
    assert rejected(read(f"attacks/{name}")).code == xmldoc.GW_DOCTYPE


def test_doctype_after_comment_and_pi_refused():
    """A DOCTYPE hidden behind a BOM, the XML declaration, comments and PIs is still found."""
    data = b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- x --><?pi y?>\n<!DOCTYPE r [<!ENTITY e "z">]><r>&e;</r>'
    assert rejected(data).code == xmldoc.GW_DOCTYPE


def test_xinclude_is_not_processed_even_with_a_bigger_budget():
    """XInclude elements are refused, not expanded, whatever the limits."""
    error = rejected(read("attacks/xinclude.xml"), max_depth=1000)
    assert "XInclude" in error.findings[0].message


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"  \n\t ", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        ("<r>\u00e9</r>".encode("utf-16"), "UTF-16"),
        (b'<?xml version="1.0" encoding="ISO-8859-1"?><r>\xe9</r>', "ISO-8859-1"),
        (b"<r>\xff\xfe</r>", "not valid UTF-8"),
        (b"<r><a></r>", "not well-formed"),
        (b"just text", "not well-formed"),
    ],
)
def test_malformed_input_is_gw_xml(data, words):
    """Empty, non-UTF-8 and broken documents give GW-XML with a message naming the problem."""
    error = rejected(data)
    assert error.codes == (xmldoc.GW_XML,)
    assert words in error.findings[0].message


def test_size_limit():
    """Documents over ``max_bytes`` are refused before parsing; at the limit they pass."""
    data = b"<r>" + b"x" * 93 + b"</r>"
    assert len(data) == 100
    assert parse(data, max_bytes=100).tag == "r"
    assert "limit is 99 bytes" in rejected(data, max_bytes=99).findings[0].message


def test_depth_limit():
    """Our own depth cap applies well below libxml2's 256 and counts the root as level 1."""
    nested = lambda n: b"<a>" * n + b"</a>" * n  # noqa: E731
    assert parse(nested(10), max_depth=10) is not None
    error = rejected(nested(11), max_depth=10)
    assert error.code == xmldoc.GW_XML and "10 levels" in error.findings[0].message


def test_default_depth_allows_real_invoices():
    """The default depth cap accepts the deepest sample, a XAdES-signed UBL invoice."""
    assert parse(read("signed/signed-xades-bes-signxml-c14n11.xml")) is not None


def test_comments_and_pis_are_kept():
    """Parsing does not drop comments or processing instructions, which signatures may cover."""
    root = parse(b"<r><!-- keep --><?pi keep?></r>")
    assert [type(n).__name__ for n in root] == ["_Comment", "_ProcessingInstruction"]


def test_not_well_formed_sample():
    """The truncated negative sample is GW-XML and says where."""
    error = rejected(read("negative/not-well-formed.xml"))
    assert error.code == xmldoc.GW_XML and error.findings[0].field.startswith("line ")


def test_non_bytes_is_a_programming_error():
    """Passing text instead of bytes is a caller bug, not a partner's mistake."""
    with pytest.raises(TypeError):
        parse("<r/>")  # type: ignore[arg-type]


@given(st.binary(max_size=512))
def test_parse_arbitrary_bytes_never_crashes(data):
    """Arbitrary bytes either parse or raise DocumentRejected, never anything else."""
    try:
        parse(data, max_depth=32)
    except DocumentRejected:
        pass


BASE = read("peppol-bis3/base-example.xml")


@given(
    st.lists(
        st.tuples(st.integers(0, len(BASE) - 1), st.sampled_from(["replace", "insert", "delete"]),
                  st.binary(min_size=1, max_size=8)),
        min_size=1, max_size=6,
    )
)
def test_parse_mutated_invoice_never_crashes(edits):
    """Randomly damaged real invoices parse or raise DocumentRejected, never anything else."""
    data = bytearray(BASE)
    for pos, op, chunk in edits:
        pos = min(pos, len(data))
        if op == "replace":
            data[pos:pos + len(chunk)] = chunk
        elif op == "insert":
            data[pos:pos] = chunk
        else:
            del data[pos:pos + len(chunk)]
    try:
        identify(parse(bytes(data)))
    except DocumentRejected:
        pass


# ---------------------------------------------------------------------------------------------------------------
# identify()
# ---------------------------------------------------------------------------------------------------------------

BIS3 = "urn:cen.eu:en16931:2017#compliant#urn:fdc:peppol.eu:2017:poacc:billing:3.0"
BIS3_PROFILE = "urn:fdc:peppol.eu:2017:poacc:billing:01:1.0"
BASE_FIELDS = dict(
    kind="ubl-invoice", customization_id=BIS3, profile_id=BIS3_PROFILE, number="Snippet1", issue_date="2017-11-13",
    type_code="380", currency="EUR", supplier_name="SupplierTradingName Ltd.", customer_name="BuyerTradingName AS",
    supplier_id="0088:9482348239847239874", customer_id="0002:fr23342",
)
BIS3_DK = dict(
    kind="ubl-invoice", customization_id=BIS3, profile_id=BIS3_PROFILE, number="12345", issue_date="2019-01-25",
    type_code="380", currency="DKK", supplier_name="Company A", customer_name="Company B",
    supplier_id="0184:dk12345678", customer_id="0184:dk87654321",
)
EXPECTED = {
    "peppol-bis3/base-example.xml": BASE_FIELDS,
    "peppol-bis3/base-creditnote-correction.xml": dict(BASE_FIELDS, kind="ubl-creditnote", type_code="381"),
    "peppol-bis3/base-negative-inv-correction.xml": dict(BASE_FIELDS, number="Correction1"),
    "peppol-bis3/Allowance-example.xml": dict(
        BASE_FIELDS, supplier_id="0088:7300010000001", customer_id="0002:4598375937"),
    "peppol-bis3/vat-category-E.xml": dict(
        BASE_FIELDS, number="Vat-Z", issue_date="2018-08-30", currency="GBP",
        supplier_name="The Sellercompany Incorporated", customer_name="The Buyercompany",
        supplier_id="0088:7300010000001", customer_id="0184:12345678"),
    "en16931/ubl/ubl-tc434-example1.xml": dict(
        kind="ubl-invoice", customization_id="urn:cen.eu:en16931:2017", profile_id=None, number="12115118",
        issue_date="2015-01-09", type_code="380", currency="EUR", supplier_name="De Koksmaat",
        customer_name="ODIN 59", supplier_id=None, customer_id=None),
    "en16931/ubl/ubl-tc434-creditnote1.xml": dict(
        kind="ubl-creditnote", customization_id="urn:cen.eu:en16931:2017", profile_id=BIS3_PROFILE,
        number="018304 / 28865", issue_date="2019-09-23", type_code="381", currency="EUR",
        supplier_name="My Supplier Company N.V.", customer_name="My Customer Company S.A.",
        supplier_id="0201:0000000196", customer_id="0201:0000000295"),
    "en16931/ubl/BIS3_Invoice_positive.XML": BIS3_DK,
    "en16931/ubl/BIS3_Invoice_negativ.XML": BIS3_DK,
    "en16931/ubl/Invoice-Min_content_with_VAT.xml": dict(
        kind="ubl-invoice", customization_id=BIS3, profile_id=BIS3_PROFILE, number="2018-112",
        issue_date="2018-07-31", type_code="380", currency="SEK", supplier_name="Säljbolaget AB",
        customer_name="Centrala Inköps Handelsbolag", supplier_id="0007:1234512345", customer_id="0007:9876543210"),
    "en16931/ubl/Invoice-Max_content.xml": dict(
        kind="ubl-invoice", customization_id=BIS3, profile_id=BIS3_PROFILE, number="2018210",
        issue_date="2018-02-08", type_code="380", currency="SEK", supplier_name="Global Trade Chain",
        customer_name="Project Services", supplier_id="0007:1234567890", customer_id="0007:1234512345"),
    "en16931/cii/CII_example1.xml": dict(
        kind="cii-invoice", customization_id="urn:cen.eu:en16931:2017", profile_id=None, number="12115118",
        issue_date="2015-01-09", type_code="380", currency="EUR", supplier_name="De Koksmaat",
        customer_name="ODIN 59", supplier_id=None, customer_id=None),
    "en16931/cii/CII_example3.xml": dict(
        kind="cii-invoice", customization_id="urn:cen.eu:en16931:2017", profile_id=None, number="TOSL108",
        issue_date="2013-04-10", type_code="380", currency="DKK", supplier_name="SubscriptionSeller",
        customer_name="Buyercompany ltd", supplier_id=None, customer_id=None),
    "en16931/cii/XRechnung-O.xml": dict(
        kind="cii-invoice", customization_id="urn:cen.eu:en16931:2017", profile_id=None, number="150377292",
        issue_date="2021-01-14", type_code="380", currency="EUR", supplier_name="XX", customer_name="XX",
        supplier_id="em:xx", customer_id=None),
    "en16931/cii/CII-BR-CO-10-RoundingIssue.xml": dict(
        kind="cii-invoice", customization_id="urn:ferd:CrossIndustryDocument:invoice:1p0:comfort",
        profile_id=None, number="0", issue_date="2021-03-26", type_code="380", currency="EUR",
        supplier_name="Seller GmbH", customer_name="BuyerName", supplier_id=None, customer_id=None),
    "oasis-ubl21/UBL-Invoice-2.1-Example.xml": dict(
        kind="ubl-invoice", customization_id=None, profile_id=None, number="TOSL108", issue_date="2009-12-15",
        type_code="380", currency="EUR", supplier_name="Salescompany ltd.", customer_name="Buyercompany ltd",
        supplier_id="gln:1234567890123", customer_id="gln:1234567987654"),
    "oasis-ubl21/UBL-CreditNote-2.1-Example.xml": dict(
        kind="ubl-creditnote", customization_id=None, profile_id=None, number="TOSL108", issue_date="2009-12-15",
        type_code=None, currency="EUR", supplier_name="Salescompany ltd.", customer_name="Buyercompany ltd",
        supplier_id="gln:1234567890123", customer_id="gln:1234567987654"),
    "oasis-ubl21/UBL-Invoice-2.0-Enveloped.xml": dict(
        kind="ubl-invoice", customization_id="urn:oasis:names:specification:ubl:xpath:Invoice-2.0:sbs-1.0-draft",
        profile_id="bpid:urn:oasis:names:draft:bpss:ubl-2-sbs-invoice-notification-draft", number="A00095678",
        issue_date="2005-06-21", type_code="SalesInvoice", currency=None, supplier_name="Consortial",
        customer_name="IYT Corporation", supplier_id=None, customer_id=None),
    "negative/bad-total-and-no-customizationid.xml": dict(BIS3_DK, customization_id=None),
    "negative/xsd-unknown-element.xml": BASE_FIELDS,
    "negative/peppol-no-buyer-endpoint.xml": dict(BASE_FIELDS, customer_id=None),
    "negative/peppol-bad-gln-endpoint.xml": dict(BASE_FIELDS, supplier_id="0088:5790000435969"),
    "signed/signed-xmldsig-signxml-exc-c14n.xml": BASE_FIELDS,
    "signed/signed-xmldsig-xmlsec1.xml": BASE_FIELDS,
    "signed/signed-xades-bes-signxml-c14n11.xml": BASE_FIELDS,
    "signed/signed-xmldsig-TAMPERED.xml": BASE_FIELDS,
    "signed/unsigned-with-placeholder.xml": BASE_FIELDS,
    "signed/xmlsec1-template.xml": BASE_FIELDS,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_identify_real_samples(name):
    """Every real sample is identified with the kind, keys and participant IDs read from the file."""
    document = identify(parse(read(name)))
    assert attrsdict(document) == EXPECTED[name]
    assert require_known(document) is document


def attrsdict(document: xmldoc.Document) -> dict:
    """The document's fields without the root tag."""
    fields = {a.name: getattr(document, a.name) for a in xmldoc.Document.__attrs_attrs__}
    del fields["root_tag"], fields["amount"]  # amounts: test_the_amount_due_is_read_as_written
    return fields


@pytest.mark.parametrize(("name", "amount"), [
    ("peppol-bis3/base-example.xml", "1656.25"),  # cac:LegalMonetaryTotal/cbc:PayableAmount
    ("en16931/cii/CII_example1.xml", "250.33"),  # ram:DuePayableAmount
    ("en16931/cii/CII_example3.xml", "1125"),
    ("oasis-ubl21/UBL-CreditNote-2.1-Example.xml", "729"),
])
def test_the_amount_due_is_read_as_written(name, amount):
    """BT-115 as the document writes it; an amount that is not a plain decimal is not shown at all."""
    assert identify(parse(read(name))).amount == amount


def test_an_amount_that_is_not_a_plain_decimal_is_dropped():
    data = read("peppol-bis3/base-example.xml").replace(b">1656.25</cbc:PayableAmount>",
                                                        b">1,656.25 EUR</cbc:PayableAmount>")
    assert identify(parse(data)).amount is None


def test_every_fixture_is_covered():
    """Each XML fixture outside attacks/ has an expected identification or rejection here."""
    names = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*") if p.suffix.lower() == ".xml"}
    assert names - {f"attacks/{n}" for n in ATTACKS} == set(EXPECTED) | {"negative/not-well-formed.xml"}


def test_participant_ids_match_directory_normalisation():
    """Participant IDs come out exactly as partners.identifiers.participant_id stores them."""
    from partners.identifiers import participant_id

    document = identify(parse(read("en16931/ubl/BIS3_Invoice_positive.XML")))
    assert document.supplier_id == participant_id("0184:DK12345678")


UBL_SKELETON = b"""<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
 xmlns:c="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
 xmlns:a="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2">%s</Invoice>"""


def test_missing_scheme_id_gives_none():
    """An EndpointID without schemeID (or without a value) gives None for that party, not a crash."""
    body = (b"<c:ID>1</c:ID><c:IssueDate>2024-02-30</c:IssueDate>"
            b"<a:AccountingSupplierParty><a:Party><c:EndpointID>123</c:EndpointID>"
            b"</a:Party></a:AccountingSupplierParty>"
            b"<a:AccountingCustomerParty><a:Party><c:EndpointID schemeID='0088'/>"
            b"</a:Party></a:AccountingCustomerParty>")
    document = identify(parse(UBL_SKELETON % body))
    assert (document.kind, document.number) == ("ubl-invoice", "1")
    assert (document.supplier_id, document.customer_id) == (None, None)
    assert document.issue_date is None  # 30 February is not a date


def test_prefixes_are_not_trusted():
    """Elements are found by namespace, whatever prefix the sender chose, and not by look-alike prefixes."""
    odd = (b'<x:Invoice xmlns:x="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" '
           b'xmlns:cbc="urn:example:not-ubl" xmlns:q="urn:oasis:names:specification:ubl:schema:xsd:'
           b'CommonBasicComponents-2"><cbc:ID>fake</cbc:ID><q:ID>real</q:ID></x:Invoice>')
    assert identify(parse(odd)).number == "real"


@pytest.mark.parametrize(
    "data",
    [
        b"<Invoice/>",
        b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Order-2"/>',
        UBL_SKELETON % b"<c:UBLVersionID>3.0</c:UBLVersionID>",
        b'<rsm:CrossIndustryDocument xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"/>',
    ],
)
def test_unknown_documents(data):
    """Anything but UBL 2.x Invoice/CreditNote or CII is 'unknown'; require_known turns it into GW-DOC-UNKNOWN."""
    document = identify(parse(data))
    assert document.kind == "unknown" and not document.known
    with pytest.raises(DocumentRejected) as info:
        require_known(document)
    assert info.value.codes == (xmldoc.GW_DOC_UNKNOWN,)
    assert "not a UBL 2.x Invoice" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# verify_signature(): the shipped signed samples
# ---------------------------------------------------------------------------------------------------------------

SIGNED = "signed/signed-xmldsig-signxml-exc-c14n.xml"
VALID_SAMPLES = [SIGNED, "signed/signed-xmldsig-xmlsec1.xml", "signed/signed-xades-bes-signxml-c14n11.xml"]


@pytest.mark.parametrize("name", VALID_SAMPLES)
def test_valid_samples_verify_with_the_registered_certificate(name):
    """The xmlsec1-, signxml- and XAdES-signed samples verify against test-signing-cert.pem."""
    result = verify_signature(read(name), [TEST_CERT], require=True)
    assert result.status == "valid" and result.signed
    assert result.certificate == TEST_CERT
    assert result.xades == ("xades" in name)
    assert result.signature_method == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    assert result.signed_xml.find(f".//{{{DS}}}Signature") is None  # enveloped signature removed
    assert identify(result.signed_xml).number == "Snippet1"


@pytest.mark.parametrize("name", VALID_SAMPLES)
def test_valid_samples_untrusted_with_an_unrelated_certificate(name):
    """The same signatures are GW-SIG-UNTRUSTED when only unrelated-cert.pem is registered."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read(name), [UNRELATED_CERT], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_UNTRUSTED,)
    assert "0354d45fe8a8091e97cee1603a8b7b33ed8e67a39cdbab551601cdc3987e66ca" in info.value.findings[0].message


def test_valid_sample_from_a_parsed_root():
    """A root from parse() verifies like the bytes do."""
    assert verify_signature(parse(read(SIGNED)), [TEST_CERT], require=False).signed


def test_tampered_sample_is_invalid():
    """The TAMPERED sample is GW-SIG-INVALID against its own registered certificate."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read("signed/signed-xmldsig-TAMPERED.xml"), [TEST_CERT], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_INVALID,)
    assert "changed after signing" in info.value.findings[0].message


def test_tampered_sample_with_unrelated_certificate_reports_both():
    """Tampered and signed by an unregistered key: both problems are reported, integrity first."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read("signed/signed-xmldsig-TAMPERED.xml"), [UNRELATED_CERT], require=False)
    assert info.value.codes == (xmldoc.GW_SIG_INVALID, xmldoc.GW_SIG_UNTRUSTED)


@pytest.mark.parametrize("name", ["signed/unsigned-with-placeholder.xml", "signed/xmlsec1-template.xml",
                                  "peppol-bis3/base-example.xml", "en16931/cii/CII_example1.xml"])
def test_unsigned_documents(name):
    """Unsigned documents and unfilled templates are GW-SIG-MISSING when required and 'unsigned' otherwise."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read(name), [TEST_CERT], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_MISSING,)
    result = verify_signature(read(name), [TEST_CERT], require=False)
    assert (result.status, result.signed, result.signed_xml) == ("unsigned", False, None)


@pytest.mark.parametrize("allow_sha1", [False, True])
def test_oasis_xpath_filter_signature_refused(allow_sha1):
    """The OASIS example (RSA-SHA1, XPath-filter transform) fails closed on algorithms, SHA-1 allowed or not."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read("oasis-ubl21/UBL-Invoice-2.0-Enveloped.xml"), [TEST_CERT], require=True,
                         allow_sha1=allow_sha1)
    assert set(info.value.codes) == {xmldoc.GW_SIG_ALGORITHM}
    assert any("REC-xpath-19991116" in f.message for f in info.value.findings)
    assert any("rsa-sha1" in f.message for f in info.value.findings) is not allow_sha1


def test_no_registered_certificate():
    """Without registered certificates or CAs a valid signature is still GW-SIG-UNTRUSTED."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read(SIGNED), [], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_UNTRUSTED,)


def test_registered_certificate_outside_its_validity():
    """A registered certificate is not used outside its validity window, and the message says so."""
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read(SIGNED), [TEST_CERT], require=True, now=datetime(2100, 1, 1, tzinfo=UTC))
    assert info.value.codes == (xmldoc.GW_SIG_UNTRUSTED,)
    assert "not valid now" in info.value.findings[0].message


def test_embedded_certificate_issued_by_registered_ca():
    """A KeyInfo certificate directly issued by a registered CA is accepted (here the self-signed test CA)."""
    assert verify_signature(read(SIGNED), [], cas=[TEST_CERT], require=True).certificate == TEST_CERT
    with pytest.raises(DocumentRejected) as info:
        verify_signature(read(SIGNED), [], cas=[UNRELATED_CERT], require=True)
    assert info.value.code == xmldoc.GW_SIG_UNTRUSTED


# ---------------------------------------------------------------------------------------------------------------
# verify_signature(): documents signed here
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec_signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A cheap self-signed P-256 signing key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "xmldoc test signer")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    return key, cert


class _SHA1Signer(XMLSigner):
    """signxml refuses to *make* SHA-1 signatures; old producers still do, so tests need them."""

    def check_deprecated_methods(self):
        pass


def sign(data: bytes, key, cert, *, algorithm: str = "ecdsa-sha256", digest: str = "sha256",
         signer_class=XMLSigner, **kwargs) -> etree._Element:
    """Sign ``data`` enveloped, filling a ``ds:Signature`` placeholder if it has one (the UBL location)."""
    signer = signer_class(signature_algorithm=algorithm, digest_algorithm=digest,
                          c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
    return signer.sign(parse(data), key=key, cert=[cert], **kwargs)


def to_bytes(root: etree._Element) -> bytes:
    """Serialise a signed tree the way a sender would."""
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


PLACEHOLDER = read("signed/unsigned-with-placeholder.xml")


def test_own_ec_signature_verifies(ec_signer):
    """A UBL invoice signed here with ECDSA-SHA256 at the UBL location verifies and identifies."""
    key, cert = ec_signer
    result = verify_signature(to_bytes(sign(PLACEHOLDER, key, cert)), [UNRELATED_CERT, cert], require=True)
    assert result.certificate == cert
    assert identify(result.signed_xml).supplier_id == "0088:9482348239847239874"


def test_cii_signature_is_a_root_child(ec_signer):
    """A CII invoice carries its signature directly under the root, and nowhere else."""
    key, cert = ec_signer
    signed = sign(read("en16931/cii/CII_example1.xml"), key, cert)
    assert signed[-1].tag == f"{{{DS}}}Signature"
    assert identify(verify_signature(to_bytes(signed), [cert], require=True).signed_xml).number == "12115118"
    deeper = copy.deepcopy(signed)
    deeper.find("rsm:ExchangedDocument", NS).append(deeper[-1])
    with pytest.raises(DocumentRejected) as info:
        verify_signature(to_bytes(deeper), [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_LOCATION,)


def test_dev_ca_issued_signer(dev_ca, other_ca):
    """A signer certificate from a registered CA verifies through ``cas``; another CA's does not."""
    key, cert = dev_ca.build("acme sign", "sign")
    data = to_bytes(sign(PLACEHOLDER, key, cert, algorithm="rsa-sha256"))
    assert verify_signature(data, [], cas=[dev_ca.certificate], require=True).certificate == cert
    assert verify_signature(data, [cert], require=True).certificate == cert
    with pytest.raises(DocumentRejected) as info:
        verify_signature(data, [], cas=[other_ca.certificate], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_UNTRUSTED,)


def test_sha1_refused_unless_allowed(ec_signer):
    """SHA-1 signatures and digests are GW-SIG-ALGORITHM unless the sender's policy allows SHA-1."""
    key, cert = ec_signer
    data = to_bytes(sign(PLACEHOLDER, key, cert, algorithm="ecdsa-sha1", digest="sha1", signer_class=_SHA1Signer))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(data, [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_ALGORITHM, xmldoc.GW_SIG_ALGORITHM)
    assert "SHA-1 is refused" in info.value.findings[0].message
    assert verify_signature(data, [cert], require=True, allow_sha1=True).signed


def test_sha224_is_outside_the_whitelist(ec_signer):
    """Algorithms signxml would accept by default but we do not list (SHA-224) are refused too."""
    key, cert = ec_signer
    data = to_bytes(sign(PLACEHOLDER, key, cert, algorithm="ecdsa-sha224", digest="sha224"))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(data, [cert], require=True)
    assert set(info.value.codes) == {xmldoc.GW_SIG_ALGORITHM}


def test_signature_directly_under_ubl_root_refused(ec_signer):
    """UBL signatures must sit in UBLExtensions; a root-level ds:Signature is GW-SIG-LOCATION."""
    key, cert = ec_signer
    data = to_bytes(sign(read("peppol-bis3/base-example.xml"), key, cert))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(data, [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_LOCATION,)
    assert "UBLExtensions/UBLExtension/ExtensionContent" in info.value.findings[0].message


def test_two_signatures_refused(ec_signer):
    """A second signature anywhere in the document is GW-SIG-LOCATION, naming both places."""
    key, cert = ec_signer
    signed = sign(PLACEHOLDER, key, cert)
    signed.append(copy.deepcopy(signed.find(f".//{{{DS}}}Signature")))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(to_bytes(signed), [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_LOCATION, xmldoc.GW_SIG_LOCATION)


def detach(element: etree._Element) -> None:
    """Remove ``element`` but keep its tail text, as the enveloped-signature transform does."""
    parent, previous = element.getparent(), element.getprevious()
    if element.tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def test_enveloping_signature_as_root_refused(ec_signer):
    """A bare ds:Signature document is not an invoice with an enveloped signature: GW-SIG-LOCATION."""
    key, cert = ec_signer
    signed = sign(PLACEHOLDER, key, cert)
    signature = copy.deepcopy(signed.find(f".//{{{DS}}}Signature"))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(to_bytes(signature), [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_LOCATION,)


def test_root_from_a_doctype_parser_refused():
    """A root parsed elsewhere that still has a DOCTYPE is refused rather than verified."""
    root = etree.fromstring(b"<!DOCTYPE Invoice><Invoice/>", etree.XMLParser(resolve_entities=False))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(root, [TEST_CERT], require=False)
    assert info.value.codes == (xmldoc.GW_DOCTYPE,)


def _forged_with_original_under_extension(signed: etree._Element) -> etree._Element:
    """Wrap: a forged invoice whose extension content holds the original signed invoice."""
    forged = copy.deepcopy(signed)
    forged.find("cbc:ID", NS).text = "FORGED-1"
    holder = forged.find("ext:UBLExtensions/ext:UBLExtension/ext:ExtensionContent", NS)
    holder.append(copy.deepcopy(signed))  # now two Signatures: the outer one and the wrapped copy's
    return forged


def test_wrapping_original_copied_under_extension(ec_signer):
    """A forged invoice that carries the signed original under an extension is refused."""
    key, cert = ec_signer
    forged = _forged_with_original_under_extension(sign(PLACEHOLDER, key, cert))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(to_bytes(forged), [cert], require=True)
    assert set(info.value.codes) == {xmldoc.GW_SIG_LOCATION}
    # Even with the wrapped copy's signature removed, the outer signature no longer matches the document.
    inner = forged.find("ext:UBLExtensions/ext:UBLExtension/ext:ExtensionContent/{*}Invoice", NS)
    detach(inner.find(f".//{{{DS}}}Signature"))
    with pytest.raises(DocumentRejected) as info:
        verify_signature(to_bytes(forged), [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_INVALID,)


def test_wrapping_with_id_reference(ec_signer):
    """A signature over ``#id`` of a wrapped original fools bare signxml but is GW-SIG-LOCATION here."""
    key, cert = ec_signer
    original = parse(PLACEHOLDER)
    original.set("Id", "original")
    signer = XMLSigner(signature_algorithm="ecdsa-sha256",
                       c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)
    signed = signer.sign(original, key=key, cert=[cert], reference_uri="#original")
    signature = signed.find(f".//{{{DS}}}Signature")
    # Attacker: forged root, the signed original moved under an extension, the signature at the pinned place.
    forged = parse(PLACEHOLDER)
    forged.find("cbc:ID", NS).text = "FORGED-2"
    wrapped = copy.deepcopy(signed)
    detach(wrapped.find(f".//{{{DS}}}Signature"))
    place = forged.find(f".//{{{DS}}}Signature")
    place.getparent().replace(place, copy.deepcopy(signature))
    extension = copy.deepcopy(forged.find("ext:UBLExtensions/ext:UBLExtension", NS))
    for child in list(extension.find("ext:ExtensionContent", NS)):
        child.getparent().remove(child)
    extension.find("ext:ExtensionContent", NS).append(wrapped)
    forged.find("ext:UBLExtensions", NS).append(extension)
    data = to_bytes(forged)

    location = "./" + "".join(f"{{{NS[p.split(':')[0]]}}}{p.split(':')[1]}/" for p in xmldoc._UBL_SIG_PATH)
    naive = XMLVerifier().verify(data, x509_cert=cert, expect_config=SignatureConfiguration(location=location))
    assert identify(parse(data)).number == "FORGED-2" and naive.signed_xml.get("Id") == "original"

    with pytest.raises(DocumentRejected) as info:
        verify_signature(data, [cert], require=True)
    assert info.value.codes == (xmldoc.GW_SIG_LOCATION,)
    assert 'URI=""' in info.value.findings[0].message


def test_rejection_shape():
    """DocumentRejected needs findings and exposes the first code; Finding is a frozen value."""
    finding = xmldoc.Finding(xmldoc.GW_XML, "broken", "line 1")
    error = DocumentRejected([finding])
    assert (error.code, error.codes, error.findings) == ("GW-XML", ("GW-XML",), (finding,))
    assert str(error) == "GW-XML: broken"
    with pytest.raises(ValueError):
        DocumentRejected([])
    with pytest.raises(AttributeError):
        finding.code = "x"  # type: ignore[misc]
