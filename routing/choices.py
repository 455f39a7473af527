"""Choices (TextChoices) of the routing app; their values are the decision engine's words."""

from django.db import models


class Strategy(models.TextChoices):
    WEIGHTED = "weighted", "Weighted split"
    ROUND_ROBIN = "round_robin", "Round robin"
    LEAST_CONNECTIONS = "least_connections", "Least connections"
    HEADER = "header", "Header names the target"
    COOKIE = "cookie", "Cookie names the target"
    QUERY = "query", "Query parameter names the target"


class ConditionSource(models.TextChoices):
    HEADER = "header", "Header"
    COOKIE = "cookie", "Cookie"
    QUERY = "query", "Query parameter"
    PATH = "path", "Path"
    METHOD = "method", "Method"
    CLIENT_IP = "client_ip", "Client IP"


class ConditionOperator(models.TextChoices):
    EQUALS = "equals", "equals"
    IN = "in", "is one of"
    PREFIX = "prefix", "starts with"
    CONTAINS = "contains", "contains"
    REGEX = "regex", "matches regex"
    CIDR = "cidr", "is in network (CIDR)"


class AffinityType(models.TextChoices):
    COOKIE = "cookie", "Cookie"
    HEADER = "header", "Header"


class CircuitState(models.TextChoices):
    CLOSED = "closed", "Closed"
    OPEN = "open", "Open"
    HALF_OPEN = "half_open", "Half-open"
