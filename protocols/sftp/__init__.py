"""The SFTP door: a virtual per-partner tree (:mod:`.tree`) served by asyncssh (:mod:`.server`)."""

__all__ = ["server", "tree"]
