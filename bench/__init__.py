"""Parley's benchmark: ``python -m bench --scenario NAME[,NAME...]|all`` (``make bench``).

Performance is measured here, side by side in one run, never asserted in timed tests.
Each scenario starts its own Redis, stand-in (or real) model, Parley servers and
workers, and a direct baseline, drives them with a load generator, and reports what
Parley adds to the model's own timing, throughput, CPU and memory per process, Redis
commands and connections, and lost or misrouted replies (:mod:`bench.cli`).
"""
