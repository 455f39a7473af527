"""Dashboard forms of the site itself."""

from django import forms

from canary_site.fields import UtcDateTimeField


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the token is for, e.g. 'ci-pipeline'.")
    expires_at = UtcDateTimeField(
        required=False,
        label="Expires at",
        help_text="Optional, e.g. 2027-01-31 00:00.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
