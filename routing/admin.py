"""Admin of the routing app."""
