"""The approval gate: where a risky change stops and waits for a sign-off, whoever asks for it.

The lower apps' write services that an approval policy may cover are decorated with `gated`,
so every path to them (the dashboard, the API, the admin, a task) meets the gate in the service
itself. Before the service runs, the gate describes the change (a `Describer` of the app: the
object, its version, the before and after that an approver will see) and asks the backend the
rollback app registers (`register`) whether a policy covers it. When one does, the backend opens
an approval request and the gate raises `ApprovalRequired` (202 over REST, a banner in the
dashboard) instead of acting.

An approved request is applied by calling the same service again, with the same arguments,
inside `applying(grant)`: the gate lets exactly that change through, and only if the object is
still at the version the approvers saw (otherwise `ApprovalSuperseded`). Everything a gated
service does while it runs (a deployment's effects on its routing rule and its flags) is part of
the one change that was judged, and `part_of` gives a service that is not itself gated (the
deployments' batch of transitions, which the control loop calls) the same standing.

Emergencies never wait: `EMERGENCY_ACTIONS` (a flag kill, an automatic rollback on a breach, a
kill-switch trigger) have no gate, and a policy that names one is refused.

This module is floor: it imports no app, so every app may use it; the rollback app plugs in.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from canary_site.exceptions import CanaryError, TransitionNotAllowed


@dataclass(frozen=True)
class GatedAction:
    """An action word a policy may name, and the services that perform it."""

    name: str
    label: str
    services: tuple[str, ...] = ()


# Every gated action and the services that perform it, by their public import paths. A write
# service that performs one of these actions and is missing here (or is here and not decorated)
# fails tests/rollback/test_gates.py.
GATED_ACTIONS: dict[str, GatedAction] = {
    action.name: action
    for action in (
        GatedAction(
            "deployment.start",
            "Start a deployment",
            ("deployments.services.deployment_transition",),
        ),
        GatedAction(
            "deployment.promote",
            "Promote a deployment to its next phase",
            ("deployments.services.deployment_transition",),
        ),
        GatedAction(
            "deployment.promote_full",
            "Promote a deployment fully",
            ("deployments.services.deployment_transition",),
        ),
        GatedAction(
            "deployment.abort",
            "Abort a deployment",
            ("deployments.services.deployment_transition",),
        ),
        GatedAction(
            "deployment.retry",
            "Retry a deployment",
            ("deployments.services.deployment_transition",),
        ),
        GatedAction(
            "deployment.rollback",
            "Roll a deployment back by hand",
            ("deployments.services.deployment_transition",),
        ),
        GatedAction("flag.create", "Create a flag", ("flags.services.flag_create",)),
        GatedAction(
            "flag.update",
            "Change a flag's definition",
            (
                "flags.services.flag_update",
                "flags.services.flag_rule_add",
                "flags.services.flag_rule_update",
                "flags.services.flag_rule_move",
                "flags.services.flag_rule_delete",
            ),
        ),
        GatedAction("flag.enable", "Enable a flag", ("flags.services.flag_enable",)),
        GatedAction("flag.disable", "Disable a flag", ("flags.services.flag_disable",)),
        GatedAction(
            "flag.rollout",
            "Change a flag's rollout percentage",
            ("flags.services.flag_set_rollout",),
        ),
        GatedAction("flag.delete", "Delete a flag", ("flags.services.flag_delete",)),
        GatedAction(
            "routing.rule",
            "Create, change or delete a routing rule",
            (
                "routing.services.rule_create",
                "routing.services.rule_update",
                "routing.services.rule_delete",
            ),
        ),
        GatedAction(
            "routing.weights",
            "Change a routing rule's weights or a target's weight",
            (
                "routing.services.rule_set_weights",
                "routing.services.target_create",
                "routing.services.target_update",
                "routing.services.target_delete",
            ),
        ),
        GatedAction(
            "rollback.execute",
            "Roll a deployment back by its plan, by hand",
            ("rollback.services.executions.rollback_request",),
        ),
        GatedAction(
            "killswitch.recover",
            "Recover a kill switch",
            ("rollback.services.killswitches.kill_switch_recover",),
        ),
    )
}

# The actions that never wait for anyone, and why: a policy naming one is refused with this.
EMERGENCY_ACTIONS: dict[str, str] = {
    "flag.kill": "a flag kill is the emergency off-switch and never waits for a sign-off",
    "deployment.auto_rollback": (
        "the automatic rollback on a breach protects users at once and never waits for a sign-off"
    ),
    "killswitch.trigger": "a kill-switch trigger is an emergency and never waits for a sign-off",
}


class ApprovalRequired(CanaryError):
    """The change was not made: a policy asks for a sign-off, and a request is now open.

    Not a failure of the client's input: the API answers 202 with the request, so a pipeline
    can poll it; the dashboard shows it as a banner.
    """

    status_code = 202
    code = "approval_required"

    def __init__(self, message: str, *, request_id: int, summary: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.summary = dict(summary)

    def as_body(self) -> dict[str, Any]:
        return {"approval_request": self.summary, "message": self.message}


class ApprovalSuperseded(TransitionNotAllowed):
    """An approved change can no longer be applied as it was shown: the object changed since."""

    code = "superseded"


@dataclass(frozen=True)
class Change:
    """A gated change as the approvers see it: what it does to which object at which version.

    ``object_id`` is the object's primary key, or its key for one that does not exist yet (a
    flag to create). ``service`` and ``tags`` place it for the policies' scopes.
    """

    action: str
    object_type: str
    object_id: str
    object_repr: str
    version: str
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    service: str = ""
    tags: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """Someone's call of a gated service: the change, and how to make it again once approved."""

    change: Change
    service: str
    arguments: dict[str, Any]
    actor: Any
    source: str
    reason: str


