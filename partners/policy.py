# -*- test-case-name: tests.partners.test_policy -*-
"""Per-partner policy: what a partner's messages must carry, and what legacy it may still use.

Defaults are strict; an admin loosens them per partner, never globally.
"""

from typing import Any, Mapping

import attrs

from partners.errors import InvalidValueError


@attrs.frozen
class Policy:
    """The rules applied to documents a partner sends."""

    #: Every document must carry an enveloped XML-DSig by one of the partner's signing certificates.
    require_xmldsig: bool = False
    #: Payloads that are not UBL/CII invoices are accepted as opaque documents.
    allow_opaque: bool = False
    #: AS2 messages must be S/MIME signed.
    as2_require_signature: bool = True
    #: AS2 messages must be S/MIME encrypted.
    as2_require_encryption: bool = True
    #: SHA-1 signatures are tolerated (legacy AS2 peers only).
    allow_sha1: bool = False
    #: Unsigned mail is accepted when every invoice in it carries a valid XML-DSig.
    allow_unsigned_mail: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "Policy":
        """Read a stored policy, ignoring keys a newer or older version no longer knows."""
        known = {f.name for f in attrs.fields(cls)}
        values = {k: v for k, v in (data or {}).items() if k in known}
        for key, value in values.items():
            if not isinstance(value, bool):
                raise InvalidValueError(f"stored policy {key} is {value!r}, not true or false")
        return cls(**values)

    def to_json(self) -> dict[str, bool]:
        """The stored form."""
        return attrs.asdict(self)

    def with_setting(self, assignment: str) -> "Policy":
        """Apply ``name=true|false`` as typed on the command line."""
        name, sep, raw = assignment.partition("=")
        name = name.strip().replace("-", "_")
        known = [f.name for f in attrs.fields(type(self))]
        if not sep or name not in known:
            raise InvalidValueError(f"{assignment!r}: expected NAME=true|false with NAME one of {', '.join(known)}")
        value = raw.strip().lower()
        if value not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            raise InvalidValueError(f"{assignment!r}: value must be true or false")
        return attrs.evolve(self, **{name: value in ("true", "yes", "on", "1")})
