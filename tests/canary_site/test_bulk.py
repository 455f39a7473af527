"""Writes of many rows in one statement: what they store is what Django's own would store, and
the audit trail of bulk writes has the entries auditlog's own diff gives."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from auditlog.diff import model_instance_diff
from django.contrib.contenttypes.models import ContentType

from canary_site.audit import audit_context, audit_updates
from canary_site.bulk import insert_rows
from canary_site.models import AuditEntry
from routing import services as routing_services
from routing.models import RoutingRule, RuleTarget

pytestmark = pytest.mark.django_db


@pytest.fixture
def rule() -> RoutingRule:
    service = routing_services.service_create(name="checkout", stable_version="1.0.0")
    for name, version in (("stable", "1.0.0"), ("canary", "2.0.0")):
        routing_services.target_create(
            service=service, name=name, endpoint=f"http://{name}:80", version=version
        )
    return routing_services.rule_create(
        service=service, targets={"stable": 90, "canary": 10}, name="split"
    )


def _entries(rule: RoutingRule, tag: str) -> list[AuditEntry]:
    kind = ContentType.objects.get_for_model(RoutingRule)
    return [
        AuditEntry(
            content_type=kind,
            object_pk=f"{tag}-{index}",
            object_id=rule.pk,
            object_repr="split ✓",
            action=AuditEntry.Action.UPDATE,
            changes={"weight": ["10.00", "25.50"], "note": ["", 'a "quoted" é']},
            remote_addr=address,
            timestamp=datetime(2026, 5, 28, 12, 0, 1, 123456, tzinfo=UTC),
            source="api",
            reason="because",
            verb="set_weights",
        )
        for index, address in enumerate(["10.0.0.7", "2001:db8::1", None])
    ]


def _stored(rows: Any) -> list[dict[str, Any]]:
    return [
        {key: value for key, value in row.items() if key not in ("id", "object_pk")}
        for row in rows.order_by("id").values()
    ]


def test_insert_rows__stores_what_bulk_create_stores_and_sets_the_ids(rule: RoutingRule) -> None:
    AuditEntry.objects.bulk_create(_entries(rule, "django"))
    ours = _entries(rule, "ours")

    insert_rows(AuditEntry, ours)

    assert _stored(AuditEntry.objects.filter(object_pk__startswith="ours")) == _stored(
        AuditEntry.objects.filter(object_pk__startswith="django")
    )
    assert [entry.pk for entry in ours] == list(
        AuditEntry.objects.filter(object_pk__startswith="ours")
        .order_by("id")
        .values_list("id", flat=True)
    )
    assert all(not entry._state.adding for entry in ours)


def test_audit_updates__writes_the_diff_of_auditlogs_own(rule: RoutingRule) -> None:
    items = list(RuleTarget.objects.filter(rule=rule).order_by("position"))
    pairs = []
    for item, weight in zip(items, (Decimal("90.0"), Decimal("25")), strict=True):
        # 90.0 against 90.00 is the same number that auditlog prints differently: an entry.
        pairs.append((copy.copy(item), item, {}))
        item.weight = weight
    before = copy.copy(rule)
    rule.enabled = False
    rule.name = "split, paused"
    pairs.append((before, rule, {"reason": "paused for the night"}))
    unchanged = copy.copy(rule)
    pairs.append((unchanged, rule, {}))
    expected = [model_instance_diff(old, new) for old, new, _ in pairs]

    with audit_context(source="api", reason="maintenance"):
        written = audit_updates(pairs)

    entries = list(AuditEntry.objects.filter(verb="").order_by("-id")[:written])[::-1]
    assert written == 3 and expected[3] is None
    assert [entry.changes for entry in entries] == [
        {name: list(change) for name, change in diff.items()} for diff in expected[:3]
    ]
    assert [entry.reason for entry in entries] == [
        "maintenance",
        "maintenance",
        "paused for the night",
    ]
