"""Admin of the health app."""
