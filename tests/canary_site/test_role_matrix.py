"""Every route of the site, walked from the URL resolver (admin included), called as every role
with every method it takes, against the table below of what each role must get. A route added
without a row in the table fails, so no page or endpoint ships unjudged.

Roles: anonymous, signed in with no role, viewer, engineer, approver, admin (the group, not a
superuser) and a superuser. Methods: GET (and POST where the view takes it) for pages; GET and
POST for the admin's model pages; GET, POST, PUT, PATCH and DELETE for the API and OFREP. Each
request runs in a savepoint that is rolled back, so one role's write never changes what the next
one meets, and after each write the evidence rows must all still be there.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

import pytest
from django.db import transaction
from django.test import Client, override_settings
from django.test.client import ClientHandler
from django.urls import URLResolver, get_resolver, resolve
from django.utils import timezone
from rest_framework.views import APIView

from tests.deployments.conftest import make_config

pytestmark = pytest.mark.django_db

ANON, NOROLE, VIEWER, ENGINEER, APPROVER, ADMIN, SUPER = (
    "anonymous",
    "no-role",
    "viewer",
    "engineer",
    "approver",
    "admin",
    "superuser",
)
ROLES = [ANON, NOROLE, VIEWER, ENGINEER, APPROVER, ADMIN, SUPER]
SIGNED_IN = ROLES[1:]
HAS_ROLE = ROLES[2:]
ENGINEERS = (ENGINEER, ADMIN, SUPER)
ADMINS = (ADMIN, SUPER)
GET, POST, PUT, PATCH, DELETE = "GET", "POST", "PUT", "PATCH", "DELETE"
API_METHODS = (GET, POST, PUT, PATCH, DELETE)
# A 302 whose Location is a login page (the site's or the admin's).
LOGIN = "login"


# --- the routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    key: str
    name: str
    methods: tuple[str, ...]
    admin_view: str = ""

    @property
    def params(self) -> list[str]:
        return re.findall(r"<(\w+)>", self.key)


def _normalise(route: str) -> str:
    """One spelling for path() and regex routes: ``api/v1/flags/<key>/``."""
    route = route.replace("^", "").replace("$", "")
    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route)
    return re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", route)


def _methods(key: str, name: str, callback: Any) -> tuple[tuple[str, ...], str]:
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    if key.startswith(("api/", "ofrep/")) or (
        isinstance(view_class, type) and issubclass(view_class, APIView)
    ):
        return API_METHODS, ""
    if key.startswith("admin/"):
        if getattr(callback, "model_admin", None) is None:
            return (GET,), ""
        kind = name.rpartition("_")[2]
        return ((GET,) if kind == "history" else (GET, POST)), kind
    if isinstance(view_class, type):
        allowed = [
            method.upper()
            for method in ("get", "post", "put", "patch", "delete")
            if method in view_class.http_method_names and hasattr(view_class, method)
        ]
        return tuple(allowed), ""
    return (GET,), ""


def _walk(patterns: list[Any], prefix: str = "", namespace: str = "") -> Iterator[Route]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern), inner)
            continue
        key = _normalise(prefix + str(entry.pattern))
        name = f"{namespace}{entry.name or ''}"
        methods, admin_view = _methods(key, name, entry.callback)
        yield Route(key, name, methods, admin_view)


ROUTES = {route.key: route for route in _walk(get_resolver().url_patterns)}


# --- the objects the routes are called on -------------------------------------------------------

# One request handler for every client: each new one would load the middleware again, and
# WhiteNoise's scans every static file when it loads.
_HANDLER = ClientHandler(enforce_csrf_checks=False)


@dataclass
class World:
    users: dict[str, Any]
    owner: Any
    values: dict[str, str]
    admin_objects: dict[tuple[str, str], int]
    evidence: list[tuple[Any, int]] = field(default_factory=list)
    cookies: dict[str, Any] = field(default_factory=dict)

    def evidence_kept(self) -> bool:
        """Every evidence row is still there, asked in one query."""
        first, *rest = (
            model.objects.filter(pk=pk).values_list("pk") for model, pk in self.evidence
        )
        return first.union(*rest, all=True).count() == len(self.evidence)


def _user(username: str, roles: list[str]) -> Any:
    from django.contrib.auth import get_user_model

    from canary_site import services

    user = get_user_model().objects.create_user(username=username, password=None)
    services.user_set_roles(user=user, roles=roles)
    return user


def _build_world() -> World:
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog
    from django.contrib.auth.models import Group
    from django.contrib.contenttypes.models import ContentType

    from canary_site import services as site_services
    from canary_site.models import AuditEntry
    from deployments import services as deployment_services
    from deployments.models import DeploymentEvent
    from flags import services as flag_services
    from flags.models import Flag, FlagExposure
    from health import services as health_services
    from health.histogram import Histogram
    from health.ingest import OutcomeBatchItem
    from health.models import (
        Alert,
        HealthCheck,
        MetricBucket,
        NotificationOutbox,
        PrometheusQuery,
        PushBatch,
    )
    from routing import services as routing_services
    from routing.models import ProviderSync, RuleTarget

    users: dict[str, Any] = {}
    for role in SIGNED_IN:
        user = _user(f"matrix-{role}", [] if role in (NOROLE, SUPER) else [role])
        if role == SUPER:
            user.is_superuser = user.is_staff = True
            user.save(update_fields=["is_superuser", "is_staff"])
        users[role] = user
    owner = _user("matrix-owner", [VIEWER])
    token, _secret = site_services.api_token_create(user=owner, name="matrix")
    heartbeat = site_services.heartbeat_record(name="beat")

    segment = flag_services.segment_create(
        key="matrix-segment",
        constraints=[{"attribute": "country", "operator": "in", "values": ["NL"]}],
    )
    flag = flag_services.flag_create(
        key="matrix-flag",
        status="enabled",
        rules=[{"name": "beta", "segments": [segment.key], "serve": {"variant": "on"}}],
    )
    evaluation_key, _secret = flag_services.evaluation_key_create(name="matrix")
    now = timezone.now().replace(second=0, microsecond=0)
    exposure = FlagExposure.objects.create(
        flag_key=flag.key, variant="on", bucket_start=now, count=3
    )

    service = routing_services.service_create(name="matrix", stable_version="1.0.0")
    routing_services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version="1.0.0"
    )
    target = routing_services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version="2.0.0"
    )
    rule = routing_services.rule_create(
        service=service, name="split", targets={"stable": 90, "canary": 10}
    )

    policy = health_services.health_policy_create(name="matrix", alerting_enabled=False)
    health_services.metrics_record_outcomes(
        outcomes=[
            OutcomeBatchItem(
                service="matrix",
                version="2.0.0",
                bucket_start=now,
                requests=10,
                errors=1,
                latency=Histogram.from_values([50.0] * 10),
            )
        ]
    )
    push = PushBatch.objects.create(key="matrix-push", digest="0" * 64, samples=1)
    query = PrometheusQuery.objects.create(
        name="matrix", metric="requests", service="matrix", versions=["2.0.0"], query="up"
    )

    deployment = deployment_services.deployment_create(
        config=make_config(service="matrix", name="matrix 2.0"), health_policy=policy
    )
    # A deployment that ran: its timeline is evidence. The pending one above may be deleted.
    ran = deployment_services.deployment_create(
        config=make_config(service="matrix", name="matrix 1.9"), health_policy=policy
    )
    for action in ("start", "abort"):
        deployment_services.deployment_transition(deployment_id=ran.pk, action=action)
    event = DeploymentEvent.objects.get(deployment=ran, kind="start")
    # After the runs: ending a deployment resolves the alerts of its versions.
    check = HealthCheck.objects.create(
        service="matrix",
        canary_version="2.0.0",
        stable_version="1.0.0",
        policy=policy,
        window_seconds=60,
        window_end=now,
        verdict="critical",
        message="error rate above threshold",
    )
    alert = Alert.objects.create(
        service="matrix",
        canary_version="2.0.0",
        stable_version="1.0.0",
        policy=policy,
        severity="critical",
        title="matrix is failing",
        message="error rate above threshold",
        first_check=check,
        last_check=check,
    )
    outbox = NotificationOutbox.objects.create(
        key="matrix-1",
        alert=alert,
        event="raised",
        channel="email",
        target="ops@example.com",
        subject="matrix is failing",
    )

    from rollback import services as rollback_services
    from rollback.models import ApprovalRequest

    approval_policy = rollback_services.approval_policy_create(
        name="matrix", scope_kind="service", scope_value="matrix", actions=["flag.update"]
    )
    # A pending request of the owner's, for a version of the flag that has moved on since: an
    # approver's decision reaches the version check (409), and nothing is applied.
    approval = ApprovalRequest.objects.create(
        policy=approval_policy,
        action="flag.update",
        object_type="flags.flag",
        object_id=str(flag.pk),
        object_repr=f"flag {flag.key}",
        object_version="0",
        change={"before": {"name": flag.name}, "after": {"name": "renamed"}},
        service="flags.services.flag_update",
        arguments={"flag": {"$model": "flags.flag", "pk": flag.pk}, "changes": {"name": "x"}},
        requester=owner,
        expires_at=now + timedelta(days=1),
    )
    approval.approvers.set([users[APPROVER], users[ADMIN], users[SUPER]])
    # A plan with a rehearsal under way: its delete is refused (409), the rehearsal may be
    # cancelled; the deployment that ran is the one rehearsed, so the pending one stays free.
    rollback_plan = rollback_services.rollback_plan_create(
        definition={"name": "matrix", "service": "matrix", "strategy": "gradual"}
    )
    rehearsal = rollback_services.rollback_rehearse(plan=rollback_plan, deployment=ran)
    # An active kill switch over a flag of its own: its delete is refused (409), and it has an
    # activation to read.
    flag_services.flag_create(key="matrix-switched", status="enabled")
    kill_switch = rollback_services.kill_switch_create(
        definition={"name": "matrix", "scope": "flag", "flags": ["matrix-switched"]}
    )
    activation = rollback_services.kill_switch_trigger(switch=kill_switch, reason="matrix")

    attempt_fields = {
        "user_agent": "matrix",
        "ip_address": "127.0.0.1",
        "username": "nobody",
        "http_accept": "*/*",
        "path_info": "/accounts/login/",
        "attempt_time": now,
    }
    access_attempt = AccessAttempt.objects.create(
        **attempt_fields, get_data="", post_data="", failures_since_start=1
    )
    access_log = AccessLog.objects.create(**attempt_fields, session_hash="")
    access_failure = AccessFailureLog.objects.create(**attempt_fields, locked_out=False)
    audit_entry = AuditEntry.objects.order_by("pk").first()
    assert audit_entry is not None

    admin_objects = {
        ("auth", "group"): Group.objects.get(name=VIEWER).pk,
        ("auth", "user"): owner.pk,
        ("axes", "accessattempt"): access_attempt.pk,
        ("axes", "accesslog"): access_log.pk,
        ("axes", "accessfailurelog"): access_failure.pk,
        ("canary_site", "auditentry"): audit_entry.pk,
        ("canary_site", "apitoken"): token.pk,
        ("canary_site", "heartbeat"): heartbeat.pk,
        ("flags", "flag"): flag.pk,
        ("flags", "segment"): segment.pk,
        ("flags", "evaluationkey"): evaluation_key.pk,
        ("flags", "flagexposure"): exposure.pk,
        ("routing", "service"): service.pk,
        ("routing", "target"): target.pk,
        ("routing", "routingrule"): rule.pk,
        ("routing", "ruletarget"): RuleTarget.objects.filter(rule=rule).first().pk,
        ("routing", "providersync"): ProviderSync.objects.create(
            service=service, provider="haproxy", action="apply", ok=True, detail="matrix"
        ).pk,
        ("health", "metricbucket"): MetricBucket.objects.first().pk,
        ("health", "healthpolicy"): policy.pk,
        ("health", "healthcheck"): check.pk,
        ("health", "alert"): alert.pk,
        ("health", "notificationoutbox"): outbox.pk,
        ("health", "pushbatch"): push.pk,
        ("health", "prometheusquery"): query.pk,
        ("deployments", "deployment"): deployment.pk,
        ("rollback", "approvalpolicy"): approval_policy.pk,
        ("rollback", "approvalrequest"): approval.pk,
        ("rollback", "rollbackplan"): rollback_plan.pk,
        ("rollback", "rollbackexecution"): rehearsal.pk,
        ("rollback", "killswitch"): kill_switch.pk,
        ("rollback", "killswitchactivation"): activation.pk,
    }
    values = {
        "flag": flag.key,
        "segment": segment.key,
        "key_id": str(evaluation_key.pk),
        "index": "0",
        "name": service.name,
        "service": service.name,
        "rule_id": str(rule.pk),
        "alert_id": str(alert.pk),
        "policy_id": str(policy.pk),
        "deployment_id": str(deployment.pk),
        "token_id": str(token.pk),
        "id": str(owner.pk),
        "content_type_id": str(ContentType.objects.get_for_model(Flag).pk),
        "view_on_site_object": str(flag.pk),
        "app_label": "flags",
        "url": "nowhere/",
        "api/v1/audit/": str(audit_entry.pk),
        "api/v1/tokens/": str(token.pk),
        "api/v1/routing/targets/": str(target.pk),
        "api/v1/routing/rules/": str(rule.pk),
        "api/v1/health/policies/": str(policy.pk),
        "api/v1/health/checks/": str(check.pk),
        "api/v1/health/alerts/": str(alert.pk),
        "api/v1/deployments/": str(deployment.pk),
        "request_id": str(approval.pk),
        "plan_id": str(rollback_plan.pk),
        "execution_id": str(rehearsal.pk),
        "switch_id": str(kill_switch.pk),
        "api/v1/approvals/": str(approval.pk),
        "api/v1/approval-policies/": str(approval_policy.pk),
        "api/v1/rollback/plans/": str(rollback_plan.pk),
        "api/v1/rollback/executions/": str(rehearsal.pk),
        # Before the switches: the first prefix of a route names its object.
        "api/v1/kill-switches/activations/": str(activation.pk),
        "api/v1/kill-switches/": str(kill_switch.pk),
    }
    evidence = [
        (AuditEntry, audit_entry.pk),
        (DeploymentEvent, event.pk),
        (FlagExposure, exposure.pk),
        (MetricBucket, admin_objects[("health", "metricbucket")]),
        (HealthCheck, check.pk),
        (Alert, alert.pk),
        (NotificationOutbox, outbox.pk),
        (PushBatch, push.pk),
    ]
    world = World(users, owner, values, admin_objects, evidence)
    for role, user in users.items():
        client = Client()
        client.handler = _HANDLER
        client.force_login(user)
        world.cookies[role] = client.cookies
    return world


MISSING = {"int": "999999", "str": "no-such-thing"}
FIXED_PARAMS = {"app_label", "url"}


def _value(route: Route, param: str, world: World, *, missing: bool) -> str:
    if param in FIXED_PARAMS:
        return world.values[param]
    if param in ("pk",) and route.key.startswith("api/v1/"):
        prefix = next(p for p in world.values if p.startswith("api/") and route.key.startswith(p))
        real = world.values[prefix]
    elif param == "key":
        real = world.values["segment" if "segments/" in route.key else "flag"]
    elif param == "object_id":
        if route.key.startswith("admin/r/"):
            real = world.values["view_on_site_object"]
        else:
            app, model = route.key.split("/")[1:3]
            real = str(world.admin_objects[(app, model)])
    else:
        real = world.values[param]
    if not missing:
        return real
    return MISSING["int"] if real.isdigit() else MISSING["str"]


def route_path(route: Route, world: World, *, missing: bool = False) -> str:
    path = route.key
    for param in route.params:
        path = path.replace(f"<{param}>", _value(route, param, world, missing=missing), 1)
    return "/" + path


def _admin_body(route: Route, world: World) -> dict[str, Any]:
    if route.admin_view == "changelist":
        app, model = route.key.split("/")[1:3]
        return {
            "action": "delete_selected",
            "_selected_action": [str(world.admin_objects[(app, model)])],
            "index": "0",
            "post": "yes",
        }
    if route.admin_view == "delete":
        return {"post": "yes"}
    return {}


def call(client: Client, route: Route, method: str, path: str, world: World) -> Any:
    if method == GET:
        return client.get(path)
    if route.methods == API_METHODS:
        return client.generic(method, path, json.dumps({}), content_type="application/json")
    if route.admin_view:
        return client.post(path, _admin_body(route, world))
    return client.post(path, {})


@dataclass
class Observation:
    status: int
    location: str
    evidence_kept: bool
    # REST refusals carry the one error body: {"error": {"code", "message", "fields"}}.
    error_body_ok: bool = True

    def matches(self, expected: int | str) -> bool:
        if expected == LOGIN:
            return self.status == 302 and "login" in self.location
        return self.status == expected


def observe(
    route: Route, world: World, roles: list[str], *, missing: bool = False
) -> dict[tuple[str, str], Observation]:
    """Each role's answer to each method of ``route``, every request rolled back."""
    path = route_path(route, world, missing=missing)
    match = resolve(path.split("?")[0])
    assert _normalise(match.route) == route.key, f"{path} resolves to {match.route}"
    seen: dict[tuple[str, str], Observation] = {}
    client = Client(raise_request_exception=False)
    client.handler = _HANDLER
    for role in roles:
        cookies = world.cookies.get(role, SimpleCookie())
        for method in route.methods:
            # The session as it was signed in: a logout or a message cookie does not carry on.
            client.cookies = copy.deepcopy(cookies)
            with transaction.atomic():
                response = call(client, route, method, path, world)
                kept = method == GET or world.evidence_kept()
                transaction.set_rollback(True)
            seen[(role, method)] = Observation(
                response.status_code,
                response.get("Location", ""),
                kept,
                _error_body_ok(route, response),
            )
    return seen


