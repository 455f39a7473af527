"""Reads of the health app."""
