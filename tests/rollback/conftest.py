"""Fixtures of the rollback tests: people in each role, policies, and a change to gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _no_follow_up_tasks(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.CANARY_DEPLOYMENTS_ENQUEUE = False
    settings.CANARY_NOTIFY_ENQUEUE = False


@pytest.fixture
def people(make_user: Callable[..., Any]) -> dict[str, Any]:
    return {
        "erin": make_user("erin", roles=["engineer"]),
        "ann": make_user("ann", roles=["approver"]),
        "bob": make_user("bob", roles=["approver"]),
        "cat": make_user("cat", roles=["approver"]),
        "ada": make_user("ada", roles=["admin"]),
        "vic": make_user("vic", roles=["viewer"]),
    }


@pytest.fixture
def make_policy(db: Any) -> Callable[..., Any]:
    from rollback import services

    def make(**fields: Any) -> Any:
        values: dict[str, Any] = {
            "name": f"policy-{len(fields)}-{id(fields)}",
            "scope_kind": "flag_tag",
            "scope_value": "payments",
            "actions": ["flag.update"],
            "quorum": 1,
        }
        values.update(fields)
        return services.approval_policy_create(**values)

    return make


@pytest.fixture
def health_policy(db: Any) -> Any:
    from health import services

    return services.health_policy_create(name="gated", alerting_enabled=False)