def _error_body_ok(route: Route, response: Any) -> bool:
    if not route.key.startswith("api/v1/") or response.status_code < 400:
        return True
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return isinstance(body, dict) and set(body.get("error") or {}) == {"code", "message", "fields"}


@pytest.fixture(scope="module")
def world(django_db_setup: Any, django_db_blocker: Any) -> Iterator[World]:
    """Built once for the module inside a transaction that is rolled back after it; each test
    and each request then runs in a savepoint of its own."""
    quiet = override_settings(CANARY_DEPLOYMENTS_ENQUEUE=False, CANARY_NOTIFY_ENQUEUE=False)
    with django_db_blocker.unblock(), quiet, transaction.atomic():
        yield _build_world()
        transaction.set_rollback(True)


# --- what each role must get --------------------------------------------------------------------

L = LOGIN
Row = dict[str, int | str]


def row(*statuses: int | str) -> Row:
    """One line of the table, in the order of ``ROLES``."""
    assert len(statuses) == len(ROLES)
    return dict(zip(ROLES, statuses, strict=True))


def everyone(status: int | str) -> Row:
    return row(*[status] * len(ROLES))


PAGE = row(L, 403, 200, 200, 200, 200, 200)
API_READ = row(401, 403, 200, 200, 200, 200, 200)
# A method the route does not take: 405 to anyone the API lets in.
NOT_ROUTED = row(401, 403, 405, 405, 405, 405, 405)
# The admin: every role may open it; anonymous and role-less visitors go to its login.
STAFF = row(L, L, 200, 200, 200, 200, 200)
STAFF_REDIRECT = row(L, L, 302, 302, 302, 302, 302)
ADMINS = row(L, L, 403, 403, 403, 200, 200)
NO_ONE = row(L, L, 403, 403, 403, 403, 403)


