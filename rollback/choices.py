"""Choices (TextChoices) of the rollback app."""
