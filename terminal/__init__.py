"""The terminal chat client: ``python -m terminal`` (``make chat``)."""
