"""Benchmark suites, one per file; ``scripts/benchmark.py`` runs them and writes docs/benchmarks.md."""
