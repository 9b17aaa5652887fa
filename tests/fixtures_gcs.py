"""Fixtures: gcs (filled in by its feature)."""
