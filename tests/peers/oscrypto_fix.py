"""Make oscrypto 1.3.0 importable on OpenSSL >= 3.0.10 (installed only into the peer virtualenvs).

oscrypto 1.3.0, the last release and the exact version pyas2lib pins, finds the libcrypto version with
the regular expression ``\\d\\.\\d\\.\\d``, which cannot match "3.0.19", so ``import pyas2lib`` fails
with "Error detecting the version of libcrypto". The fix (``\\d+\\.\\d+\\.\\d+``) is on oscrypto's
master but was never released.

This module installs a meta-path finder that rewrites those two regular expressions in the source of
``oscrypto._openssl._libcrypto_cffi`` and ``oscrypto._openssl._libcrypto_ctypes`` as they are loaded
(compiling from the patched source, never from the cached bytecode of the original). The peer
virtualenvs import it from a ``.pth`` line, so every process in those venvs (scripts, ``manage.py``,
gunicorn workers) gets it before anything imports oscrypto. If a future oscrypto has fixed the
pattern, the rewrite finds nothing and the module loads unchanged.
"""

import importlib.machinery
import sys

TARGETS = frozenset({"oscrypto._openssl._libcrypto_cffi", "oscrypto._openssl._libcrypto_ctypes"})

# (old, new) as they appear in the module source: single-quoted literals with doubled backslashes.
REWRITES = (
    (rb"'\\b(\\d\\.\\d\\.\\d[a-z]*)\\b'", rb"'\\b(\\d+\\.\\d+\\.\\d+[a-z]*)\\b'"),
    (rb"'(?<=LibreSSL )(\\d\\.\\d(\\.\\d)?)\\b'", rb"'(?<=LibreSSL )(\\d+\\.\\d+(\\.\\d+)?)\\b'"),
)


def patch_source(source: bytes) -> bytes:
    """The module source with the version patterns widened (unchanged if they are not there)."""
    for old, new in REWRITES:
        source = source.replace(old, new)
    return source


class _PatchingLoader(importlib.machinery.SourceFileLoader):
    """Loads the module from its patched source, bypassing the bytecode cache."""

    def get_code(self, fullname):
        with open(self.path, "rb") as f:
            source = patch_source(f.read())
        return self.source_to_code(source, self.path)


class OscryptoVersionFix:
    """Meta-path finder: hands the two libcrypto modules to the patching loader."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in TARGETS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = _PatchingLoader(fullname, spec.origin)
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(f is OscryptoVersionFix for f in sys.meta_path):
        sys.meta_path.insert(0, OscryptoVersionFix)


install()
