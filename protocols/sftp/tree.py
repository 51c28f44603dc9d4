# -*- test-case-name: tests.protocols.sftp.test_tree -*-
"""The virtual tree every partner sees over SFTP, sans-IO: path confinement and naming rules.

Nothing exists on disk per partner. A client path (bytes, relative or absolute) resolves against the
root ``/`` lexically, the way a chroot does: ``..`` at the root stays at the root, so no spelling
leaves the tree. The tree has exactly three folders::

    /inbox/     create and write only; a closed upload is handed to the intake
    /outbox/    the partner's mailbox, read-only; removing a file acknowledges it
    /receipts/  a signed receipt per document the partner sent, read-only

Anything deeper, any other top-level name, and any name SFTP cannot carry safely (not UTF-8, NUL,
control characters, backslashes, over 255 bytes) is refused here, before any backend is asked.
Percent signs and the like are plain characters: nothing is ever decoded twice.
"""

import attrs

INBOX, OUTBOX, RECEIPTS = "inbox", "outbox", "receipts"
FOLDERS = (INBOX, OUTBOX, RECEIPTS)
#: Upload names that are taken on rename to a final name, not at close (clients' temporary names).
HELD_SUFFIXES = (".part", ".filepart", ".tmp")
MAX_NAME = 255


class PathRefused(Exception):
    """The path names nothing the tree can hold; ``missing`` distinguishes "no such file" from "denied"."""

    def __init__(self, reason: str, missing: bool = True):
        super().__init__(reason)
        self.missing = missing


@attrs.frozen
class VPath:
    """A resolved place in the tree: the root (``folder == ""``), a folder (``name == ""``) or a file."""

    folder: str = ""
    name: str = ""

    @property
    def is_root(self) -> bool:
        """True for ``/``."""
        return not self.folder

    @property
    def is_folder(self) -> bool:
        """True for ``/inbox``, ``/outbox`` and ``/receipts``."""
        return bool(self.folder) and not self.name

    def as_bytes(self) -> bytes:
        """The canonical absolute path (what ``realpath`` answers)."""
        parts = [p for p in (self.folder, self.name) if p]
        return ("/" + "/".join(parts)).encode("utf-8")


def check_name(name: str) -> str:
    """``name`` when it may be a file name in the tree.

    :raises PathRefused: empty, ``.``/``..``, too long, or holding ``/``, ``\\``, NUL or control characters.
    """
    if not name or name in (".", ".."):
        raise PathRefused("not a file name")
    if len(name.encode("utf-8")) > MAX_NAME:
        raise PathRefused("file name too long", missing=False)
    if any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise PathRefused("file names may not hold slashes, backslashes or control characters", missing=False)
    return name


def resolve(path: bytes, cwd: bytes = b"/") -> VPath:
    """Resolve a client path lexically inside the tree.

    :raises PathRefused: the path is not UTF-8, names an unknown folder, goes deeper than a file in a
        folder, or has a file name :func:`check_name` refuses.
    """
    try:
        text = path.decode("utf-8")
        base = cwd.decode("utf-8")
    except UnicodeDecodeError:
        raise PathRefused("paths must be UTF-8", missing=False) from None
    if "\x00" in text:
        raise PathRefused("paths may not hold NUL", missing=False)
    parts: list[str] = []
    for part in (text if text.startswith("/") else base + "/" + text).split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    if not parts:
        return VPath()
    if parts[0] not in FOLDERS:
        raise PathRefused(f"there is no /{parts[0][:40]} here (only /inbox, /outbox and /receipts)")
    if len(parts) > 2:
        raise PathRefused("there are no folders below /inbox, /outbox and /receipts")
    return VPath(parts[0], check_name(parts[1]) if len(parts) == 2 else "")


def is_held(name: str) -> bool:
    """True for a client's temporary upload name: taken only when renamed to a final name."""
    return name.startswith(".") or name.endswith(HELD_SUFFIXES)
