"""Admin of the flags app."""
