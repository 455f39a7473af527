"""Reads of the rollback app."""
