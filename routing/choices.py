"""Choices (TextChoices) of the routing app; those with the decision engine's words are derived
from its enums (`routing.engine`)."""

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
