"""Which approval policy governs a change, and whether a policy's words make sense: pure, no model.

A policy covers a change when it names the change's action and its scope holds the change's
object: ``all`` holds everything, ``service`` the deployments and routing rules of the service
of that name, ``flag_tag`` the flags with that tag and the deployments that drive one, and
``environment`` every change on an install whose ``CANARY_ENVIRONMENT`` is that label. When
several policies cover a change the strictest governs it: the highest quorum, then the one where
one rejection rejects, then the shortest time open, then the oldest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from canary_site.gates import EMERGENCY_ACTIONS, GATED_ACTIONS
from rollback.choices import ScopeKind

MAX_TTL_SECONDS = 30 * 86400


@dataclass(frozen=True)
class PolicyView:
    """What matching needs of a policy."""

    id: int
    scope_kind: str
    scope_value: str
    actions: tuple[str, ...]
    quorum: int
    ttl_seconds: int
    one_rejection_rejects: bool


@dataclass(frozen=True)
class Place:
    """Where a change happens, for the scopes."""

    action: str
    service: str = ""
    tags: tuple[str, ...] = ()
    environment: str = ""


def covers(policy: PolicyView, place: Place) -> bool:
    if place.action not in policy.actions:
        return False
    kind, value = policy.scope_kind, policy.scope_value
    if kind == ScopeKind.ALL:
        return True
    if kind == ScopeKind.SERVICE:
        return bool(place.service) and place.service == value
    if kind == ScopeKind.FLAG_TAG:
        return value in place.tags
    if kind == ScopeKind.ENVIRONMENT:
        return bool(place.environment) and place.environment == value
    return False


def governing(policies: Iterable[PolicyView], place: Place) -> PolicyView | None:
    """The strictest of the policies that cover ``place``, or None."""
    covering = [policy for policy in policies if covers(policy, place)]
    if not covering:
        return None
    return min(
        covering,
        key=lambda p: (-p.quorum, not p.one_rejection_rejects, p.ttl_seconds, p.id),
    )


def action_problems(actions: object) -> list[str]:
    """Why a policy's ``actions`` cannot stand, each a sentence; empty when they can."""
    if not isinstance(actions, Sequence) or isinstance(actions, str) or not actions:
        return ["Name at least one action, as a list of action words."]
    problems = []
    for action in actions:
        if not isinstance(action, str):
            problems.append("Each action is an action word such as 'deployment.promote_full'.")
        elif action in EMERGENCY_ACTIONS:
            problems.append(f"'{action}' cannot be gated: {EMERGENCY_ACTIONS[action]}.")
        elif action not in GATED_ACTIONS:
            known = ", ".join(sorted(GATED_ACTIONS))
            problems.append(f"'{action}' is not an action a policy can gate (one of: {known}).")
    if len(set(map(str, actions))) != len(actions):
        problems.append("Each action is named once.")
    return problems


def quorum_problem(quorum: object, possible_approvers: int) -> str | None:
    """Why ``quorum`` cannot be met, or None."""
    if type(quorum) is not int or quorum < 1:
        return "At least one approval is needed: the quorum is 1 or more."
    if quorum > possible_approvers:
        return (
            f"The quorum of {quorum} cannot be met: only {possible_approvers} "
            f"{'person' if possible_approvers == 1 else 'people'} can approve under this policy."
        )
    return None


def ttl_problem(ttl_seconds: object) -> str | None:
    if type(ttl_seconds) is not int or not 60 <= ttl_seconds <= MAX_TTL_SECONDS:
        return f"A request stays open from 60 seconds to {MAX_TTL_SECONDS // 86400} days."
    return None
