"""Choices shared by the whole site."""

from django.db import models


class Source(models.TextChoices):
    """Where a change came from: a person in the dashboard, a REST client, or the control loop."""

    UI = "ui", "Dashboard"
    API = "api", "API"
    SYSTEM = "system", "System"


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    ENGINEER = "engineer", "Engineer"
    APPROVER = "approver", "Approver"
    ADMIN = "admin", "Admin"
