"""Template tags of the health pages: where a policy's news goes, for its own page and for the
page of a deployment it judges."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django import template

from health import conf
from health.alerting import Channel
from health.forms import METRIC_LABELS, NO_DATA_CHOICES, OPERATOR_CHOICES, shown_number
from health.models import HealthPolicy

register = template.Library()


@dataclass(frozen=True)
class Target:
    channel: str
    where: str


@dataclass(frozen=True)
class Reach:
    """Who a policy's news reaches: what its alerting would send each alert and each piece of
    deployment news to, as the outbox addresses it, and why nobody when nobody."""

    policy: HealthPolicy | None
    targets: tuple[Target, ...] = ()
    nowhere: tuple[str, ...] = ()
    """Channels that are ticked yet lead nowhere, each with the reason."""
    why_nobody: str = ""

    @property
    def nobody(self) -> bool:
        return not self.targets


def _host(url: str) -> str:
    # A webhook URL is a credential (Slack's carries its token): readers see the host only.
    return urlsplit(url).hostname or "an address that is not a URL"


def _url_target(name: str, own: str, site: str, setting: str) -> Target | str:
    if own:
        return Target(name, f"{_host(own)} (the policy's URL)")
    if site:
        return Target(name, f"{_host(site)} (the site's URL, {setting})")
    return f"{name} is ticked, but neither the policy nor the site ({setting}) has a URL"


def policy_reach(policy: HealthPolicy | None) -> Reach:
    """Where news sent by ``policy``'s alerting goes (the outbox's targets)."""
    if policy is None:
        return Reach(policy, why_nobody="no health policy is named, so no alerting carries it")
    if not policy.alerting_enabled:
        return Reach(policy, why_nobody=f"alerting is off on {policy.name}")
    if not policy.alert_channels:
        return Reach(
            policy, why_nobody=f"{policy.name} has no channel configured (email, Slack, webhook)"
        )
    targets: list[Target] = []
    nowhere: list[str] = []
    for channel in policy.alert_channels:
        if channel == Channel.EMAIL:
            if policy.alert_recipients:
                targets += [Target("Email", address) for address in policy.alert_recipients]
            else:
                nowhere.append("Email is ticked, but there is no recipient")
        elif channel in (Channel.SLACK, Channel.WEBHOOK):
            found = (
                _url_target(
                    "Slack",
                    policy.slack_webhook_url,
                    conf.slack_webhook_url(),
                    "CANARY_SLACK_WEBHOOK_URL",
                )
                if channel == Channel.SLACK
                else _url_target(
                    "Webhook", policy.webhook_url, conf.webhook_url(), "CANARY_WEBHOOK_URL"
                )
            )
            if isinstance(found, Target):
                targets.append(found)
            else:
                nowhere.append(found)
    why = "" if targets else f"none of the channels of {policy.name} leads anywhere"
    return Reach(policy, tuple(targets), tuple(nowhere), why)


@register.simple_tag
def news_reach(policy: HealthPolicy | None) -> Reach:
    """``{% news_reach policy as reach %}``: see `policy_reach`."""
    return policy_reach(policy)


@dataclass(frozen=True)
class Asked:
    """The news a deployment's ``notifications`` switches ask for: the switches that are on, or
    everything when it sets none (a switch left out is on)."""

    names: tuple[str, ...]
    everything: bool = False

    def __bool__(self) -> bool:
        return self.everything or bool(self.names)

    @property
    def rollback(self) -> bool:
        """Whether it asks to be told of a rollback (``onRollback``)."""
        return self.everything or "onRollback" in self.names


@register.simple_tag
def asked_news(switches: Mapping[str, Any] | None) -> Asked:
    """``{% asked_news deployment.notifications as asked %}``."""
    if not switches:
        return Asked((), everything=True)
    return Asked(tuple(name for name, on in switches.items() if on is not False))


@register.filter
def metric_label(metric: str) -> str:
    """``error_rate`` as the form names it: ``Error rate (%)``; ``custom:<name>`` as itself."""
    return METRIC_LABELS.get(str(metric), str(metric))


@register.filter
def operator_word(operator: str) -> str:
    """``gt`` as the form says it: ``above``."""
    return dict(OPERATOR_CHOICES).get(str(operator), str(operator))


@register.filter
def no_data_label(rule: str) -> str:
    return dict(NO_DATA_CHOICES).get(str(rule), str(rule))


@register.filter
def number(value: Any) -> str:
    """A policy's number as the form shows it: ``25``, ``0.05``, ``1e-05``; a dash for none."""
    return shown_number(value) or "—"
