"""A deployment's webhooks, in Flagger's vocabulary: gates the tick waits for, and news it tells.

The configuration names them (``webhooks: [{name, type, url, timeoutMs?, metadata?,
failureThreshold?}]``, read by `deployments.config`); what each type does:

=====================  ========================================================================
``confirm-rollout``    a gate before the first phase: a start asked for while it is closed
                       leaves the deployment pending at 0%, and the tick starts it once the
                       hook has answered 2xx (or a person opened the gate)
``pre-rollout``        a check before the first phase, called once every ``confirm-rollout``
                       gate is open: 2xx lets the start go ahead, anything else (an unreachable
                       hook too) fails the deployment at its start with the hook's answer as the
                       reason, before any request reaches the canary
``confirm-promotion``  a gate before each promotion: a phase whose criteria hold waits, ready,
                       until the hook answers 2xx; called on every tick while it waits
``rollout``            a check on every tick of a running phase: while its latest answer is not
                       2xx the phase cannot advance, and ``failureThreshold`` (5) failures in a
                       row roll the deployment back (a breach: auto-rollback off leaves it to a
                       person)
``rollback``           told once when a rollback begins
``post-rollout``       told once when a deployment that ran ends (succeeded, rolled back, failed
                       or aborted)
``event``              told every timeline entry (but the webhooks' own)
=====================  ========================================================================

Every call is an HTTP POST of a JSON body (the hook, its type, the deployment, its service, the
phase, the canary's share, the phase's latest judgement, the metadata and, for news, the
timeline entry), signed as the health app's webhooks are (``X-Canary-Signature:
sha256=<HMAC>`` under ``CANARY_WEBHOOK_SECRET``: no secret, no call), with the hook's
``timeoutMs`` (5 s), and an ``Idempotency-Key`` (also ``X-Canary-Delivery``):
``deployment-<id>-phase-<n>-<type>-<name>``, with ``-run-<k>`` after the id once a retry has
begun run ``k``, and for a ``rollout`` check the tick's moment after it (each tick asks anew),
for an ``event`` the timeline entry's id. Redirects are not followed: a 3xx is an answer.

Gates are called by the tick itself, after its decisions have committed, all at once in a thread
pool (so one slow hook costs the tick its timeout once, not once per deployment), each at most
once per tick, and their answers written together: one upsert of `WebhookGate` rows and one
insert of timeline entries (``webhook``) for the answers that change a gate's state. The tick
acts on an answer at its next pass. Automatic rollbacks never wait for a gate. A person may open
a gate by hand for the current phase (`webhook_gate_open`): it then counts as answered 2xx and
is not called again in that phase.

News (rollback, post-rollout, event) goes through a small outbox of its own, `WebhookDelivery`:
rows queued in the transaction that writes the timeline entry they tell (the transition batch,
the tick's notes, a deployment's creation and edits), unique by their idempotency key, and
delivered by the tick under a lease, retried with backoff until ``CANARY_WEBHOOK_MAX_ATTEMPTS``.
A rollback or post-rollout hook's answer goes on the timeline; an event hook's only when it
gives up.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from canary_site.choices import Source
from canary_site.conf import setting
from canary_site.exceptions import NotFound, TransitionNotAllowed, ValidationFailed
from deployments.choices import DeploymentStatus, EventKind, WebhookDeliveryStatus
from deployments.config import ENTRY_TYPES, ConfigError, Webhook, WebhookType, read_webhooks
from deployments.lifecycle import Outcome, PhaseJudgement
from deployments.models import Deployment, DeploymentEvent, Phase, WebhookDelivery, WebhookGate
from deployments.writing import person
from health import conf as health_conf
from health.notifications import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from routing.models import Service

logger = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "Canary-Webhooks/1"
EXCERPT_CHARS = 200
# How much of an excerpt a sentence quotes.
QUOTED_CHARS = 80

_ENDED = frozenset(
    {
        DeploymentStatus.SUCCEEDED,
        DeploymentStatus.ROLLED_BACK,
        DeploymentStatus.FAILED,
        DeploymentStatus.ABORTED,
    }
)
_NEWS_TYPES = frozenset({WebhookType.ROLLBACK, WebhookType.POST_ROLLOUT, WebhookType.EVENT})
# A start request no longer stands once the deployment starts, ends, is retried or is edited.
_CLEARS_REQUEST = frozenset({EventKind.START, EventKind.ABORT, EventKind.RETRY, EventKind.UPDATED})


# --------------------------------------------------------------------------- settings


def max_attempts() -> int:
    """After this many failed attempts a news delivery is marked failed (kept, not deleted)."""
    return int(setting("CANARY_WEBHOOK_MAX_ATTEMPTS", 8))


def backoff_seconds() -> float:
    """The wait after a news delivery's first failure; it doubles with each one after."""
    return float(setting("CANARY_WEBHOOK_BACKOFF_SECONDS", 5))


def backoff_max_seconds() -> float:
    return float(setting("CANARY_WEBHOOK_BACKOFF_MAX_SECONDS", 300))


def lease_seconds() -> float:
    """How long a tick owns the news deliveries it claimed (longer than any timeout)."""
    return float(setting("CANARY_WEBHOOK_LEASE_SECONDS", 60))


def workers() -> int:
    """Calls made at once by one tick."""
    return max(1, int(setting("CANARY_WEBHOOK_WORKERS", 16)))


def deliveries_per_tick() -> int:
    return max(1, int(setting("CANARY_WEBHOOK_DELIVERIES_PER_TICK", 100)))


# --------------------------------------------------------------------------- reading


_HOOKS_CACHE: dict[str, tuple[Webhook, ...]] = {}