@dataclass(frozen=True)
class Grant:
    """Leave to apply one approved change: the request it comes from, bound to the object and
    the version the approvers saw."""

    request_id: int
    action: str
    object_type: str
    object_id: str
    version: str

    def covers(self, change: Change) -> bool:
        return (self.action, self.object_type, self.object_id) == (
            change.action,
            change.object_type,
            change.object_id,
        )


class Backend(Protocol):
    def check(self, attempt: Attempt) -> None:
        """Raise `ApprovalRequired` after opening a request when a policy covers the attempt."""

    def covers_action(self, action: str) -> bool:
        """Whether any policy may cover ``action`` at all (cheap: the change is not described
        otherwise)."""


class Describer(Protocol):
    def action(self, arguments: Mapping[str, Any]) -> str | None:
        """The gated action a call with ``arguments`` performs, or None when it performs none."""

    def describe(self, arguments: Mapping[str, Any]) -> Change:
        """The change a call with ``arguments`` would make, read from the database now."""


_backend: Backend | None = None
# Set while a gated service (or a service `part_of` one) runs: nested gated calls are its effects.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("canary_gate_inside", default=False)
_grant: contextvars.ContextVar[Grant | None] = contextvars.ContextVar(
    "canary_gate_grant", default=None
)


def register(backend: Backend | None) -> None:
    """Install the policies' backend (the rollback app does, when it is ready)."""
    global _backend
    _backend = backend


@contextmanager
def applying(grant: Grant) -> Iterator[None]:
    """Let the one change ``grant`` names through the gate while the block runs."""
    token = _grant.set(grant)
    try:
        yield
    finally:
        _grant.reset(token)


@contextmanager
def inside() -> Iterator[None]:
    """Run the block as part of a change already judged: gated calls in it do not stop."""
    token = _inside.set(True)
    try:
        yield
    finally:
        _inside.reset(token)


def granted() -> bool:
    """Whether an approved change is being applied now (inside the approval's own apply)."""
    return _grant.get() is not None


F = TypeVar("F", bound=Callable[..., Any])


def gated(describer: Describer) -> Callable[[F], F]:
    """Decorate a keyword-only write service whose calls may need a sign-off."""

    def decorate(function: F) -> F:
        path = f"{function.__module__}.{function.__name__}"

        @functools.wraps(function)
        def wrapper(**arguments: Any) -> Any:
            if _inside.get():
                return function(**arguments)
            action = describer.action(arguments)
            if action is not None:
                check(describer, action, path, arguments)
            with inside():
                return function(**arguments)

        wrapper.__gate__ = describer  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def part_of(function: F) -> F:
    """Decorate a service that is not gated itself but only ever performs what was judged
    before it (the deployments' batch of transitions: a person's gated action, or the control
    loop's own decisions): the gated services it calls are its effects and do not stop."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with inside():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check(describer: Describer, action: str, path: str, arguments: Mapping[str, Any]) -> None:
    """The gate itself: let an approved change through, refuse a superseded one, and ask the
    backend about everything else."""
    grant = _grant.get()
    if grant is not None and grant.action == action:
        change = describer.describe(arguments)
        if grant.covers(change):
            if change.version != grant.version:
                raise ApprovalSuperseded(
                    f"{change.object_repr} has changed since approval request "
                    f"#{grant.request_id} was made (version {grant.version}, now "
                    f"{change.version}); the approval was for exactly what was shown."
                )
            return
    current = _backend
    if current is None or not current.covers_action(action):
        return
    change = describer.describe(arguments)
    current.check(
        Attempt(
            change=change,
            service=path,
            arguments=encode(
                {
                    name: value
                    for name, value in arguments.items()
                    if name not in ("actor", "source", "reason")
                }
            ),
            actor=arguments.get("actor"),
            source=str(arguments.get("source") or "system"),
            reason=str(arguments.get("reason") or ""),
        )
    )


def describer_of(service: Callable[..., Any]) -> Describer | None:
    """The describer a gated service was decorated with, or None for a service that is not."""
    return getattr(service, "__gate__", None)


# --- arguments as JSON, so an approved call can be made again later -----------------------------


def encode(value: Any) -> Any:
    """JSON for a service's arguments: model instances become references to their rows."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, Mapping):
        return {str(key): encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encode(item) for item in value]
    meta = getattr(value, "_meta", None)
    if meta is not None and getattr(value, "pk", None) is not None:
        return {"$model": meta.label_lower, "pk": value.pk}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(dataclasses.asdict(value))
    if hasattr(value, "value") and isinstance(value.value, str):  # an enum member
        return value.value
    raise TypeError(f"A gated service's argument cannot be kept: {type(value).__name__}")


def plain(value: Any) -> Any:
    """``value`` as JSON a person reads in a diff: rows by their names, numbers as numbers."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item) for item in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return str(value)


def decode(value: Any) -> Any:
    """The arguments `encode` kept, with rows read again (a row that is gone: `LookupError`)."""
    from django.apps import apps

    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"$decimal"}:
        return Decimal(value["$decimal"])
    if set(value) == {"$datetime"}:
        return datetime.fromisoformat(value["$datetime"])
    if set(value) == {"$date"}:
        return date.fromisoformat(value["$date"])
    if set(value) == {"$model", "pk"}:
        model = apps.get_model(value["$model"])
        found = model._default_manager.filter(pk=value["pk"]).first()
        if found is None:
            raise LookupError(f"{model._meta.verbose_name} {value['pk']} no longer exists.")
        return found
    return {key: decode(item) for key, item in value.items()}
