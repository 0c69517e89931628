"""Evaluation on math benchmarks."""
