"""Template tags of the kill switches shown on other apps' pages: the navigation's red button
(kill all) for those who may press it, and the switches that may kill a flag on the flag's
page."""

from __future__ import annotations

from typing import Any

from django import template

from rollback.choices import ActivationState
from rollback.killswitch_selectors import covering
from rollback.models import KillSwitchActivation
from rollback.services.killswitches import KILL_ALL_NAME

register = template.Library()

TRIGGER = "rollback.trigger_killswitch"


@register.inclusion_tag("rollback/killswitches/_kill_all_button.html", takes_context=True)
def kill_all_button(context: template.Context) -> dict[str, Any]:
    """The red button, only for engineers and admins (``rollback.trigger_killswitch``); while
    kill-all is active it says so and leads to that switch's page, where it is recovered."""
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    if user is None or not user.is_authenticated or not user.has_perm(TRIGGER):
        return {"show": False}
    active = (
        KillSwitchActivation.objects.filter(
            switch__name=KILL_ALL_NAME, state=ActivationState.ACTIVE
        )
        .values_list("switch_id", flat=True)
        .first()
    )
    return {"show": True, "active_switch": active}


@register.inclusion_tag("rollback/killswitches/_flag_cover.html")
def flag_kill_switches(flag: Any) -> dict[str, Any]:
    """What a flag's page says of kill switches: which may kill the flag, and whether one has."""
    return {"flag": flag, "rows": covering(flag), "kill_all_name": KILL_ALL_NAME}
