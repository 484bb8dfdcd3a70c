"""Benchmarks: `python -m benchmarks.moe_block`, `python -m benchmarks.generate`, `python -m benchmarks.convert`.

Results are collected in benchmarks/RESULTS.md.
"""
