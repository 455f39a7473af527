"""Every error leaves in one body, with the status its kind promises."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, ProgrammingError
from django.http import HttpResponse
from django.test import RequestFactory
from rest_framework import serializers

from canary_site.exceptions import (
    Forbidden,
    NotFound,
    RateLimited,
    TransitionNotAllowed,
    ValidationFailed,
    api_exception_handler,
)
from canary_site.middleware import DatabaseUnavailableMiddleware
from canary_site.views import server_error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ValidationFailed("Weights must sum to 100.", field="weights"), 400, "invalid"),
        (Forbidden("Approvers only."), 403, "forbidden"),
        (NotFound("No such flag."), 404, "not_found"),
        (TransitionNotAllowed("A succeeded deployment cannot be paused."), 409, "conflict"),
        (RateLimited("Slow down.", retry_after=3), 429, "rate_limited"),
    ],
)
def test_handler__renders_each_kind_with_its_status_and_code(error, status, code):
    response = api_exception_handler(error, {})

    assert response.status_code == status
    assert response.data["error"]["code"] == code
    assert response.data["error"]["message"] == error.message


def test_handler__rate_limited__carries_retry_after_in_whole_seconds():
    response = api_exception_handler(RateLimited("Slow down.", retry_after=2.4), {})

    assert response["Retry-After"] == "2"


def test_handler__nested_serializer_errors__become_field_paths():
    error = serializers.ValidationError(
        {"rules": [{}, {"constraints": [{"operator": ["Unknown operator 'like'."]}]}]}
    )

    response = api_exception_handler(error, {})

    assert response.status_code == 400
    assert response.data["error"]["fields"] == {
        "rules[1].constraints[0].operator": ["Unknown operator 'like'."]
    }
    assert response.data["error"]["message"].startswith("rules[1].constraints[0].operator")


def test_handler__django_validation_error__names_the_field():
    response = api_exception_handler(ValidationError({"endpoint": ["Enter a valid URL."]}), {})

    assert response.status_code == 400
    assert response.data["error"]["fields"] == {"endpoint": ["Enter a valid URL."]}


def test_handler__unexpected_exception__is_left_to_django():
    assert api_exception_handler(RuntimeError("bug"), {}) is None


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("connection refused"),
        InterfaceError("connection already closed"),
    ],
    ids=["operational", "interface"],
)
def test_handler__an_unreachable_database__is_503_with_retry_after(error):
    response = api_exception_handler(error, {})

    assert response.status_code == 503
    assert response.data["error"]["code"] == "unavailable"
    assert int(response["Retry-After"]) >= 1


def test_handler__a_database_error_that_is_a_bug__is_left_to_django():
    assert api_exception_handler(ProgrammingError("no such column"), {}) is None


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/v1/flags/", "application/json"), ("/flags/", "text/html")],
)
def test_server_error_handler__while_the_database_is_down__answers_503(path, content_type):
    request = RequestFactory().get(path)
    try:
        raise OperationalError("server closed the connection unexpectedly")
    except OperationalError:
        response = server_error(request)

    assert response.status_code == 503
    assert response["Content-Type"].startswith(content_type)
    assert int(response["Retry-After"]) >= 1
    assert b"The database is unavailable" in response.content


def test_server_error_handler__for_any_other_failure__stays_500():
    request = RequestFactory().get("/api/v1/flags/")
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        response = server_error(request)

    assert response.status_code == 500


def test_middleware__passes_on_what_is_not_a_database_outage():
    middleware = DatabaseUnavailableMiddleware(lambda request: HttpResponse())
    request = RequestFactory().get("/flags/")

    assert middleware.process_exception(request, RuntimeError("bug")) is None
    assert middleware.process_exception(request, OperationalError("down")).status_code == 503
