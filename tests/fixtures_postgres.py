"""Fixtures: postgres (filled in by its feature)."""
