"""The SFTP door's virtual tree: confinement and naming rules, with hypothesis."""

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.sftp.tree import FOLDERS, PathRefused, VPath, is_held, resolve

_PARTS = st.sampled_from(["..", ".", "", "inbox", "outbox", "receipts", "etc", "passwd", "%2e%2e", "a.xml",
                          "..%2f", "\\..", "inbox\x00", "\u2025", "~"])
_PATHS = st.lists(_PARTS, max_size=8).map("/".join)


@given(st.one_of(_PATHS, st.binary(max_size=64).map(lambda b: b.decode("latin-1"))),
       st.sampled_from([b"/", b"/inbox", b"/outbox/"]))
def test_every_path_resolves_inside_the_tree_or_is_refused(path, cwd):
    """Whatever a client sends, the answer is a place in the three-folder tree, matching a chrooted
    POSIX normalisation, or a refusal; never anything outside."""
    raw = path.encode("utf-8", "surrogatepass")
    try:
        where = resolve(raw, cwd)
    except PathRefused:
        return
    assert where.folder in ("", *FOLDERS)
    assert "/" not in where.name and where.name not in (".", "..")
    joined = posixpath.join(cwd.decode(), path)
    oracle = posixpath.normpath("/" + joined.lstrip("/"))
    while oracle.startswith("/.."):
        oracle = posixpath.normpath(oracle[3:] or "/")
    assert where.as_bytes() == oracle.encode() or (oracle == "/" and where.is_root)


@pytest.mark.parametrize("path", [b"../../etc/passwd", b"/../../../../etc/passwd", b"/etc/passwd",
                                  b"/inbox/../../etc", b"/inbox/sub/x.xml", b"/inbox/a\\..\\b",
                                  b"/inbox/\xff", b"/inbox/a\x00b", b"/outbox/x\n"])
def test_escapes_and_tricks_are_refused_or_confined(path):
    """Traversal, absolute paths, deeper folders and encoded tricks never leave the tree."""
    try:
        where = resolve(path)
    except PathRefused:
        return
    assert where.folder in FOLDERS or where.is_root


def test_dotdot_at_the_root_stays_at_the_root():
    """``..`` above the root is the root, as in a chroot."""
    assert resolve(b"/../..") == VPath()
    assert resolve(b"../inbox/../receipts/r.mdn", b"/outbox") == VPath("receipts", "r.mdn")


@given(st.text(min_size=1, max_size=20).filter(lambda s: "/" not in s))
def test_held_names_are_the_temporary_ones(name):
    """Dot files and .part/.filepart/.tmp names are held until renamed; nothing else is."""
    expected = name.startswith(".") or name.endswith((".part", ".filepart", ".tmp"))
    assert is_held(name) == expected
