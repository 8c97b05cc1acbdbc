"""Benchmarks against the local stack: `python -m bench` (see docs/benchmark.md).

Nothing here is used by the product; the original design's loader lives here only as the
baseline to measure against.
"""
