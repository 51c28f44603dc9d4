# -*- test-case-name: tests.partners.test_identifiers -*-
"""Validate and normalise the names partners are known by, so lookups compare like with like."""

import re
from urllib.parse import urlsplit

from partners.errors import InvalidValueError

_PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SCHEME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_EMAIL = re.compile(r"^[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,253}$")

DELIVERY_MODES = ("mailbox", "as2", "sftp", "email")


def partner_id(value: str) -> str:
    """Partner IDs double as SFTP user names and mailbox local parts: lowercase, no spaces."""
    if not _PARTNER_ID.fullmatch(value):
        raise InvalidValueError(
            f"partner ID {value!r} must be 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def as2_id(value: str) -> str:
    """RFC 4130: 1-128 printable ASCII characters; compared case-sensitively, kept as typed."""
    if not 1 <= len(value) <= 128 or any(not 0x20 <= ord(c) < 0x7F or c in '"\\' for c in value):
        raise InvalidValueError(f"AS2 ID {value!r} must be 1-128 printable ASCII characters without quotes")
    if value != value.strip():
        raise InvalidValueError(f"AS2 ID {value!r} must not start or end with a space")
    return value


def participant_id(value: str) -> str:
    """``SCHEME:VALUE`` such as ``0088:5798000000001``; case-insensitive as in Peppol, kept lowercase."""
    scheme, sep, ident = value.strip().partition(":")
    if len(value.strip()) > 512:
        raise InvalidValueError(f"participant ID {value[:40]!r}… is longer than 512 characters")
    if not sep or not _SCHEME.fullmatch(scheme) or not ident or any(c.isspace() for c in ident):
        raise InvalidValueError(
            f"participant ID {value!r} must look like SCHEME:VALUE, e.g. 0088:5798000000001"
        )
    return f"{scheme}:{ident}".lower()


def email(value: str) -> str:
    """A bare address (no display name); compared case-insensitively, kept lowercase."""
    address = value.strip()
    if len(address) > 320 or not _EMAIL.fullmatch(address) or ".." in address or address.endswith("."):
        raise InvalidValueError(f"{value!r} is not an email address like invoices@example.com")
    return address.lower()


def display_name(value: str) -> str:
    """A partner's display name: not empty, at most 200 characters, no control characters."""
    name = value.strip()
    if not name or len(name) > 200 or any(ord(c) < 0x20 for c in name):
        raise InvalidValueError("--name must be 1-200 printable characters")
    return name


def https_url(value: str) -> str:
    """Push endpoints must be HTTPS: invoices never travel in clear text."""
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme != "https" or not parts.hostname:
        raise InvalidValueError(f"{value!r} must be an https:// URL")
    return value


def delivery_mode(value: str) -> str:
    """One of :data:`DELIVERY_MODES`."""
    if value not in DELIVERY_MODES:
        raise InvalidValueError(f"delivery {value!r} must be one of {', '.join(DELIVERY_MODES)}")
    return value
