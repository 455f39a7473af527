"""Flag, segment and evaluation key services: validation naming the field, versions, the shared
flags version, the audit trail, and the verbs' transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from canary_site.exceptions import NotFound, TransitionNotAllowed, ValidationFailed
from canary_site.models import AuditEntry
from canary_site.selectors import audit_entries_for
from flags import services, snapshot
from flags.models import EvaluationKey, Flag, FlagExposure
from flags.snapshot import read_version

pytestmark = pytest.mark.django_db

ROLLOUT_RULE = {
    "name": "beta testers",
    "segments": ["beta"],
    "constraints": [{"attribute": "plan", "operator": "in", "values": ["pro"]}],
    "serve": {"rollout": {"percentage": 10, "variant": "on"}},
}


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


DEEP = {"a": _nested(40)}


def field_of(error: pytest.ExceptionInfo[ValidationFailed]) -> str:
    return next(iter(error.value.fields))


def test_flag_create__boolean_without_variants__gets_on_and_off_and_serves_on_when_enabled():
    flag = services.flag_create(key="new-checkout", status="enabled")

    assert [v["name"] for v in flag.variants] == ["on", "off"]
    assert flag.off_variant == "off"
    assert flag.default_rule == {"variant": "on"}
    assert flag.salt == "new-checkout"
    assert flag.version == 1


def test_flag_create__is_disabled_unless_asked_otherwise():
    assert services.flag_create(key="quiet").status == "disabled"


def test_flag_create__with_a_duplicate_key__names_the_key(make_flag):
    make_flag("new-checkout")

    with pytest.raises(ValidationFailed) as error:
        services.flag_create(key="new-checkout")

    assert field_of(error) == "key"


@pytest.mark.parametrize("key", ["", "has space", "-leading-dash", "ünïcode", "x" * 101])
def test_flag_create__with_a_bad_key__names_the_key(key):
    with pytest.raises(ValidationFailed) as error:
        services.flag_create(key=key)

    assert field_of(error) == "key"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {
                "rules": [
                    {
                        "constraints": [{"attribute": "a", "operator": "nope", "values": ["x"]}],
                        "serve": {"variant": "on"},
                    }
                ]
            },
            "rules[0].constraints[0].operator",
        ),
        (
            {
                "rules": [
                    {
                        "constraints": [
                            {"attribute": "a", "operator": "regex", "values": ["(a+)+$"]}
                        ],
                        "serve": {"variant": "on"},
                    }
                ]
            },
            "rules[0].constraints[0].values[0]",
        ),
        (
            {
                "rules": [
                    {
                        "constraints": [
                            {"attribute": "a", "operator": "regex", "values": ["([a-z"]}
                        ],
                        "serve": {"variant": "on"},
                    }
                ]
            },
            "rules[0].constraints[0].values[0]",
        ),
        (
            {
                "default_rule": {
                    "split": [{"variant": "on", "weight": 50}, {"variant": "off", "weight": 40}]
                }
            },
            "default_rule.split",
        ),
        (
            {
                "default_rule": {
                    "split": [
                        {"variant": "on", "weight": 50.555},
                        {"variant": "off", "weight": 49.445},
                    ]
                }
            },
            "default_rule.split[0].weight",
        ),
        (
            {
                "variants": [{"name": "on", "value": True}, {"name": "on", "value": False}],
                "off_variant": "on",
            },
            "variants[1].name",
        ),
        (
            {
                "variants": [{"name": "on", "value": 1}, {"name": "off", "value": False}],
                "off_variant": "off",
            },
            "variants[0].value",
        ),
        (
            {"default_rule": {"rollout": {"percentage": 101, "variant": "on"}}},
            "default_rule.rollout.percentage",
        ),
        (
            {"rules": [{"segments": ["missing"], "serve": {"variant": "on"}}]},
            "rules[0].segments[0]",
        ),
        ({"targets": [{"variant": "nope", "values": ["alice"]}]}, "targets[0].variant"),
        ({"tags": ["Has Space"]}, "tags[0]"),
        (
            {"variants": [{"name": "on", "value": DEEP}, {"name": "off", "value": False}]},
            "variants",
        ),
    ],
)
def test_flag_create__with_a_bad_definition__names_the_engines_field(fields, field):
    with pytest.raises(ValidationFailed) as error:
        services.flag_create(key="bad", **fields)

    assert field_of(error) == field
    assert not Flag.objects.filter(key="bad").exists()


def test_flag_create__of_a_string_flag__takes_its_variants_and_the_first_as_off():
    flag = services.flag_create(
        key="button-colour",
        value_type="string",
        variants=[{"name": "grey", "value": "#888"}, {"name": "blue", "value": "#00f"}],
        default_rule={
            "split": [{"variant": "grey", "weight": 50}, {"variant": "blue", "weight": 50}]
        },
    )

    assert flag.off_variant == "grey"


def test_flag_update__bumps_the_version_and_the_shared_version__and_records_the_diff(
    make_flag, engineer
):
    flag = make_flag()
    before = read_version()

    updated = services.flag_update(
        flag=flag, changes={"name": "New checkout"}, actor=engineer, source="api", reason="rename"
    )

    assert updated.version == 2
    assert read_version() != before
    entry = audit_entries_for(obj=flag).first()
    assert entry.changes["name"] == ["", "New checkout"]
    assert (entry.actor, entry.source, entry.reason) == (engineer, "api", "rename")


def test_flag_update__that_changes_nothing__keeps_the_version(make_flag):
    flag = make_flag(name="Same")

    assert services.flag_update(flag=flag, changes={"name": "Same"}).version == 1


def test_flag_update__telling_true_from_one__is_a_change_of_type(make_flag):
    flag = make_flag()

    with pytest.raises(ValidationFailed) as error:
        services.flag_update(
            flag=flag,
            changes={"variants": [{"name": "on", "value": 1}, {"name": "off", "value": False}]},
        )

    assert field_of(error) == "variants[0].value"


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"key": "other"}, "key"), ({"status": "enabled"}, "status"), ({"version": 9}, "version")],
)
def test_flag_update__of_key_status_or_bookkeeping__is_refused_naming_it(make_flag, changes, field):
    with pytest.raises(ValidationFailed) as error:
        services.flag_update(flag=make_flag(), changes=changes)

    assert field_of(error) == field


def test_flag_kill__needs_a_reason(make_flag):
    with pytest.raises(ValidationFailed) as error:
        services.flag_kill(flag=make_flag(), reason="  ")

    assert field_of(error) == "reason"


def test_flag_kill__serves_off__keeps_the_reason__and_audits_the_verb(make_flag, engineer):
    flag = services.flag_kill(flag=make_flag(), reason="checkout errors", actor=engineer)

    assert flag.status == "killed"
    assert flag.killed_reason == "checkout errors"
    assert flag.killed_at is not None
    entry = AuditEntry.objects.filter(verb="kill").get()
    assert entry.reason == "checkout errors"
    assert entry.changes["status"] == ["enabled", "killed"]


def test_flag_kill__twice__changes_nothing_the_second_time(make_flag):
    flag = services.flag_kill(flag=make_flag(), reason="first")

    again = services.flag_kill(flag=flag, reason="second")

    assert (again.version, again.killed_reason) == (flag.version, "first")


def test_flag_disable__of_a_killed_flag__is_refused(make_flag):
    flag = services.flag_kill(flag=make_flag(), reason="boom")

    with pytest.raises(TransitionNotAllowed):
        services.flag_disable(flag=flag)


def test_flag_enable__of_a_killed_flag__recovers_it_and_clears_the_kill(make_flag):
    flag = services.flag_kill(flag=make_flag(), reason="boom")

    flag = services.flag_enable(flag=flag)

    assert (flag.status, flag.killed_reason, flag.killed_at) == ("enabled", "", None)


def test_flag_set_rollout__makes_the_default_rule_a_rollout_of_the_on_variant(make_flag):
    flag = make_flag(default_rule={"variant": "off"})

    flag = services.flag_set_rollout(flag=flag, percentage=25)

    assert flag.default_rule == {"rollout": {"percentage": 25.0, "variant": "on"}}
    assert flag.version == 2


@pytest.mark.parametrize("percentage", [-1, 100.01, 12.345, "ten", True, None])
def test_flag_set_rollout__with_a_bad_percentage__names_it(make_flag, percentage):
    with pytest.raises(ValidationFailed) as error:
        services.flag_set_rollout(flag=make_flag(), percentage=percentage)

    assert field_of(error) == "percentage"


def test_flag_set_rollout__with_an_unknown_variant__names_the_variant(make_flag):
    with pytest.raises(ValidationFailed) as error:
        services.flag_set_rollout(flag=make_flag(), percentage=5, variant="nope")

    assert field_of(error) == "variant"


def test_flag_set_rollout__by_a_deployment__takes_control__and_refuses_anyone_else(make_flag):
    flag = services.flag_set_rollout(flag=make_flag(), percentage=5, controlled_by="deployment 12")

    assert flag.controlled_by == "deployment 12"
    with pytest.raises(TransitionNotAllowed):
        services.flag_set_rollout(flag=flag, percentage=50)
    with pytest.raises(TransitionNotAllowed):
        services.flag_set_rollout(flag=flag, percentage=50, controlled_by="deployment 13")
    flag = services.flag_set_rollout(flag=flag, percentage=25, controlled_by="deployment 12")
    assert flag.default_rule["rollout"]["percentage"] == 25.0


def test_flag_release_control__hands_the_rollout_back_to_people(make_flag):
    flag = services.flag_set_rollout(flag=make_flag(), percentage=5, controlled_by="deployment 12")

    with pytest.raises(TransitionNotAllowed):
        services.flag_release_control(flag=flag, controlled_by="deployment 13")
    flag = services.flag_release_control(flag=flag, controlled_by="deployment 12")

    assert flag.controlled_by == ""
    assert (
        services.flag_set_rollout(flag=flag, percentage=50).default_rule["rollout"]["percentage"]
        == 50.0
    )


def test_flag_set_rollout__inside_a_callers_transaction__is_rolled_back_with_it(make_flag):
    from django.db import transaction

    flag = make_flag(default_rule={"variant": "off"})

    with pytest.raises(RuntimeError), transaction.atomic():
        services.flag_set_rollout(flag=flag, percentage=30, controlled_by="deployment 1")
        raise RuntimeError("the phase could not advance")

    flag.refresh_from_db()
    assert (flag.default_rule, flag.controlled_by) == ({"variant": "off"}, "")


def test_full_rollout__is_tracked_from_when_the_flag_serves_everyone(make_flag):
    flag = make_flag(default_rule={"variant": "off"})
    assert flag.full_rollout_since is None

    flag = services.flag_set_rollout(flag=flag, percentage=100)
    since = flag.full_rollout_since
    assert since is not None
    flag = services.flag_update(flag=flag, changes={"description": "still everyone"})
    assert flag.full_rollout_since == since

    flag = services.flag_disable(flag=flag)
    assert flag.full_rollout_since is None


def test_flag_delete__of_a_flag_a_deployment_drives__is_refused(make_flag):
    flag = services.flag_set_rollout(flag=make_flag(), percentage=5, controlled_by="deployment 12")

    with pytest.raises(TransitionNotAllowed):
        services.flag_delete(flag=flag)

    services.flag_delete(flag=services.flag_release_control(flag=flag))
    assert not Flag.objects.exists()


def test_segment_create__with_a_bad_constraint__names_it():
    with pytest.raises(ValidationFailed) as error:
        services.segment_create(
            key="beta", constraints=[{"attribute": "age", "operator": "num_gt", "values": ["old"]}]
        )

    assert field_of(error) == "constraints[0].values[0]"


def test_segment_update__bumps_its_version_and_the_shared_version(make_segment):
    segment = make_segment()
    before = read_version()

    segment = services.segment_update(segment=segment, changes={"name": "Beta testers"})

    assert segment.version == 2
    assert read_version() != before


def test_segment_delete__while_a_flag_names_it__is_refused_naming_the_flag(make_segment, make_flag):
    segment = make_segment()
    make_flag(rules=[ROLLOUT_RULE])

    with pytest.raises(TransitionNotAllowed, match="new-checkout"):
        services.segment_delete(segment=segment)


def test_evaluation_key_create__returns_the_secret_once_and_stores_its_digest():
    key, secret = services.evaluation_key_create(name="checkout", rate_limit=50)

    stored = EvaluationKey.objects.get()
    assert secret.startswith(stored.prefix)
    assert secret not in (stored.digest, stored.prefix)
    assert key.rate_limit == 50


@pytest.mark.parametrize(
    ("fields", "field"), [({"name": ""}, "name"), ({"name": "k", "rate_limit": 0}, "rate_limit")]
)
def test_evaluation_key_create__with_bad_input__names_the_field(fields, field):
    with pytest.raises(ValidationFailed) as error:
        services.evaluation_key_create(**fields)

    assert field_of(error) == field


def test_evaluation_key_revoke__marks_it__and_a_second_revoke_is_not_found():
    key, _secret = services.evaluation_key_create(name="checkout")

    services.evaluation_key_revoke(key_id=key.pk)

    assert EvaluationKey.objects.get().revoked_at is not None
    with pytest.raises(NotFound):
        services.evaluation_key_revoke(key_id=key.pk)


def test_exposures_flush__adds_to_the_stored_counts_in_one_upsert(make_flag):
    from flags.exposures import recorder

    for _ in range(3):
        recorder.record("new-checkout", "on")
    recorder.record("new-checkout", "off")
    services.flag_exposures_flush()
    recorder.record("new-checkout", "on")
    services.flag_exposures_flush()

    counts = dict(FlagExposure.objects.values_list("variant", "count"))
    assert counts == {"on": 4, "off": 1}
    assert recorder.pending == 0


def test_exposures_prune__deletes_counts_past_retention():
    old = timezone.now() - timedelta(days=40)
    FlagExposure.objects.create(flag_key="a", variant="on", bucket_start=old, count=3)
    FlagExposure.objects.create(flag_key="a", variant="on", bucket_start=timezone.now(), count=1)

    assert services.flag_exposures_prune() == 1
    assert FlagExposure.objects.count() == 1


def test_a_write__bumps_the_shared_version_again_when_its_transaction_commits(
    make_flag, django_capture_on_commit_callbacks
):
    flag = make_flag()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.flag_update(flag=flag, changes={"name": "x"})

    assert snapshot.bump_version in callbacks
