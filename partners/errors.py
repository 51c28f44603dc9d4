# -*- test-case-name: tests.partners.test_store -*-
"""Typed errors for partner directory changes; each message is one sentence an admin can act on."""


class PartnerError(ValueError):
    """A partner directory change was refused; nothing was changed."""


class UnknownPartnerError(PartnerError):
    """No partner has the given ID."""


class DuplicateError(PartnerError):
    """The ID, identifier, certificate or key is already registered."""


class InvalidValueError(PartnerError):
    """A value (ID, CIDR, URL, identifier) is malformed."""


class NotFoundError(PartnerError):
    """A certificate, key or allowlist entry to remove is not registered to the partner."""
