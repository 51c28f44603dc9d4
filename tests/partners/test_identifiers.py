"""Tests for :mod:`partners.identifiers`: the names partners are known by, validated and normalised."""

import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from partners import identifiers as ids
from partners.errors import InvalidValueError

VALIDATORS = [ids.partner_id, ids.as2_id, ids.participant_id, ids.email, ids.https_url, ids.delivery_mode]


@pytest.mark.parametrize("value", ["acme", "a", "0", "acme-corp.eu_1", "a" * 63, "9lives"])
def test_partner_id_accepts_lowercase_names(value):
    """Lowercase IDs of letters, digits, '.', '_' and '-' up to 63 characters are kept as given."""
    assert ids.partner_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "Acme", "ACME", "-acme", ".acme", "_acme", "acme corp", "a" * 64, "acme/../x", "acme\n", "\nacme",
     "acme\x00", "acmé", "acme:1", "acme@x"],
)
def test_partner_id_refuses_everything_else(value):
    """Upper case, spaces, a leading symbol, over-long IDs and control characters (even a final newline) are refused."""
    with pytest.raises(InvalidValueError, match="must be 1-63 characters of a-z, 0-9"):
        ids.partner_id(value)


@given(st.text())
def test_partner_id_is_a_safe_user_name(value):
    """Anything partner_id accepts is 1-63 of [a-z0-9._-] starting with a letter or digit, unchanged."""
    try:
        result = ids.partner_id(value)
    except InvalidValueError:
        return
    assert result == value
    assert 1 <= len(result) <= 63
    assert set(result) <= set(string.ascii_lowercase + string.digits + "._-")
    assert result[0] in string.ascii_lowercase + string.digits


@pytest.mark.parametrize("value", ["ACME-AS2", "acme-as2", "Acme Corp AS2", "x", "A" * 128, "id!#$%&'()*+,-./:;<=>?@"])
def test_as2_id_accepts_printable_ascii_and_keeps_case(value):
    """AS2 IDs of 1-128 printable ASCII characters are kept exactly as typed, case included."""
    assert ids.as2_id(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "1-128 printable ASCII characters without quotes"),
        ("A" * 129, "1-128 printable ASCII characters without quotes"),
        ('"ACME"', "1-128 printable ASCII characters without quotes"),
        ("AC\\ME", "1-128 printable ASCII characters without quotes"),
        ("ACME\n", "1-128 printable ASCII characters without quotes"),
        ("AC\tME", "1-128 printable ASCII characters without quotes"),
        ("ACME\x7f", "1-128 printable ASCII characters without quotes"),
        ("ACMÉ", "1-128 printable ASCII characters without quotes"),
        (" ACME", "must not start or end with a space"),
        ("ACME ", "must not start or end with a space"),
    ],
)
def test_as2_id_refusals(value, message):
    """Quotes, backslashes, control and non-ASCII characters, bad lengths and edge spaces are refused."""
    with pytest.raises(InvalidValueError, match=message):
        ids.as2_id(value)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\'),
               min_size=1, max_size=128))
def test_as2_id_accepts_any_printable_id(value):
    """Every 1-128 character string of printable ASCII without quotes is a valid AS2 ID, unchanged."""
    assert ids.as2_id(value) == value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0088:5798000000001", "0088:5798000000001"),
        ("0192:NO987654321MVA", "0192:no987654321mva"),
        ("  iso6523-actorid-upis:0088:123  ", "iso6523-actorid-upis:0088:123"),
        ("GLN:ABC", "gln:abc"),
    ],
)
def test_participant_id_is_lowercased(value, expected):
    """Participant IDs are compared case-insensitively, so they are stored lowercase and trimmed."""
    assert ids.participant_id(value) == expected


@pytest.mark.parametrize(
    "value",
    ["5798000000001", "0088:", ":5798000000001", "00 88:1", "0088:579 8", "0088:579\t8", "0088\n:1", "-0088:1",
     "", ":", "a" * 65 + ":1"],
)
def test_participant_id_requires_scheme_colon_value(value):
    """Without SCHEME:VALUE, or with whitespace inside, the ID is refused with an example."""
    with pytest.raises(InvalidValueError, match=r"must look like SCHEME:VALUE, e\.g\. 0088:5798000000001"):
        ids.participant_id(value)


@given(st.text())
def test_participant_id_normalisation_is_idempotent(value):
    """Normalising an accepted participant ID again changes nothing, and the result has no whitespace."""
    try:
        once = ids.participant_id(value)
    except InvalidValueError:
        return
    assert ids.participant_id(once) == once
    assert once == once.lower()
    assert not any(c.isspace() for c in once)


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
       st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=20))
def test_participant_id_is_case_insensitive(scheme, value):
    """Upper- and lower-case spellings of the same participant ID normalise to one value."""
    assume(scheme.upper().lower() == scheme.lower() and value.upper().lower() == value.lower())
    assert ids.participant_id(f"{scheme}:{value}".upper()) == ids.participant_id(f"{scheme}:{value}".lower())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("invoices@acme.example", "invoices@acme.example"),
        ("Invoices@ACME.Example", "invoices@acme.example"),
        ("  ap+in@acme.example ", "ap+in@acme.example"),
        ("a@b", "a@b"),
    ],
)
def test_email_is_lowercased(value, expected):
    """Email addresses are trimmed and lowercased so lookups are case-insensitive."""
    assert ids.email(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "invoices", "@acme.example", "invoices@", "a@b@c", "Acme <invoices@acme.example>", "in voices@acme.example",
     "invoices@acme..example", "invoices@acme.example.", "invoices@acme_corp.example", '"x"@acme.example',
     "a" * 65 + "@acme.example", "invoices@acme.example\nBcc: x@y.example"],
)
def test_bad_email_addresses_are_refused(value):
    """Anything but a bare address (display names, header injection, double dots) is refused with an example."""
    with pytest.raises(InvalidValueError, match=r"is not an email address like invoices@example\.com"):
        ids.email(value)


