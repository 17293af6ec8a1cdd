"""Benchmark scripts (`python benchmarks/NAME.py`) and the runner they share (`benchmarks/runner.py`)."""
