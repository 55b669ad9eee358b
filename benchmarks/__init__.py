"""Throughput benchmarks of textenv and its agents (``python -m benchmarks.env_step``, ``python -m
benchmarks.throughput``); their committed outputs live in ``benchmarks/results/``."""