@given(st.emails())
def test_email_normalisation_is_idempotent(value):
    """An accepted address normalises to a lowercase form that normalises to itself."""
    try:
        once = ids.email(value)
    except InvalidValueError:
        return
    assert once == once.lower()
    assert ids.email(once) == once


@pytest.mark.parametrize("value", ["https://as2.acme.example/receive", "https://192.0.2.1:4443/as2", "HTTPS://acme.example"])
def test_https_url_is_accepted_unchanged(value):
    """HTTPS push endpoints are kept exactly as typed."""
    assert ids.https_url(value) == value


@pytest.mark.parametrize("value", ["http://as2.acme.example/receive", "ftp://acme.example", "as2.acme.example", "https://",
                                   "https:///path", "", "https://[::1"])
def test_non_https_urls_are_refused(value):
    """Plain HTTP, other schemes, host-less and malformed URLs are refused because invoices never travel in clear."""
    with pytest.raises(InvalidValueError, match="must be an https:// URL"):
        ids.https_url(value)


@pytest.mark.parametrize("mode", ["mailbox", "as2", "sftp", "email"])
def test_delivery_modes_are_accepted(mode):
    """Every documented delivery mode is accepted as is."""
    assert ids.delivery_mode(mode) == mode


@pytest.mark.parametrize("mode", ["", "AS2", "smtp", "ftp", "mailbox "])
def test_unknown_delivery_modes_are_refused(mode):
    """Other delivery modes are refused with the list of valid ones."""
    with pytest.raises(InvalidValueError, match="must be one of mailbox, as2, sftp, email"):
        ids.delivery_mode(mode)


@given(st.sampled_from(VALIDATORS), st.text())
def test_validators_raise_only_invalid_value_error(validate, value):
    """Whatever an admin types, each validator returns a string or raises InvalidValueError (never a crash)."""
    try:
        result = validate(value)
    except InvalidValueError:
        return
    assert isinstance(result, str)


# -- sftp push target ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("sftp://inv@files.example/inbound", ("inv", "files.example", 22, "/inbound", "sftp://inv@files.example:22/inbound")),
    ("sftp://inv@files.example:2222/in/bound/", ("inv", "files.example", 2222, "/in/bound",
                                                 "sftp://inv@files.example:2222/in/bound")),
    ("sftp://a.b@127.0.0.1:65535/", ("a.b", "127.0.0.1", 65535, "/", "sftp://a.b@127.0.0.1:65535/")),
    ("sftp://u@[::1]:23/x//./y", ("u", "::1", 23, "/x/y", "sftp://u@[::1]:23/x/y")),
    ("  sftp://u%40corp@h/d%20ir  ", ("u@corp", "h", 22, "/d ir", "sftp://u%40corp@h:22/d%20ir")),
])
def test_sftp_url_takes_user_host_port_22_by_default_and_an_absolute_directory(value, expected):
    """``sftp://user@host[:port]/dir``: the port defaults to 22, the directory is kept absolute and tidy."""
    target = ids.sftp_url(value)
    assert (target.user, target.host, target.port, target.directory, target.url) == expected


@pytest.mark.parametrize("value, message", [
    ("https://inv@files.example/inbound", "sftp:// URL"),
    ("sftp:///inbound", "with a host"),
    ("sftp://files.example/inbound", "user name"),
    ("sftp://inv@files.example", "absolute directory"),
    ("sftp://inv@files.example:0x16/in", "sftp://user@host:port"),
    ("sftp://inv@files.example:70000/in", "sftp://user@host:port"),
    ("sftp://inv@[::1/in", "sftp://user@host:port"),
    ("sftp://inv:secret@files.example/in", "password"),
    ("sftp://inv@files.example/in?x=1", "query"),
    ("sftp://inv@files.example/in/../etc", "'..'"),
    ("sftp://inv@files.example/in%00x", "control"),
])
def test_sftp_url_refusals(value, message):
    """Anything but a usable sftp:// target is refused, saying what is wrong."""
    with pytest.raises(InvalidValueError, match=re.escape(message)):
        ids.sftp_url(value)


@given(st.text())
def test_sftp_url_raises_only_invalid_value_error(value):
    """Whatever an admin types, the URL parser returns a target or raises InvalidValueError."""
    try:
        target = ids.sftp_url(value)
    except InvalidValueError:
        return
    assert target.directory.startswith("/") and 1 <= target.port <= 65535 and ids.sftp_url(target.url) == target


def test_sftp_host_key_parses_an_openssh_line_and_refuses_anything_else():
    """The pinned host key is one OpenSSH public key line (certs.ssh), refused as InvalidValueError otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert ids.sftp_host_key(f"{line} root@files\n").openssh == line
    for bad in ("", "ssh-ed25519", "ssh-dss AAAAB3NzaC1kc3M=", "ssh-ed25519 AAAA!!!",
                "-----BEGIN OPENSSH PRIVATE KEY-----"):
        with pytest.raises(InvalidValueError, match="SFTP host key"):
            ids.sftp_host_key(bad)
