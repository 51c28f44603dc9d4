"""``python -m bench``: the whole benchmark suite and its report (see :mod:`bench.suite`)."""

from bench.suite import main

main()
