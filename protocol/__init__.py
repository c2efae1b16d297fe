"""The wire contract: WebSocket commands and events, error codes, the stream-entry format."""
