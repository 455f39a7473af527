"""Dashboard forms of the site itself, and how every dashboard form shows a service's errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS

from canary_site.exceptions import CanaryError
from canary_site.fields import UtcDateTimeField

# The paths that name no field: Django's and DRF's.
_WHOLE_FORM = (NON_FIELD_ERRORS, "non_field_errors")


def _head(path: str) -> str:
    """The first part of a field path: ``affinity.ttl_s`` -> ``affinity``, ``rules[0]`` ->
    ``rules``."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def add_error_fields(
    form: forms.BaseForm,
    error: CanaryError,
    field_for: Callable[[str], str | None] | None = None,
    *,
    rows: Sequence[forms.BaseForm] = (),
    rows_at: str = "",
) -> None:
    """Put each field error of a service's ``error`` next to the form field it concerns.

    A path goes to the field ``field_for(path)`` names (or the first part of the path it
    returns), else to the field the path's first part names (``affinity.ttl_s`` on
    ``affinity``), else on the whole form; where the field is not the whole path, the message
    says the path. With ``rows`` (a formset's forms, in the order the
    service saw them), ``<rows_at>[i].name`` goes to row ``i``'s field ``name``.
    """
    if not error.fields:
        form.add_error(None, error.message)
        return
    row_path = re.compile(rf"{re.escape(rows_at)}\[(\d+)\]\.?(.*)") if rows else None
    for path, messages in error.fields.items():
        target, inner, name = form, path, None
        match = row_path.fullmatch(path) if row_path else None
        if match and int(match.group(1)) < len(rows):
            target, inner = rows[int(match.group(1))], match.group(2)
        elif field_for is not None:
            name = field_for(path)
        if name not in target.fields:
            head = _head(name or inner)
            name = head if head in target.fields else None
        for message in messages:
            whole = name == inner or not inner or inner in _WHOLE_FORM
            target.add_error(name, message if whole else f"{inner}: {message}")


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. 'ci-pipeline'.")
    expires_at = UtcDateTimeField(
        required=False,
        label="Expires at",
        help_text="Optional, e.g. 2027-01-31 00:00.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
