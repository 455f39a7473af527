"""Models of the rollback app."""
