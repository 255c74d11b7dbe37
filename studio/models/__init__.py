"""Base models: the curated catalog, what a name resolves to (catalog entry, hub id, local folder), and
the offline demo model built on this machine."""
