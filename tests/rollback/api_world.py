"""What the rollback API tests stand on: service "shop" with its targets, a deployment of it
running on its second phase, and a plan of the shop's."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tests.deployments.conftest import CANARY, STABLE, make_config, phase


def shop_service() -> Any:
    from routing import services

    service = services.service_create(name="shop", stable_version=STABLE)
    services.target_create(
        service=service, name="stable", endpoint="http://127.0.0.1:9", version=STABLE
    )
    services.target_create(
        service=service, name="canary", endpoint="http://127.0.0.1:10", version=CANARY
    )
    return service


def running_deployment(**config: Any) -> Any:
    """A deployment of "shop" running on its second phase (50%)."""
    from deployments import services

    deployment = services.deployment_create(
        config=make_config(phases=[phase(10), phase(50), phase(100)], **config)
    )
    services.deployment_transition(deployment_id=deployment.pk, action="start")
    services.deployment_transition(deployment_id=deployment.pk, action="promote", reason="test")
    deployment.refresh_from_db()
    assert deployment.status == "running" and deployment.canary_share == Decimal("50")
    return deployment


def plan_definition(**fields: Any) -> dict[str, Any]:
    """A gradual plan of the shop's, in the guide's words."""
    return {
        "name": "shop-careful",
        "description": "Step the canary down, then tell the team.",
        "service": "shop",
        "strategy": "gradual",
        "strategyConfig": {"durationMs": 60_000, "steps": 3},
        "actions": [
            {"id": "stop", "name": "Stop new traffic", "type": "stop_new_traffic", "order": 1},
            {
                "id": "flags",
                "name": "Flags off",
                "type": "update_feature_flags",
                "order": 2,
                "timeoutMs": 15_000,
                "config": {"disable": True},
            },
        ],
        **fields,
    }


def make_plan(**fields: Any) -> Any:
    from rollback import services

    return services.rollback_plan_create(definition=plan_definition(**fields))


def client_for(api_client: Any, user: Any) -> Any:
    api_client.force_authenticate(user)
    return api_client
