"""Benchmark commands: they print figures (medians of several runs), they assert nothing."""
