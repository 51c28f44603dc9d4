"""``python -m bench``: the intake throughput benchmark (see :mod:`bench.intake`)."""

from bench.intake import main

main()
