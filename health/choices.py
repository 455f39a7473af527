"""Choices (TextChoices) of the health app."""
