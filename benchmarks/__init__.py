"""Benchmark scripts: each prints a table of timings against a baseline run in the same process."""
