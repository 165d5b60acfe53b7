"""Thin wrappers over the real python-gitlab and elasticsearch clients (no Dagster here)."""
