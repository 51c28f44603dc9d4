"""The doors (AS2, SFTP, SMTP, HTTPS upload) and outbound clients, each a sans-IO core plus a thin
Twisted or asyncssh adapter. Doors receive what they need (directory, clock, intake) as arguments,
so nothing here imports :mod:`gateway`."""

__all__ = ["as2", "findings", "listen", "mdn", "partner_auth", "xmldoc"]