def hooks_of(raw: Any) -> tuple[Webhook, ...]:
    """The webhooks of a stored configuration's ``webhooks`` list; read once for every
    deployment that names the same ones (a tick reads a thousand)."""
    if not raw:
        return ()
    key = json.dumps(raw, sort_keys=True, default=str)
    found = _HOOKS_CACHE.get(key)
    if found is None:
        try:
            found = read_webhooks(raw)
        except ConfigError as error:
            # Stored configurations were valid when written; one that is not calls nothing.
            logger.warning("Unreadable webhooks in a stored configuration: %s", error)
            found = ()
        if len(_HOOKS_CACHE) > 1000:
            _HOOKS_CACHE.clear()
        _HOOKS_CACHE[key] = found
    return found


def runs(deployment_ids: Iterable[int]) -> dict[int, int]:
    """Each deployment's run: 1, and one more for each retry (one query)."""
    ids = list(dict.fromkeys(deployment_ids))
    if not ids:
        return {}
    retries = dict(
        DeploymentEvent.objects.filter(deployment_id__in=ids, kind=EventKind.RETRY)
        .order_by()
        .values("deployment_id")
        .annotate(count=Count("id"))
        .values_list("deployment_id", "count")
    )
    return {pk: 1 + retries.get(pk, 0) for pk in ids}


def idempotency_key(
    *, deployment_id: int, run: int, phase: int | None, type: str, name: str, suffix: str = ""
) -> str:
    """``deployment-<id>-phase-<n>-<type>-<name>``, ``-run-<k>`` after the id from the second
    run on, and ``suffix`` (a tick's moment, a timeline entry's id) at the end."""
    runs_part = f"-run-{run}" if run > 1 else ""
    key = f"deployment-{deployment_id}{runs_part}-phase-{phase or 0}-{type}-{name}"
    return f"{key}-{suffix}" if suffix else key


