"""Benchmark-only proxy entries (`benchmarks/attribution.py`); never part of the package."""
