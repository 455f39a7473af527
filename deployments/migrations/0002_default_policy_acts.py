"""The deployments' default health policy acts: a copy created before it did (auto-rollback and
alerting off, as first shipped) is switched on, unless someone has changed it since."""

from typing import Any

from django.db import migrations

OLD_DESCRIPTION = (
    "Judges canaries of deployments that name no policy. The deployment's own phases hold the "
    "success criteria and rollback thresholds."
)
NEW_DESCRIPTION = (
    "Judges canaries of deployments that name no policy: rolls back a canary significantly and "
    "materially worse than stable on the phase's own traffic. The deployment's phases hold the "
    "success criteria and the absolute rollback thresholds."
)


def default_policy_acts(apps: Any, schema_editor: Any) -> None:
    from deployments import conf

    policies = apps.get_model("health", "HealthPolicy")
    for policy in policies.objects.filter(name=conf.default_policy_name()):
        data = dict(policy.policy or {})
        rollback = dict(data.get("auto_rollback") or {})
        as_shipped = (
            policy.description == OLD_DESCRIPTION
            and not policy.alerting_enabled
            and rollback.get("enabled") is False
            and not rollback.get("thresholds")
        )
        if not as_shipped:
            continue
        rollback["enabled"] = True
        data["auto_rollback"] = rollback
        policy.policy = data
        policy.alerting_enabled = True
        policy.description = NEW_DESCRIPTION
        policy.save(update_fields=["policy", "alerting_enabled", "description"])


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0001_initial"),
        ("health", "0003_metric_reads_and_check_compression"),
    ]

    operations = [migrations.RunPython(default_policy_acts, migrations.RunPython.noop)]
