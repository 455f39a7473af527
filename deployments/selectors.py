"""Reads of the deployments app."""
