"""Benchmarks: figures printed beside peers measured in the same run (``make bench``), never timed tests."""
