"""One error hierarchy for Canary, and the renderers that turn any error into the one error body.

Every 4xx the API sends looks like ``{"error": {"code", "message", "fields": {...}}}``, and so
does the 503 it sends while the database is unreachable; the dashboard's error partial renders the
same three parts. Services raise these errors; views and serializers never invent their own shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

T = TypeVar("T")


class CanaryError(Exception):
    """A client error with a message and, where it concerns one, the field it concerns."""

    status_code = 400
    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        fields: dict[str, list[str]] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, list[str]] = dict(fields or {})
        if field:
            self.fields.setdefault(field, []).append(message)
        if code:
            self.code = code

    def as_body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.fields)


class ValidationFailed(CanaryError):
    status_code = 400
    code = "invalid"


class Forbidden(CanaryError):
    status_code = 403
    code = "forbidden"


class NotFound(CanaryError):
    status_code = 404
    code = "not_found"


def or_404(read: Callable[..., T], /, **lookup: Any) -> T:
    """``read(**lookup)`` for a dashboard page: a NotFound becomes Django's 404 page, with the
    message the selector gave."""
    try:
        return read(**lookup)
    except NotFound as error:
        raise Http404(error.message) from None


class TransitionNotAllowed(CanaryError):
    """The object exists and the input is fine, but its current state does not allow this now."""

    status_code = 409
    code = "conflict"


class Conflict(CanaryError):
    """The client's copy is stale: the object changed since the version the client sent."""

    status_code = 409
    code = "stale"


class RetryLater(CanaryError):
    """The same request may work after ``retry_after`` seconds (at least one)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


class RateLimited(RetryLater):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(RetryLater):
    """Not the client's fault and not a bug: a dependency is down for now."""

    status_code = 503
    code = "unavailable"


# How long a client should wait before trying again while the database is unreachable: about
# what a restart or a fail-over of PostgreSQL takes.
DATABASE_RETRY_AFTER_SECONDS = 5


def is_database_unavailable(exc: BaseException) -> bool:
    """True for the errors DB-API reserves for the database's operation rather than the query
    (refused or dropped connections, a server shutting down, a locked SQLite file): transient
    failures of the database, which a retry may outlive."""
    return isinstance(exc, (DatabaseOperationalError, DatabaseInterfaceError))


logger = logging.getLogger(__name__)


class _Outage:
    """Whether this process has logged the current database outage: one warning when it starts
    and one when it ends, rather than a traceback for every request in between."""

    down = False


def database_unavailable(exc: BaseException) -> ServiceUnavailable:
    if not _Outage.down:
        _Outage.down = True
        logger.warning("The database is unavailable (%s: %s).", type(exc).__name__, exc)
    return ServiceUnavailable(
        "The database is unavailable; try again shortly.",
        retry_after=DATABASE_RETRY_AFTER_SECONDS,
    )


