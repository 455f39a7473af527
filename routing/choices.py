"""Choices (TextChoices) of the routing app."""
