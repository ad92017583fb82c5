"""Benchmarks: each module is a script (python bench/NAME.py); results go to docs/benchmarks.md."""