def database_available() -> None:
    """A request got through: ends the outage that `database_unavailable` logged, if any."""
    if _Outage.down:
        _Outage.down = False
        logger.warning("The database is available again.")


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten_detail(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn DRF's nested error detail into ``{"a.b[0].c": ["message"]}``."""
    fields: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = str(key) if not prefix else f"{prefix}.{key}"
            if key == "non_field_errors":
                name = prefix or "non_field_errors"
            for sub, messages in _flatten_detail(value, name).items():
                fields.setdefault(sub, []).extend(messages)
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            fields[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                if item:
                    fields.update(_flatten_detail(item, f"{prefix}[{index}]"))
    else:
        fields[prefix or "non_field_errors"] = [str(detail)]
    return fields


def _summary(fields: dict[str, list[str]], fallback: str) -> str:
    if not fields:
        return fallback
    name, messages = next(iter(fields.items()))
    if name == "non_field_errors":
        return messages[0]
    return f"{name}: {messages[0]}"


def full_clean(
    instance: Any,
    *,
    exclude: list[str] | None = None,
    prefix: str = "",
    names: dict[str, str] | None = None,
    non_field: str = NON_FIELD_ERRORS,
) -> None:
    """``instance.full_clean()``, raising `ValidationFailed` that names each field instead of
    Django's error, so a service's model checks leave in the one error body.

    ``prefix`` and ``names`` turn a model field into the client's field path (a phase's
    ``min_requests`` is ``phases[0].min_requests``); ``non_field`` is the path of the errors
    that concern no single field. The message names the first field, unless it is none.
    """
    try:
        instance.full_clean(exclude=exclude)
    except DjangoValidationError as error:
        fields: dict[str, list[str]] = {}
        for name, messages in error.message_dict.items():
            path = non_field if name == NON_FIELD_ERRORS else prefix + (names or {}).get(name, name)
            fields.setdefault(path, []).extend(str(message) for message in messages)
        path, messages = next(iter(fields.items()))
        message = messages[0] if path == NON_FIELD_ERRORS else f"{path}: {messages[0]}"
        raise ValidationFailed(message, fields=fields) from None


def to_canary_error(exc: Exception) -> CanaryError | None:
    """Map Django's and DRF's own exceptions onto ours (4xx, and 503 for an unreachable
    database); None for anything else, which is a bug and stays a 500."""
    if isinstance(exc, CanaryError):
        return exc
    if is_database_unavailable(exc):
        return database_unavailable(exc)
    if isinstance(exc, drf_exceptions.ValidationError):
        fields = _flatten_detail(exc.detail)
        return ValidationFailed(_summary(fields, "Invalid input."), fields=fields)
    if isinstance(exc, DjangoValidationError):
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        fields = _flatten_detail(detail)
        return ValidationFailed(_summary(fields, "Invalid input."), fields=fields)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        error = CanaryError(
            f"The request body is larger than the {limit:,} bytes accepted.",
            code="payload_too_large",
        )
        error.status_code = 413
        return error
    if isinstance(exc, drf_exceptions.ParseError):
        return ValidationFailed(f"Malformed request body: {exc.detail}", code="parse_error")
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        error = CanaryError(str(exc.detail), code="unsupported_media_type")
        error.status_code = 415
        return error
    if isinstance(exc, (drf_exceptions.NotAuthenticated, drf_exceptions.AuthenticationFailed)):
        error = CanaryError(str(exc.detail), code="not_authenticated")
        error.status_code = 401
        return error
    if isinstance(exc, (drf_exceptions.PermissionDenied, DjangoPermissionDenied)):
        message = str(getattr(exc, "detail", "") or exc or "")
        return Forbidden(message or "Your role does not allow this.")
    if isinstance(exc, (drf_exceptions.NotFound, Http404)):
        return NotFound(str(getattr(exc, "detail", "")) or "Not found.")
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        error = CanaryError(str(exc.detail), code="method_not_allowed")
        error.status_code = 405
        return error
    if isinstance(exc, drf_exceptions.NotAcceptable):
        error = CanaryError(str(exc.detail), code="not_acceptable")
        error.status_code = 406
        return error
    if isinstance(exc, drf_exceptions.Throttled):
        return RateLimited(str(exc.detail), retry_after=int(exc.wait or 1))
    if isinstance(exc, drf_exceptions.APIException) and 400 <= exc.status_code < 500:
        error = CanaryError(str(exc.detail), code=exc.default_code)
        error.status_code = exc.status_code
        return error
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler: every client error leaves in the one error body."""
    # Imported here: rest_framework.views loads the API settings, which import our auth classes.
    from rest_framework.views import set_rollback

    error = to_canary_error(exc)
    if error is None:
        return None
    if error.status_code < 400:
        # Not a failure: the change waits for a sign-off, and the request saying so must stay.
        return Response(error.as_body(), status=error.status_code)
    set_rollback()
    headers: dict[str, str] = {}
    if isinstance(error, (RateLimited, ServiceUnavailable)):
        headers["Retry-After"] = str(error.retry_after)
    if error.status_code == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return Response(error.as_body(), status=error.status_code, headers=headers)
