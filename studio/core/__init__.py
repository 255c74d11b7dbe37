"""Plumbing every stage stands on: the workspace, the SQLite registry and its migrations, typed errors,
the process supervisor, guarded state changes and atomic file writes. Imports nothing from the stages."""