def engineers(status: int | str) -> Row:
    """A dashboard page or form that only engineers and admins may use."""
    return row(L, 403, 403, status, 403, status, status)


def api_engineers(status: int | str) -> Row:
    return row(401, 403, 403, status, 403, status, status)


def admin_engineers(status: int | str) -> Row:
    return row(L, L, 403, status, 403, status, status)


def admin_staff(status: int | str, *, engineers: int | str) -> Row:
    """An admin page every role sees; ``engineers`` is what engineers and admins get."""
    return row(L, L, status, engineers, status, engineers, engineers)


def api(**methods: Row) -> dict[str, Row]:
    return {method: methods.get(method, NOT_ROUTED) for method in API_METHODS}


def public(**methods: Row) -> dict[str, Row]:
    """An API route that does not use the roles (OFREP takes evaluation keys; the schema and
    its docs are public)."""
    return {method: methods.get(method, everyone(405)) for method in API_METHODS}


# Empty posts: a form a role may use answers 400 with its errors (or 200 in the admin); an
# action with nothing to act on redirects back with a message (302). Admin changelist posts ask
# for delete_selected: refused roles see the list again (200) or are sent back (302), and
# after every write each evidence row must still exist.
EXPECTED: dict[str, dict[str, Row]] = {
    "": {GET: PAGE},
    "audit/": {GET: PAGE},
    "profile/": {GET: PAGE, POST: row(L, 403, 400, 400, 400, 400, 400)},
    "profile/tokens/<token_id>/revoke/": {POST: row(L, 403, 302, 302, 302, 302, 302)},
    "flags/": {GET: PAGE},
    "flags/-/new/": {GET: engineers(200), POST: engineers(400)},
    "flags/-/segments/": {GET: PAGE},
    "flags/-/segments/new/": {GET: PAGE, POST: engineers(400)},
    "flags/-/segments/<key>/": {GET: PAGE, POST: engineers(400)},
    "flags/-/segments/<key>/delete/": {POST: engineers(302)},
    "flags/-/keys/": {GET: PAGE, POST: engineers(400)},
    "flags/-/keys/<key_id>/revoke/": {POST: engineers(302)},
    "flags/<key>/": {GET: PAGE},
    "flags/<key>/toggle/": {GET: engineers(200), POST: engineers(400)},
    "flags/<key>/kill/": {POST: engineers(400)},
    "flags/<key>/details/": {POST: engineers(400)},
    "flags/<key>/variants/": {POST: engineers(400)},
    "flags/<key>/rollout/": {POST: engineers(400)},
    "flags/<key>/default-rule/": {POST: engineers(400)},
    "flags/<key>/targets/": {POST: engineers(302)},
    "flags/<key>/try/": {POST: PAGE},
    "flags/<key>/exposures/": {GET: PAGE},
    "flags/<key>/delete/": {POST: engineers(302)},
    "flags/<key>/rules/new/": {GET: engineers(200), POST: engineers(400)},
    "flags/<key>/rules/<index>/": {GET: engineers(200), POST: engineers(400)},
    "flags/<key>/rules/<index>/change/": {POST: engineers(302)},
    "routing/": {GET: PAGE},
    "routing/services/<name>/": {GET: PAGE},
    "routing/services/<name>/decide/": {POST: row(L, 403, 400, 400, 400, 400, 400)},
    "routing/rules/<rule_id>/": {GET: PAGE, POST: engineers(400)},
    "routing/rules/<rule_id>/weights/": {POST: engineers(400)},
    "health/": {GET: PAGE},
    "health/services/<service>/": {GET: PAGE},
    "health/alerts/<alert_id>/acknowledge/": {POST: engineers(302)},
    "health/alerts/<alert_id>/resolve/": {POST: engineers(302)},
    "health/policies/": {GET: PAGE},
    "health/policies/new/": {GET: engineers(200), POST: engineers(400)},
    "health/policies/validate/": {POST: engineers(200)},
    "health/policies/<policy_id>/": {GET: PAGE},
    "health/policies/<policy_id>/edit/": {GET: engineers(200), POST: engineers(400)},
    "health/policies/<policy_id>/delete/": {GET: engineers(200), POST: engineers(302)},
    "deployments/": {GET: PAGE},
    "deployments/new/": {GET: engineers(200), POST: engineers(400)},
    "deployments/new/validate/": {POST: PAGE},
    "deployments/statistics/": {GET: PAGE},
    "deployments/<deployment_id>/": {GET: PAGE},
    "deployments/<deployment_id>/row/": {GET: PAGE},
    "deployments/<deployment_id>/act/": {POST: engineers(302)},
    # The matrix's deployment names no webhook: back to the page with the reason.
    "deployments/<deployment_id>/gates/<name>/open/": {POST: engineers(302)},
    "rollback/": {GET: PAGE},
    "rollback/approvals/mine/": {GET: PAGE},
    # Polled by every page of a signed-in person; one without a role awaits nothing.
    "rollback/approvals/badge/": {GET: row(L, 200, 200, 200, 200, 200, 200)},
    "rollback/approvals/<request_id>/": {GET: PAGE},
    # An empty decision goes back to the request with the reason, for those who may decide.
    "rollback/approvals/<request_id>/decide/": {POST: row(L, 403, 403, 403, 302, 302, 302)},
    # Back to the request with the reason: only its requester (or an admin) may cancel it.
    "rollback/approvals/<request_id>/cancel/": {POST: row(L, 403, 302, 302, 302, 302, 302)},
    "rollback/plans/": {GET: PAGE},
    "rollback/plans/new/": {GET: engineers(200), POST: engineers(400)},
    "rollback/plans/validate/": {POST: engineers(200)},
    "rollback/plans/<plan_id>/": {GET: PAGE},
    "rollback/plans/<plan_id>/edit/": {GET: engineers(200), POST: engineers(400)},
    # The plan's rehearsal is under way: its delete is refused.
    "rollback/plans/<plan_id>/delete/": {GET: engineers(200), POST: engineers(409)},
    # No deployment named: back to the plan with the reason.
    "rollback/plans/<plan_id>/rehearse/": {POST: engineers(302)},
    # No deployment named.
    "rollback/impact/": {GET: row(L, 403, 400, 400, 400, 400, 400)},
    "rollback/executions/": {GET: PAGE},
    "rollback/executions/<execution_id>/": {GET: PAGE},
    "rollback/executions/<execution_id>/cancel/": {POST: engineers(302)},
    "rollback/statistics/": {GET: PAGE},
    "rollback/deployments/<deployment_id>/panel/": {GET: PAGE},
    # No reason: back to the deployment with it (the deployment is not running anyway).
    "rollback/deployments/<deployment_id>/rollback/": {POST: engineers(302)},
    # The kill switch pages; the switch is active, and an empty post gives no reason.
    "rollback/kill-switches/": {GET: PAGE},
    "rollback/kill-switches/new/": {GET: engineers(200), POST: engineers(400)},
    "rollback/kill-switches/validate/": {POST: engineers(200)},
    "rollback/kill-switches/kill-all/": {GET: engineers(200), POST: engineers(400)},
    "rollback/kill-switches/<switch_id>/": {GET: PAGE},
    "rollback/kill-switches/<switch_id>/edit/": {GET: engineers(200), POST: engineers(400)},
    "rollback/kill-switches/<switch_id>/delete/": {GET: engineers(200), POST: engineers(409)},
    "rollback/kill-switches/<switch_id>/trigger/": {POST: engineers(400)},
    "rollback/kill-switches/<switch_id>/recover/": {POST: engineers(400)},
    "accounts/login/": {
        GET: row(200, 302, 302, 302, 302, 302, 302),
        POST: row(200, 302, 302, 302, 302, 302, 302),
        PUT: row(200, 302, 302, 302, 302, 302, 302),
    },
    "accounts/logout/": {POST: admin_staff(L, engineers=L)},
    "admin/": {GET: STAFF},
    "admin/login/": {GET: row(200, 200, 302, 302, 302, 302, 302)},
    "admin/logout/": {GET: row(302, 302, 405, 405, 405, 405, 405)},
    "admin/password_change/": {GET: STAFF},
    "admin/password_change/done/": {GET: STAFF},
    "admin/autocomplete/": {GET: NO_ONE},
    "admin/jsi18n/": {GET: STAFF},
    "admin/r/<content_type_id>/<object_id>/": {GET: admin_staff(404, engineers=404)},
    "admin/axes/accessattempt/": {GET: ADMINS, POST: row(L, L, 403, 403, 403, 302, 302)},
    "admin/axes/accessattempt/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/axes/accessattempt/<object_id>/history/": {GET: ADMINS},
    "admin/axes/accessattempt/<object_id>/delete/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/axes/accessattempt/<object_id>/change/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/axes/accessattempt/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/axes/accesslog/": {GET: ADMINS, POST: row(L, L, 403, 403, 403, 302, 302)},
    "admin/axes/accesslog/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/axes/accesslog/<object_id>/history/": {GET: ADMINS},
    "admin/axes/accesslog/<object_id>/delete/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/axes/accesslog/<object_id>/change/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/axes/accesslog/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/axes/accessfailurelog/": {GET: ADMINS, POST: row(L, L, 403, 403, 403, 302, 302)},
    "admin/axes/accessfailurelog/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/axes/accessfailurelog/<object_id>/history/": {GET: ADMINS},
    "admin/axes/accessfailurelog/<object_id>/delete/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/axes/accessfailurelog/<object_id>/change/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/axes/accessfailurelog/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/canary_site/auditentry/": {GET: STAFF, POST: STAFF},
    "admin/canary_site/auditentry/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/canary_site/auditentry/<object_id>/history/": {GET: STAFF},
    "admin/canary_site/auditentry/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/canary_site/auditentry/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/canary_site/auditentry/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/canary_site/apitoken/": {GET: STAFF, POST: STAFF_REDIRECT},
    "admin/canary_site/apitoken/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/canary_site/apitoken/<object_id>/history/": {GET: row(L, L, 302, 302, 302, 302, 200)},
    "admin/canary_site/apitoken/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/canary_site/apitoken/<object_id>/change/": {
        GET: row(L, L, 302, 302, 302, 302, 200),
        POST: NO_ONE,
    },
    "admin/canary_site/apitoken/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/canary_site/heartbeat/": {GET: STAFF, POST: row(L, L, 200, 200, 200, 302, 302)},
    "admin/canary_site/heartbeat/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/canary_site/heartbeat/<object_id>/history/": {GET: STAFF},
    "admin/canary_site/heartbeat/<object_id>/delete/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/canary_site/heartbeat/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/canary_site/heartbeat/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/auth/group/": {GET: ADMINS, POST: ADMINS},
    "admin/auth/group/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/auth/group/<object_id>/history/": {GET: ADMINS},
    "admin/auth/group/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/auth/group/<object_id>/change/": {GET: ADMINS, POST: NO_ONE},
    "admin/auth/group/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/auth/user/<id>/password/": {GET: ADMINS},
    "admin/auth/user/": {GET: ADMINS, POST: row(L, L, 403, 403, 403, 302, 302)},
    "admin/auth/user/add/": {GET: ADMINS, POST: ADMINS},
    "admin/auth/user/<object_id>/history/": {GET: ADMINS},
    "admin/auth/user/<object_id>/delete/": {GET: ADMINS, POST: row(L, L, 403, 403, 403, 302, 302)},
    "admin/auth/user/<object_id>/change/": {GET: ADMINS, POST: ADMINS},
    "admin/auth/user/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/flags/flag/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/flags/flag/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/flags/flag/<object_id>/history/": {GET: STAFF},
    "admin/flags/flag/<object_id>/delete/": {GET: admin_engineers(200), POST: admin_engineers(302)},
    "admin/flags/flag/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/flags/flag/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/flags/segment/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/flags/segment/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/flags/segment/<object_id>/history/": {GET: STAFF},
    "admin/flags/segment/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/flags/segment/<object_id>/change/": {GET: STAFF, POST: admin_engineers(302)},
    "admin/flags/segment/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/flags/evaluationkey/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/flags/evaluationkey/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/flags/evaluationkey/<object_id>/history/": {GET: STAFF},
    "admin/flags/evaluationkey/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/flags/evaluationkey/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/flags/evaluationkey/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/flags/flagexposure/": {GET: STAFF, POST: STAFF},
    "admin/flags/flagexposure/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/flags/flagexposure/<object_id>/history/": {GET: STAFF},
    "admin/flags/flagexposure/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/flags/flagexposure/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/flags/flagexposure/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/routing/service/": {GET: STAFF, POST: STAFF},
    "admin/routing/service/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/routing/service/<object_id>/history/": {GET: STAFF},
    "admin/routing/service/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(200),
    },
    "admin/routing/service/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/routing/service/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/routing/target/": {GET: STAFF, POST: STAFF},
    "admin/routing/target/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/routing/target/<object_id>/history/": {GET: STAFF},
    "admin/routing/target/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(200),
    },
    "admin/routing/target/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/routing/target/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/routing/routingrule/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/routing/routingrule/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/routing/routingrule/<object_id>/history/": {GET: STAFF},
    "admin/routing/routingrule/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/routing/routingrule/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/routing/routingrule/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/routing/ruletarget/": {GET: STAFF, POST: STAFF},
    "admin/routing/ruletarget/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/routing/ruletarget/<object_id>/history/": {GET: STAFF},
    "admin/routing/ruletarget/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/routing/ruletarget/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/routing/ruletarget/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/routing/providersync/": {GET: STAFF, POST: STAFF},
    "admin/routing/providersync/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/routing/providersync/<object_id>/history/": {GET: STAFF},
    "admin/routing/providersync/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/routing/providersync/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/routing/providersync/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/metricbucket/": {GET: STAFF, POST: STAFF},
    "admin/health/metricbucket/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/metricbucket/<object_id>/history/": {GET: STAFF},
    "admin/health/metricbucket/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/metricbucket/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/health/metricbucket/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/healthpolicy/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/health/healthpolicy/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/health/healthpolicy/<object_id>/history/": {GET: STAFF},
    "admin/health/healthpolicy/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/health/healthpolicy/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/health/healthpolicy/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/healthcheck/": {GET: STAFF, POST: STAFF},
    "admin/health/healthcheck/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/healthcheck/<object_id>/history/": {GET: STAFF},
    "admin/health/healthcheck/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/healthcheck/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/health/healthcheck/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/alert/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/health/alert/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/alert/<object_id>/history/": {GET: STAFF},
    "admin/health/alert/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/alert/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/health/alert/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/notificationoutbox/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/health/notificationoutbox/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/notificationoutbox/<object_id>/history/": {GET: STAFF},
    "admin/health/notificationoutbox/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/notificationoutbox/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/health/notificationoutbox/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/pushbatch/": {GET: STAFF, POST: STAFF},
    "admin/health/pushbatch/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/pushbatch/<object_id>/history/": {GET: STAFF},
    "admin/health/pushbatch/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/health/pushbatch/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/health/pushbatch/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/health/prometheusquery/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/health/prometheusquery/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/health/prometheusquery/<object_id>/history/": {GET: STAFF},
    "admin/health/prometheusquery/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/health/prometheusquery/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/health/prometheusquery/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/deployments/deployment/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/deployments/deployment/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/deployments/deployment/<object_id>/history/": {GET: STAFF},
    "admin/deployments/deployment/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/deployments/deployment/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/deployments/deployment/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/rollback/approvalpolicy/": {GET: STAFF, POST: row(L, L, 200, 200, 200, 302, 302)},
    "admin/rollback/approvalpolicy/add/": {GET: ADMINS, POST: ADMINS},
    "admin/rollback/approvalpolicy/<object_id>/history/": {GET: STAFF},
    "admin/rollback/approvalpolicy/<object_id>/delete/": {
        GET: ADMINS,
        POST: row(L, L, 403, 403, 403, 302, 302),
    },
    "admin/rollback/approvalpolicy/<object_id>/change/": {GET: STAFF, POST: ADMINS},
    "admin/rollback/approvalpolicy/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/rollback/approvalrequest/": {GET: STAFF, POST: STAFF_REDIRECT},
    "admin/rollback/approvalrequest/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/rollback/approvalrequest/<object_id>/history/": {GET: STAFF},
    "admin/rollback/approvalrequest/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/rollback/approvalrequest/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/rollback/approvalrequest/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/rollback/rollbackplan/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/rollback/rollbackplan/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/rollback/rollbackplan/<object_id>/history/": {GET: STAFF},
    "admin/rollback/rollbackplan/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/rollback/rollbackplan/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/rollback/rollbackplan/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    "admin/rollback/rollbackexecution/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/rollback/rollbackexecution/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/rollback/rollbackexecution/<object_id>/history/": {GET: STAFF},
    "admin/rollback/rollbackexecution/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/rollback/rollbackexecution/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/rollback/rollbackexecution/<object_id>/": {
        GET: STAFF_REDIRECT,
        POST: STAFF_REDIRECT,
    },
    "admin/rollback/killswitch/": {GET: STAFF, POST: admin_staff(200, engineers=302)},
    "admin/rollback/killswitch/add/": {GET: admin_engineers(200), POST: admin_engineers(200)},
    "admin/rollback/killswitch/<object_id>/history/": {GET: STAFF},
    # An active switch: its delete is refused with a message, back to its page.
    "admin/rollback/killswitch/<object_id>/delete/": {
        GET: admin_engineers(200),
        POST: admin_engineers(302),
    },
    "admin/rollback/killswitch/<object_id>/change/": {GET: STAFF, POST: admin_engineers(200)},
    "admin/rollback/killswitch/<object_id>/": {GET: STAFF_REDIRECT, POST: STAFF_REDIRECT},
    # No action to take on activations: the list again.
    "admin/rollback/killswitchactivation/": {GET: STAFF, POST: STAFF},
    "admin/rollback/killswitchactivation/add/": {GET: NO_ONE, POST: NO_ONE},
    "admin/rollback/killswitchactivation/<object_id>/history/": {GET: STAFF},
    "admin/rollback/killswitchactivation/<object_id>/delete/": {GET: NO_ONE, POST: NO_ONE},
    "admin/rollback/killswitchactivation/<object_id>/change/": {GET: STAFF, POST: NO_ONE},
    "admin/rollback/killswitchactivation/<object_id>/": {
        GET: STAFF_REDIRECT,
        POST: STAFF_REDIRECT,
    },
    "admin/<app_label>/": {GET: STAFF},
    "admin/<url>": {GET: admin_staff(404, engineers=404)},
    "api/v1/": api(GET=API_READ),
    "api/v1/me/": api(GET=API_READ),
    "api/v1/audit/": api(GET=API_READ),
    "api/v1/audit/<pk>/": api(GET=API_READ),
    "api/v1/tokens/": api(GET=API_READ, POST=row(401, 403, 400, 400, 400, 400, 400)),
    "api/v1/tokens/<pk>/": api(DELETE=row(401, 403, 404, 404, 404, 404, 404)),
    "api/v1/flags/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/flags/<key>/": api(
        GET=API_READ, PUT=api_engineers(200), PATCH=api_engineers(200), DELETE=api_engineers(204)
    ),
    "api/v1/flags/<key>/disable/": api(POST=api_engineers(200)),
    "api/v1/flags/<key>/enable/": api(POST=api_engineers(200)),
    "api/v1/flags/<key>/evaluate/": api(POST=API_READ),
    "api/v1/flags/<key>/kill/": api(POST=api_engineers(400)),
    "api/v1/flags/<key>/rollout/": api(POST=api_engineers(400)),
    "api/v1/flags/<key>/rules/<index>/": api(PUT=api_engineers(400), DELETE=api_engineers(400)),
    "api/v1/flags/<key>/rules/": api(POST=api_engineers(400)),
    "api/v1/flags/<key>/rules/<index>/move/": api(POST=api_engineers(400)),
    "api/v1/segments/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/segments/<key>/": api(
        GET=API_READ, PUT=api_engineers(200), PATCH=api_engineers(200), DELETE=api_engineers(409)
    ),
    "api/v1/routing/decide": api(POST=row(401, 403, 400, 400, 400, 400, 400)),
    "api/v1/routing/decide/": api(POST=row(401, 403, 400, 400, 400, 400, 400)),
    "api/v1/routing/services/<name>/nginx.conf": api(GET=API_READ),
    "api/v1/routing/services/<name>/haproxy.cfg": api(GET=API_READ),
    "api/v1/routing/services/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/routing/services/<name>/": api(
        GET=API_READ, PUT=api_engineers(200), PATCH=api_engineers(200), DELETE=api_engineers(409)
    ),
    "api/v1/routing/targets/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/routing/targets/<pk>/": api(
        GET=API_READ, PUT=api_engineers(200), PATCH=api_engineers(200), DELETE=api_engineers(409)
    ),
    "api/v1/routing/targets/<pk>/drain/": api(POST=api_engineers(200)),
    "api/v1/routing/targets/<pk>/undrain/": api(POST=api_engineers(200)),
    "api/v1/routing/rules/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/routing/rules/<pk>/": api(
        GET=API_READ, PUT=api_engineers(200), PATCH=api_engineers(200), DELETE=api_engineers(204)
    ),
    "api/v1/routing/rules/<pk>/weights/": api(POST=api_engineers(400)),
    "api/v1/health/metrics": api(POST=api_engineers(400)),
    "api/v1/health/metrics/": api(POST=api_engineers(400)),
    "api/v1/health/series/": api(GET=row(401, 403, 400, 400, 400, 400, 400)),
    "api/v1/health/policies/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/health/policies/<pk>/": api(
        GET=API_READ, PUT=api_engineers(400), PATCH=api_engineers(200), DELETE=api_engineers(204)
    ),
    "api/v1/health/checks/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/health/checks/<pk>/": api(GET=API_READ),
    "api/v1/health/alerts/": api(GET=API_READ),
    "api/v1/health/alerts/<pk>/": api(GET=API_READ),
    "api/v1/health/alerts/<pk>/acknowledge/": api(POST=api_engineers(200)),
    "api/v1/health/alerts/<pk>/resolve/": api(POST=api_engineers(200)),
    "api/v1/validate": api(POST=API_READ),
    "api/v1/validate/": api(POST=API_READ),
    "api/v1/deployments/<pk>/config.yaml": api(GET=API_READ),
    "api/v1/deployments/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/deployments/simple-config/": api(POST=row(401, 403, 400, 400, 400, 400, 400)),
    "api/v1/deployments/<pk>/": api(
        GET=API_READ, PUT=api_engineers(400), PATCH=api_engineers(400), DELETE=api_engineers(204)
    ),
    "api/v1/deployments/<pk>/abort/": api(POST=api_engineers(200)),
    "api/v1/deployments/<pk>/events/": api(GET=API_READ),
    "api/v1/deployments/<pk>/gates/": api(GET=API_READ),
    # The matrix's deployment names no webhook of that name.
    "api/v1/deployments/<pk>/gates/<name>/open/": api(POST=api_engineers(404)),
    "api/v1/deployments/<pk>/pause/": api(POST=api_engineers(409)),
    "api/v1/deployments/<pk>/promote/": api(POST=api_engineers(409)),
    "api/v1/deployments/<pk>/promote-full/": api(POST=api_engineers(409)),
    "api/v1/deployments/<pk>/resume/": api(POST=api_engineers(409)),
    "api/v1/deployments/<pk>/retry/": api(POST=api_engineers(409)),
    "api/v1/deployments/<pk>/start/": api(POST=api_engineers(200)),
    "api/v1/approvals/": api(GET=API_READ),
    "api/v1/approvals/<pk>/": api(GET=API_READ),
    "api/v1/approvals/<pk>/approve/": api(POST=row(401, 403, 403, 403, 409, 409, 409)),
    "api/v1/approvals/<pk>/reject/": api(POST=row(401, 403, 403, 403, 409, 409, 409)),
    "api/v1/approvals/<pk>/cancel/": api(POST=row(401, 403, 403, 403, 403, 200, 200)),
    "api/v1/approval-policies/": api(GET=API_READ, POST=row(401, 403, 403, 403, 403, 400, 400)),
    "api/v1/approval-policies/<pk>/": api(
        GET=API_READ,
        PUT=row(401, 403, 403, 403, 403, 400, 400),
        PATCH=row(401, 403, 403, 403, 403, 200, 200),
        DELETE=row(401, 403, 403, 403, 403, 204, 204),
    ),
    "api/v1/rollback/plans/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/rollback/plans/<pk>/": api(
        GET=API_READ, PUT=api_engineers(400), PATCH=api_engineers(200), DELETE=api_engineers(409)
    ),
    "api/v1/rollback/plans/<pk>/rehearse/": api(POST=api_engineers(400)),
    # A preview changes nothing: every role may ask (an empty body names no deployment).
    "api/v1/rollback/plans/<pk>/preview/": api(POST=row(401, 403, 400, 400, 400, 400, 400)),
    "api/v1/rollback/executions/": api(GET=API_READ),
    "api/v1/rollback/executions/<pk>/": api(GET=API_READ),
    "api/v1/rollback/executions/<pk>/cancel/": api(POST=api_engineers(200)),
    "api/v1/rollback/statistics/": api(GET=API_READ),
    # An empty body has no reason: refused before the deployment's status is looked at.
    "api/v1/deployments/<pk>/rollback/": api(POST=api_engineers(400)),
    # An empty body has no reason, and the switch is active (its delete is refused).
    "api/v1/kill-switches/": api(GET=API_READ, POST=api_engineers(400)),
    "api/v1/kill-switches/<pk>/": api(
        GET=API_READ, PUT=api_engineers(400), PATCH=api_engineers(200), DELETE=api_engineers(409)
    ),
    "api/v1/kill-switches/<pk>/trigger/": api(POST=api_engineers(400)),
    "api/v1/kill-switches/<pk>/recover/": api(POST=api_engineers(400)),
    "api/v1/kill-switches/kill-all/": api(POST=api_engineers(400)),
    "api/v1/kill-switches/activations/": api(GET=API_READ),
    "api/v1/kill-switches/activations/<pk>/": api(GET=API_READ),
    "ofrep/v1/evaluate/flags": public(POST=everyone(401)),
    "ofrep/v1/evaluate/flags/<key>": public(POST=everyone(401)),
    "ofrep/v1/configuration": public(GET=everyone(401)),
    "api/schema/": public(GET=everyone(200)),
    "api/docs/": public(GET=everyone(200)),
    "healthz": {GET: everyone(200)},
    "readyz": {GET: everyone(200)},
    "metrics": {GET: everyone(200)},
}

