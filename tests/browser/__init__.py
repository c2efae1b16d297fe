"""The web client's tests: its Vitest suite, and the browser tests (real Chromium, real stack)."""
