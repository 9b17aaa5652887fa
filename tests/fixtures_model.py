"""Fixtures: model (filled in by its feature)."""