# For an object that does not exist the engineer gets 404 wherever the route lets an engineer
# act (the admin sends every role back to its index instead, 302), and elsewhere what the table
# says. These are the routes that answer otherwise, and why.
MISSING_EXCEPTIONS: dict[tuple[str, str], int] = {
    # Form posts that go back to their page with the reason as a message.
    ("profile/tokens/<token_id>/revoke/", POST): 302,
    ("flags/-/keys/<key_id>/revoke/", POST): 302,
    # Any name is a service of the metric store; one with no data has an empty page.
    ("health/services/<service>/", GET): 200,
    # The body is checked before the flag is looked up.
    ("api/v1/flags/<key>/kill/", POST): 400,
    ("api/v1/flags/<key>/rollout/", POST): 400,
    ("api/v1/flags/<key>/rules/", POST): 400,
    ("api/v1/flags/<key>/rules/<index>/move/", POST): 400,
    # The reason is checked before the kill switch is looked up.
    ("api/v1/kill-switches/<pk>/trigger/", POST): 400,
    ("api/v1/kill-switches/<pk>/recover/", POST): 400,
    # Every role may cancel its own requests, so the request is looked up first.
    ("api/v1/approvals/<pk>/cancel/", POST): 404,
    # The admin looks the object up before the permission (and finds nothing to show).
    ("admin/axes/accessattempt/<object_id>/history/", GET): 302,
    ("admin/axes/accesslog/<object_id>/history/", GET): 302,
    ("admin/axes/accessfailurelog/<object_id>/history/", GET): 302,
    ("admin/auth/group/<object_id>/history/", GET): 302,
    ("admin/auth/user/<object_id>/history/", GET): 302,
    # Engineers may run these admins' actions, so the missing object is looked up first.
    ("admin/health/alert/<object_id>/change/", POST): 302,
    ("admin/health/notificationoutbox/<object_id>/change/", POST): 302,
}
REFUSED = (401, 403, 404, 405)
DETAIL_ROUTES = [key for key, route in ROUTES.items() if set(route.params) - FIXED_PARAMS]


