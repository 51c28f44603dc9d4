"""The ``postroom`` command line: init, serve, partners, certificates, keys, allowlists and the dev PKI."""

__all__ = ["cli", "initialise", "output"]
