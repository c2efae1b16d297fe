"""The Parley server: REST and WebSocket API over Redis."""