def expected_when_missing(route: Route, method: str) -> int | str:
    if (route.key, method) in MISSING_EXCEPTIONS:
        return MISSING_EXCEPTIONS[(route.key, method)]
    found = EXPECTED[route.key][method][ENGINEER]
    if found in REFUSED:
        return found
    return 302 if route.key.startswith("admin/") else 404


def _shown(status: int | str) -> str:
    return "302 to a login page" if status == LOGIN else str(status)


# --- the tests ----------------------------------------------------------------------------------


def test_every_route__has_a_row_in_the_table__for_each_of_its_methods():
    without_row = sorted(set(ROUTES) - set(EXPECTED))
    stale = sorted(set(EXPECTED) - set(ROUTES))
    wrong_methods = {
        key: (sorted(EXPECTED[key]), list(route.methods))
        for key, route in ROUTES.items()
        if key in EXPECTED and set(EXPECTED[key]) != set(route.methods)
    }

    assert not without_row, f"Routes with no row in EXPECTED: {without_row}"
    assert not stale, f"Rows in EXPECTED for routes that are gone: {stale}"
    assert not wrong_methods, f"Rows whose methods differ from the route's: {wrong_methods}"


def test_the_table__expects_no_server_error_anywhere():
    statuses = {
        status
        for rows in EXPECTED.values()
        for by_role in rows.values()
        for status in by_role.values()
        if status != LOGIN
    }

    assert all(100 <= int(status) < 500 for status in statuses)
    assert {key for key, _method in MISSING_EXCEPTIONS} <= set(DETAIL_ROUTES)


