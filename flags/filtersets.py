"""Filters shared by the flags app's pages and API."""
