"""Choices (TextChoices) of the deployments app."""
