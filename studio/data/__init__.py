"""Data: ingest → column mapping → chat-template rendering → checks → immutable dataset versions."""
