"""OFREP, the OpenFeature Remote Evaluation Protocol (open-feature/protocol, service/openapi.yaml).

``POST /ofrep/v1/evaluate/flags/{key}`` evaluates one flag, ``POST /ofrep/v1/evaluate/flags``
every flag, for the ``context`` in the body (a body without one is an empty context).

- Success: ``{"key", "value", "reason", "variant", "metadata"}``, metadata flat (strings,
  numbers, booleans). Values keep their JSON type: a number flag's 2.5 is a float, its 3 an
  integer.
- Errors: ``{"key", "errorCode", "errorDetails"}`` (without ``key`` from the bulk endpoint): 400
  ``PARSE_ERROR`` (the body is not JSON, or the flag's stored definition no longer builds),
  ``INVALID_CONTEXT`` (``context`` is not an object, ``targetingKey`` not a string, a number in
  it is ``NaN`` or infinite), ``TARGETING_KEY_MISSING`` (a percentage needs the stickiness
  attribute the context lacks), ``GENERAL``; 404 ``FLAG_NOT_FOUND``; 413 ``GENERAL`` for a body
  over ``DATA_UPLOAD_MAX_MEMORY_SIZE``.
- Authentication: an evaluation key as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``;
  401 without a known key, 403 for a revoked key or a personal API token (which cannot
  evaluate). Keys are looked up in the process's snapshot by digest: no query.
- Rate limit: per key per second (:mod:`flags.ratelimit`), 429 with ``Retry-After`` in whole
  seconds.
- Bulk: an ``ETag`` over the flag and segment versions and the context; ``If-None-Match`` with it
  answers 304 without a body. ``If-None-Match: *`` names no ETag of ours, so it evaluates.

These are plain Django views, not DRF: this is the hot path, and every evaluation is served from
the in-memory snapshot (:mod:`flags.snapshot`) with exposures counted in memory
(:mod:`flags.exposures`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from canary_site import selectors as site_selectors
from canary_site import tokens
from canary_site.services import TOKEN_PREFIX
from flags import conf
from flags.evaluation import ErrorCode, EvaluationResult, FlagSnapshot, evaluate
from flags.exposures import recorder
from flags.ratelimit import limiter
from flags.snapshot import KeyEntry, Snapshot, store

JSON = "application/json"
# ASCII output: any string a flag may hold, lone surrogates included, encodes.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class _Refusal(Exception):
    """A request that ends before evaluation, with the response that says why."""

    def __init__(self, response: HttpResponse) -> None:
        self.response = response


def _json(body: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(_dumps(body).encode(), content_type=JSON, status=status)


def _failure(status: int, code: str, details: str, key: str | None = None) -> HttpResponse:
    body: dict[str, Any] = {"errorCode": code, "errorDetails": details}
    if key is not None:
        body = {"key": key, **body}
    return _json(body, status)


def _general(status: int, details: str) -> HttpResponse:
    return _json({"errorDetails": details}, status)


def _method_not_allowed(allowed: str = "POST") -> HttpResponse:
    response = _general(405, f"Use {allowed}.")
    response["Allow"] = allowed
    return response


def _authenticate(request: HttpRequest, snapshot: Snapshot) -> KeyEntry:
    meta = request.META
    secret = meta.get("HTTP_X_API_KEY")
    if not secret:
        scheme, _, value = meta.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer":
            secret = value.strip()
    if not secret:
        response = _general(
            401, "Send an evaluation key as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'."
        )
        response["WWW-Authenticate"] = 'Bearer realm="ofrep"'
        raise _Refusal(response)
    entry = snapshot.keys.get(tokens.digest(secret))
    if entry is None:
        if secret.startswith(f"{TOKEN_PREFIX}_") and site_selectors.api_token_for_secret(
            secret=secret
        ):
            raise _Refusal(
                _general(403, "Personal API tokens cannot evaluate flags; use an evaluation key.")
            )
        response = _general(401, "Unknown evaluation key.")
        response["WWW-Authenticate"] = 'Bearer realm="ofrep"'
        raise _Refusal(response)
    if entry.revoked:
        raise _Refusal(_general(403, f"Evaluation key '{entry.name}' has been revoked."))
    return entry


def _check_rate(entry: KeyEntry) -> None:
    limit = entry.rate_limit if entry.rate_limit is not None else conf.ofrep_rate_limit()
    if not limiter.allow(entry.rate_key, limit):
        response = _general(
            429, f"Evaluation key '{entry.name}' is limited to {limit} evaluations a second."
        )
        response["Retry-After"] = str(limiter.retry_after())
        raise _Refusal(response)


class _NonFinite:
    """Stands in for a NaN or an infinity while a body is parsed: JSON has neither, and no
    attribute compares sensibly with them."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


