# -*- test-case-name: tests.certs.test_x509 -*-
"""Typed errors for key and certificate handling."""


class CertificateError(ValueError):
    """A key or certificate cannot be used; the message says which and why."""


class WrongPasswordError(CertificateError):
    """A PKCS#12 or encrypted PEM key could not be opened with the given password."""


class KeyMismatchError(CertificateError):
    """A private key does not belong to the certificate it was paired with."""


class NotYetValidError(CertificateError):
    """A certificate's validity window has not started."""


class ExpiredError(CertificateError):
    """A certificate's validity window has ended."""


class UntrustedIssuerError(CertificateError):
    """A certificate was not issued by any of the trusted CA certificates."""
