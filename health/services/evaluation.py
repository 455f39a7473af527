"""Judgement: a window of each canary gathered, evaluated and stored as a health check, its alert
raised or resolved, and `health.signals.health_evaluated` sent."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from django.db import connection, transaction
from django.utils import timezone

from canary_site.collector import collector_paused
from canary_site.exceptions import ValidationFailed
from health import analysis, conf, store, windows
from health.ingest import NAME_PATTERN
from health.models import Alert, HealthCheck, HealthPolicy
from health.services.alerts import alerts_apply_checks
from health.signals import health_evaluated
from health.windows import EvaluationRequest

# One lock for every writer of checks and alerts, so two passes judging the same window (two
# beats, a beat and an API call) store one check and one alert between them.
_EVALUATION_LOCK = 0x6865616C7468


def health_evaluate(
    *,
    service: str,
    canary_version: str,
    stable_version: str | None,
    policy: HealthPolicy,
    window_seconds: int | None = None,
    planned_canary_share: float | None = None,
    window_start: datetime | None = None,
    now: datetime | None = None,
) -> HealthCheck:
    """Judge a canary against stable under ``policy`` over the latest window; store the check.

    The window ends on a bucket boundary ``CANARY_HEALTH_SETTLE_SECONDS`` before ``now``;
    ``window_seconds`` (default: the policy's) is rounded up to whole buckets. No window
    reaches back before ``window_start`` (the phase's start), whose traffic the sequential
    comparison judges as a whole (see `health.windows`). Raises or resolves the canary's
    alert, then sends `health_evaluated`. Called again for the same window, it returns the
    check already stored and sends nothing.
    """
    request = EvaluationRequest(
        service=service,
        canary_version=canary_version,
        stable_version=stable_version or None,
        policy=policy,
        window_seconds=window_seconds,
        planned_canary_share=planned_canary_share,
        window_start=window_start,
    )
    return health_evaluate_many(requests=[request], now=now)[0]


def health_evaluate_many(
    *, requests: Sequence[EvaluationRequest], now: datetime | None = None
) -> list[HealthCheck]:
    """`health_evaluate` for many canaries at once, with a number of queries that does not
    grow with their number; returns the checks in the order of ``requests``."""
    if not requests:
        return []
    now = now or timezone.now()
    specs: dict[int, analysis.Policy] = {}
    for index, request in enumerate(requests):
        _check_request(request, index if len(requests) > 1 else None)
        if request.policy.pk not in specs:
            try:
                specs[request.policy.pk] = request.policy.spec
            except analysis.InvalidPolicy as error:
                raise ValidationFailed(error.message, field=f"policy.{error.field}") from error
    resolution = conf.bucket_seconds()
    end = windows.window_end(now, resolution=resolution, settle=conf.settle_seconds())
    with collector_paused():
        gathered = windows.gather(requests, end=end, resolution=resolution, specs=specs)
        evaluations: list[analysis.Evaluation | None] = [
            None if inputs.existing is not None else windows.evaluate(inputs) for inputs in gathered
        ]

        created: list[tuple[HealthCheck, analysis.Evaluation]] = []
        alerts: dict[int, Alert] = {}
        results: list[HealthCheck | None] = [inputs.existing for inputs in gathered]
        with transaction.atomic():
            _lock_evaluations()
            # A concurrent pass may have stored some of these windows since they were read.
            stored = _stored_checks(gathered)
            pending: list[tuple[int, HealthCheck, analysis.Evaluation]] = []
            for index, (inputs, evaluation) in enumerate(zip(gathered, evaluations, strict=True)):
                if evaluation is None:
                    continue
                key = _check_key_of(inputs)
                if key in stored:
                    results[index] = stored[key]
                    continue
                check = _new_check(inputs, evaluation, now)
                stored[key] = check
                pending.append((index, check, evaluation))
            store.insert_checks([check for _, check, _ in pending])
            for index, check, evaluation in pending:
                results[index] = check
                created.append((check, evaluation))
            alerts = alerts_apply_checks(created, now)
    for check, evaluation in created:
        health_evaluated.send(
            sender=HealthCheck,
            check=check,
            evaluation=evaluation,
            service=check.service,
            canary_version=check.canary_version,
            stable_version=check.stable_version,
            policy=check.policy,
            verdict=check.verdict,
            should_rollback=check.should_rollback,
            alert=alerts.get(check.pk),
        )
    return [check for check in results if check is not None]


def _check_request(request: EvaluationRequest, index: int | None) -> None:
    prefix = "" if index is None else f"requests[{index}]."
    for name in ("service", "canary_version"):
        value = getattr(request, name)
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise ValidationFailed(
                "Must be 1 to 100 letters, digits or _.:-/@+.", field=f"{prefix}{name}"
            )
    stable = request.stable_version
    if stable is not None and (not isinstance(stable, str) or not NAME_PATTERN.fullmatch(stable)):
        raise ValidationFailed(
            "Must be 1 to 100 letters, digits or _.:-/@+.", field=f"{prefix}stable_version"
        )
    if not isinstance(request.policy, HealthPolicy) or request.policy.pk is None:
        raise ValidationFailed("A stored health policy is needed.", field=f"{prefix}policy")
    if request.window_seconds is not None and (
        isinstance(request.window_seconds, bool)
        or not isinstance(request.window_seconds, int)
        or not 1 <= request.window_seconds <= 86_400
    ):
        raise ValidationFailed("A window is 1 to 86,400 seconds.", field=f"{prefix}window_seconds")
    started = request.window_start
    if started is not None and (
        not isinstance(started, datetime) or started.tzinfo is None or started.utcoffset() is None
    ):
        raise ValidationFailed(
            "A window start is an aware date and time.", field=f"{prefix}window_start"
        )
    share = request.planned_canary_share
    if share is not None and (
        isinstance(share, bool)
        or not isinstance(share, int | float)
        or not math.isfinite(share)
        or not 0 <= share <= 100
    ):
        raise ValidationFailed(
            "A planned share is a percentage from 0 to 100.",
            field=f"{prefix}planned_canary_share",
        )


def _lock_evaluations() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_EVALUATION_LOCK])
    # SQLite: the IMMEDIATE transaction is already the only writer.


def _check_key_of(inputs: windows.Inputs) -> tuple[str, str, str, int, int, datetime]:
    return (*inputs.request.check_key, inputs.window_seconds, inputs.end)


def _stored_checks(
    gathered: Sequence[windows.Inputs],
) -> dict[tuple[str, str, str, int, int, datetime], HealthCheck]:
    services = {inputs.request.service for inputs in gathered}
    ends = {inputs.end for inputs in gathered}
    stored: dict[tuple[str, str, str, int, int, datetime], HealthCheck] = {}
    for check in HealthCheck.objects.filter(service__in=services, window_end__in=ends):
        if check.policy_id is None:
            continue
        key = (
            check.service,
            check.canary_version,
            check.stable_version,
            check.policy_id,
            check.window_seconds,
            check.window_end,
        )
        stored[key] = check
    return stored


def _new_check(
    inputs: windows.Inputs, evaluation: analysis.Evaluation, now: datetime
) -> HealthCheck:
    request = inputs.request
    result = evaluation.to_dict()
    result["inputs"]["history_from_checks"] = inputs.history_from_checks
    result["inputs"]["phase_from_carry"] = inputs.carried
    started = inputs.window_start
    result["window_start"] = None if started is None else started.isoformat()
    for name, (start, end) in inputs.spans.items():
        window = result["windows"].get(name)
        if window is not None:
            window["start"] = _iso(start)
            window["end"] = _iso(end)
    if inputs.carry is not None:
        result["carry"] = inputs.carry
    return HealthCheck(
        service=request.service,
        canary_version=request.canary_version,
        stable_version=request.stable_version or "",
        policy=request.policy,
        policy_name=request.policy.name,
        window_seconds=inputs.window_seconds,
        window_end=inputs.end,
        window_start=inputs.window_start,
        planned_canary_share=request.planned_canary_share,
        verdict=str(evaluation.verdict),
        should_rollback=evaluation.should_rollback,
        message=evaluation.message,
        result=result,
        created_at=now,
    )


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
