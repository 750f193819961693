"""Benchmarks: numbers are printed, never asserted."""
