"""Keys and X.509 certificates: loading, fingerprints, checks, a dev CA and TLS contexts.

Pure: no reactor, no database. Every failure is a :class:`certs.errors.CertificateError`
whose message names the file and what is wrong with it.
"""

__all__ = ["devca", "errors", "files", "ssh", "tls", "x509"]
