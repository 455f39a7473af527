"""URL patterns shared by the apps' APIs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.urls import URLPattern, path


def optional_slash(route: str, view: Callable[..., Any], *, name: str) -> list[URLPattern]:
    """``route`` with and without a trailing slash, like the routers' paths, so a client adding
    the slash is answered rather than redirected (a redirected POST loses its body). Both
    spellings call the same view; the OpenAPI schema documents the one without
    (`canary_site.schema.one_spelling_per_route`), and ``reverse(name)`` gives it too."""
    return [path(route, view, name=name), path(f"{route}/", view)]