def moment(now: datetime) -> str:
    """A tick's moment in a key: ``20250101T120005.000000Z``."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


# --------------------------------------------------------------------------- calls


@dataclass(frozen=True)
class Answer:
    """What a hook answered: an HTTP status and the start of its body, or why there was none."""

    status: int | None
    excerpt: str = ""
    error: str = ""
    elapsed_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """``HTTP 403 'not yet'``, or ``connection refused``."""
        if self.status is None:
            return self.error or "no answer"
        quoted = self.excerpt[:QUOTED_CHARS]
        return f"HTTP {self.status} '{quoted}'" if quoted else f"HTTP {self.status}"


@dataclass(frozen=True)
class Call:
    """One POST to make: the hook, its idempotency key and the body."""

    hook: Webhook
    key: str
    payload: dict[str, Any]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # A redirected POST would turn into a GET without its body; the 3xx is the answer.
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The bytes a call sends and signs."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def post(call: Call, *, secret: str | None = None) -> Answer:
    """Make one call; never raises: a failure is an `Answer` without a status."""
    secret = health_conf.webhook_secret() if secret is None else secret
    if not secret:
        return Answer(None, error="CANARY_WEBHOOK_SECRET is not set, so the call cannot be signed")
    body = body_of(call.payload)
    request = urllib.request.Request(
        call.hook.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(body, secret),
            IDEMPOTENCY_HEADER: call.key,
            DELIVERY_HEADER: call.key,
            EVENT_HEADER: f"webhook.{call.hook.type}",
        },
    )
    timeout = call.hook.timeout_ms / 1000
    started = timezone.now()

    def elapsed() -> int:
        return int((timezone.now() - started).total_seconds() * 1000)

    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Answer(response.status, _excerpt(response.read(1024)), elapsed_ms=elapsed())
    except urllib.error.HTTPError as error:
        try:
            text = error.read(1024)
        except Exception:  # the body of a failed answer is a courtesy
            text = b""
        return Answer(error.code, _excerpt(text), elapsed_ms=elapsed())
    except urllib.error.URLError as error:
        return Answer(None, error=_reason(error.reason, call.hook), elapsed_ms=elapsed())
    except TimeoutError:
        return Answer(None, error=_no_answer(call.hook), elapsed_ms=elapsed())
    except http.client.HTTPException:
        return Answer(
            None, error="the receiver closed the connection without an answer", elapsed_ms=elapsed()
        )
    except Exception as error:  # a call must not stop the tick, whatever it meets
        return Answer(
            None, error=f"{error.__class__.__name__}: {error}"[:500], elapsed_ms=elapsed()
        )


def _no_answer(hook: Webhook) -> str:
    return f"no answer within {hook.timeout_ms} ms"


def _reason(reason: Any, hook: Webhook) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return _no_answer(hook)
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve {urlsplit(hook.url).hostname}"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)[:500]


def _excerpt(raw: bytes) -> str:
    return " ".join(raw.decode("utf-8", errors="replace").split())[:EXCERPT_CHARS]


def call_all(calls: Sequence[Call]) -> list[Answer]:
    """Make every call at once (a thread pool; each bounded by its hook's timeout)."""
    if not calls:
        return []
    secret = health_conf.webhook_secret()
    if len(calls) == 1:
        return [post(calls[0], secret=secret)]
    with ThreadPoolExecutor(
        max_workers=min(workers(), len(calls)), thread_name_prefix="webhook"
    ) as pool:
        return list(pool.map(lambda call: post(call, secret=secret), calls))


# --------------------------------------------------------------------------- payloads


def payload(
    *,
    hook: Webhook,
    key: str,
    deployment: Deployment,
    now: datetime,
    phase: Phase | int | None,
    judgement: Mapping[str, Any] | None = None,
    event: DeploymentEvent | None = None,
) -> dict[str, Any]:
    """The body of a call. ``deployment`` needs its name, status, versions, share and
    service name only (what the tick reads)."""
    service = deployment.service.name
    if isinstance(phase, Phase):
        phase_body: dict[str, Any] | None = {
            "order": phase.order,
            "name": phase.name,
            "trafficPercentage": float(phase.traffic_percentage),
        }
    else:
        phase_body = None if phase is None else {"order": phase}
    body: dict[str, Any] = {
        "hook": hook.name,
        "type": str(hook.type),
        "idempotencyKey": key,
        "at": now.isoformat(),
        "deployment": {
            "id": deployment.pk,
            "name": deployment.name,
            "status": deployment.status,
            "stableVersion": deployment.stable_version,
            "canaryVersion": deployment.canary_version,
        },
        "service": service,
        "phase": phase_body,
        "canaryShare": float(deployment.canary_share),
        "judgement": None
        if not judgement
        else {"outcome": judgement.get("outcome"), "reason": judgement.get("reason")},
        "metadata": dict(hook.metadata),
    }
    if event is not None:
        body["event"] = {
            "id": event.pk,
            "kind": event.kind,
            "fromStatus": event.from_status,
            "toStatus": event.to_status,
            "phase": event.phase,
            "canaryShare": None if event.canary_share is None else float(event.canary_share),
            "source": event.source,
            "reason": event.reason,
            "at": event.at.isoformat(),
        }
    return body


# --------------------------------------------------------------------------- gate states


def answer_text(row: WebhookGate | None) -> str:
    """A gate's latest answer as a sentence ends: ``HTTP 403 'not yet' (tried 12:01:05)``."""
    if row is None or row.tried_at is None:
        return "not asked yet"
    answer = Answer(row.status_code, row.excerpt, row.error)
    return f"{answer.describe()} (tried {row.tried_at.astimezone(UTC):%H:%M:%S})"


def _opened_text(row: WebhookGate) -> str:
    who = row.opened_by.username if row.opened_by_id and row.opened_by else "a person"
    return f"opened by {who} at {row.opened_at.astimezone(UTC):%H:%M:%S}"  # type: ignore[union-attr]


def entry_state(hooks: Sequence[Webhook], rows: Mapping[str, WebhookGate]) -> tuple[str, list[str]]:
    """Whether a start may go ahead: ``open`` (every entry gate open), ``failed`` (a
    pre-rollout hook answered, not 2xx) or ``waiting``, with the sentences that say why."""
    confirms = [hook for hook in hooks if hook.type == WebhookType.CONFIRM_ROLLOUT]
    checks = [hook for hook in hooks if hook.type == WebhookType.PRE_ROLLOUT]
    for hook in checks:
        row = rows.get(hook.name)
        if row is not None and not row.is_open and row.tried_at is not None:
            return "failed", [f"the pre-rollout hook '{hook.name}' answered {answer_text(row)}"]
    waiting = [
        f"confirm-rollout gate '{hook.name}': {answer_text(rows.get(hook.name))}"
        for hook in confirms
        if not _open(rows.get(hook.name))
    ]
    if not waiting:
        waiting = [
            f"pre-rollout hook '{hook.name}': "
            + ("asking it now" if rows.get(hook.name) is None else answer_text(rows[hook.name]))
            for hook in checks
            if not _open(rows.get(hook.name))
        ]
    return ("waiting" if waiting else "open"), waiting


def _open(row: WebhookGate | None) -> bool:
    return row is not None and row.is_open


def _gate_rows(
    runs_by_id: Mapping[int, int],
) -> dict[int, dict[tuple[int, str], WebhookGate]]:
    """Each deployment's gate rows of its current run, by (phase, name); one query."""
    found: dict[int, dict[tuple[int, str], WebhookGate]] = defaultdict(dict)
    if not runs_by_id:
        return found
    rows = WebhookGate.objects.filter(deployment_id__in=list(runs_by_id)).select_related(
        "opened_by"
    )
    for row in rows:
        if row.run == runs_by_id.get(row.deployment_id):
            found[row.deployment_id][(row.phase, row.name)] = row
    return found


# --------------------------------------------------------------------------- a start asked for


def start_held(
    *,
    deployment_id: int,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    now: datetime | None = None,
) -> Deployment | None:
    """A start asked for while entry gates are closed: recorded, and the pending deployment
    returned (the tick starts it once they open); None when the start may go ahead now (no
    entry gates, all open, or a deployment that is not pending: the transition says why)."""
    found = (
        Deployment.objects.filter(pk=deployment_id)
        .values_list("status", "config__webhooks")
        .first()
    )
    if found is None or found[0] != DeploymentStatus.PENDING:
        return None
    entry = [hook for hook in hooks_of(found[1]) if hook.type in ENTRY_TYPES]
    if not entry:
        return None
    now = now or timezone.now()
    from deployments.effects import _check_ready as check_ready  # the start's own check

    with transaction.atomic():
        deployment = (
            Deployment.objects.select_related("service", "stable_target", "canary_target")
            .select_for_update(of=("self",))
            .get(pk=deployment_id)
        )
        if deployment.status != DeploymentStatus.PENDING:
            return None
        # A start that could not go ahead is refused now, not after the gates have answered.
        check_ready(deployment)
        run = runs([deployment.pk])[deployment.pk]
        rows = {
            row.name: row
            for row in WebhookGate.objects.filter(
                deployment=deployment, run=run, phase=1, name__in=[hook.name for hook in entry]
            )
        }
        state, why = entry_state(entry, rows)
        if state == "open":
            return None
        asked = any(row.requested_at is not None for row in rows.values())
        for hook in entry:
            row = rows.get(hook.name) or WebhookGate(
                deployment=deployment, run=run, phase=1, name=hook.name, type=hook.type
            )
            if row.requested_at is None:
                row.requested_at = now
                row.requested_by = person(actor)
                row.save()
        if not asked:
            text = (
                "Start asked for: waiting for "
                f"{'; '.join(why)}. The canary gets no traffic until every entry gate is open."
            )
            if reason.strip():
                text += f" Reason: {reason.strip()}"
            _write_event(
                deployment, text, {"webhooks": [h.to_dict() for h in entry]}, actor, source, now
            )
    return Deployment.objects.select_related("service").get(pk=deployment_id)


def _write_event(
    deployment: Deployment,
    reason: str,
    evidence: Mapping[str, Any],
    actor: Any,
    source: str,
    now: datetime,
) -> DeploymentEvent:
    return DeploymentEvent.objects.create(
        deployment=deployment,
        kind=EventKind.WEBHOOK,
        from_status=deployment.status,
        to_status=deployment.status,
        phase=deployment.current_phase,
        canary_share=deployment.canary_share,
        actor=person(actor),
        source=source,
        reason=reason[:5000],
        evidence=dict(evidence),
        at=now,
    )


def starts_refused(*, refused: Sequence[tuple[int, str]], now: datetime) -> None:
    """Drop the start requests that the tick could not carry out (the deployment was not ready
    once its gates opened), each said on the timeline: a person asks again."""
    ids = [pk for pk, _ in refused]
    WebhookGate.objects.filter(deployment_id__in=ids, requested_at__isnull=False).update(
        requested_at=None
    )
    DeploymentEvent.objects.bulk_create(
        DeploymentEvent(
            deployment_id=pk,
            kind=EventKind.WEBHOOK,
            from_status=DeploymentStatus.PENDING,
            to_status=DeploymentStatus.PENDING,
            source=Source.SYSTEM,
            reason=f"Its entry gates are open, but the start could not go ahead: {message} "
            "Start it again once that is fixed."[:5000],
            at=now,
        )
        for pk, message in refused
    )


# --------------------------------------------------------------------------- opened by hand


_OPEN_STATUSES = frozenset(
    {DeploymentStatus.PENDING, DeploymentStatus.RUNNING, DeploymentStatus.PAUSED}
)


def webhook_gate_open(
    *,
    deployment_id: int,
    name: str,
    actor: Any = None,
    source: str = Source.SYSTEM,
    reason: str = "",
    now: datetime | None = None,
) -> WebhookGate:
    """Open a gate by hand for the current phase (a person who has checked the canary
    themselves): the tick counts it as answered 2xx there and calls it no more in that phase.
    Entry gates (pre-rollout, confirm-rollout) open for the start. Opening an open gate again
    changes nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_related("service")
            .select_for_update(of=("self",))
            .filter(pk=deployment_id)
            .first()
        )
        if deployment is None:
            raise NotFound(f"There is no deployment {deployment_id}.")
        hook = next(
            (h for h in hooks_of(deployment.config.get("webhooks")) if h.name == name), None
        )
        if hook is None:
            raise NotFound(f"Deployment {deployment.pk} has no webhook named '{name}'.")
        if not hook.is_gate:
            raise ValidationFailed(
                f"Webhook '{name}' is a {hook.type} hook, which tells news and holds nothing; "
                "only pre-rollout, rollout, confirm-rollout and confirm-promotion hooks are gates.",
                field="name",
            )
        if deployment.status not in _OPEN_STATUSES:
            raise TransitionNotAllowed(
                f"The deployment is {deployment.get_status_display().lower()}: its gates hold "
                "nothing any more.",
                code="ended",
            )
        entry = hook.type in ENTRY_TYPES
        if entry and deployment.status != DeploymentStatus.PENDING:
            raise TransitionNotAllowed(
                f"The deployment has started: its {hook.type} gate '{name}' holds nothing any "
                "more.",
                code="started",
            )
        phase = 1 if entry else (deployment.current_phase or 1)
        run = runs([deployment.pk])[deployment.pk]
        gate, _ = WebhookGate.objects.get_or_create(
            deployment=deployment, run=run, phase=phase, name=name, defaults={"type": hook.type}
        )
        if gate.opened_at is not None:
            return gate
        gate.opened_at = now
        gate.opened_by = person(actor)
        gate.opened_reason = reason.strip()[:5000]
        gate.save(update_fields=["opened_at", "opened_by", "opened_reason"])
        who = getattr(gate.opened_by, "username", None) or "a person"
        text = f"The {hook.type} gate '{name}' was opened by {who} for phase {phase}"
        text += f": {gate.opened_reason}" if gate.opened_reason else "."
        _write_event(
            deployment,
            text,
            {"webhook": {"name": name, "type": str(hook.type), "phase": phase, "byHand": True}},
            actor,
            source,
            now,
        )
    return gate


# --------------------------------------------------------------------------- the tick


@dataclass
class _Watched:
    """A deployment whose gates the tick looks at: its hooks, its run and its gate rows."""

    deployment: Deployment
    hooks: tuple[Webhook, ...]
    run: int
    rows: dict[tuple[int, str], WebhookGate]
    ready: bool = False

    def of(self, *types: WebhookType) -> list[Webhook]:
        return [hook for hook in self.hooks if hook.type in types]


@dataclass
class _Planned:
    """A call the tick makes after its decisions, with the row its answer updates."""

    watched: _Watched
    hook: Webhook
    phase: int
    call: Call
    row: WebhookGate | None


@dataclass
class EntryDecision:
    """A pending deployment whose start was asked for and whose entry gates have spoken."""

    deployment: Deployment
    start_reason: str
    fail_reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


class TickGates:
    """The gates of one tick: read in a fixed number of queries before the judgement, folded
    into it, and called after the decisions."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.running: dict[int, _Watched] = {}
        self.waiting_starts: dict[int, _Watched] = {}
        self.all_hooks: dict[int, tuple[Webhook, ...]] = {}
        self.planned: list[_Planned] = []

    @classmethod
    def load(cls, *, now: datetime, deployment_ids: Sequence[int] | None = None) -> TickGates:
        """The running deployments that name webhooks and the pending ones whose start was
        asked for: their hooks, runs and gate rows in three queries (one when none)."""
        gates = cls(now)
        asked = WebhookGate.objects.filter(requested_at__isnull=False).values("deployment_id")
        rows = Deployment.objects.filter(
            Q(status=DeploymentStatus.RUNNING, config__has_key="webhooks")
            | Q(status=DeploymentStatus.PENDING, pk__in=asked)
        )
        if deployment_ids is not None:
            rows = rows.filter(pk__in=list(deployment_ids))
        found = list(
            rows.order_by("pk").values_list(
                "pk",
                "status",
                "name",
                "service__name",
                "stable_version",
                "canary_version",
                "canary_share",
                "current_phase",
                "config__webhooks",
            )
        )
        if not found:
            return gates
        by_run = runs(row[0] for row in found)
        states = _gate_rows(by_run)
        for pk, status, name, service, stable, canary, share, current, raw in found:
            hooks = hooks_of(raw)
            deployment = Deployment(
                pk=pk,
                status=status,
                name=name,
                stable_version=stable,
                canary_version=canary,
                canary_share=share,
                current_phase=current,
            )
            # What a payload says of the service is its name.
            deployment.service = Service(name=service)
            gates.all_hooks[pk] = hooks
            watched = _Watched(deployment, hooks, by_run[pk], states.get(pk, {}))
            if status == DeploymentStatus.PENDING:
                gates.waiting_starts[pk] = watched
            elif any(hook.is_gate for hook in hooks):
                gates.running[pk] = watched
        return gates

    def hooks(self) -> dict[int, tuple[Webhook, ...]]:
        """The hooks of every deployment of the tick that names some (for the news of the
        tick's notes)."""
        return self.all_hooks

    # ----------------------------------------------------------------------- judging

    def judge(
        self, deployment: Deployment, phase: Phase, judgement: PhaseJudgement
    ) -> PhaseJudgement:
        """The phase's judgement with its gates: a rollout hook failing ``failureThreshold``
        times in a row is a breach; a phase ready to advance waits while a rollout check
        fails or a confirm-promotion gate is closed. A breach is never held."""
        watched = self.running.get(deployment.pk)
        if watched is None:
            return judgement
        order = phase.order
        if judgement.outcome != Outcome.BREACH:
            for hook in watched.of(WebhookType.ROLLOUT):
                row = watched.rows.get((order, hook.name))
                if (
                    row is not None
                    and row.opened_at is None
                    and row.failures >= hook.failure_threshold
                ):
                    return replace(
                        judgement,
                        outcome=Outcome.BREACH,
                        reason=f"Roll back: the rollout hook '{hook.name}' failed "
                        f"{row.failures} times in a row (its threshold is "
                        f"{hook.failure_threshold}): {answer_text(row)}.",
                    )
        if judgement.outcome != Outcome.ADVANCE:
            return judgement
        watched.ready = True
        waiting: list[str] = []
        for hook in watched.of(WebhookType.ROLLOUT):
            row = watched.rows.get((order, hook.name))
            if not _open(row):
                failing = (
                    f" (failing, {row.failures} of {hook.failure_threshold})"
                    if row is not None and row.failures
                    else ""
                )
                waiting.append(f"rollout hook '{hook.name}'{failing}: {answer_text(row)}")
        for hook in watched.of(WebhookType.CONFIRM_PROMOTION):
            row = watched.rows.get((order, hook.name))
            if not _open(row):
                waiting.append(f"confirm-promotion gate '{hook.name}': {answer_text(row)}")
        if not waiting:
            return judgement
        ready = judgement.reason.removeprefix("Advance: ")
        return replace(
            judgement,
            outcome=Outcome.WAIT,
            reason=f"Waiting for {'; '.join(waiting)}. The phase is ready otherwise: {ready}",
        )

    def gate_evidence(self, deployment_id: int, phase: int) -> list[dict[str, Any]]:
        """The gates behind a decision, for its timeline entry."""
        watched = self.running.get(deployment_id)
        if watched is None:
            return []
        return [
            {"name": hook.name, "type": str(hook.type), "answer": answer_text(row)}
            | ({"openedBy": _opened_text(row)} if row is not None and row.opened_at else {})
            for hook in watched.hooks
            if hook.type in (WebhookType.ROLLOUT, WebhookType.CONFIRM_PROMOTION)
            for row in [watched.rows.get((phase, hook.name))]
        ]

    # ----------------------------------------------------------------------- starts

    def entry_decisions(self) -> list[EntryDecision]:
        """Starts whose entry gates are all open (start), or whose pre-rollout check failed
        (start and fail at once: the canary never gets a request); the others wait, and
        their gates are planned."""
        decisions: list[EntryDecision] = []
        # One start of a service a tick: the start's readiness check reads what is committed,
        # so a second in the same batch would not see the first (the next tick refuses it).
        starting: set[str] = set()
        for watched in self.waiting_starts.values():
            entry = watched.of(WebhookType.CONFIRM_ROLLOUT, WebhookType.PRE_ROLLOUT)
            rows = {name: row for (order, name), row in watched.rows.items() if order == 1}
            state, why = entry_state(entry, rows)
            if state != "waiting":
                service = watched.deployment.service.name
                if service in starting:
                    continue
                starting.add(service)
            evidence = {
                "webhooks": [
                    {
                        "name": hook.name,
                        "type": str(hook.type),
                        "answer": answer_text(rows.get(hook.name)),
                    }
                    | (
                        {"openedBy": _opened_text(rows[hook.name])}
                        if _opened(rows.get(hook.name))
                        else {}
                    )
                    for hook in entry
                ]
            }
            if state == "open":
                opened = "; ".join(
                    f"{item['type']} '{item['name']}' "
                    + (item["openedBy"] if "openedBy" in item else f"answered {item['answer']}")
                    for item in evidence["webhooks"]
                )
                decisions.append(
                    EntryDecision(
                        watched.deployment,
                        start_reason=f"Started: every entry gate is open ({opened})."
                        if entry
                        else "Started: the configuration names no entry gate any more.",
                        evidence=evidence,
                    )
                )
            elif state == "failed":
                decisions.append(
                    EntryDecision(
                        watched.deployment,
                        start_reason="Started only to fail at once: a pre-rollout check did "
                        "not pass.",
                        fail_reason=f"Failed at its start: {why[0]}; the canary got no traffic.",
                        evidence=evidence,
                    )
                )
            else:
                self._plan_entry(watched, entry, rows)
        return decisions

    def _plan_entry(
        self, watched: _Watched, entry: list[Webhook], rows: Mapping[str, WebhookGate]
    ) -> None:
        confirms = [h for h in entry if h.type == WebhookType.CONFIRM_ROLLOUT]
        closed = [h for h in confirms if not _open(rows.get(h.name))]
        if closed:
            for hook in closed:
                self._plan(watched, hook, 1, rows.get(hook.name))
            return
        for hook in entry:
            if hook.type == WebhookType.PRE_ROLLOUT and not _open(rows.get(hook.name)):
                self._plan(watched, hook, 1, rows.get(hook.name))

    # ----------------------------------------------------------------------- after

    def plan_running(self, deployment_id: int, phase: Phase, judgement: Mapping[str, Any]) -> None:
        """The calls for a running phase that waits: its rollout checks, and its
        confirm-promotion gates once it is ready."""
        watched = self.running.get(deployment_id)
        if watched is None:
            return
        for hook in watched.hooks:
            row = watched.rows.get((phase.order, hook.name))
            if row is not None and row.opened_at is not None:
                continue
            if hook.type == WebhookType.ROLLOUT or (
                hook.type == WebhookType.CONFIRM_PROMOTION and watched.ready and not _open(row)
            ):
                self._plan(watched, hook, phase, row, judgement=judgement)

    def _plan(
        self,
        watched: _Watched,
        hook: Webhook,
        phase: Phase | int,
        row: WebhookGate | None,
        *,
        judgement: Mapping[str, Any] | None = None,
    ) -> None:
        order = phase.order if isinstance(phase, Phase) else phase
        deployment = watched.deployment
        key = idempotency_key(
            deployment_id=deployment.pk,
            run=watched.run,
            phase=order,
            type=hook.type,
            name=hook.name,
            suffix=moment(self.now) if hook.type == WebhookType.ROLLOUT else "",
        )
        body = payload(
            hook=hook,
            key=key,
            deployment=deployment,
            now=self.now,
            phase=phase,
            judgement=judgement,
        )
        self.planned.append(_Planned(watched, hook, order, Call(hook, key, body), row))

    def call_and_record(self) -> tuple[int, int]:
        """Make the planned calls and the due news deliveries, all at once, and write what
        they answered in one statement each; returns (gate calls, deliveries)."""
        deliveries = _claim_deliveries(self.now)
        calls = [planned.call for planned in self.planned] + [
            Call(_delivery_hook(row), row.key, row.payload) for row in deliveries
        ]
        answers = call_all(calls)
        gate_answers = answers[: len(self.planned)]
        events: list[DeploymentEvent] = []
        if self.planned:
            events += self._record_gates(gate_answers)
        if deliveries:
            events += _record_deliveries(deliveries, answers[len(self.planned) :], self.now)
        if events:
            DeploymentEvent.objects.bulk_create(events)
        return len(self.planned), len(deliveries)

    def _record_gates(self, answers: Sequence[Answer]) -> list[DeploymentEvent]:
        rows: list[WebhookGate] = []
        events: list[DeploymentEvent] = []
        for planned, answer in zip(self.planned, answers, strict=True):
            before = planned.row
            deployment = planned.watched.deployment
            failures = 0 if answer.ok else (before.failures if before else 0) + 1
            row = WebhookGate(
                deployment_id=deployment.pk,
                run=planned.watched.run,
                phase=planned.phase,
                name=planned.hook.name,
                type=planned.hook.type,
                passed=answer.ok,
                failures=failures,
                status_code=answer.status,
                error=answer.error[:500],
                excerpt=answer.excerpt[:EXCERPT_CHARS],
                key=planned.call.key,
                tried_at=self.now,
            )
            rows.append(row)
            if _changed(before, answer):
                events.append(self._answer_event(planned, row, answer))
        WebhookGate.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["deployment", "run", "phase", "name"],
            update_fields=[
                "type",
                "passed",
                "failures",
                "status_code",
                "error",
                "excerpt",
                "key",
                "tried_at",
            ],
        )
        return events

    def _answer_event(self, planned: _Planned, row: WebhookGate, answer: Answer) -> DeploymentEvent:
        hook, deployment = planned.hook, planned.watched.deployment
        kind = "hook" if hook.type in (WebhookType.ROLLOUT, WebhookType.PRE_ROLLOUT) else "gate"
        if answer.ok:
            outcome = "open" if kind == "gate" else "passed"
        elif hook.type == WebhookType.ROLLOUT:
            outcome = f"failing ({row.failures} of {hook.failure_threshold} before a rollback)"
        elif hook.type == WebhookType.PRE_ROLLOUT:
            outcome = "failed: the deployment fails at its start"
        else:
            outcome = "closed"
        text = (
            f"The {hook.type} {kind} '{hook.name}' answered {answer.describe()} for phase "
            f"{planned.phase}: {outcome}."
        )
        return DeploymentEvent(
            deployment_id=deployment.pk,
            kind=EventKind.WEBHOOK,
            from_status=deployment.status,
            to_status=deployment.status,
            phase=deployment.current_phase,
            canary_share=deployment.canary_share,
            source=Source.SYSTEM,
            reason=text[:5000],
            evidence={"webhook": _evidence(hook, planned.call.key, answer, self.now)},
            at=self.now,
        )


