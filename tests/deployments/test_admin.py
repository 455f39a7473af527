"""The deployments admin: its lifecycle actions are a person's verbs, run through the service."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from deployments.admin import DeploymentAdmin
from deployments.api.views import DeploymentViewSet
from deployments.forms import ActionForm
from deployments.lifecycle import PERSON_ACTIONS
from deployments.models import Deployment, DeploymentEvent


def test_every_interface__offers_the_verbs_a_person_may_use_and_no_other():
    verbs = [str(verb) for verb in PERSON_ACTIONS]

    admin_verbs = [
        action.__name__.removesuffix("_deployments") for action in DeploymentAdmin.actions
    ]
    form_verbs = [value for value, _ in ActionForm.base_fields["action"].choices]
    api_names = {action.__name__ for action in DeploymentViewSet.get_extra_actions()}

    assert admin_verbs == verbs
    assert form_verbs == verbs
    assert set(verbs) <= api_names
    assert not api_names & {"succeed", "rollback", "finish_rollback", "fail"}


@pytest.mark.django_db
def test_admin_promote_fully__gives_the_canary_all_traffic_through_the_service(
    make_deployment: Any, make_user: Any
) -> None:
    user = make_user("root")
    user.is_superuser = user.is_staff = True
    user.save(update_fields=["is_superuser", "is_staff"])
    client = Client()
    client.force_login(user)
    deployment = make_deployment()
    client.post(
        "/admin/deployments/deployment/",
        {"action": "start_deployments", "_selected_action": [deployment.pk]},
    )

    answer = client.post(
        "/admin/deployments/deployment/",
        {"action": "promote_full_deployments", "_selected_action": [deployment.pk]},
        follow=True,
    )

    assert answer.status_code == 200
    assert Deployment.objects.get(pk=deployment.pk).status == "succeeded"
    event = DeploymentEvent.objects.filter(deployment=deployment).order_by("pk").last()
    assert event is not None
    assert event.kind == "promote_full"
    assert event.reason == "admin: promote fully"
