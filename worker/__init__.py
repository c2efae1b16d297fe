"""Parley worker: consumes user messages and streams model replies."""