def _opened(row: WebhookGate | None) -> bool:
    return row is not None and row.opened_at is not None


def _changed(before: WebhookGate | None, answer: Answer) -> bool:
    """Whether an answer changes what the timeline last said of the gate: the first answer,
    open or closed, another status or error. A rollout check that keeps answering alike writes
    nothing more."""
    if before is None or before.tried_at is None:
        return True
    return (
        before.passed != answer.ok
        or before.status_code != answer.status
        or before.error != answer.error[:500]
    )


def _evidence(hook: Webhook, key: str, answer: Answer, now: datetime) -> dict[str, Any]:
    return {
        "name": hook.name,
        "type": str(hook.type),
        "url": hook.url,
        "idempotencyKey": key,
        "status": answer.status,
        "excerpt": answer.excerpt,
        "error": answer.error,
        "elapsedMs": answer.elapsed_ms,
        "at": now.isoformat(),
    }


# --------------------------------------------------------------------------- news


def queue_events(
    events: Sequence[DeploymentEvent],
    *,
    hooks: Mapping[int, tuple[Webhook, ...]] | None = None,
    now: datetime | None = None,
) -> None:
    """Queue the news webhooks of timeline entries just written, in the caller's transaction
    (so a delivery exists exactly when its news does), and drop the start requests that the
    entries end. ``hooks`` gives each deployment's webhooks where its configuration was not
    read (the tick's rows); otherwise the entries' deployments carry it."""
    rows: list[WebhookDelivery] = []
    ends_request: set[int] = set()
    wanted: list[tuple[DeploymentEvent, Webhook]] = []
    for event in events:
        if event.kind == EventKind.WEBHOOK:
            continue  # a webhook's own answer is not news for webhooks: no echo
        deployment = event.deployment
        found = (
            hooks.get(deployment.pk, ())
            if hooks is not None
            else hooks_of((deployment.config or {}).get("webhooks"))
        )
        if event.kind in _CLEARS_REQUEST and (
            event.kind == EventKind.UPDATED or any(h.type in ENTRY_TYPES for h in found)
        ):
            ends_request.add(deployment.pk)
        for hook in found:
            if _tells(hook, event):
                wanted.append((event, hook))
    if ends_request:
        WebhookGate.objects.filter(
            deployment_id__in=sorted(ends_request), requested_at__isnull=False
        ).update(requested_at=None)
    if not wanted:
        return
    now = now or timezone.now()
    by_run = runs(e.deployment_id for e, h in wanted if h.type != WebhookType.EVENT)
    for event, hook in wanted:
        key = idempotency_key(
            deployment_id=event.deployment_id,
            run=by_run.get(event.deployment_id, 1),
            phase=event.phase,
            type=hook.type,
            name=hook.name,
            suffix=str(event.pk) if hook.type == WebhookType.EVENT else "",
        )
        rows.append(
            WebhookDelivery(
                key=key,
                deployment_id=event.deployment_id,
                event=event,
                name=hook.name,
                type=hook.type,
                url=hook.url,
                timeout_ms=hook.timeout_ms,
                payload=payload(
                    hook=hook,
                    key=key,
                    deployment=event.deployment,
                    now=event.at,
                    phase=event.phase,
                    event=event,
                ),
                next_attempt_at=min(now, event.at),
                created_at=event.at,
            )
        )
    # The key is unique: news queued again (a retried batch) is queued once.
    WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=True)


