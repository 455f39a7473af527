"""Form fields shared by filtersets and forms: datetimes that every supported database can hold.

Python accepts UTC offsets up to ±23:59 and years 1 to 9999 in any offset; PostgreSQL refuses
offsets beyond ±15:59 and a moment near either end of Python's range may not exist once it is
converted to UTC. Left alone, such input reaches the database and fails there as a 500. These
fields refuse it as a validation error on the field and hand on the moment in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

MAX_UTC_OFFSET = timedelta(hours=15, minutes=59)


def _format_offset(offset: timedelta) -> str:
    sign = "-" if offset < timedelta(0) else "+"
    minutes = int(abs(offset).total_seconds()) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


class UtcDateTimeField(forms.DateTimeField):
    """A datetime (ISO 8601, an offset optional), cleaned to an aware datetime in UTC."""

    default_error_messages = {
        "offset": "The UTC offset %(offset)s is out of range: use one from -15:59 to +15:59.",
        "overflow": "This time is out of range once converted to UTC.",
    }

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is None:
            return None
        offset = moment.utcoffset()
        if offset is not None and abs(offset) > MAX_UTC_OFFSET:
            raise ValidationError(
                self.error_messages["offset"],
                code="offset",
                params={"offset": _format_offset(offset)},
            )
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise ValidationError(self.error_messages["overflow"], code="overflow") from None
