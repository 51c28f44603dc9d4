"""AS2 (RFC 4130) door and client."""

__all__ = ["resource"]
