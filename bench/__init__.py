"""Benchmarks for tokenwire: an HTTP load generator, an in-process baseline, and `make bench`."""
