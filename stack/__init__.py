"""The embedded stack: Redis and a local model from PyPI packages, and ``python -m stack``."""