@pytest.mark.parametrize("key", list(ROUTES), ids=lambda key: key or "/")
def test_route__as_each_role_with_each_method__answers_as_the_table_says(world, key):
    route = ROUTES[key]
    assert key in EXPECTED, f"{key!r} has no row in EXPECTED"

    seen = observe(route, world, ROLES)

    wrong = [
        f"{method} as {role}: expected {_shown(EXPECTED[key][method][role])}, "
        f"got {answer.status} {answer.location}".rstrip()
        for (role, method), answer in seen.items()
        if not answer.matches(EXPECTED[key][method][role])
    ]
    deleted_evidence = [
        f"{method} as {role}" for (role, method), answer in seen.items() if not answer.evidence_kept
    ]
    bad_bodies = [
        f"{method} as {role}" for (role, method), answer in seen.items() if not answer.error_body_ok
    ]
    assert not wrong, f"/{key}:\n  " + "\n  ".join(wrong)
    assert not deleted_evidence, f"/{key} deleted evidence: {deleted_evidence}"
    assert not bad_bodies, f"/{key} refused without the error body: {bad_bodies}"


@pytest.mark.parametrize("key", DETAIL_ROUTES)
def test_detail_route__for_an_object_that_does_not_exist__answers_as_the_table_says(world, key):
    route = ROUTES[key]

    seen = observe(route, world, [ENGINEER], missing=True)

    wrong = [
        f"{method}: expected {expected_when_missing(route, method)}, got {answer.status}"
        for (_role, method), answer in seen.items()
        if not answer.matches(expected_when_missing(route, method))
    ]
    assert not wrong, f"/{key} for a missing object:\n  " + "\n  ".join(wrong)
