"""Choices (TextChoices) of the flags app."""
