"""Benchmarks: each prints its figures as one JSON line last (not run in CI)."""
