"""Reads of the routing app."""
