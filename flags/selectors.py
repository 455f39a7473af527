"""Reads of the flags app."""
