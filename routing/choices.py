"""Choices (TextChoices) of the routing app; those with the decision engine's words are derived
from its enums (`routing.engine`)."""

from django.db import models

from canary_site.choices import mirror, phrase, worded, words
from routing import engine

Strategy = mirror(
    engine.Strategy,
    label=words,
    WEIGHTED="Weighted split",
    HEADER="Header names the target",
    COOKIE="Cookie names the target",
    QUERY="Query parameter names the target",
)

ConditionSource = mirror(
    engine.Source,
    name="ConditionSource",
    label=words,
    QUERY="Query parameter",
    CLIENT_IP="Client IP",
)

ConditionOperator = mirror(
    engine.Operator,
    name="ConditionOperator",
    label=phrase,
    IN="is one of",
    PREFIX="starts with",
    REGEX="matches regex",
    CIDR="is in network (CIDR)",
)


AffinityType = worded("AffinityType", "cookie header")


CircuitState = mirror(engine.CircuitState, label=words, HALF_OPEN="Half-open")


class ProviderKind(models.TextChoices):
    """The data plane that serves a service's traffic (``routing.providers``)."""

    BUILTIN = "builtin", "Built-in proxy"
    HAPROXY = "haproxy", "HAProxy (Runtime API)"
    NGINX = "nginx", "nginx (reload)"


ProviderSyncAction = worded(
    "ProviderSyncAction",
    "apply repair check",
    doc="What a provider sync did: applied a change of weights, repaired drift, or only "
    "looked (a failed look is recorded; a quiet one is not).",
)
