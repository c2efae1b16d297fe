"""Parley's benchmark: ``python -m bench --scenario latency|real-model|all``.

Performance is measured here, side by side in one run, never asserted in timed tests.
Each scenario starts its own embedded Redis and Parley processes, prints one line and a
small table, and writes ``bench/results/<UTC timestamp>-<scenario>.json``.
"""
