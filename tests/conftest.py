"""Shared fixtures: each service or artefact lives in its own plugin module next to this file."""

pytest_plugins = ["fixtures_model", "fixtures_gcs", "fixtures_postgres", "fixtures_runner"]
