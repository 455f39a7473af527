"""Prometheus exposition of the system itself at /metrics: django-prometheus covers requests by
view and status and their latency; this module adds Celery task counts and serves the page.

Tasks run in worker processes while /metrics is served by the web process, so the counts are kept
in the shared cache (Redis in production) and read at scrape time by a custom collector.

gunicorn answers a scrape from whichever worker takes it, and each worker counts only what it
served, so a per-process registry makes counters jump back and forth between scrapes. Under
gunicorn (``canary_site/gunicorn.conf.py``) ``PROMETHEUS_MULTIPROC_DIR`` is set: every worker
writes its samples to files there and the scrape sums them with prometheus_client's
``MultiProcessCollector``, so one install exposes one set of counters whichever worker answers.

The apps' own state (deployments, health, flags, rollback) is read from the database at scrape
time by collectors each app hands to `register_collector` when it is ready, so this floor module
imports no app and every process that serves the page exposes the same numbers.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from collections.abc import Iterator
from typing import Any

from celery import signals
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import REGISTRY, CounterMetricFamily, Metric

from canary_site.exceptions import error_body
from canary_site.versions import Outage

logger = logging.getLogger(__name__)

STATES = ("succeeded", "failed", "retried")
KEY = "celery-task-count:{name}:{state}"


def _incr(name: str, state: str) -> None:
    key = KEY.format(name=name, state=state)
    try:
        cache.incr(key)
    except ValueError:
        # The first count; a concurrent first count may be lost, which a counter tolerates.
        cache.add(key, 0, timeout=None)
        cache.incr(key)


def _task_name(sender: Any) -> str:
    return getattr(sender, "name", None) or str(sender)


def _on_success(sender: Any = None, **_: Any) -> None:
    _incr(_task_name(sender), "succeeded")


def _on_failure(sender: Any = None, **_: Any) -> None:
    _incr(_task_name(sender), "failed")


def _on_retry(sender: Any = None, **_: Any) -> None:
    _incr(_task_name(sender), "retried")


class CeleryTaskCollector:
    """Reads the shared counts at scrape time, one cache round trip for all tasks."""

    def describe(self) -> Iterator[CounterMetricFamily]:
        # Registration asks for the names; answering without collect() keeps app start-up quiet.
        yield self._family()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "canary_celery_tasks",
            "Celery tasks finished, by task and state",
            labels=["task", "state"],
        )

    def collect(self) -> Iterator[CounterMetricFamily]:
        from canary_site.celery import app

        # Task modules are discovered lazily; the web process has to load them to know the names.
        app.loader.import_default_modules()
        names = sorted(name for name in app.tasks if not name.startswith("celery."))
        keys = {KEY.format(name=n, state=s): (n, s) for n in names for s in STATES}
        try:
            values = cache.get_many(list(keys))
        except Exception:  # a cache outage must not break the scrape of everything else
            values = {}
        family = self._family()
        for key, (name, state) in keys.items():
            family.add_metric([name, state], float(values.get(key, 0)))
        yield family


_collector = CeleryTaskCollector()


def connect_signals() -> None:
    signals.task_success.connect(_on_success, weak=False, dispatch_uid="canary_task_success")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="canary_task_failure")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="canary_task_retry")
    # ready() can run twice in some set-ups; the collector is registered once.
    with contextlib.suppress(ValueError):
        REGISTRY.register(_collector)


class StateCollector:
    """Base of the apps' collectors: the state of the database, read at scrape time.

    ``families()`` makes the metric families afresh (empty: what ``describe()`` answers, so
    registering reads nothing) and ``fill(families)`` adds the samples in a fixed number of
    queries, however many rows there are. A database that cannot be reached leaves this
    collector's families out of the page (logged once per outage) rather than failing the
    scrape of everything else."""

    # Names the collector in the outage's log line.
    what = "state"

    def __init__(self) -> None:
        self._outage = Outage(f"The database (for the {self.what} on /metrics)", logger)

    def families(self) -> dict[str, Metric]:
        raise NotImplementedError

    def fill(self, families: dict[str, Metric]) -> None:
        raise NotImplementedError

    def describe(self) -> Iterator[Metric]:
        return iter(self.families().values())

    def collect(self) -> Iterator[Metric]:
        families = self.families()
        try:
            self.fill(families)
        except (OperationalError, InterfaceError) as error:
            self._outage.failed(error, "/metrics leaves its numbers out until it answers")
            return iter(())
        self._outage.recovered()
        return iter(families.values())


_multiprocess_registry: CollectorRegistry | None = None
# The apps' collectors, in the order they were registered, for the multiprocess registry too.
_domain_collectors: list[Any] = []


def register_collector(collector: Any) -> None:
    """Add an app's collector to what /metrics exposes (each app's ``ready()`` calls this).

    Once per process: a second registration of the same class is ignored, since ``ready()``
    can run twice. The collector needs a ``describe()`` that queries nothing, since the
    registry asks for its names at once and app start-up must not touch the database."""
    if any(type(known) is type(collector) for known in _domain_collectors):
        return
    _domain_collectors.append(collector)
    REGISTRY.register(collector)
    if _multiprocess_registry is not None:
        _multiprocess_registry.register(collector)


def scrape_registry() -> CollectorRegistry:
    """The registry a scrape reads: every worker's files summed when gunicorn runs several, else
    this process's own registry (runserver, tests, a single process)."""
    global _multiprocess_registry
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    if _multiprocess_registry is None:
        # Only what adds up across workers: the process collectors of the default registry
        # would describe whichever worker answered, the very jumping this mode removes.
        registry = CollectorRegistry(auto_describe=True)
        multiprocess.MultiProcessCollector(registry)
        registry.register(_collector)
        # The apps' collectors read the database, which every worker shares.
        for collector in _domain_collectors:
            registry.register(collector)
        _multiprocess_registry = registry
    return _multiprocess_registry


def _refused(status: int, code: str, message: str) -> JsonResponse:
    response = JsonResponse(error_body(code, message), status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the exposition, behind ``Authorization: Bearer <CANARY_METRICS_TOKEN>``
    when that token is set (401 without credentials, 403 with the wrong ones)."""
    token = settings.CANARY_METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _refused(401, "not_authenticated", "/metrics needs the metrics bearer token.")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return _refused(403, "forbidden", "That is not the metrics token.")
    return HttpResponse(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
