"""Template context for the base layout: navigation and the signed-in user's roles."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from canary_site.roles import user_roles

NAVIGATION = [
    ("Overview", "canary_site:overview"),
    ("Deployments", "deployments:index"),
    ("Flags", "flags:index"),
    ("Routing", "routing:index"),
    ("Health", "health:index"),
    ("Rollback", "rollback:index"),
    ("Audit", "canary_site:audit-list"),
]


def navigation(request: HttpRequest) -> dict[str, Any]:
    return {"navigation": NAVIGATION, "user_roles": user_roles(getattr(request, "user", None))}
