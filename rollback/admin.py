"""Admin of the rollback app."""
