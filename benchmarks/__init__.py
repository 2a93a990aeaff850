"""Benchmarks (`make bench`, `make bench-receiver`): real processes and databases on this machine."""
