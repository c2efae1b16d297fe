"""Helpers for the tests: an in-process Parley and WebSocket event readers."""
