"""What the writes of the deployments app share: many rows in one statement, the person behind
a write, percentages, and signals whose receivers cannot undo the write that sent them."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from canary_site.bulk import write_rows as write_rows
from deployments.models import Deployment

logger = logging.getLogger(__name__)


def person(actor: Any) -> Any:
    """The user behind a write, or None for the system and anonymous callers."""
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None


def percent(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=Deployment, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "A receiver of %s failed: %r", getattr(receiver, "__name__", receiver), result
            )
