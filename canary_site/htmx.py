"""The dashboard's htmx answers: which part of a page template to render, and redirects.

Regions that refresh are django-template-partials partials named after their element ids, and a
view answers an htmx request with ``"<page>.html#<partial>"``, in django-htmx's idiom
(``template_name += "#partial"``). Every app's pages choose their partial here.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect as page_redirect
from django_htmx.http import HttpResponseClientRedirect


def htmx_target(request: HttpRequest) -> str | None:
    """The id of the element htmx will swap, or None for a request not sent by htmx."""
    htmx = getattr(request, "htmx", None)
    return htmx.target if htmx else None


def partial_template(
    request: HttpRequest,
    template: str,
    partial: str | None = None,
    *,
    targets: Collection[str] = (),
) -> str:
    """``template``, or over htmx one of its partials: the one named like the element being
    swapped when that is one of ``targets``, else ``partial`` (when given)."""
    if not getattr(request, "htmx", None):
        return template
    target = request.htmx.target
    if target in targets:
        return f"{template}#{target}"
    return f"{template}#{partial}" if partial else template


class HtmxPartialMixin:
    """For template views: over htmx, render the partial ``htmx_partial``, or the one of
    ``htmx_targets`` that names the element being swapped."""

    request: HttpRequest
    htmx_partial: str | None = None
    htmx_targets: Collection[str] = ()

    def get_template_names(self) -> list[str]:
        names: list[str] = super().get_template_names()  # type: ignore[misc]
        return [
            partial_template(self.request, name, self.htmx_partial, targets=self.htmx_targets)
            for name in names
        ]


def redirect(request: HttpRequest, to: str, *args: Any, **kwargs: Any) -> HttpResponse:
    """After a write: a full page load of ``to`` for htmx (``HX-Redirect``), a redirect for a
    plain form post. ``to`` is a URL or a URL name with its arguments, as Django's redirect."""
    response = page_redirect(to, *args, **kwargs)
    if getattr(request, "htmx", None):
        return HttpResponseClientRedirect(response["Location"])
    return response
