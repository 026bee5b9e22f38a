"""Measuring tools used by the benchmarks and the tests (not part of the installed package)."""