def _tells(hook: Webhook, event: DeploymentEvent) -> bool:
    if hook.type == WebhookType.EVENT:
        return True
    if hook.type == WebhookType.ROLLBACK:
        return event.kind == EventKind.ROLLBACK
    if hook.type == WebhookType.POST_ROLLOUT:
        # The end of a rollout that ran: an aborted pending deployment rolled nothing out.
        return (
            event.to_status in _ENDED
            and event.from_status != event.to_status
            and event.from_status != DeploymentStatus.PENDING
        )
    return False


def _delivery_hook(row: WebhookDelivery) -> Webhook:
    return Webhook(
        name=row.name, type=WebhookType(row.type), url=row.url, timeout_ms=row.timeout_ms
    )


def _claim_deliveries(now: datetime) -> list[WebhookDelivery]:
    """Claim the due news deliveries for this tick (a lease, so no other tick sends them)."""
    lease = now + timedelta(seconds=lease_seconds())
    due = WebhookDelivery.objects.filter(
        status=WebhookDeliveryStatus.PENDING, next_attempt_at__lte=now
    ).filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    with transaction.atomic():
        ids = due.order_by("next_attempt_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            ids = ids.select_for_update(skip_locked=True)
        claimed = list(ids.values_list("pk", flat=True)[: deliveries_per_tick()])
        if not claimed:
            return []
        WebhookDelivery.objects.filter(pk__in=claimed).update(claimed_until=lease)
    return list(WebhookDelivery.objects.filter(pk__in=claimed).order_by("next_attempt_at", "pk"))


def _record_deliveries(
    rows: Sequence[WebhookDelivery], answers: Sequence[Answer], now: datetime
) -> list[DeploymentEvent]:
    events: list[DeploymentEvent] = []
    for row, answer in zip(rows, answers, strict=True):
        row.attempts += 1
        row.claimed_until = None
        row.status_code = answer.status
        row.error = answer.error[:500]
        row.excerpt = answer.excerpt[:EXCERPT_CHARS]
        hook = _delivery_hook(row)
        if answer.ok:
            row.status = WebhookDeliveryStatus.DELIVERED
            row.delivered_at = now
            text = f"The {row.type} hook '{row.name}' was told: it answered {answer.describe()}."
        elif row.attempts >= max_attempts():
            row.status = WebhookDeliveryStatus.FAILED
            text = (
                f"The {row.type} hook '{row.name}' could not be told after {row.attempts} "
                f"attempts: {answer.describe()}."
            )
        else:
            delay = min(backoff_max_seconds(), backoff_seconds() * 2 ** (row.attempts - 1))
            row.next_attempt_at = now + timedelta(seconds=delay)
            logger.warning(
                "webhook %s attempt %s failed: %s", row.key, row.attempts, answer.describe()
            )
            continue
        if row.type != WebhookType.EVENT or row.status == WebhookDeliveryStatus.FAILED:
            phase = (row.payload.get("phase") or {}).get("order")
            events.append(
                DeploymentEvent(
                    deployment_id=row.deployment_id,
                    kind=EventKind.WEBHOOK,
                    phase=phase,
                    source=Source.SYSTEM,
                    reason=text,
                    evidence={"webhook": _evidence(hook, row.key, answer, now)},
                    at=now,
                )
            )
    WebhookDelivery.objects.bulk_update(
        list(rows),
        [
            "attempts",
            "claimed_until",
            "status",
            "status_code",
            "error",
            "excerpt",
            "delivered_at",
            "next_attempt_at",
        ],
    )
    return events


def deliveries_send(*, now: datetime | None = None) -> int:
    """Send the due news deliveries now (what the tick does after its gates); returns how many
    were tried."""
    gates = TickGates(now or timezone.now())
    return gates.call_and_record()[1]


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class GateView:
    """A gate as the page and the API show it."""

    name: str
    type: str
    url: str
    phase: int | None
    state: str  # open, closed, failing, failed, waiting, idle
    detail: str
    can_open: bool

    @property
    def badge(self) -> str:
        """The status badge's colour word in the one stylesheet."""
        return _BADGES.get(self.state, "pending")


_BADGES = {
    "open": "passed",
    "closed": "paused",
    "waiting": "pending",
    "failing": "failed",
    "failed": "failed",
    "idle": "skipped",
}


@dataclass(frozen=True)
class NewsView:
    name: str
    type: str
    url: str
    detail: str


def gate_views(deployment: Deployment) -> list[GateView]:
    """Each gate of the deployment where it stands now: for the start while pending, for the
    current phase while running or paused."""
    hooks = hooks_of((deployment.config or {}).get("webhooks"))
    gates = [hook for hook in hooks if hook.is_gate]
    if not gates:
        return []
    run = runs([deployment.pk])[deployment.pk]
    rows = _gate_rows({deployment.pk: run}).get(deployment.pk, {})
    status = deployment.status
    current = deployment.current_phase or 1
    requested = any(row.requested_at is not None for row in rows.values())
    views: list[GateView] = []
    for hook in gates:
        entry = hook.type in ENTRY_TYPES
        phase = 1 if entry else current
        row = rows.get((phase, hook.name))
        # Entry gates hold the start; the others the current phase of a deployment under way.
        relevant = status == DeploymentStatus.PENDING if entry else status in _OPEN_STATUSES
        if not relevant:
            state = "idle"
            detail = "It gated the start." if entry else "It holds nothing now."
        elif row is not None and row.opened_at is not None:
            state = "open"
            detail = (
                f"Open: {_opened_text(row)}"
                + (f" ({row.opened_reason})" if row.opened_reason else "")
                + "."
            )
        elif row is not None and row.passed:
            state, detail = "open", f"Open: answered {answer_text(row)}."
        elif row is not None and row.tried_at is not None:
            if hook.type == WebhookType.PRE_ROLLOUT:
                state = "failed"
            elif hook.type == WebhookType.ROLLOUT:
                state = "failing"
            else:
                state = "closed"
            detail = f"Closed: {answer_text(row)}."
            if hook.type == WebhookType.ROLLOUT:
                detail = (
                    f"Failing {row.failures} of {hook.failure_threshold} before a rollback: "
                    f"{answer_text(row)}."
                )
        else:
            state = "waiting" if (requested or not entry) else "closed"
            if entry and status == DeploymentStatus.PENDING and not requested:
                detail = "Asked when the deployment is started."
            else:
                detail = "Not asked yet."
        views.append(
            GateView(
                name=hook.name,
                type=str(hook.type),
                url=hook.url,
                phase=phase if relevant else None,
                state=state,
                detail=detail,
                can_open=relevant and state != "open",
            )
        )
    return views


def start_waiting_reason(deployment: Deployment) -> str:
    """Why a pending deployment whose start was asked for has not started, or ""."""
    if deployment.status != DeploymentStatus.PENDING:
        return ""
    entry = [
        h for h in hooks_of((deployment.config or {}).get("webhooks")) if h.type in ENTRY_TYPES
    ]
    if not entry:
        return ""
    run = runs([deployment.pk])[deployment.pk]
    rows = {
        name: row
        for (order, name), row in _gate_rows({deployment.pk: run}).get(deployment.pk, {}).items()
        if order == 1
    }
    if not any(row.requested_at is not None for row in rows.values()):
        return ""
    state, why = entry_state(entry, rows)
    if state == "open":
        return "Every entry gate is open: the next tick starts it."
    return f"Waiting for {'; '.join(why)}."


def news_views(deployment: Deployment) -> list[NewsView]:
    """Each news hook with its latest delivery."""
    hooks = [
        hook
        for hook in hooks_of((deployment.config or {}).get("webhooks"))
        if hook.type in _NEWS_TYPES
    ]
    if not hooks:
        return []
    latest: dict[str, WebhookDelivery] = {}
    for row in WebhookDelivery.objects.filter(deployment=deployment).order_by("created_at", "id"):
        latest[row.name] = row
    views = []
    for hook in hooks:
        row = latest.get(hook.name)
        if row is None:
            detail = "Nothing told yet."
        elif row.status == WebhookDeliveryStatus.DELIVERED:
            detail = f"Told at {row.delivered_at.astimezone(UTC):%H:%M:%S}: HTTP {row.status_code}."  # type: ignore[union-attr]
        elif row.status == WebhookDeliveryStatus.FAILED:
            detail = (
                f"Gave up after {row.attempts} attempts: {row.error or f'HTTP {row.status_code}'}."
            )
        elif row.attempts:
            detail = (
                f"Retrying ({row.attempts} attempts): {row.error or f'HTTP {row.status_code}'}."
            )
        else:
            detail = "Queued."
        views.append(NewsView(hook.name, str(hook.type), hook.url, detail))
    return views
