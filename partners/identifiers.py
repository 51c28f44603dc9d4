# -*- test-case-name: tests.partners.test_identifiers -*-
"""Validate and normalise the names partners are known by, so lookups compare like with like."""

import re
from urllib.parse import quote, unquote, urlsplit

import attrs

from certs.errors import CertificateError
from certs.ssh import SSHPublicKey, parse_public_key
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


@attrs.frozen
class SFTPURL:
    """Where the ``sftp`` push uploads: ``sftp://user@host[:port]/absolute/dir``."""

    user: str
    host: str
    port: int
    directory: str

    @property
    def url(self) -> str:
        """The canonical form (port always given, no trailing slash but for ``/``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sftp://{quote(self.user, safe='')}@{host}:{self.port}{quote(self.directory, safe='/')}"


def sftp_url(value: str) -> SFTPURL:
    """Parse a push target ``sftp://user@host[:port]/dir``: port 22 unless given, the directory absolute."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port or 22
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number or out of range
        raise InvalidValueError(f"{value!r} must look like sftp://user@host:port/absolute/dir") from None
    if parts.scheme != "sftp" or not parts.hostname:
        raise InvalidValueError(f"{value!r} must be an sftp:// URL with a host, e.g. sftp://user@host:22/inbound")
    if not parts.username:
        raise InvalidValueError(f"{value!r} needs the user name to log in as: sftp://USER@{parts.hostname}/…")
    if parts.password is not None:
        raise InvalidValueError(f"{value!r} must not hold a password: the gateway logs in with its SSH key")
    if parts.query or parts.fragment:
        raise InvalidValueError(f"{value!r} must not have a query or fragment")
    directory = unquote(parts.path)
    if not directory.startswith("/"):
        raise InvalidValueError(f"{value!r} must name an absolute directory, e.g. sftp://user@host/inbound")
    if any(c in directory for c in "\0\n\r") or ".." in directory.split("/"):
        raise InvalidValueError(f"{value!r}: the directory must not contain '..' or control characters")
    directory = "/" + "/".join(p for p in directory.split("/") if p and p != ".")
    return SFTPURL(unquote(parts.username), parts.hostname, port, directory)


def sftp_host_key(value: str) -> SSHPublicKey:
    """The partner server's pinned host key: one OpenSSH public key line."""
    try:
        return parse_public_key(value, "the SFTP host key")
    except CertificateError as e:
        raise InvalidValueError(str(e)) from None


def delivery_mode(value: str) -> str:
    """One of :data:`DELIVERY_MODES`."""
    if value not in DELIVERY_MODES:
        raise InvalidValueError(f"delivery {value!r} must be one of {', '.join(DELIVERY_MODES)}")
    return value