_parsing = threading.local()


def _non_finite(text: str) -> _NonFinite:
    _parsing.non_finite = True
    return _NonFinite(text)


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)  # 1e999 overflows to an infinity
    return value if math.isfinite(value) else _non_finite(text)


# JSON as Python reads it, with what is not JSON's numbers marked rather than parsed. One decoder
# for every request (building one costs more than most bodies take to parse); whether a body
# held such a number is noted per thread.
_decode = json.JSONDecoder(parse_constant=_non_finite, parse_float=_finite_float).decode


def _body(request: HttpRequest, key: str | None) -> bytes:
    try:
        return request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise _Refusal(
            _failure(413, "GENERAL", f"The request body is larger than {limit} bytes.", key)
        ) from None


def _non_finite_path(value: Any, path: str) -> str | None:
    """Where in ``value`` the first NaN or infinity is, as ``context.a[0].b``."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _NonFinite):
            return where
        if isinstance(item, dict):
            stack.extend((child, f"{where}.{name}") for name, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend(
                (child, f"{where}[{index}]") for index, child in reversed(list(enumerate(item)))
            )
    return None


def _context(request: HttpRequest, key: str | None) -> dict[str, Any]:
    """The evaluation context of the body: ``{}`` for an empty body or one without a context."""
    body = _body(request, key)
    if not body or body.isspace():
        return {}
    _parsing.non_finite = False
    try:
        # As json.loads reads bytes: UTF-8, -16 or -32 by the first bytes.
        data = _decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError):
        raise _Refusal(
            _failure(400, "PARSE_ERROR", "The request body is not valid JSON.", key)
        ) from None
    if not isinstance(data, dict):
        raise _Refusal(_failure(400, "PARSE_ERROR", "The request body must be a JSON object.", key))
    context = data.get("context")
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise _Refusal(_failure(400, "INVALID_CONTEXT", "'context' must be an object.", key))
    if _parsing.non_finite:
        where = _non_finite_path(context, "context")
        if where is not None:
            raise _Refusal(
                _failure(
                    400,
                    "INVALID_CONTEXT",
                    f"'{where}' is not a finite number (NaN or infinite).",
                    key,
                )
            )
        raise _Refusal(
            _failure(
                400, "PARSE_ERROR", "The request body is not valid JSON (NaN or infinite).", key
            )
        )
    if (b"\\ud" in body or b"\\uD" in body) and not _valid_unicode(context):
        raise _Refusal(
            _failure(400, "INVALID_CONTEXT", "'context' holds text that is not valid Unicode.", key)
        )
    targeting_key = context.get("targetingKey")
    if targeting_key is not None and not isinstance(targeting_key, str):
        raise _Refusal(_failure(400, "INVALID_CONTEXT", "'targetingKey' must be a string.", key))
    return context


def _valid_unicode(context: dict[str, Any]) -> bool:
    # Only a \\uD800-\\uDFFF escape can put a lone surrogate in parsed JSON, so this runs only
    # for bodies that hold one (emoji as surrogate pairs pass).
    try:
        json.dumps(context, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _admit(request: HttpRequest) -> Snapshot:
    """Authenticate and rate-limit the request; the snapshot to evaluate it with."""
    snapshot = store.current()
    _check_rate(_authenticate(request, snapshot))
    return snapshot


def _evaluation(request: HttpRequest, key: str | None) -> tuple[Snapshot, dict[str, Any]]:
    """The snapshot and the context of an evaluation request (of one flag, or of all when
    ``key`` is None); raises `_Refusal` for one that ends before evaluation."""
    if request.method != "POST":
        raise _Refusal(_method_not_allowed())
    snapshot = _admit(request)
    return snapshot, _context(request, key)


def _success(result: EvaluationResult) -> dict[str, Any]:
    return {
        "key": result.flag_key,
        "value": result.value,
        "reason": result.reason.value,
        "variant": result.variant,
        "metadata": result.metadata,
    }


def _error_code(result: EvaluationResult) -> str:
    # TYPE_MISMATCH and FLAG_NOT_FOUND cannot come from an evaluation without an expected type
    # of a flag that exists; anything unforeseen is GENERAL.
    code = result.error_code
    if code in (ErrorCode.TARGETING_KEY_MISSING, ErrorCode.PARSE_ERROR):
        return code.value
    return ErrorCode.GENERAL.value


def _evaluate_one(snapshot: Snapshot, key: str, context: dict[str, Any]) -> dict[str, Any]:
    """The OFREP item for one flag of the snapshot: a success or a failure."""
    flag: FlagSnapshot | None = snapshot.flags.get(key)
    if flag is None:
        details = snapshot.broken.get(key)
        return {
            "key": key,
            "errorCode": "PARSE_ERROR",
            "errorDetails": f"The stored definition of flag '{key}' cannot be served: {details}",
        }
    result = evaluate(flag, context, snapshot.segments)
    if result.error_code is not None:
        return {
            "key": key,
            "errorCode": _error_code(result),
            "errorDetails": result.error_message or str(result.error_code),
        }
    return _success(result)


@csrf_exempt
def evaluate_flag(request: HttpRequest, key: str) -> HttpResponse:
    """``POST /ofrep/v1/evaluate/flags/{key}``: one flag for one context."""
    try:
        snapshot, context = _evaluation(request, key)
    except _Refusal as refusal:
        return refusal.response
    if key not in snapshot.flags and key not in snapshot.broken:
        return _failure(404, "FLAG_NOT_FOUND", f"No flag named '{key}'.", key)
    body = _evaluate_one(snapshot, key, context)
    if "errorCode" in body:
        return _json(body, 400)
    recorder.record(key, body["variant"])
    return _json(body)


@csrf_exempt
def evaluate_flags(request: HttpRequest) -> HttpResponse:
    """``POST /ofrep/v1/evaluate/flags``: every flag for one context, with an ETag."""
    try:
        snapshot, context = _evaluation(request, None)
    except _Refusal as refusal:
        return refusal.response
    etag = _etag(snapshot, context)
    if _etag_matches(request.META.get("HTTP_IF_NONE_MATCH"), etag):
        response = HttpResponse(status=304)
        response["ETag"] = etag
        return response
    items = []
    served = []
    for key in snapshot.flag_keys:
        body = _evaluate_one(snapshot, key, context)
        items.append(body)
        if "errorCode" not in body:
            served.append((key, body["variant"]))
    recorder.record_many(served)
    response = _json({"flags": items})
    response["ETag"] = etag
    return response


@csrf_exempt
def configuration(request: HttpRequest) -> HttpResponse:
    """``GET /ofrep/v1/configuration``: what this server supports (an OFREP extension)."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        _admit(request)
    except _Refusal as refusal:
        return refusal.response
    return _json(
        {
            "name": "Canary",
            "capabilities": {
                "cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": 1000}},
                "flagEvaluation": {
                    "supportedTypes": ["boolean", "string", "int", "float", "object"]
                },
            },
        }
    )


def _etag(snapshot: Snapshot, context: dict[str, Any]) -> str:
    try:
        canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        canonical = repr(context)
    digest = hashlib.sha256(f"{snapshot.etag_basis}|{canonical}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
    candidates = (part.strip().removeprefix("W/") for part in header.split(","))
    return etag in candidates
